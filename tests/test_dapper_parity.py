"""The hybridda-vs-DAPPER parity benchmark (experiments/benchmarks/dapper_parity.py), quick mode."""

import importlib.util
import json
import math

import pytest

from hybridda.configs.sakov2008 import REFERENCES

from .scripts import load_script


def _load_script():
    return load_script("experiments/benchmarks/dapper_parity.py")


@pytest.fixture(scope="module")
def script():
    return _load_script()


@pytest.fixture(scope="module")
def quick_run(script, tmp_path_factory):
    """One --quick run of every reference (with DAPPER when it is importable)."""
    out = tmp_path_factory.mktemp("dapper_parity")
    argv = ["--quick", "--out", str(out)]
    if importlib.util.find_spec("dapper") is None:
        argv.append("--no-dapper")
    returned = script.main(argv)
    return out, returned


def test_quick_run_writes_json_and_matches_published(quick_run):
    out, returned = quick_run
    saved = json.loads((out / "dapper_parity.json").read_text())
    assert saved == json.loads(json.dumps(returned))
    config = json.loads((out / "config.json").read_text())
    assert (config["cycles"], config["burn_in"]) == (400, 100)
    assert saved["averaged_cycles"] == 300
    assert [row["name"] for row in saved["results"]] == [ref.name for ref in REFERENCES]
    for row in saved["results"]:
        ours = row["ours"]
        assert math.isfinite(ours["rmse_analysis"]), row["name"]
        assert ours["finite"], row["name"]
        assert abs(ours["rmse_analysis"] - row["published_rmse"]) < 0.3 * row["published_rmse"], (
            row["name"],
            ours["rmse_analysis"],
        )
        assert ours["seconds_per_cycle"] > 0 and ours["compile_seconds"] > 0
        # x0 reproduces the truth's first state exactly (so DAPPER's xx[0] is the real x0).
        assert row["x0_residual"] < 1e-10, row["name"]


def test_quick_run_agrees_with_dapper(quick_run):
    pytest.importorskip("dapper")
    _, saved = quick_run
    assert saved["dapper"]
    for row in saved["results"]:
        theirs = row["dapper"]
        assert theirs["finite"], row["name"]
        assert row["abs_diff"] < 0.05, (row["name"], row["ours"]["rmse_analysis"], theirs)
        # Our RMSE of DAPPER's stored means equals DAPPER's own time average.
        assert theirs["rmse_analysis"] == pytest.approx(theirs["avrgs_rmse_a"], rel=1e-10)
        assert row["speedup"] > 0
    # 3D-Var is deterministic with the same B, x0, truth and observations: the two
    # libraries must then follow the same trajectory, to round-off.
    (var3d,) = [row for row in saved["results"] if row["method"] == "3dvar"]
    assert var3d["abs_diff"] < 1e-8


def test_no_dapper_and_only(script, tmp_path, capsys):
    record = script.main(["--quick", "--no-dapper", "--only", "3dvar", "--out", str(tmp_path)])
    assert not record["dapper"]
    (row,) = record["results"]
    assert row["name"] == "3D-Var" and row["dapper"] is None
    assert math.isfinite(row["ours"]["rmse_analysis"])
    assert "DAPPER not run" in capsys.readouterr().out
    assert json.loads((tmp_path / "dapper_parity.json").read_text())["results"][0]["dapper"] is None
    with pytest.raises(SystemExit):
        script.main(["--quick", "--no-dapper", "--only", "nonsense", "--out", str(tmp_path)])

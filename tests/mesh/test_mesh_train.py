"""experiments/mesh_train.py --quick: three surrogates trained, scored, resumed bit for bit.

One quick data set (6 + 1 + 1 coarse cases) and tiny models; the three runs share the
compiled programs (same shapes), so only the first pays for compiling.
"""

import json

import numpy as np
import pytest

from ..scripts import load_script

MODELS = ("meshgraphnet", "transolver", "abswift")


def _load_script():
    return load_script("experiments/mesh_train.py")


def test_quick_training_is_scored_and_resumes_bit_for_bit(tmp_path):
    script = _load_script()
    common = ["--quick", "--no-progress", "--data", str(tmp_path / "data")]
    interrupted = common + ["--out", str(tmp_path / "out"), "--checkpoint-dir"]
    interrupted.append(str(tmp_path / "checkpoints"))

    # Killed after the first checkpoint (step 10 of 20) of each model ...
    assert script.main(interrupted + ["--stop-after", "10"]) == {
        "stopped_after": 10,
        "params_sha256": {},
    }
    for name in MODELS:
        assert (tmp_path / "checkpoints" / name / "10").is_dir()
    with pytest.raises(FileExistsError, match="--resume"):
        script.main(interrupted)  # never two runs in one folder
    # ... and resumed to the end, then scored.
    metrics = script.main(interrupted + ["--resume"])
    out = tmp_path / "out"
    assert json.loads((out / "metrics.json").read_text())["models"].keys() == set(MODELS)
    assert json.loads((out / "config.json").read_text())["steps"] == 20
    for figure in metrics["figures"]:
        assert (out / figure).stat().st_size > 1000
    assert len(metrics["figures"]) == 3  # --quick: the test layout and the losses

    for name, result in metrics["models"].items():
        assert result["parameters"] > 0
        for which in ("test", "longer", "finer"):
            assert all(np.isfinite(v) for v in result["nmse_percent"][which].values())
        trained, fresh = result["nmse_percent"]["test"], result["untrained_test_nmse_percent"]
        # Twenty steps on four cases learn the velocity (the inflow profile is an input).
        assert trained["u"] < 100 and trained["u"] < fresh["u"], (name, trained, fresh)
        assert np.mean(list(trained.values())) < np.mean(list(fresh.values())), name
        assert result["final_loss"] < result["initial_loss"]
        assert result["predict_over_fem_percent"] > 0

    # An uninterrupted run ends with the same parameters, bit for bit.
    uninterrupted = common + ["--out", str(tmp_path / "out2"), "--checkpoint-dir"]
    uninterrupted += [str(tmp_path / "checkpoints2"), "--stop-after", "20"]
    straight = script.main(uninterrupted)["params_sha256"]
    assert straight == {name: r["params_sha256"] for name, r in metrics["models"].items()}

"""experiments/benchmarks/sharding.py --quick: sharded runs timed and equal to one device."""

import importlib.util
import json
from pathlib import Path

import jax
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "sharding.py"


@pytest.mark.skipif(len(jax.devices()) < 4, reason="needs 4 (forced host) devices, see conftest")
def test_quick_benchmark_times_sharded_runs_that_equal_one_device(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_sharding", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    record = module.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "sharding.json").read_text())
    assert saved == json.loads(json.dumps(record))
    for workload in ("filter", "window_batch"):
        rows = saved[workload]["rows"]
        assert [row["devices"] for row in rows] == [1, 4]
        assert rows[0]["speedup"] == 1.0
        for row in rows:
            assert row["seconds"] > 0 and row["max_abs_difference"] < 1e-10
    # The runs do what they claim: the EnKF tracks the truth (observation std 1) and each
    # 4D-Var analysis is closer to its window's truth than its background.
    assert all(row["analysis_rmse"] < 1.0 for row in saved["filter"]["rows"])
    for row in saved["window_batch"]["rows"]:
        assert row["analysis_rmse"] < 0.9 * row["background_rmse"]
    assert saved["filter"]["rows"][1]["members_sharded"]
    assert saved["window_batch"]["rows"][1]["batch_axis_sharded"]
    assert json.loads((tmp_path / "config.json").read_text())["quick"]


def test_forced_device_count_reads_only_the_numbers_after_devices():
    # `--devices 1 --n 4000` once forced 4000 host devices (the n was read as a count).
    spec = importlib.util.spec_from_file_location("bench_sharding", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    counts = module.requested_device_counts
    assert counts(["--devices", "1", "--n", "4000", "--members", "128"]) == [1]
    assert counts(["--n", "4000", "--devices", "2", "8", "--repeats", "3"]) == [2, 8]
    assert counts(["--quick"]) == [1, 2, 4]

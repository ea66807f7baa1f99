"""experiments/benchmarks/qg_fourdvar.py --quick: one 40 x 20 QG 4D-Var window, timed."""

import json
import math

from .scripts import load_script


def _load_script():
    return load_script("experiments/benchmarks/qg_fourdvar.py")


def test_quick_benchmark_times_a_window_and_the_gradient(tmp_path):
    record = _load_script().main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "qg_fourdvar.json").read_text())
    assert saved == json.loads(json.dumps(record))
    assert saved["state_size"] == 1600 and saved["observations_per_window"] == 400

    window = saved["window"]
    assert window["run_seconds"] > 0 and window["compile_seconds"] > 0
    costs = window["costs"]
    assert len(costs) == saved["settings"]["outer_loops"] + 1
    assert all(math.isfinite(c) for c in costs) and costs[-1] < 0.05 * costs[0]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(costs, costs[1:], strict=False))
    # The background misfits the 4 x 100 observations by far; the analysis fits them to
    # about their error (J ≈ p / 2 at the minimum of a well-specified problem; measured
    # 2.8e4 -> 212 for p = 400).
    p = saved["observations_per_window"]
    assert costs[0] > 20 * p and costs[-1] < p
    for where in ("start", "end"):
        analysis = window[f"analysis_psi_rmse_{where}"]
        assert analysis < 0.2 * window[f"background_psi_rmse_{where}"], where

    row = saved["gradients"]["J"]  # quick: the whole cost only (J_o and TL in full runs)
    assert row["forward"]["median_seconds"] > 0 and row["gradient"]["median_seconds"] > 0
    assert math.isfinite(row["gradient_over_forward"]) and row["gradient_over_forward"] > 0
    assert saved["gradients"]["cholesky_B"]["median_seconds"] > 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quick"] and config["window"] == 4

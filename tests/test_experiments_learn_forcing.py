"""experiments/learn_forcing.py --quick: gradient descent through a cycled ETKF finds F."""

import json

from .scripts import load_script


def _load_script():
    return load_script("experiments/learn_forcing.py")


def test_quick_run_recovers_the_forcing(tmp_path):
    metrics = _load_script().main(["--quick", "--no-progress", "--out", str(tmp_path)])
    path = [row["forcing"] for row in metrics["path"]]
    assert path[0] == 6.0 and metrics["true_forcing"] == 8.0
    # From F = 6, 2 units away, to within 0.1 of 8 (quick mode measured 8.027): a wrong or
    # vanishing gradient leaves F near 6 or drives it below, and with steps of at most 0.6
    # a blind walk of 25 steps landing in this 0.2-wide window is not a plausible accident.
    assert abs(metrics["learnt_forcing"] - 8.0) < 0.1, path
    # ... and it got there by descending the observation-based loss.
    assert metrics["loss_final"] < metrics["loss_start"]
    assert metrics["rmse_analysis_learnt"] < metrics["rmse_analysis_true_forcing"] + 0.01
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["learnt_forcing"] == metrics["learnt_forcing"]
    assert json.loads((tmp_path / "config.json").read_text())["cycles"] == 300
    assert (tmp_path / "learn_forcing.png").stat().st_size > 0

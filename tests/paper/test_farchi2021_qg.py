"""paper/farchi2021_qg_correction.py --quick: a CNN learnt from 4D-Var analyses corrects
the imperfect QG model, for forecasts and inside 4D-Var (20 x 10 grid, short periods)."""

import json

import numpy as np
import pytest

from ..scripts import load_script


def _load_script():
    return load_script("paper/farchi2021_qg_correction.py")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("farchi2021")
    argv = ["--quick", "--no-progress", "--out", str(root / "out")]
    metrics = _load_script().main(argv + ["--checkpoint-dir", str(root / "checkpoints")])
    return root, metrics


def test_quick_run_learns_a_correction_that_helps_forecasts_and_4dvar(quick_run):
    root, metrics = quick_run
    saved = json.loads((root / "out" / "metrics.json").read_text())
    assert saved["forecast"] == json.loads(json.dumps(metrics["forecast"]))

    # (a) Forecasts from the test-period analyses: the hybrid model beats the physical
    # model at 24 RK4 steps (quick: measured 0.044 vs 0.072, -38 %), and the true
    # model bounds what a correction can do (0.025).
    forecast = saved["forecast"]
    rmse = forecast["rmse_at_target_lead"]
    assert forecast["target_lead_steps"] == 24
    assert rmse["true"] < rmse["hybrid"] < rmse["imperfect"]
    assert forecast["hybrid_reduction_at_target_lead"] > 0.2
    curves = {name: np.asarray(curve) for name, curve in forecast["rmse"].items()}
    assert np.all(curves["hybrid"][4:] < curves["imperfect"][4:])  # from lead 8 steps on
    for curve in curves.values():  # lead 0: the same initial states for all
        assert curve[0] == pytest.approx(curves["true"][0], rel=1e-12)

    # (b) Cycled 4D-Var on the test period with each model: the hybrid's analyses beat
    # the physical model's (quick: 0.0220 vs 0.0266); the true model is best (0.0198).
    analysis = saved["analysis"]["rmse"]
    assert analysis["true"] < analysis["hybrid"] < analysis["imperfect"]
    assert saved["analysis"]["hybrid_below_imperfect"]

    # The learnt correction against the true one-cycle model error on true states
    # (quick: 69 % of its variance, correlation 0.83).
    error = saved["model_error"]
    assert error["explained_fraction"] > 0.4 and error["correlation"] > 0.7

    history = saved["training"]
    assert history["best_validation_loss"] < history["validation_loss"][0]  # it learnt
    config = json.loads((root / "out" / "config.json").read_text())
    assert (config["nx"], config["ny"], config["window"]) == (20, 10, 4)
    assert config["imperfect_depths"] == [5500.0, 4500.0]
    for name in ("rmse_vs_lead.png", "model_error.png", "analysis_rmse.png", "test_analyses.nc"):
        assert (root / "out" / name).stat().st_size > 0

"""paper/farchi2021_jcs_online.py --quick: the tendency correction of the truncated
Lorenz-96 learnt online (4D-Var windows with the network in the control) and offline."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "paper" / "farchi2021_jcs_online.py"


@pytest.fixture(scope="module")
def script():
    # One module for every run: its compiled functions are reused by the resumed run.
    spec = importlib.util.spec_from_file_location("farchi2021_jcs_online", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _argv(root: Path, name: str) -> list[str]:
    return [
        "--quick",
        "--no-progress",
        "--out",
        str(root / name / "out"),
        "--checkpoint-dir",
        str(root / name / "checkpoints"),
    ]


@pytest.fixture(scope="module")
def quick_run(script, tmp_path_factory):
    root = tmp_path_factory.mktemp("farchi2021_jcs_online")
    return root, script.main(_argv(root, "whole"))


def test_quick_run_learns_the_correction_online(quick_run):
    root, metrics = quick_run
    out = root / "whole" / "out"
    saved = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert (config["n_slow"], config["window"], config["constraint"]) == (36, 4, "weak")
    assert saved["forecast"]["rmse_at"] == json.loads(json.dumps(metrics["forecast"]["rmse_at"]))
    for name in ("rmse_vs_lead.png", "online_learning.png"):
        assert (out / name).stat().st_size > 0

    curves = {name: np.asarray(c) for name, c in saved["forecast"]["rmse"].items()}
    assert set(curves) == {"truncated", "offline", "online"}
    for curve in curves.values():
        assert np.all(np.isfinite(curve)) and curve[0] == 0.0  # lead 0: the true state
    # The network moved from its start (zero readout: c = 0, the truncated model) ...
    online = saved["online"]
    assert online["parameter_change_rms"] > 1e-4
    assert np.all(np.isfinite(online["window_end_rmse"]))
    assert online["cost_after_mean"] < online["cost_before_mean"]
    # ... towards the model error: after 10 windows (40 cycles) the online hybrid's
    # short-range forecasts beat the truncated model's (measured at lead 5: 0.285 vs
    # 0.397) and its one-cycle correction correlates with the true model error (0.72).
    assert curves["online"][5] < 0.9 * curves["truncated"][5]
    assert saved["model_error"]["online"]["correlation"] > 0.4
    curve = online["learning_curve"]
    assert len(curve["correlation"]) == 2 and np.all(np.isfinite(curve["explained"]))
    # The 4D-Var window-end analyses beat the observations (std 1).
    assert online["window_end_rmse_second_half"] < 0.8
    assert np.isfinite(saved["offline"]["etkf"]["rmse"])
    assert np.isfinite(saved["online_vs_offline"]["mean_ratio_over_leads_1_to_last"])
    # Valid times (normalised RMSE 0.5) in Lyapunov times of the truncated model (its
    # exponent: 2.2-2.4 for Lorenz-96, n = 36, F = 10; measured 2.42 from 500 cycles):
    # the online hybrid's forecasts stay valid longer than the truncated model's
    # (measured 2.67 vs 2.06).
    valid = saved["valid_time"]
    assert 1.8 < valid["lyapunov_exponent_truncated_model"] < 3.0
    assert valid["online"]["lyapunov_time"] > 1.1 * valid["truncated"]["lyapunov_time"]
    assert all(valid[name]["exceeded"] for name in curves)


def test_resume_after_interruption_is_bit_identical(script, quick_run):
    # A run stopped after its first chunk of windows, then resumed, must reproduce the
    # uninterrupted run's numbers exactly (CPU).
    root, metrics = quick_run
    argv = _argv(root, "interrupted")
    assert script.main(argv + ["--stop-after-chunks", "1"]) is None
    resumed = script.main(argv + ["--resume"])
    for result in (resumed, metrics):
        result.pop("seconds")
        result["offline"]["training"] = {
            k: v for k, v in result["offline"]["training"].items() if "seconds" not in k
        }
        result["online"].pop("seconds_per_window")
    assert resumed == metrics

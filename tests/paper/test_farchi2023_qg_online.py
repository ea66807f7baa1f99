"""paper/farchi2023_qg_online.py --quick: the QG correction network learnt online (its
parameters in the 4D-Var control), from scratch and after offline pre-training, against
the offline correction and the physical model (20 x 10 grid, 24 windows).

The quick run takes about 100 s of CPU (measured 67 s wall at load 2.7 on 2 cores, 246 s
at load 6), almost all of it compiling: one QG 4D-Var with the network in the control
(about 15 s alone), the offline training step, the truth run and the forecasts."""

import json

import numpy as np
import pytest

from ..scripts import load_script


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    module = load_script("paper/farchi2023_qg_online.py")
    root = tmp_path_factory.mktemp("farchi2023")
    argv = ["--quick", "--no-progress", "--out", str(root / "out")]
    metrics = module.main(argv + ["--checkpoint-dir", str(root / "checkpoints")])
    return root / "out", metrics


def test_quick_run_learns_the_correction_online_and_after_pretraining(quick_run):
    out, metrics = quick_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["forecast"]["rmse_at"] == json.loads(json.dumps(metrics["forecast"]["rmse_at"]))
    config = json.loads((out / "config.json").read_text())
    assert (config["nx"], config["ny"], config["constraint"]) == (20, 10, "strong")
    for name in ("rmse_vs_lead.png", "online_learning.png", "model_error.png"):
        assert (out / name).stat().st_size > 0

    curves = {name: np.asarray(c) for name, c in saved["forecast"]["rmse"].items()}
    assert set(curves) == {"physical", "offline", "online", "offline_online", "true"}
    for curve in curves.values():  # forecasts from the true test states
        assert np.all(np.isfinite(curve)) and curve[0] == 0.0
    # Forecast RMSE at 24 RK4 steps (quick, measured: physical 0.0584, offline 0.0375,
    # online 0.0570, offline + online 0.0408, true 0): 24 windows are too few for the
    # online correction from scratch to learn much (8 % of the model error), but it
    # already helps; online training keeps most of the pre-trained correction's gain.
    rmse = {name: values["24"] for name, values in saved["forecast"]["rmse_at"].items()}
    assert rmse["true"] < rmse["online"] < rmse["physical"]
    assert rmse["true"] < rmse["offline"] < 0.75 * rmse["physical"]
    assert rmse["offline_online"] < 0.8 * rmse["physical"]

    # Both online runs moved θ (measured rms change 0.0034 and 0.0030), and the windows'
    # minimisations lowered the cost (mean 114 -> 71 and 99 -> 66).
    for name in ("online", "offline_online"):
        online = saved["online"][name]
        assert online["parameter_change_rms"] > 1e-4
        assert online["cost_after_mean"] < online["cost_before_mean"]
    # The learnt one-cycle corrections correlate with the true model error on true test
    # states (measured: offline 0.78, online 0.37, offline + online 0.76).
    error = saved["model_error"]
    assert error["offline"]["correlation"] > 0.6 and error["offline_online"]["correlation"] > 0.6
    assert error["online"]["correlation"] > 0.2
    # 4D-Var with the learnt network in the control analyses better than with the physical
    # model (second half of the training windows, measured: physical 0.0256, online
    # 0.0250, offline + online 0.0223).
    analysis = saved["analysis"]["second_half_mean"]
    assert analysis["offline_online"] < analysis["online"] < analysis["physical"]


@pytest.fixture(scope="module")
def quick_replay_run(tmp_path_factory, quick_run):
    # After `quick_run` in the same process: its physical-model 4D-Var, offline training
    # and evaluation programs are compiled already; only the replay learner is new.
    module = load_script("paper/farchi2023_qg_online.py")
    root = tmp_path_factory.mktemp("farchi2023_replay")
    argv = ["--quick", "--no-progress", "--online-method", "replay", "--out", str(root / "out")]
    module.main(argv + ["--checkpoint-dir", str(root / "checkpoints")])
    return root / "out"


def test_quick_replay_run_learns_online_from_the_streamed_analyses(quick_run, quick_replay_run):
    saved = json.loads((quick_replay_run / "metrics.json").read_text())
    control = json.loads((quick_run[0] / "metrics.json").read_text())
    assert json.loads((quick_replay_run / "config.json").read_text())["online_method"] == "replay"
    # The physical model and the offline network are the same as in the control run.
    for name in ("physical", "offline"):
        assert saved["forecast"]["rmse"][name] == control["forecast"]["rmse"][name]
    # Online from the replayed analyses learns far more in 24 windows than with θ in the
    # control (measured, explained share of the one-cycle model error: replay 42 %,
    # control 8 %; offline 61 %), and fine-tuning the offline network on its data set,
    # whose pairs the new analyses replace, adds to it (63 %; 24-step RMSE: physical
    # 0.0584, offline 0.0375, online 0.0450, offline + online 0.0368; analyses, second
    # half: physical 0.0256, online 0.0218, offline + online 0.0215).
    error = saved["model_error"]
    assert error["online"]["explained_fraction"] > 0.25
    assert (
        error["online"]["explained_fraction"]
        > control["model_error"]["online"]["explained_fraction"]
    )
    assert error["offline_online"]["explained_fraction"] > error["offline"]["explained_fraction"]
    rmse = {name: values["24"] for name, values in saved["forecast"]["rmse_at"].items()}
    assert rmse["online"] < 0.9 * rmse["physical"]
    assert rmse["offline_online"] < rmse["offline"]
    online = saved["online"]["online"]
    assert len(online["learning_curve_explained_last_iterate"]) == 2  # two chunks
    assert online["training_loss_first_last"][1] < online["training_loss_first_last"][0]
    analysis = saved["analysis"]["second_half_mean"]
    assert analysis["online"] < analysis["physical"]

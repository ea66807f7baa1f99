"""paper/farchi2021_jcs_correction.py --quick: resolvent and tendency corrections of the
truncated Lorenz-96, learnt offline from ETKF analyses of the two-scale truth."""

import json

import numpy as np
import pytest

from ..scripts import load_script


def _load_script():
    return load_script("paper/farchi2021_jcs_correction.py")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("farchi2021_jcs")
    argv = ["--quick", "--no-progress", "--out", str(root / "out")]
    metrics = _load_script().main(argv + ["--checkpoint-dir", str(root / "checkpoints")])
    return root, metrics


def test_quick_run_corrections_beat_the_truncated_model(quick_run):
    root, metrics = quick_run
    saved = json.loads((root / "out" / "metrics.json").read_text())
    assert saved["forecast"]["rmse_at"] == json.loads(json.dumps(metrics["forecast"]["rmse_at"]))
    config = json.loads((root / "out" / "config.json").read_text())
    assert (config["n_slow"], config["n_fast"], config["da_settings"]) == (36, 10, ["full"])

    # (1) Forecasts from the true test states: both corrections far better than the
    # truncated model at long leads, and similar to each other (published: "somewhat
    # similar"). Quick, lead 40 cycles: truncated 4.70, corrections 2.51 and 2.55.
    # Over --seed 0-3 the corrections' RMSE is 0.55-0.62 of the truncated model's at lead
    # 40 but 0.72-0.94 at lead 20 (0.94: seed 0 with XLA's optimisations off), so lead
    # 20 only has to beat it.
    curves = {name: np.asarray(c) for name, c in saved["forecast"]["rmse"].items()}
    for name in ("resolvent", "tendency"):
        assert curves[name][40] < 0.8 * curves["truncated"][40]
        assert curves[name][20] < curves["truncated"][20]
    assert abs(saved["forecast"]["tendency_over_resolvent_at_last_lead"] - 1) < 0.15
    for curve in curves.values():  # lead 0: the true state for all
        assert curve[0] == 0.0

    # (2) ETKF with each model, all 36 slow variables observed (std 1): both hybrids beat
    # the truncated model (quick: 0.88 vs 0.46 and 0.49). The paper's "tendency
    # significantly better" is recorded (difference and its standard error), not
    # asserted: it is not reproduced at full scale either (see paper/README.md).
    full = saved["analysis"]["full"]
    rmse = {name: entry["rmse"] for name, entry in full["models"].items()}
    assert max(rmse["resolvent"], rmse["tendency"]) < 0.75 * rmse["truncated"]
    assert np.isfinite(full["tendency_minus_resolvent"]["standard_error"])

    # (3) The learnt one-cycle correction is correlated with the true model error
    # (quick: 0.55 and 0.58).
    for name in ("resolvent", "tendency"):
        assert saved["model_error"][name]["correlation"] > 0.3
    for name in ("rmse_vs_lead.png", "model_error.png", "analysis_rmse.png"):
        assert (root / "out" / name).stat().st_size > 0

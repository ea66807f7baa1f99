"""paper/finn2025_gensim.py --quick: a generative forecaster with long rollouts (GenSIM)."""

import json

import numpy as np
import pytest

from ..scripts import load_script


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finn2025") / "out"
    script = load_script("paper/finn2025_gensim.py")
    return out, script.main(["--quick", "--no-progress", "--out", str(out)])


def test_quick_run_writes_finite_climate_diagnostics(quick_run):
    out, metrics = quick_run
    saved = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert saved["claims"] == metrics["claims"]
    # The rollout is far beyond the training lead (100 leads of 0.05 in --quick).
    assert saved["rollout_length_in_leads"] == config["rollout_leads"] >= 50
    # Both forecasters have the same network (same parameter count).
    assert saved["parameters"]["diffusion"] == saved["parameters"]["deterministic"] > 0
    for name in ("diffusion", "deterministic"):
        training = saved["training"][name]
        assert training["loss_last"] < training["loss_first"]
    truth = saved["climate"]["truth"]
    assert len(truth["spectrum"]) == config["n_slow"] // 2 + 1
    assert np.all(np.isfinite(truth["spectrum"])) and np.isfinite(truth["trend_slope"])
    # The networks of --quick (100 steps of a one-level U-Net) are far from trained: their
    # rollouts may blow up (stability is the full run's claim, see paper/README.md).
    # What must hold: the blow-up detector is consistent, and a finite rollout has
    # finite climate diagnostics on the truth's wavenumbers.
    for name in ("diffusion", "deterministic"):
        climate = saved["climate"][name]
        assert 0 <= climate["blown_up_members"] <= config["members"]
        if not climate["finite"]:
            assert climate["blown_up_members"] > 0
            assert climate["first_blow_up_lead"] is not None
            continue
        for key in ("spectrum_max_relative_error", "wasserstein_1", "trend_slope"):
            assert np.isfinite(climate[key])
        assert len(climate["spectrum_ratio"]) == len(truth["spectrum"])
    claims = {row["claim"] for row in saved["claims"]}
    leads = config["rollout_leads"]
    assert {f"diffusion: stable for {leads} leads (>= 50x)",
            f"deterministic: stable for {leads} leads (>= 50x)"} <= claims  # fmt: skip
    for name in ("finn2025_hovmoller.png", "finn2025_spectra_histograms.png",
                 "finn2025_trends.png", "rollouts.nc"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    steps = sorted(p.name for p in (out / "checkpoints" / "diffusion").iterdir())
    assert str(config["train_steps"]) in steps

"""paper/finn2024_censored_latent_diffusion.py --quick: latent diffusion with a censored
Gaussian decoder against data-space diffusion and a plain Gaussian decoder."""

import json
import math

import pytest

from ..scripts import load_script


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finn2024") / "out"
    script = load_script("paper/finn2024_censored_latent_diffusion.py")
    metrics = script.main(["--quick", "--no-progress", "--out", str(out)])
    return out, metrics


def test_quick_run_respects_the_bounds_and_reproduces_the_comparisons(quick_run):
    out, metrics = quick_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["claims"] == metrics["claims"]
    assert json.loads((out / "config.json").read_text())["ae_steps"] == 300
    runs = saved["runs"]
    for name, entry in runs.items():
        scores = [*entry["crps"].values(), *entry["energy_score"].values()]
        assert all(math.isfinite(s) and s > 0 for s in scores), name
    truth, censored, gaussian = runs["truth"], runs["latent-censored"], runs["latent-gaussian"]
    # The test fields have mass exactly on both bounds (measured 0.35 at 0, 0.33 at 1).
    assert truth["concentration_at_0"] > 0.2 and truth["concentration_at_1"] > 0.2
    # The censored decoder never leaves the bounds and puts mass exactly on them before
    # any clipping (measured 14 % at 0, 10 % at 1, thickness 14 % at 0); the Gaussian
    # decoder and data-space diffusion leave them (measured 11 % and 20 % of the values)
    # and put no mass exactly on them.
    assert censored["out_of_bounds_raw"] == 0.0
    assert censored["concentration_at_0_raw"] > 0.03 and censored["concentration_at_1_raw"] > 0.03
    assert censored["thickness_at_0"] > 0.03
    assert gaussian["out_of_bounds_raw"] > 0.02 and runs["data"]["out_of_bounds_raw"] > 0.02
    assert gaussian["concentration_at_0_raw"] == 0.0
    # Censoring gets the fractions at the bounds and in the marginal zone closer to the
    # truth than the Gaussian decoder clipped afterwards: in the reconstructions
    # (measured error 0.72 vs 1.05) and in the generated fields (0.88 vs 1.08).
    claims = saved["claims"]
    assert claims["bound_error_ae-censored"] < 0.85 * claims["bound_error_ae-gaussian"]
    assert claims["bound_error_latent-censored"] < claims["bound_error_latent-gaussian"]
    # The latent mapping smooths: far less power at the smallest scales than the truth
    # and than data-space diffusion (measured 0.03 to 0.08 vs 0.80).
    for name in ("latent-censored", "latent-gaussian", "ae-censored", "ae-gaussian"):
        assert claims[f"small_scale_power_{name}"] < 0.5 * claims["small_scale_power_data"]
    table = {row["claim"]: row for row in saved["claims_table"]}
    assert table["generated fields respect the bounds (issue target)"]["holds"]
    for name in ("finn2024_samples.png", "finn2024_spectra.png", "finn2024_bounds.png"):
        assert (out / name).stat().st_size > 0
    assert "300" in {p.name for p in (out / "checkpoints" / "ae_censored").iterdir()}

"""paper/yu2025_wildfire_diffusion.py --quick: diffusion ensembles of wildfire spread."""

import json
import math

import pytest

from ..scripts import load_script

METHODS = ("diffusion", "deterministic-probability", "deterministic-binary", "ca-reference")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("yu2025") / "out"
    script = load_script("paper/yu2025_wildfire_diffusion.py")
    return out, script.main(["--quick", "--no-progress", "--out", str(out)])


def test_quick_run_samples_and_scores(quick_run):
    out, metrics = quick_run
    saved = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert saved["claims"] == metrics["claims"] and config["grid"] == 16
    # Diffusion samples are burnt / unburnt maps that keep the cells already burnt.
    assert saved["samples"]["binary"] and saved["samples"]["contain_current_area"]
    assert saved["samples"]["mean_burnt_cells"] >= saved["samples"]["current_burnt_cells"]
    assert saved["parameters"]["diffusion"] == saved["parameters"]["deterministic"]
    cells = config["test_cases"] * config["grid"] ** 2
    for method in METHODS:
        scores = saved["scores"][method]
        for name in ("brier", "crps", "crps_area", "spread_skill", "reliability"):
            assert math.isfinite(scores[name]), (method, name)
        assert 0 <= scores["brier"] <= 1 and sum(scores["diagram"]["counts"]) == cells
    # For binary members the cell CRPS is the Brier score of the members' fraction.
    for method in ("diffusion", "deterministic-binary", "ca-reference"):
        assert saved["scores"][method]["crps"] == pytest.approx(saved["scores"][method]["brier"])
    # The automaton's own ensemble is the calibrated reference (measured 0.96 and a
    # reliability term of 4e-4 at quick size) and beats both surrogates.
    reference = saved["scores"]["ca-reference"]
    assert 0.7 < reference["spread_skill"] < 1.3 and reference["reliability"] < 0.002
    for method in METHODS[:3]:
        assert reference["brier"] < saved["scores"][method]["brier"]
        assert reference["crps_area"] < saved["scores"][method]["crps_area"]
    for name in ("ca_example", "samples", "probability_maps", "reliability"):
        assert (out / f"yu2025_{name}.png").stat().st_size > 0
    for name in ("diffusion", "deterministic"):
        assert "40" in {p.name for p in (out / "checkpoints" / name).iterdir()}

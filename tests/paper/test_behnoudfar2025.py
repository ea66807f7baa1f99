"""paper/behnoudfar2025_latent_bridging.py --quick: latent DA bridging two ENSO models."""

import json

import pytest

from ..scripts import load_script


def _load_script():
    return load_script("paper/behnoudfar2025_latent_bridging.py")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("behnoudfar2025") / "out"
    metrics = _load_script().main(["--quick", "--no-progress", "--out", str(out)])
    return out, metrics


def test_quick_run_halves_the_index_biases(quick_run):
    out, metrics = quick_run
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["target"] == metrics["target"]
    assert json.loads((out / "config.json").read_text())["cycles"] == 300
    stats = saved["index_statistics"]
    reference, uncorrected = stats["reference"], stats["uncorrected"]
    # The idealized model is skewed with strong El Niños; the operational one is biased
    # cold and too weak in the Niño-3 region.
    assert reference["skewness"] > 0.3
    assert uncorrected["mean"] < reference["mean"] - 0.2
    assert uncorrected["q99"] < reference["q99"]
    # The target: every bias at most half the uncorrected one.
    for stat, ratio in saved["target"]["bias_ratios"].items():
        assert ratio <= 0.5, stat
    assert saved["target"]["holds"]
    # Explanation: one latent direction carries most of the increments, and the
    # increments follow the innovation.
    explanation = saved["explanation"]
    assert explanation["leading_direction_variance_share"] > 0.4
    assert max(abs(c) for c in explanation["increment_innovation_correlation"]) > 0.5
    for name in ("behnoudfar2025_index.png", "behnoudfar2025_latent_correction.png"):
        assert (out / name).stat().st_size > 0

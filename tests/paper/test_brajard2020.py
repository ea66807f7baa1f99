"""paper/brajard2020_l96_emulation.py --quick: DA-ML iterations learn a Lorenz-96 surrogate."""

import json

import numpy as np
import pytest

from ..scripts import load_script


def _load_script():
    return load_script("paper/brajard2020_l96_emulation.py")


def test_matmul_network_is_the_bilinear_cnn():
    """The script's fast network computes `hybridda.nn.BilinearCNN` (same parameters)."""
    import jax
    import jax.numpy as jnp

    from hybridda.nn import BilinearCNN

    network = BilinearCNN(key=jax.random.key(0), dtype=jnp.float64)
    x = 3.0 * jax.random.normal(jax.random.key(1), (40,))
    fast = _load_script().StandardisedBilinearCNN(network, 2.0, 4.0)
    np.testing.assert_allclose(fast(x), network((x - 2.0) / 4.0), rtol=1e-12, atol=1e-12)


def test_interpolation_in_time_is_exact_for_linear_signals():
    script = _load_script()
    rng = np.random.default_rng(0)
    cycles, n, p = 50, 8, 4
    truth = np.arange(cycles)[:, None] * rng.normal(size=n) + rng.normal(size=n)
    indices = np.stack([np.sort(rng.choice(n, p, replace=False)) for _ in range(cycles)])
    indices[0], indices[-1] = np.arange(0, n, 2), np.arange(1, n, 2)  # every variable seen
    indices[1], indices[-2] = np.arange(1, n, 2), np.arange(0, n, 2)
    y = np.take_along_axis(truth, indices, axis=1)
    fields = script.interpolate_observations(y, indices, n, "time-linear")
    # Exact wherever a variable is seen before and after (not at the first and last cycle).
    np.testing.assert_allclose(fields[1:-1], truth[1:-1], atol=1e-9)
    # In space, a constant field is reproduced by the periodic spline.
    flat = script.interpolate_observations(np.ones((3, p)), indices[:3], n, "space-cubic")
    np.testing.assert_allclose(flat, 1.0)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("brajard2020")
    argv = ["--quick", "--no-progress", "--out", str(root / "out")]
    metrics = _load_script().main(argv + ["--checkpoint-dir", str(root / "checkpoints")])
    return root, argv, metrics


def test_quick_run_learns_a_skilful_surrogate(quick_run):
    root, _, metrics = quick_run
    saved = json.loads((root / "out" / "metrics.json").read_text())
    rmse = saved["iterations"]["analysis_rmse"]  # [interpolation, DA iteration 1, 2, ...]
    assert len(rmse) == 3
    # The EnKF-N with the surrogate beats the interpolated observations and the
    # observation error itself, and the DA-ML iterations improve on the first DA
    # (measured 1.04 -> 0.79 -> 0.69; a surrogate that learnt nothing diverges instead).
    assert rmse[2] < rmse[1] < 1.0 < rmse[0] + 0.1
    assert saved["analysis_rmse_last"] == rmse[2] == metrics["analysis_rmse_last"]

    # Forecasts from the true state on the independent test period: the surrogate keeps
    # its skill several times longer than persistence (measured 1.48 vs 0.23 Lyapunov
    # times); climatology is never within the threshold.
    surrogate = saved["valid_time_surrogate"]["lyapunov_times"]
    persistence = saved["valid_time_persistence"]["lyapunov_times"]
    assert surrogate > 0.8 and surrogate > 3 * persistence
    assert saved["valid_time_climatology"]["cycles"] == 0
    curves = saved["normalised_rmse"]
    assert np.all(np.asarray(curves["surrogate"][1:10]) < np.asarray(curves["persistence"][1:10]))

    # Lyapunov spectra: the truth's leading exponent is near 1.68 (short quick average),
    # and the surrogate is chaotic too, with a stable free run.
    lyapunov = saved["lyapunov"]
    assert 1.3 < lyapunov["lambda1_truth"] < 2.0
    assert lyapunov["lambda1_surrogate"] > 0 and lyapunov["positive_surrogate"] >= 5
    assert saved["free_run_finite"] and saved["histograms"]["total_variation"] < 0.2

    config = json.loads((root / "out" / "config.json").read_text())
    assert config["train_cycles"] == 2000 and config["obs_count"] == 20
    for name in ("forecast_skill", "convergence", "lyapunov_spectrum", "power_spectrum"):
        assert (root / "out" / f"{name}.png").stat().st_size > 0
    assert (root / "out" / "last_iteration_analysis.nc").stat().st_size > 0
    # Every iteration is checkpointed (steps 0..3; the last two are kept).
    steps = sorted(
        int(p.name) for p in (root / "checkpoints" / "iterations").iterdir() if p.name.isdigit()
    )
    assert steps[-1] == 3


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_surrogate(quick_run, tmp_path):
    root, argv, metrics = quick_run
    script = _load_script()
    argv = ["--quick", "--no-progress", "--out", str(tmp_path / "out")]
    argv += ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    stopped = script.main(argv + ["--stop-after", "2"])  # as if killed after iteration 1
    assert stopped == {"stopped_after": 2}
    with pytest.raises(FileExistsError, match="--resume"):
        script.main(argv)  # never two runs in one folder
    resumed = script.main(argv + ["--resume"])
    assert resumed["iterations"]["analysis_rmse"] == metrics["iterations"]["analysis_rmse"]
    assert resumed["lyapunov"]["surrogate"] == metrics["lyapunov"]["surrogate"]

"""paper/malartic2022_local_parameters.py --quick: local EnKFs learn global and local parameters."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "paper" / "malartic2022_local_parameters.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("malartic2022_local_parameters", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_learns_global_and_local_parameters(tmp_path):
    out = tmp_path / "out"
    metrics = _load_script().main(["--quick", "--no-progress", "--out", str(out)])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert json.loads((out / "config.json").read_text())["cycles"] == 300
    assert (out / "malartic2022_local_parameters.png").stat().st_size > 0
    assert set(saved) == {"a_letkf", "a_enkf"}  # --quick: case (a) only
    letkf, enkf = saved["a_letkf"], saved["a_enkf"]
    # Lorenz-96, 300 cycles, N = 20, from a wrong model (17 coefficients, RMS error
    # 0.231) and flat local forcings (no pattern: pattern RMSE 1.06). Measured, LETKF /
    # EnKF: coefficient RMSE 0.115 / 0.092, pattern RMSE of the 40 F_i 0.67 / 0.80
    # (correlation with the truth 0.81 / 0.72), analysis RMSE 0.40 / 0.58 against
    # 0.23 / 0.25 for the same filters with the true model.
    for run in (letkf, enkf):
        assert run["coefficient_error_final"] < 0.7 * run["coefficient_error_initial"]
        assert (
            run["local_forcing_pattern_error_final"]
            < 0.9 * run["local_forcing_pattern_error_initial"]
        )
        assert run["local_forcing_pattern_correlation"] > 0.5
        assert run["rmse_analysis_online"] < 1.0  # the observation error
        assert run["rmse_analysis_true_model"] < 0.3
    assert letkf["local_forcing_pattern_correlation"] > 0.7
    assert letkf["rmse_analysis_online"] < 0.5
    # The learnt surrogate's forecasts: Lorenz-96's leading exponent (1.68 at F = 8;
    # measured 1.59 here, 500 cycles) and a valid time close to the true model's from
    # the same analyses (measured 1.19 vs 1.27 Lyapunov times, LETKF).
    valid = letkf["valid_time"]
    assert 1.3 < valid["lyapunov_exponent"] < 1.9
    assert valid["learnt_surrogate"] > 0.8 * valid["true_model"] > 0.5


def test_quick_case_b_learns_per_layer_forcings_and_the_coupling_from_radiances(tmp_path):
    # Multi-layer Lorenz-96 (8 x 20), 8 radiance channels above every other column,
    # 1000 cycles: the DomainCovarianceEnKF (horizontal domains, vertical covariance
    # taper) learns the 8 per-layer forcings (truth 8 -> 4 with height, prior 6) and
    # the coupling Ω (truth 1, prior 0.5) online. Measured: forcing RMSE 1.36 -> 0.19
    # (profile correlation 0.99), Ω 0.85, analysis RMSE 0.22 against 0.073 with the
    # true model (10000 cycles: 0.061, Ω 1.002, 0.090 vs 0.081).
    out = tmp_path / "out"
    metrics = _load_script().main(["--quick", "--cases", "b", "--no-progress", "--out", str(out)])
    run = metrics["b_domain-covariance"]
    assert run["cycles"] == 1000 and len(run["learnt_local_forcing"]) == 8
    assert run["local_forcing_error_final"] < 0.3 * run["local_forcing_error_initial"]
    assert run["forcing_profile_correlation"] > 0.95
    assert run["coefficient_error_final"] < 0.5 * run["coefficient_error_initial"]  # Ω
    assert run["rmse_analysis_online"] < 0.4  # below the radiance noise (0.5)
    assert run["rmse_analysis_true_model"] < 0.15
    valid = run["valid_time"]
    # Valid time, Lyapunov times (λ ≈ 0.6): measured 3.50 for the surrogate learnt in
    # 1000 cycles against 4.77 for the true model (10000 cycles: 3.57 vs 3.66).
    assert valid["true_model_exceeded"]  # 300 leads suffice for the slower growth
    assert valid["learnt_surrogate"] > 0.6 * valid["true_model"] > 1.0
    assert (out / "malartic2022_local_parameters.png").stat().st_size > 0

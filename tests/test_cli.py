"""The `hybridda twin` command: flags, JSON line, outputs, clear errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hybridda import Trajectory, metrics
from hybridda.cli import main
from hybridda.io import load_netcdf

QUICK = ["--cycles", "300", "--burn-in", "100", "--no-progress"]


def _last_json(capsys):
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_twin_json_line_has_the_promised_keys_and_a_sane_rmse(capsys):
    main(
        [
            "twin",
            "--method",
            "etkf",
            "--ensemble-size",
            "20",
            "--inflation",
            "1.02",
            "--json",
            *QUICK,
        ]
    )
    result = _last_json(capsys)
    for key in (
        "rmse_analysis",
        "rmse_forecast",
        "spread_analysis",
        "seconds_per_cycle",
        "compile_seconds",
        "cycles",
    ):
        assert key in result
    assert result["cycles"] == 300
    # Observation error std is 1: a working filter must beat it by far (sakov2008: ~0.18).
    assert 0.1 < result["rmse_analysis"] < 0.35
    assert result["rmse_analysis"] < result["rmse_forecast"]


def test_same_seed_same_numbers_different_seed_different(capsys):
    args = [
        "twin",
        "--method",
        "enkf",
        "--ensemble-size",
        "20",
        "--inflation",
        "1.06",
        "--json",
        *QUICK,
    ]
    main([*args, "--seed", "3"])
    first = _last_json(capsys)
    main([*args, "--seed", "3"])
    second = _last_json(capsys)
    main([*args, "--seed", "4"])
    third = _last_json(capsys)
    assert first["rmse_analysis"] == second["rmse_analysis"]
    assert first["rmse_analysis"] != third["rmse_analysis"]


def test_out_writes_netcdf_figures_and_json_consistent_with_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    main(
        [
            "twin",
            "--method",
            "letkf",
            "--ensemble-size",
            "8",
            "--inflation",
            "1.04",
            "--localisation-radius",
            "4",
            "--obs",
            "every-k",
            "--obs-every",
            "2",
            "--json",
            "--out",
            str(out),
            *QUICK,
        ]
    )
    result = _last_json(capsys)
    for name in ("trajectory.nc", "hovmoller.png", "rmse.png", "metrics.json", "config.json"):
        assert (out / name).stat().st_size > 0, name
    dataset = load_netcdf(out / "trajectory.nc")
    trajectory = Trajectory.from_xarray(dataset)
    # Recompute the headline number from the saved file: the file holds what was reported.
    rmse = metrics.time_average(
        metrics.rmse(dataset["truth"].values, trajectory.analysis_mean), 100
    )
    assert float(rmse) == pytest.approx(result["rmse_analysis"], rel=1e-12)
    assert dataset["observations"].shape == (300, 20)
    assert json.loads((out / "config.json").read_text())["localisation_radius"] == 4.0


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("lorenz63", ["--obs", "all", "--ensemble-size", "10", "--inflation", "1.02"]),
        (
            "lorenz96-two-scale",
            [
                "--n",
                "8",
                "--obs",
                "random",
                "--obs-count",
                "40",
                "--ensemble-size",
                "20",
                "--inflation",
                "1.05",
                "--steps-per-cycle",
                "10",
            ],
        ),
    ],
)
def test_other_models_run_and_beat_the_observation_error(model, extra, capsys):
    main(["twin", "--model", model, "--method", "etkf", "--json", *extra, *QUICK])
    result = _last_json(capsys)
    assert np.isfinite(result["rmse_analysis"])
    assert result["rmse_analysis"] < 1.0  # obs-error std


def test_4dvar_from_the_command_line_reports_convergence(capsys):
    main(["twin", "--method", "4dvar", "--window", "2", "--n", "10", "--obs", "every-k",
          "--cycles", "60", "--burn-in", "20", "--background-scale", "0.05", "--json",
          "--no-progress"])  # fmt: skip
    result = _last_json(capsys)
    assert 0.0 <= result["unconverged_windows"] <= 30
    assert result["rmse_analysis"] < 1.0  # better than the observation error


def test_3dvar_from_the_command_line(capsys):
    main(["twin", "--method", "3dvar", "--background-scale", "0.02", "--json", *QUICK])
    result = _last_json(capsys)
    assert 0.3 < result["rmse_analysis"] < 0.6  # sakov2008 / DAPPER: 0.40
    assert result["spread_analysis"] == 0.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "lorenz99"], "invalid choice"),
        (["--method", "kalman"], "invalid choice"),
        (["--ensemble-size", "1"], "ensemble-size"),
        (["--inflation", "0"], "inflation"),
        (["--method", "letkf"], "localisation-radius"),
        (["--method", "letkf", "--localisation-radius", "-1"], "localisation-radius"),
        (["--obs-std", "0"], "obs-std"),
        (["--method", "enkf-n", "--hyperprior-boost", "0"], "hyperprior-boost"),
        (["--method", "4dvar", "--window", "0"], "window"),
        (["--method", "4dvar", "--window", "7"], "must be `--window` (7) plus a multiple"),
        (["--method", "ienks", "--window", "2", "--shift", "3"], "--shift"),
        (["--method", "4dvar", "--mda"], "--mda"),
        (["--method", "etkf", "--hybrid-weight", "0.5"], "--hybrid-weight"),
        (["--method", "4dvar", "--hybrid-weight", "1.5"], "--hybrid-weight"),
        (["--burn-in", "400", "--cycles", "300"], "burn-in"),
    ],
)
def test_bad_flags_exit_with_a_message_naming_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["twin", *argv, "--cycles", "300", "--burn-in", "100", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "hybridda", "twin", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--localisation-radius" in done.stdout


def test_missing_or_corrupt_trajectory_file_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No netCDF file"):
        load_netcdf(tmp_path / "absent.nc")
    corrupt = tmp_path / "corrupt.nc"
    corrupt.write_bytes(b"this is not netCDF")
    with pytest.raises(ValueError, match="corrupt or not netCDF"):
        load_netcdf(corrupt)

"""Trajectory ↔ xarray ↔ netCDF round trip."""

import jax
import numpy as np
import pytest

import hybridda as hda
from hybridda.filters import ETKF
from hybridda.io import load_netcdf, save_netcdf
from hybridda.observe import GaussianError, every_kth


@pytest.fixture(scope="module")
def run():
    model = hda.Resolvent(hda.dynamics.Lorenz96(n=8), dt=0.05)
    x0 = hda.spin_up(model, model.dynamics.default_initial_state(), 200)
    truth = hda.simulate(model, x0, 30)[1:]
    observation = every_kth(8, 2, GaussianError(1.0))
    y = hda.synthesise_observations(observation, truth, jax.random.key(0))
    y = y.at[3, 1].set(np.nan)  # a missing value must survive the round trip
    E0 = hda.initial_ensemble(jax.random.key(1), x0, 6)
    trajectory = hda.assimilate(
        model, observation, ETKF(), y, E0, jax.random.key(2), store_ensembles=True
    )
    return trajectory, truth, y


def test_netcdf_round_trip_is_exact(run, tmp_path):
    trajectory, truth, y = run
    dataset = trajectory.to_xarray(truth=truth, observations=y)
    assert dict(dataset.sizes) == {"time": 30, "variable": 8, "member": 6, "observation": 4}
    path = save_netcdf(dataset.assign_attrs(seed=3, note=None), tmp_path / "sub" / "t.nc")
    loaded = load_netcdf(path)
    back = hda.Trajectory.from_xarray(loaded)
    for name in (
        "times",
        "forecast_mean",
        "analysis_mean",
        "forecast_spread",
        "analysis_spread",
        "final_ensemble",
        "forecast_ensemble",
        "analysis_ensemble",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(trajectory, name), err_msg=name)
    np.testing.assert_array_equal(loaded["truth"].values, truth)
    assert np.isnan(loaded["observations"].values[3, 1])
    assert loaded.attrs["seed"] == 3


def test_from_xarray_rejects_a_foreign_dataset(run):
    trajectory, truth, _ = run
    dataset = trajectory.to_xarray(truth=truth).drop_vars("analysis_mean")
    with pytest.raises(ValueError, match="analysis_mean"):
        hda.Trajectory.from_xarray(dataset)

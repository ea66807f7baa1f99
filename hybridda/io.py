"""Trajectories ↔ `xarray.Dataset` ↔ netCDF."""

from pathlib import Path

import numpy as np
import xarray as xr


def trajectory_to_xarray(trajectory, truth=None, observations=None, attrs=None) -> xr.Dataset:
    """A `Trajectory` as a Dataset with dims ``time``, ``variable`` (and ``member``).

    `truth` (K, n) and `observations` (K, p; NaN = missing) are added when given.
    """
    time = np.asarray(trajectory.times)
    data = {
        "forecast_mean": (("time", "variable"), np.asarray(trajectory.forecast_mean)),
        "analysis_mean": (("time", "variable"), np.asarray(trajectory.analysis_mean)),
        "forecast_spread": ("time", np.asarray(trajectory.forecast_spread)),
        "analysis_spread": ("time", np.asarray(trajectory.analysis_spread)),
        "final_ensemble": (("member", "variable"), np.asarray(trajectory.final_ensemble)),
    }
    for name in ("forecast_ensemble", "analysis_ensemble"):
        value = getattr(trajectory, name)
        if value is not None:
            data[name] = (("time", "member", "variable"), np.asarray(value))
    if truth is not None:
        data["truth"] = (("time", "variable"), np.asarray(truth))
    if observations is not None:
        data["observations"] = (("time", "observation"), np.asarray(observations))
    dataset = xr.Dataset(data, coords={"time": time})
    dataset.attrs.update(attrs or {})
    dataset["time"].attrs["long_name"] = "model time at the analysis"
    dataset["analysis_spread"].attrs["long_name"] = "sqrt(mean over variables of ensemble variance)"
    return dataset


def save_netcdf(dataset: xr.Dataset, path: str | Path) -> Path:
    """Write `dataset` to netCDF (creating parent folders)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    attrs = {
        k: (str(v) if isinstance(v, bool | type(None)) else v) for k, v in dataset.attrs.items()
    }
    dataset.assign_attrs(attrs).to_netcdf(path)
    return path


def load_netcdf(path: str | Path) -> xr.Dataset:
    """Read a netCDF file (e.g. one written by [`save_netcdf`][]) into memory.

    `Trajectory.from_xarray` turns it back into a trajectory.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No netCDF file at {path}; pass the path of a .nc file.")
    try:
        return xr.load_dataset(path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Cannot read {path} as netCDF ({error}); the file is corrupt or not netCDF."
        ) from error

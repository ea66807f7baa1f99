"""Standard figures for twin experiments (matplotlib, Agg-safe)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from . import metrics  # noqa: E402


def hovmoller(truth, analysis, times, path, title: str = "", max_cycles: int = 400) -> Path:
    """Truth, analysis mean and their difference as time × variable images."""
    truth, analysis, times = (np.asarray(a)[-max_cycles:] for a in (truth, analysis, times))
    limit = np.abs(truth).max()
    error = analysis - truth
    error_limit = max(np.abs(error).max(), 1e-12)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True, constrained_layout=True)
    extent = (-0.5, truth.shape[1] - 0.5, times[0], times[-1])
    panels = [
        (truth, "truth", "RdBu_r", limit),
        (analysis, "analysis mean", "RdBu_r", limit),
        (error, "analysis − truth", "PuOr_r", error_limit),
    ]
    for ax, (field, name, cmap, vmax) in zip(axes, panels, strict=True):
        image = ax.imshow(
            field, aspect="auto", origin="lower", extent=extent, cmap=cmap, vmin=-vmax, vmax=vmax
        )
        ax.set_title(name)
        ax.set_xlabel("variable")
        fig.colorbar(image, ax=ax, shrink=0.8)
    axes[0].set_ylabel("time")
    fig.suptitle(title)
    return _save(fig, path)


def rmse_and_spread(truth, trajectory, path, burn_in: int = 0, title: str = "") -> Path:
    """Analysis/forecast RMSE and spread over cycles, burn-in shaded."""
    times = np.asarray(trajectory.times)
    fig, ax = plt.subplots(figsize=(9, 3.5), constrained_layout=True)
    series = [
        (metrics.rmse(truth, trajectory.forecast_mean), "forecast RMSE", "C1", "-"),
        (metrics.rmse(truth, trajectory.analysis_mean), "analysis RMSE", "C0", "-"),
        (trajectory.forecast_spread, "forecast spread", "C1", ":"),
        (trajectory.analysis_spread, "analysis spread", "C0", ":"),
    ]
    for values, label, color, style in series:
        ax.plot(times, np.asarray(values), color=color, linestyle=style, lw=0.8, label=label)
    if burn_in:
        ax.axvspan(times[0], times[burn_in - 1], color="0.9", label="burn-in")
    ax.set_yscale("log")
    ax.set_xlabel("time")
    ax.legend(ncol=3, fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

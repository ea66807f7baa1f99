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


def skill_vs_lead(
    curves: dict,
    dt_cycle: float,
    path,
    lyapunov_exponent: float | None = None,
    threshold: float = 0.5,
    title: str = "",
) -> Path:
    """Normalised forecast RMSE against lead time, one curve per model, valid times marked.

    `curves` maps a label to a [`hybridda.metrics.ForecastSkill`][] (or a 1-d array of
    normalised errors, lead 0 first), e.g. ``{"true model": ..., "surrogate": ...}``.
    With `lyapunov_exponent` the lead axis is in Lyapunov times (``t · λ_max``).
    """
    scale = 1.0 if lyapunov_exponent is None else float(lyapunov_exponent)
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for index, (label, curve) in enumerate(curves.items()):
        error = np.asarray(getattr(curve, "normalised_rmse", curve))
        leads = np.arange(error.shape[0]) * dt_cycle * scale
        valid = metrics.valid_time(error, dt_cycle, threshold=threshold)
        color = f"C{index}"
        marker = float(valid.model_time) * scale
        suffix = "" if bool(valid.exceeded) else "+"
        ax.plot(leads, error, color=color, lw=1.2, label=f"{label} (valid {marker:.2f}{suffix})")
        ax.axvline(marker, color=color, ls=":", lw=0.8)
    ax.axhline(threshold, color="0.5", ls="--", lw=0.8, label=f"threshold {threshold:g}")
    ax.set_xlabel("lead time (Lyapunov times)" if lyapunov_exponent else "lead time")
    ax.set_ylabel("RMSE / climatological std")
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def histogram_comparison(
    histograms: metrics.AttractorHistograms,
    path,
    labels: tuple[str, str] = ("truth", "surrogate"),
    title: str = "",
) -> Path:
    """The two densities of [`hybridda.metrics.attractor_histograms`][] and their distances."""
    edges = np.asarray(histograms.edges)
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    densities = (histograms.truth_density, histograms.other_density)
    for density, label, color in zip(densities, labels, ("k", "C1"), strict=True):
        ax.stairs(np.asarray(density), edges, color=color, lw=1.2, label=label)
    distances = (
        f"TV {float(histograms.total_variation):.3f}, "
        f"Hellinger {float(histograms.hellinger):.3f}, "
        f"W1 {float(histograms.wasserstein):.3g}"
    )
    ax.set_xlabel("state value")
    ax.set_ylabel("density")
    ax.legend(fontsize=8, title=distances, title_fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(history, path, title: str = "") -> Path:
    """Training and validation loss at each evaluation of a run, best step marked (log y).

    `history` is a `hybridda.learn.History` or its ``as_dict()`` (e.g. read back from
    JSON); missing losses (``None`` / NaN) are left out.
    """
    if hasattr(history, "as_dict"):
        history = history.as_dict()

    def values(name):
        return np.array([np.nan if v is None else v for v in history[name]], dtype=float)

    steps = np.asarray(history["step"])
    fig, ax = plt.subplots(figsize=(7, 3.5), constrained_layout=True)
    for name, label, color in (
        ("train_loss", "training (minibatch mean)", "C0"),
        ("validation_loss", "validation", "C1"),
    ):
        losses = values(name)
        shown = np.isfinite(losses)
        if shown.any():
            ax.plot(steps[shown], losses[shown], color=color, marker=".", lw=1, label=label)
    best = history.get("best_validation_loss")
    if best is not None and np.isfinite(best):
        ax.axvline(history["best_step"], color="0.5", linestyle=":", lw=1)
        ax.plot([history["best_step"]], [best], "o", color="C1", mfc="none", label="best")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("rollout loss")
    ax.legend(fontsize=8)
    ax.set_title(title + (" (stopped early)" if history.get("stopped_early") else ""))
    return _save(fig, path)

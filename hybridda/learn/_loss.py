"""The multi-step (rollout) loss of a model against analyses, weighted by their uncertainty."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._data import RolloutPairs

Model = Callable[[Float[Array, " n"]], Float[Array, " n"]]

# Rollouts up to this many steps are unrolled in Python rather than scanned.
_UNROLL_MAX_STEPS = 8


def rollout(model: Model, x0: Float[Array, " n"], steps: int) -> Float[Array, "steps n"]:
    """``M(x0), M(M(x0)), ..., M^steps(x0)``: the model applied `steps` times.

    Unrolled for up to 8 steps, a `lax.scan` beyond.

    `model` is any one-cycle map of one state, called as ``model(x)``: a
    [`hybridda.Surrogate`][], a [`hybridda.ResolventCorrection`][], a
    [`hybridda.Resolvent`][] (of a [`hybridda.TendencyCorrection`][]), ... Models with a
    start time are called with their default ``t0``, i.e. treated as autonomous.
    """
    if steps <= _UNROLL_MAX_STEPS:
        # Short rollouts (the usual 1-4 cycles) are unrolled: inside a `lax.scan` the
        # gradient of a vmapped convolutional network is about 10x slower on CPU
        # (measured: float32 PeriodicCNN, batch 64, one cycle: 17.5 ms in a scan vs
        # 1.9 ms unrolled). Same arithmetic, one compiled copy of the model per step.
        states, x = [], x0
        for _ in range(steps):
            x = model(x).astype(x0.dtype)
            states.append(x)
        return jnp.stack(states)

    def step(x, _):
        x = model(x).astype(x0.dtype)
        return x, x

    return jax.lax.scan(step, x0, length=steps)[1]


class RolloutLoss(eqx.Module):
    r"""Inverse-variance-weighted, discounted rollout misfit, plus an optional L2 penalty.

    For one example (window) with input $x^a_k$ and targets $x^a_{k+1}, \dots, x^a_{k+r}$,
    and $M^j$ the model applied $j$ times,

    $$\ell_k = \frac{1}{n \sum_{j=1}^r \gamma^{j-1}} \sum_{j=1}^{r} \gamma^{j-1}
    \sum_{i=1}^{n} \frac{\big(M^j(x^a_k)_i - x^a_{k+j,i}\big)^2}{\sigma^2_{k+j,i} +
    \sigma^2_\text{floor}}$$

    and the loss of a set of examples is the mean of $\ell_k$. This is the
    (diagonal) analysis-error-covariance weighting of Brajard et al. (2020) and Bocquet
    et al. (2020): targets the DA trusts less count less; the floor keeps the weight of
    an (over-)confident analysis finite. Without variances (`RolloutPairs.variance` is
    ``None``) every weight is 1 and $\ell_k$ is the mean squared error over steps and
    variables. With variances, a model whose errors match the analysis errors scores
    about 1 (a reduced $\chi^2$).

    **Arguments:**

    - `discount`: $\gamma > 0$; step $j$ of the rollout has weight $\gamma^{j-1}$
      (``< 1`` trusts the first steps most; ``1``, the default, weighs all alike).
      The steps' weights are normalised, so losses with different rollouts compare.
    - `variance_floor`: $\sigma^2_\text{floor} > 0$, added to every analysis variance.
      Same units as the variances: set it to the smallest error variance you believe.
    - `l2`: weight $\lambda \ge 0$ of the penalty $\lambda \sum \|W\|^2$ over the trained
      leaves of rank >= 2 (weight matrices and convolution kernels; biases and
      per-variable scales are not penalised). Added by [`Trainer`][] to the training
      objective only; the losses it reports (train and validation) are the misfit alone.

    !!! cite "References"
        Brajard, Carrassi, Bocquet and Bertino (2020), *J. Comput. Sci.* 44, 101171,
        eq. (9). Bocquet, Brajard, Carrassi and Bertino (2020), Bayesian inference of
        chaotic dynamics by merging data assimilation, machine learning and
        expectation-maximization, *Foundations of Data Science* 2, 55-80.
    """

    discount: float = eqx.field(static=True, default=1.0)
    variance_floor: float = eqx.field(static=True, default=1e-6)
    l2: float = eqx.field(static=True, default=0.0)

    def __check_init__(self):
        for name, value, low, meaning in (
            ("discount", self.discount, "> 0", "per-step weight factor, e.g. 1.0"),
            ("variance_floor", self.variance_floor, "> 0", "e.g. 1e-6"),
            ("l2", self.l2, ">= 0", "0 for no penalty"),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.floating | np.integer)
                or not np.isfinite(value)
                or (value <= 0 if low == "> 0" else value < 0)
            ):
                raise ValueError(
                    f"`{name}` must be a finite number {low} ({meaning}), got {value!r}."
                )

    def step_weights(self, rollout: int) -> Float[Array, " r"]:
        """The normalised weights ``γ^(j-1) / Σ γ^(j-1)`` of the rollout steps."""
        weights = self.discount ** np.arange(rollout, dtype=float)
        return jnp.asarray(weights / weights.sum())

    def window_losses(self, model: Model, pairs: RolloutPairs) -> Float[Array, " B"]:
        """$\\ell_k$ of every example."""
        forecasts = jax.vmap(lambda x0: rollout(model, x0, pairs.rollout))(pairs.inputs)
        squared = (forecasts - pairs.targets) ** 2
        if pairs.variance is not None:
            squared = squared / (pairs.variance + self.variance_floor)
        step_weights = self.step_weights(pairs.rollout).astype(squared.dtype)
        return jnp.mean(squared, axis=2) @ step_weights

    def __call__(self, model: Model, pairs: RolloutPairs) -> Float[Array, ""]:
        """The mean of $\\ell_k$ over the examples in `pairs`."""
        return jnp.mean(self.window_losses(model, pairs))

    def penalty(self, params: PyTree) -> Float[Array, ""]:
        """$\\lambda \\sum \\|W\\|^2$ over the array leaves of rank >= 2 of `params`."""
        weights = [w for w in jax.tree.leaves(params) if eqx.is_inexact_array(w) and w.ndim >= 2]
        if self.l2 == 0 or not weights:
            return jnp.zeros(())
        return self.l2 * sum(jnp.sum(w**2) for w in weights)

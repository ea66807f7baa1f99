"""Variational cost functionals as modules: ``J(control) -> scalar`` and its pieces."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, Int

from .._checks import as_float_array, require_spd
from ..observe import AbstractObservation, check_observations, observed_mask


def _whitened_by(covariance, vector):
    """``L⁻¹ v`` with ``L Lᵀ = covariance``: ``½‖·‖²`` is the Mahalanobis term."""
    return jsl.solve_triangular(jnp.linalg.cholesky(covariance), vector, lower=True)


class ThreeDVarCost(eqx.Module):
    r"""The 3D-Var cost $J(x) = \tfrac12\|x - x_b\|^2_{B^{-1}} + \tfrac12\|y - H(x)\|^2_{R^{-1}}$.

    NaN entries of `y` are unobserved and do not contribute.

    **Arguments:**

    - `background`: ``x_b``; `background_covariance`: ``B`` (symmetric positive definite).
    - `observation`: the operator ``H`` with its error model ``R``; `y`: the observation.
    """

    background: Float[Array, " n"]
    background_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)
    observation: AbstractObservation
    y: Float[Array, " p"]

    def __check_init__(self):
        require_spd("background_covariance (B)", self.background_covariance)

    def background_residual(self, x: Float[Array, " n"]) -> Float[Array, " n"]:
        return _whitened_by(self.background_covariance, x - self.background)

    def observation_residual(self, x: Float[Array, " n"]) -> Float[Array, " p"]:
        mask = observed_mask(self.y)
        innovation = jnp.where(mask, self.y - self.observation(x), 0.0)
        return self.observation.error.whiten(innovation, mask)

    def residuals(self, x: Float[Array, " n"]) -> Float[Array, " m"]:
        """Whitened residuals ``r`` with ``J = ½‖r‖²`` (for Gauss-Newton)."""
        return jnp.concatenate([self.background_residual(x), self.observation_residual(x)])

    def background_term(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """``½ (x - x_b)ᵀ B⁻¹ (x - x_b)``."""
        return 0.5 * jnp.sum(self.background_residual(x) ** 2)

    def observation_term(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """``½ (y - H x)ᵀ R⁻¹ (y - H x)`` over the observed entries."""
        return 0.5 * jnp.sum(self.observation_residual(x) ** 2)

    def __call__(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        return self.background_term(x) + self.observation_term(x)


class StrongFourDVar(eqx.Module):
    r"""Strong-constraint 4D-Var over a window of ``L`` cycles; control: the initial state.

    $$J(x_0) = \tfrac12\|x_0 - x_b\|^2_{B^{-1}}
              + \tfrac12\sum_{k=1}^{L}\|y_k - H_k(M^k(x_0))\|^2_{R^{-1}}$$

    ``x_0`` is the state at the window start `t0`; ``y_k = y[k-1]`` observes the state
    after ``k`` cycles with ``observation.at_cycle(first_cycle + k - 1)`` (the convention
    of [`hybridda.assimilate`][]). NaN entries are unobserved. ``J = ½‖r(x_0)‖²`` with
    the whitened residuals [`residuals`][], which Gauss-Newton uses.

    **Arguments:**

    - `model`: the resolvent (one cycle), e.g. [`hybridda.Resolvent`][].
    - `observation`: operator and error model; `y`: observations ``(L, p)``.
    - `background`: ``x_b``; `background_covariance`: ``B``.
    - `t0`, `first_cycle`: time and global cycle index of the window start.
    - `obs_weights`: optional weights ``β_k ≥ 0`` of each cycle's observation term
      (``R_k / β_k``); 0 drops a cycle's observations (already assimilated in an
      overlapping window), fractions split them between windows (multiple DA).
    """

    model: eqx.Module
    observation: AbstractObservation
    y: Float[Array, "L p"]
    background: Float[Array, " n"]
    background_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)
    t0: float | Float[Array, ""] = 0.0
    first_cycle: int | Int[Array, ""] = 0
    obs_weights: Float[Array, " L"] | None = None

    def __check_init__(self):
        _check_window(self.y, self.observation, self.background, self.obs_weights)
        require_spd("background_covariance (B)", self.background_covariance)

    @property
    def window(self) -> int:
        return self.y.shape[0]

    def trajectory(self, x0: Float[Array, " n"]) -> Float[Array, "L n"]:
        """``M^k(x_0)`` for ``k = 1..L``."""
        return _forecast(self.model, x0, None, self.window, self.t0)

    def background_residual(self, x0: Float[Array, " n"]) -> Float[Array, " n"]:
        return _whitened_by(self.background_covariance, x0 - self.background)

    def control_factors(self) -> Float[Array, "n n"]:
        """``B^{1/2}`` (lower Cholesky factor) for the control-variable transform.

        A minimiser computes it once and passes it to `whiten_control`,
        `colour_control` and `whitened_residuals`: for a QG state (n = 1600) one
        Cholesky costs more than ten model steps, so it must not be redone per iteration.
        """
        return jnp.linalg.cholesky(self.background_covariance)

    def whiten_control(self, x0: Float[Array, " n"], factors=None) -> Float[Array, " n"]:
        """Control-variable transform ``v = B^{-1/2}(x0 - x_b)`` (preconditioning)."""
        factors = self.control_factors() if factors is None else factors
        return jsl.solve_triangular(factors, x0 - self.background, lower=True)

    def colour_control(self, v: Float[Array, " n"], factors=None) -> Float[Array, " n"]:
        """Inverse of `whiten_control`: ``x0 = x_b + B^{1/2} v``."""
        factors = self.control_factors() if factors is None else factors
        return self.background + factors @ v

    def whitened_residuals(self, v: Float[Array, " n"], factors) -> Float[Array, " m"]:
        """`residuals` of ``x0 = colour_control(v)``, with the background part exactly ``v``."""
        states = self.trajectory(self.colour_control(v, factors))
        return jnp.concatenate([v, self.observation_residuals(states).ravel()])

    def observation_residuals(self, states: Float[Array, "L n"]) -> Float[Array, "L p"]:
        """Whitened ``y_k - H_k(x_k)`` (zero where unobserved)."""
        return _observation_residuals(
            self.observation, self.y, states, self.first_cycle, self.obs_weights
        )

    def residuals(self, x0: Float[Array, " n"]) -> Float[Array, " m"]:
        return jnp.concatenate(
            [self.background_residual(x0), self.observation_residuals(self.trajectory(x0)).ravel()]
        )

    def background_term(self, x0: Float[Array, " n"]) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.background_residual(x0) ** 2)

    def observation_term(self, x0: Float[Array, " n"]) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.observation_residuals(self.trajectory(x0)) ** 2)

    def __call__(self, x0: Float[Array, " n"]) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.residuals(x0) ** 2)


class WeakFourDVar(eqx.Module):
    r"""Weak-constraint 4D-Var; control: initial state and model-error forcings.

    The model is ``x_k = M(x_{k-1}) + η_k`` with ``η_k ~ N(0, Q)``, and

    $$J(x_0, η) = \tfrac12\|x_0 - x_b\|^2_{B^{-1}} + \tfrac12\sum_k \|η_k\|^2_{Q^{-1}}
                 + \tfrac12\sum_k\|y_k - H_k(x_k)\|^2_{R^{-1}}.$$

    The control is the pair ``(x0, forcing)`` with ``forcing`` of shape ``(L, n)``
    (Trémolet 2006, the "model-error forcing" formulation; the state-trajectory control
    is the change of variables ``x_k``). As ``Q → 0`` the minimiser tends to the
    strong-constraint one. Same conventions as [`StrongFourDVar`][].

    **Arguments:** as `StrongFourDVar`, plus `model_error_covariance` ``Q`` (n × n, SPD).
    """

    model: eqx.Module
    observation: AbstractObservation
    y: Float[Array, "L p"]
    background: Float[Array, " n"]
    background_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)
    model_error_covariance: Float[Array, "n n"] = eqx.field(converter=as_float_array)
    t0: float | Float[Array, ""] = 0.0
    first_cycle: int | Int[Array, ""] = 0
    obs_weights: Float[Array, " L"] | None = None

    def __check_init__(self):
        _check_window(self.y, self.observation, self.background, self.obs_weights)
        require_spd("background_covariance (B)", self.background_covariance)
        require_spd("model_error_covariance (Q)", self.model_error_covariance)

    @property
    def window(self) -> int:
        return self.y.shape[0]

    def initial_control(self, x0: Float[Array, " n"] | None = None):
        """``(x0, zero forcing)``; `x0` defaults to the background."""
        x0 = self.background if x0 is None else x0
        return x0, jnp.zeros((self.window, x0.shape[0]), x0.dtype)

    def trajectory(self, control) -> Float[Array, "L n"]:
        x0, forcing = control
        return _forecast(self.model, x0, forcing, self.window, self.t0)

    def background_residual(self, control) -> Float[Array, " n"]:
        return _whitened_by(self.background_covariance, control[0] - self.background)

    def model_error_residuals(self, control) -> Float[Array, "L n"]:
        return _whitened_by(self.model_error_covariance, control[1].T).T

    def control_factors(self) -> tuple[Float[Array, "n n"], Float[Array, "n n"]]:
        """``(B^{1/2}, Q^{1/2})`` (lower Cholesky factors), computed once per minimisation."""
        return (
            jnp.linalg.cholesky(self.background_covariance),
            jnp.linalg.cholesky(self.model_error_covariance),
        )

    def whiten_control(self, control, factors=None):
        """``(B^{-1/2}(x0 - x_b), Q^{-1/2} η)``: the preconditioned control."""
        b_half, q_half = self.control_factors() if factors is None else factors
        x0, forcing = control
        v = jsl.solve_triangular(b_half, x0 - self.background, lower=True)
        return v, jsl.solve_triangular(q_half, forcing.T, lower=True).T

    def colour_control(self, white, factors=None):
        """Inverse of `whiten_control`."""
        b_half, q_half = self.control_factors() if factors is None else factors
        v, zeta = white
        return self.background + b_half @ v, zeta @ q_half.T

    def whitened_residuals(self, white, factors) -> Float[Array, " m"]:
        """`residuals` of ``colour_control(white)``; the prior parts are exactly ``white``."""
        v, zeta = white
        states = self.trajectory(self.colour_control(white, factors))
        return jnp.concatenate([v, zeta.ravel(), self.observation_residuals(states).ravel()])

    def observation_residuals(self, states: Float[Array, "L n"]) -> Float[Array, "L p"]:
        return _observation_residuals(
            self.observation, self.y, states, self.first_cycle, self.obs_weights
        )

    def residuals(self, control) -> Float[Array, " m"]:
        return jnp.concatenate(
            [
                self.background_residual(control),
                self.model_error_residuals(control).ravel(),
                self.observation_residuals(self.trajectory(control)).ravel(),
            ]
        )

    def background_term(self, control) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.background_residual(control) ** 2)

    def model_error_term(self, control) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.model_error_residuals(control) ** 2)

    def observation_term(self, control) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.observation_residuals(self.trajectory(control)) ** 2)

    def __call__(self, control) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.residuals(control) ** 2)


def _check_window(y, observation, background, obs_weights=None):
    if y.ndim != 2 or y.shape[0] < 1:
        raise ValueError(
            f"`y` must hold the window's observations, shape (window >= 1, p), got {y.shape}."
        )
    if y.shape[1] != observation.obs_size:
        raise ValueError(f"`y` has {y.shape[1]} columns, the operator {observation.obs_size}.")
    if background.shape != (observation.state_size,):
        raise ValueError(
            f"`background` must have shape ({observation.state_size},), got {background.shape}."
        )
    if obs_weights is not None and obs_weights.shape != (y.shape[0],):
        raise ValueError(
            f"`obs_weights` must have one weight per cycle, shape ({y.shape[0]},), "
            f"got {obs_weights.shape}."
        )


def _forecast(model, x0, forcing, window, t0):
    """States after 1..window cycles, adding ``forcing[k]`` after cycle k if given."""

    def step(x, inputs):
        k, eta = inputs
        x = model(x, t0 + k * model.cycle_length)
        x = x if eta is None else x + eta
        return x, x

    _, states = jax.lax.scan(step, x0, (jnp.arange(window), forcing))
    return states


def _observation_residuals(observation, y, states, first_cycle, obs_weights=None):
    y = check_observations(y)

    def one(k, y_k, x_k):
        operator = observation.at_cycle(first_cycle + k)
        mask = observed_mask(y_k)
        innovation = jnp.where(mask, y_k - operator(x_k), 0.0)
        return operator.error.whiten(innovation, mask)

    residuals = jax.vmap(one)(jnp.arange(y.shape[0]), y, states)
    if obs_weights is None:
        return residuals
    return jnp.sqrt(obs_weights)[:, None] * residuals

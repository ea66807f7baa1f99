"""Variational cost functionals as modules: ``J(control) -> scalar`` and its pieces."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, Int

from .._checks import as_float_array, require_positive, require_spd
from .._parameters import check_learnt, partition_learnt, with_learnt
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


class WithModelParameters(eqx.Module):
    r"""A 4D-Var cost whose control also holds parameters of the model: online learning.

    With ``θ`` the flat vector of the model's leaves that `where` selects (e.g. the
    forcing, a network's weights) and ``M_θ`` the model with those leaves set to ``θ``,

    $$J(c, θ) = J_{\text{cost}}(c;\ M_θ) + \tfrac12\|θ - θ_b\|^2_{P^{-1}},
      \qquad P = \operatorname{diag}(σ^2),$$

    where ``c`` is the wrapped cost's own control (``x0`` for [`StrongFourDVar`][],
    ``(x0, η)`` for [`WeakFourDVar`][]). Minimising it estimates the state and the
    parameters together from one window's observations; cycling windows with ``θ_b``
    set to the previous window's estimate learns the model online, every time new
    observations arrive. With a network correction as the parameters this is the
    online model-error correction of Farchi et al. (2021, J. Comput. Sci., section 5;
    2023, QJRMS) in its strong- and weak-constraint forms.

    The control is the pair ``(c, θ)``. The minimisers of this package work in the
    whitened control ``(wrapped cost's whitened control, (θ - θ_b)/σ)``; the
    tangent-linear and adjoint models with respect to ``θ`` come from `jax.jvp` and
    `jax.vjp` like those with respect to the state.

    **Arguments:**

    - `cost`: a [`StrongFourDVar`][] or [`WeakFourDVar`][] whose `model` holds the
      parameters.
    - `where`: selects the learnt part of ``cost.model``, as in `equinox.tree_at`
      (``lambda m: m.dynamics.forcing``, ``lambda m: m.correction``); ``None``: every
      floating-point array leaf of the model.
    - `parameter_background`: ``θ_b``, default the model's current values.
    - `parameter_std`: ``σ`` > 0, a scalar or one per parameter: the prior (background)
      uncertainty of the parameters, i.e. how far one window may move them.

    !!! cite "References"
        Farchi, Bocquet, Laloyaux, Bonavita and Malartic (2021), A comparison of combined
        data assimilation and machine learning methods for offline and online model
        error correction, *J. Comput. Sci.* 55, 101468.
        Farchi, Chrust, Bocquet, Laloyaux and Bonavita (2023), Online model error
        correction with neural networks in the incremental 4D-Var framework, *J. Adv.
        Model. Earth Syst.* 15, e2022MS003474.
    """

    cost: StrongFourDVar | WeakFourDVar
    where: Callable | None = eqx.field(static=True, default=None)
    parameter_background: Float[Array, " q"] | None = None
    parameter_std: Float[Array, "*q"] = eqx.field(default=1.0, converter=as_float_array)

    def __post_init__(self):
        if self.parameter_background is None:
            check_learnt(self.cost.model, self.where)
            theta, _, _ = partition_learnt(self.cost.model, self.where)
            self.parameter_background = theta
        else:
            self.parameter_background = as_float_array(self.parameter_background)

    def __check_init__(self):
        if not isinstance(self.cost, StrongFourDVar | WeakFourDVar):
            raise ValueError(
                "`cost` must be a StrongFourDVar or WeakFourDVar (the parameters are those of "
                f"its model), got {type(self.cost).__name__}."
            )
        check_learnt(self.cost.model, self.where)
        q = self.parameter_size
        if self.parameter_background.shape != (q,):
            raise ValueError(
                f"`parameter_background` must have shape ({q},) (the {q} learnt parameters), "
                f"got {self.parameter_background.shape}."
            )
        if self.parameter_std.shape not in ((), (q,)):
            raise ValueError(
                f"`parameter_std` must be a scalar or have shape ({q},), got "
                f"{self.parameter_std.shape}."
            )
        require_positive(
            "parameter_std", self.parameter_std, "It is the parameters' background std σ > 0."
        )

    @property
    def parameter_size(self) -> int:
        return partition_learnt(self.cost.model, self.where)[0].shape[0]

    @property
    def window(self) -> int:
        return self.cost.window

    def with_parameters(self, theta: Float[Array, " q"]) -> StrongFourDVar | WeakFourDVar:
        """The wrapped cost with its model's parameters set to `theta`."""
        model = with_learnt(self.cost.model, self.where, theta)
        return eqx.tree_at(lambda cost: cost.model, self.cost, model)

    def initial_control(self, x0: Float[Array, " n"] | None = None):
        """``(wrapped cost's initial control, θ_b)``; `x0` defaults to the background."""
        x0 = self.cost.background if x0 is None else x0
        inner = self.cost.initial_control(x0) if isinstance(self.cost, WeakFourDVar) else x0
        return inner, self.parameter_background

    def parameter_residual(self, theta: Float[Array, " q"]) -> Float[Array, " q"]:
        return (theta - self.parameter_background) / self.parameter_std

    def trajectory(self, control) -> Float[Array, "L n"]:
        inner, theta = control
        return self.with_parameters(theta).trajectory(inner)

    def control_factors(self):
        """The wrapped cost's factors (``P`` is diagonal: nothing to factorise)."""
        return self.cost.control_factors()

    def whiten_control(self, control, factors=None):
        inner, theta = control
        return self.cost.whiten_control(inner, factors), self.parameter_residual(theta)

    def colour_control(self, white, factors=None):
        inner, omega = white
        theta = self.parameter_background + self.parameter_std * omega
        return self.cost.colour_control(inner, factors), theta

    def whitened_residuals(self, white, factors) -> Float[Array, " m"]:
        """`residuals` of ``colour_control(white)``; the parameter part is exactly ω."""
        inner, omega = white
        theta = self.parameter_background + self.parameter_std * omega
        residuals = self.with_parameters(theta).whitened_residuals(inner, factors)
        return jnp.concatenate([residuals, jnp.broadcast_to(omega, theta.shape)])

    def residuals(self, control) -> Float[Array, " m"]:
        inner, theta = control
        return jnp.concatenate(
            [self.with_parameters(theta).residuals(inner), self.parameter_residual(theta)]
        )

    def parameter_term(self, control) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.parameter_residual(control[1]) ** 2)

    def background_term(self, control) -> Float[Array, ""]:
        return self.cost.background_term(control[0])

    def model_error_term(self, control) -> Float[Array, ""]:
        if not isinstance(self.cost, WeakFourDVar):
            return jnp.zeros(())
        return self.cost.model_error_term(control[0])

    def observation_term(self, control) -> Float[Array, ""]:
        inner, theta = control
        return self.with_parameters(theta).observation_term(inner)

    def __call__(self, control) -> Float[Array, ""]:
        return 0.5 * jnp.sum(self.residuals(control) ** 2)

"""A stochastic recharge oscillator of ENSO with state-dependent noise (Jin 1997).

Two variables, in the units of the recharge-oscillator literature (time in months):

- ``T``: the eastern equatorial Pacific (Niño-3-like) SST anomaly, in K;
- ``h``: the western Pacific thermocline-depth anomaly, in m.

The Itô SDE (Jin 1997; with the state-dependent noise of Jin et al. 2007 and the
Community Recharge Oscillator, Vialard et al. 2025)::

    dT = (R T + F1 h) dt + σ_T (1 + B H(T) T) dW_T
    dh = (-ε h - F2 T) dt + σ_h dW_h

``H`` is the Heaviside step: westerly wind bursts grow with a warm east Pacific, so
the noise on ``T`` is stronger during El Niño than during La Niña. That asymmetry is
what gives ``T`` its positive skewness and its rare, strong El Niños; with ``B = 0``
(additive noise) the linear model is symmetric (skewness 0).

The deterministic part is linear, ``d(T, h)/dt = A (T, h)`` with
``A = [[R, F1], [-F2, -ε]]``: eigenvalues ``λ = (R - ε)/2 ± i ω``,
``ω² = F1 F2 - (R + ε)²/4`` (see [`RechargeOscillator.eigenvalues`][]).

Default parameters (per month): ``R = -0.02``, ``ε = 0.04``, ``F1 = 0.02 K m⁻¹``,
``F2 = 0.87 m K⁻¹``: a damped oscillation of period ≈ 48 months (4 years) and e-folding
time ≈ 33 months, the values of Burgers, Jin and van Oldenborgh (2005) and the CRO
(Vialard et al. 2025) in order of magnitude, chosen here rather than fitted. The noise
``σ_T = 0.15 K month^-1/2``, ``σ_h = 1.25 m month^-1/2``, ``B = 1.5 K⁻¹`` (our
tuning, Euler–Maruyama with ``dt = 0.1`` month) gives std(T) ≈ 0.9-1.05 K, skewness
≈ 0.8-1.0 and El Niños up to 7-8 K in 1000 years, near the observed Niño-3 index
(std ≈ 0.9 K, skewness ≈ 0.9). With ``B = 0`` and the same ``σ``: std ≈ 0.7 K,
skewness ≈ 0.

[`euler_maruyama`][] integrates it (or any dynamics with a `noise_amplitude`) with
explicit `jax.random` keys.

!!! cite "References"
    Jin, F.-F. (1997), An equatorial ocean recharge paradigm for ENSO. Part I:
    Conceptual model, *J. Atmos. Sci.* 54, 811-829.
    Burgers, G., Jin, F.-F. and van Oldenborgh, G. J. (2005), The simplest ENSO
    recharge oscillator, *Geophys. Res. Lett.* 32, L13706.
    Jin, F.-F., Lin, L., Timmermann, A. and Zhao, J. (2007), Ensemble-mean dynamics of
    the ENSO recharge oscillator under state-dependent stochastic forcing, *Geophys.
    Res. Lett.* 34, L03807.
    Vialard, J., Jin, F.-F., McPhaden, M. J. et al. (2025), The Community Recharge
    Oscillator (CRO), *Geosci. Model Dev.*
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import as_float_array, require_count
from ._base import AbstractDynamics


class RechargeOscillator(AbstractDynamics):
    """The stochastic recharge oscillator ``x = (T, h)`` (see the module docstring).

    **Arguments** (all per month; arrays, so they can be learnt):

    - `growth`: ``R``, the growth rate of ``T`` (month⁻¹, usually < 0).
    - `damping`: ``ε``, the damping of ``h`` (month⁻¹).
    - `thermocline_feedback`: ``F1``, the effect of ``h`` on ``T`` (K m⁻¹ month⁻¹).
    - `recharge`: ``F2``, the effect of ``T`` on ``h`` (m K⁻¹ month⁻¹).
    - `noise_t`, `noise_h`: ``σ_T`` (K month^-1/2) and ``σ_h`` (m month^-1/2), ≥ 0.
    - `multiplicative`: ``B`` (K⁻¹, ≥ 0), the state dependence of the noise on ``T``
      (0: additive noise).
    """

    growth: Float[Array, ""] = eqx.field(converter=as_float_array, default=-0.02)
    damping: Float[Array, ""] = eqx.field(converter=as_float_array, default=0.04)
    thermocline_feedback: Float[Array, ""] = eqx.field(converter=as_float_array, default=0.02)
    recharge: Float[Array, ""] = eqx.field(converter=as_float_array, default=0.87)
    noise_t: Float[Array, ""] = eqx.field(converter=as_float_array, default=0.15)
    noise_h: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.25)
    multiplicative: Float[Array, ""] = eqx.field(converter=as_float_array, default=1.5)

    def __check_init__(self):
        for name in ("noise_t", "noise_h", "multiplicative"):
            value = getattr(self, name)
            if value.ndim != 0:
                raise ValueError(f"`{name}` must be a scalar, got shape {value.shape}.")
            try:
                bad = bool(value < 0)
            except jax.errors.ConcretizationTypeError:  # traced: cannot check here
                bad = False
            if bad:
                raise ValueError(f"`{name}` must be >= 0 (a noise amplitude), got {value}.")

    @property
    def state_size(self) -> int:
        return 2

    def matrix(self) -> Float[Array, "2 2"]:
        """The linear operator ``A`` of the deterministic part, ``dx/dt = A x``."""
        return jnp.stack(
            [
                jnp.stack([self.growth, self.thermocline_feedback]),
                jnp.stack([-self.recharge, -self.damping]),
            ]
        )

    def eigenvalues(self) -> tuple[Float[Array, ""], Float[Array, ""]]:
        """``(decay, ω)``: ``λ = (R - ε)/2 ± i ω`` when the oscillation is underdamped.

        ``ω = sqrt(F1 F2 - (R + ε)²/4)`` (NaN if the deterministic part does not
        oscillate); the period is ``2π / ω`` months.
        """
        decay = 0.5 * (self.growth - self.damping)
        omega_squared = (
            self.thermocline_feedback * self.recharge - 0.25 * (self.growth + self.damping) ** 2
        )
        omega = jnp.where(omega_squared > 0, jnp.sqrt(jnp.abs(omega_squared)), jnp.nan)
        return decay, omega

    def tendency(self, t, x: Float[Array, " 2"], args=None) -> Float[Array, " 2"]:
        T, h = x[0], x[1]
        return jnp.stack(
            [
                self.growth * T + self.thermocline_feedback * h,
                -self.damping * h - self.recharge * T,
            ]
        )

    def noise_amplitude(self, t, x: Float[Array, " 2"], args=None) -> Float[Array, " 2"]:
        """Diagonal diffusion ``(σ_T (1 + B H(T) T), σ_h)`` of the Itô SDE."""
        T = x[0]
        return jnp.stack(
            [
                self.noise_t * (1.0 + self.multiplicative * jnp.maximum(T, 0.0)),
                self.noise_h * jnp.ones_like(T),
            ]
        )

    def domain_length(self) -> float:
        return float("inf")

    def default_initial_state(self) -> Float[Array, " 2"]:
        return jnp.array([0.5, 0.0])


def euler_maruyama(
    dynamics: AbstractDynamics,
    x0: Float[Array, " n"],
    key: PRNGKeyArray,
    *,
    dt: float,
    steps: int,
    save_every: int = 1,
    t0: float | Float[Array, ""] = 0.0,
) -> Float[Array, "K n"]:
    """Integrate ``dx = f(t, x) dt + g(t, x) dW`` (Itô, diagonal ``g``) with Euler–Maruyama.

    ``f`` is ``dynamics.tendency``; ``g`` is ``dynamics.noise_amplitude`` (zero if the
    dynamics has none, then this is the explicit Euler method). Step ``j`` draws its
    Wiener increment from ``fold_in(key, j)``, so a run split into pieces (passing `t0`
    and the last state) is not bit-identical to one run, but a fixed `key` always gives
    the same path.

    **Arguments:**

    - `dynamics`, `x0`: the model and the initial state ``(n,)``.
    - `key`: the only randomness.
    - `dt`: the time step (the dynamics' time unit), > 0.
    - `steps`: number of steps, a multiple of `save_every`.
    - `save_every`: keep every `save_every`-th state.
    - `t0`: the start time.

    **Returns:** the states after ``save_every, 2 save_every, ..., steps`` steps, shape
    ``(steps // save_every, n)`` (the initial state is not included).
    """
    require_count("steps", steps, "Euler-Maruyama steps")
    require_count("save_every", save_every, "steps between saved states")
    if steps % save_every:
        raise ValueError(f"`steps` ({steps}) must be a multiple of `save_every` ({save_every}).")
    if not dt > 0:
        raise ValueError(f"`dt` must be > 0, got {dt!r}.")
    noise = getattr(dynamics, "noise_amplitude", None)
    sqrt_dt = jnp.sqrt(jnp.asarray(dt, dtype=jnp.result_type(float)))

    def step(x, j):
        t = t0 + j * dt
        drift = dynamics.tendency(t, x)
        if noise is None:
            return x + dt * drift
        increment = sqrt_dt * jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
        return x + dt * drift + noise(t, x) * increment

    def block(x, first):
        x, _ = jax.lax.scan(lambda y, j: (step(y, j), None), x, first + jnp.arange(save_every))
        return x, x

    _, states = jax.lax.scan(block, x0, save_every * jnp.arange(steps // save_every))
    return states

r"""Bounded fields: a synthetic sea-ice-like generator and statistics at the bounds.

Sea-ice concentration lies in ``[0, 1]`` and sits *exactly* on a bound over large
areas (open ocean at 0, pack ice at 1), with a narrow marginal ice zone in between;
thickness is ``≥ 0`` and exactly 0 where there is no ice. Finn et al. (2024) model such
data with a censored Gaussian in data space ([`hybridda.generative.CensoredGaussian`][]:
the mass beyond a bound sits on the bound). This module holds what the data side of that
needs:

- [`SeaIceFields`][]: a generator of such fields, nothing downloaded. Each draw is a
  Gaussian random field with a prescribed power spectrum, sheared by a random zonal
  flow (filaments), added to a meridional gradient (pack ice to the north, open ocean
  to the south, the ice edge at a random latitude) and mapped linearly onto ``[0, 1]``
  and clipped: large areas exactly at 0 and 1. Thickness is a log-normal field
  correlated with the first, times the concentration: 0 exactly where the concentration
  is 0. The domain is a zonal channel: periodic in x, not in y.
- [`channel_values`][]: per-channel values (bounds, stds) broadcast to one value per
  variable of a flattened field, the layout of the VAE's likelihoods.
- [`bound_fractions`][]: the fraction of values below, exactly on, between and above
  the bounds, per channel (the paper's "marginal ice zone" is the fraction strictly
  between).

```python
fields = jax.vmap(SeaIceFields(grid=(32, 32)))(jax.random.split(key, 1000))  # (1000, 2, 32, 32)
lower, upper = SeaIceFields.lower, SeaIceFields.upper                         # (0, 0), (1, inf)
likelihood = CensoredGaussian(channel_values(lower, (32, 32)), channel_values(upper, (32, 32)))
```

!!! cite "Reference"
    Finn, Durand, Farchi, Bocquet, Rampal and Carrassi (2024), Towards diffusion models
    for large-scale sea-ice modelling, *ICML 2024 workshop on machine learning for Earth
    system modelling* (arXiv 2406.18417).
"""

import math
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._checks import concrete


class SeaIceFields(eqx.Module):
    r"""A generator of bounded two-channel fields standing in for sea ice.

    Called with a key, it returns one field ``(2, ny, nx)``: channel 0 the concentration
    ``c ∈ [0, 1]``, channel 1 the thickness ``h ≥ 0``. With ``g``, ``g'`` independent
    unit-variance Gaussian random fields of spectrum
    $P(k) \propto (1 + (k\ell)^2)^{-\beta/2}$ (``k`` in radians per grid step,
    ``ℓ = correlation_length`` grid steps, ``β = spectral_slope``), each sheared by the
    same random zonal displacement ``d(y) = a sin(2π y / ny + φ)`` (``a`` uniform in
    ``[0, shear]`` grid steps):

    $$ s = \frac{y - y_e}{\text{edge\_scale}} + \text{noise}\; g, \quad
       c = \text{clip}\Big(\frac{1}{2} + \frac{s}{\text{marginal\_width}}, 0, 1\Big), $$

    $$ h = c\, \text{thickness\_mean}\, \exp\big(\text{thickness\_spread}\,
       (\rho g + \sqrt{1-\rho^2}\, g') - \text{thickness\_spread}^2/2\big), $$

    with the ice edge ``y_e`` uniform in the middle half of the rows. The fields are
    periodic in x only. The defaults give about 36 % of the concentration at 0, 32 % at
    1 and 32 % in the marginal zone on 16 × 16 (40 %, 37 %, 23 % on 32 × 32).

    **Arguments:** `grid` ``(ny, nx)`` (each ≥ 4); `correlation_length` ``ℓ > 0`` and
    `spectral_slope` ``β > 0``; `noise` (amplitude of ``g`` in ``s``, ≥ 0); `edge_scale`
    (rows per unit of ``s``, > 0); `marginal_width` (> 0); `shear` (≥ 0, grid steps);
    `thickness_mean` (> 0, metres), `thickness_spread` (≥ 0), `thickness_correlation`
    ``ρ ∈ [-1, 1]``.
    """

    grid: tuple[int, ...] = eqx.field(static=True, default=(32, 32))
    correlation_length: float = eqx.field(static=True, default=3.0)
    spectral_slope: float = eqx.field(static=True, default=3.0)
    noise: float = eqx.field(static=True, default=1.0)
    edge_scale: float = eqx.field(static=True, default=8.0)
    marginal_width: float = eqx.field(static=True, default=1.0)
    shear: float = eqx.field(static=True, default=4.0)
    thickness_mean: float = eqx.field(static=True, default=1.5)
    thickness_spread: float = eqx.field(static=True, default=0.5)
    thickness_correlation: float = eqx.field(static=True, default=0.7)

    #: Lower bounds of the two channels (concentration, thickness).
    lower: ClassVar[tuple[float, float]] = (0.0, 0.0)
    #: Upper bounds of the two channels (thickness has none).
    upper: ClassVar[tuple[float, float]] = (1.0, math.inf)
    channels: ClassVar[int] = 2

    def __check_init__(self):
        grid = self.grid
        if (
            not isinstance(grid, tuple)
            or len(grid) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 4 for n in grid)
        ):
            raise ValueError(
                f"`grid` must be a pair of integers (ny, nx), each >= 4, got {grid!r}."
            )
        positive = {
            "correlation_length": self.correlation_length,
            "spectral_slope": self.spectral_slope,
            "edge_scale": self.edge_scale,
            "marginal_width": self.marginal_width,
            "thickness_mean": self.thickness_mean,
        }
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")
        non_negative = {
            "noise": self.noise,
            "shear": self.shear,
            "thickness_spread": self.thickness_spread,
        }
        for name, value in non_negative.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        rho = self.thickness_correlation
        if not (isinstance(rho, int | float) and -1 <= rho <= 1):
            raise ValueError(f"`thickness_correlation` must lie in [-1, 1], got {rho!r}.")

    def _spectral_filter(self) -> np.ndarray:
        """``sqrt(P(k))`` on the ``rfft2`` grid, normalised to give unit variance."""
        ny, nx = self.grid
        ky = 2 * np.pi * np.fft.fftfreq(ny)[:, None]
        kx = 2 * np.pi * np.fft.rfftfreq(nx)[None, :]
        power = (1 + (ky**2 + kx**2) * self.correlation_length**2) ** (-self.spectral_slope / 2)
        power[0, 0] = 0.0  # zero mean
        # White noise of unit variance has E|W_k|^2 = ny nx at every k; Parseval over the
        # full (two-sided) spectrum: var = sum_k P(k) / (ny nx).
        full = np.concatenate([power, power[:, 1 : (nx - 1) // 2 + 1]], axis=1)
        return np.sqrt(power / (full.sum() / (ny * nx)))

    def _random_field(self, key: PRNGKeyArray, dtype) -> Array:
        ny, nx = self.grid
        white = jax.random.normal(key, (ny, nx), dtype)
        spectrum = jnp.fft.rfft2(white) * jnp.asarray(self._spectral_filter(), dtype)
        return jnp.fft.irfft2(spectrum, s=(ny, nx))

    def _shear(self, fields: Array, key: PRNGKeyArray) -> Array:
        """Displace every row of `fields` ``(..., ny, nx)`` zonally by ``d(y)`` (spectrally)."""
        ny, nx = self.grid
        amplitude_key, phase_key = jax.random.split(key)
        amplitude = self.shear * jax.random.uniform(amplitude_key, (), fields.dtype)
        phase = 2 * jnp.pi * jax.random.uniform(phase_key, (), fields.dtype)
        rows = jnp.arange(ny, dtype=fields.dtype)
        displacement = amplitude * jnp.sin(2 * jnp.pi * rows / ny + phase)
        kx = 2 * jnp.pi * jnp.fft.rfftfreq(nx).astype(fields.dtype)
        shift = jnp.exp(-1j * kx[None, :] * displacement[:, None])
        shift = shift.reshape((1,) * (fields.ndim - 2) + shift.shape)
        return jnp.fft.irfft(jnp.fft.rfft(fields, axis=-1) * shift, n=nx, axis=-1)

    def __call__(self, key: PRNGKeyArray) -> Float[Array, "2 ny nx"]:
        ny, nx = self.grid
        dtype = jnp.result_type(float)
        ice_key, thick_key, shear_key, edge_key = jax.random.split(key, 4)
        g = self._random_field(ice_key, dtype)
        g_thick = self._random_field(thick_key, dtype)
        g, g_thick = self._shear(jnp.stack([g, g_thick]), shear_key)
        edge = jax.random.uniform(edge_key, (), dtype, 0.25 * ny, 0.75 * ny)
        rows = jnp.arange(ny, dtype=dtype)[:, None]
        signal = (rows - edge) / self.edge_scale + self.noise * g
        concentration = jnp.clip(0.5 + signal / self.marginal_width, 0.0, 1.0)
        rho = self.thickness_correlation
        log_thickness = self.thickness_spread * (rho * g + math.sqrt(1 - rho**2) * g_thick)
        thickness = (
            concentration
            * self.thickness_mean
            * jnp.exp(log_thickness - 0.5 * self.thickness_spread**2)
        )
        return jnp.stack([concentration, thickness])


def channel_values(
    values: ArrayLike | Sequence[float], grid: tuple[int, ...]
) -> Float[Array, " n"]:
    """One value per channel (a bound, a std) repeated over the grid and flattened.

    For a field ``(channels, *grid)`` flattened in C order (the layout of
    [`hybridda.generative.ConvEncoder`][]), entry ``i`` of the result is the value of
    the channel that variable ``i`` belongs to; ``±inf`` (no bound) is kept. Pass the
    result as a per-variable `lower`, `upper` or `std` of a likelihood.
    """
    array = jnp.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(
            f"`values` must hold one value per channel (a vector), got shape {array.shape}."
        )
    size = int(np.prod(grid))
    if size < 1:
        raise ValueError(f"`grid` must have at least one point, got {grid!r}.")
    return jnp.repeat(array, size)


class BoundFractions(NamedTuple):
    """What [`bound_fractions`][] returns, each ``(channels,)``, summing to 1 per channel:
    `below` ``x < lower``, `at_lower` ``x == lower``, `between` ``lower < x < upper``
    (the marginal zone), `at_upper` ``x == upper``, `above` ``x > upper``."""

    below: Float[Array, " channels"]
    at_lower: Float[Array, " channels"]
    between: Float[Array, " channels"]
    at_upper: Float[Array, " channels"]
    above: Float[Array, " channels"]


def bound_fractions(
    fields: Float[ArrayLike, "..."],
    lower: ArrayLike | Sequence[float],
    upper: ArrayLike | Sequence[float],
) -> BoundFractions:
    """Fractions of the values of each channel below, on, between and above its bounds.

    "On a bound" means exactly equal (a censored model puts finite mass there; a
    continuous one puts none, unless its output is clipped). Values are pooled over the
    batch and the grid.

    **Arguments:** `fields` ``(..., channels, ny, nx)``; `lower`, `upper`: one bound per
    channel (``-inf`` / ``inf`` for none), ``lower < upper``.
    """
    fields = jnp.asarray(fields)
    lower, upper = jnp.asarray(lower, fields.dtype), jnp.asarray(upper, fields.dtype)
    if fields.ndim < 3:
        raise ValueError(
            f"`fields` must have shape (..., channels, ny, nx), got shape {fields.shape}."
        )
    channels = fields.shape[-3]
    for name, bound in (("lower", lower), ("upper", upper)):
        if bound.shape != (channels,):
            raise ValueError(
                f"`{name}` must hold one bound per channel, shape ({channels},), got "
                f"shape {bound.shape}."
            )
    low, high = concrete(lower), concrete(upper)
    if low is not None and high is not None and not np.all(low < high):
        raise ValueError(f"`lower` must be < `upper` for every channel, got {low} and {high}.")
    return _fractions(fields, lower, upper)


@jax.jit
def _fractions(fields, lower, upper) -> BoundFractions:
    # One compiled program (not a dozen eager operations) per shape.
    values = jnp.moveaxis(fields, -3, 0).reshape(fields.shape[-3], -1)
    lower, upper = lower[:, None], upper[:, None]

    def fraction(mask):
        return jnp.mean(mask.astype(fields.dtype), axis=-1)

    return BoundFractions(
        below=fraction(values < lower),
        at_lower=fraction(values == lower),
        between=fraction((values > lower) & (values < upper)),
        at_upper=fraction(values == upper),
        above=fraction(values > upper),
    )

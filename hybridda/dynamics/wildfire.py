r"""A stochastic cellular automaton of wildfire spread (Alexandridis et al. 2008).

Each cell of a ``(ny, nx)`` grid is *unburnt* (0), *burning* (1) or *burnt* (2). One
step of the automaton:

- a burning cell burns out: burning → burnt (a cell burns for one step);
- burnt cells stay burnt;
- an unburnt cell with burning neighbours in its Moore neighbourhood (the 8 cells
  sharing an edge or a corner) ignites; each burning neighbour ``j`` ignites it
  independently with probability (Alexandridis et al. 2008, eqs. 2-6)

$$ p_{j \to i} = \min\big(1,\ p_h\, f_i\, p_w\, p_s\big), \qquad
   p_w = e^{c_1 V} e^{c_2 V (\cos\theta - 1)}, \qquad p_s = e^{a\, \theta_s}, $$

  so that ``P(i ignites) = 1 − ∏_j (1 − p_{j→i})`` over its burning neighbours.

The factors:

- ``p_h``: the probability that a burning cell ignites a neighbour on flat ground, with
  no wind and the reference fuel (`base_probability`, 0.58 in the paper);
- ``f_i = (1 + p_veg)(1 + p_den)``: the `fuel` factor of the cell to be ignited, from
  its vegetation type and density (the paper's ``p_veg ∈ {-0.3, 0, 0.4}`` for
  agricultural land, thickets and pine, ``p_den ∈ {-0.4, 0, 0.3}`` for sparse,
  normal and dense vegetation; 0 for a cell that cannot burn: rock, water, a road);
- ``p_w``: wind of speed ``V`` (m/s), ``θ`` the angle between the wind (the
  direction it blows *towards*) and the direction of spread from ``j`` to ``i``:
  ``p_w = e^{c_1 V}`` downwind, ``e^{(c_1 - 2 c_2) V}`` upwind (``c_1 = 0.045``,
  ``c_2 = 0.131`` s/m);
- ``p_s``: terrain slope; ``θ_s = atan((E_i − E_j) / l)`` in degrees, positive uphill,
  with ``E`` the `elevation` (m) and ``l`` the distance between the cell centres
  (`cell_size`, times √2 for a diagonal neighbour); ``a = 0.078`` per degree.

Not modelled: the paper's spotting (embers igniting distant cells) and multi-step
burning. Cells outside the grid never burn.

Conventions: the array index is ``[row, column] = [y, x]``; ``x`` points along the
columns (east), ``y`` along increasing rows. The wind direction is an angle
counter-clockwise from ``+x`` (0: the wind blows towards ``+x``, π/2: towards ``+y``).

```python
fire = random_landscape(jax.random.key(0), (32, 32))
state = random_ignition(jax.random.key(1), fire)
later = fire.run(state, jax.random.key(2), steps=8)                # one realisation
members = fire.ensemble(state, jax.random.key(3), members=50, steps=8)  # vmapped
```

!!! cite "Reference"
    Alexandridis, A., Vakalis, D., Siettos, C. I. and Bafas, G. V. (2008), A cellular
    automata model for forest fire spread prediction: the case of the wildfire that
    swept through Spetses Island in 1990, *Appl. Math. Comput.* 204, 191-201.
"""

import math
import statistics

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, Shaped

from .._checks import concrete, require_count

UNBURNT, BURNING, BURNT = 0, 1, 2
# The Moore neighbourhood: offsets (dy, dx) from a cell to its 8 neighbours.
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
# Alexandridis et al. (2008): vegetation-type and density modifiers p_veg, p_den.
VEGETATION = (-0.3, 0.0, 0.4)  # agricultural, thickets, pine
DENSITY = (-0.4, 0.0, 0.3)  # sparse, normal, dense

StateArray = Int[Array, "ny nx"]


def _require_number(name: str, value, low: float, high: float = math.inf, fix: str = ""):
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    if not low <= value <= high:
        interval = f"[{low}, {high}]" if high < math.inf else f">= {low}"
        raise ValueError(f"`{name}` must be {interval}, got {value!r}.{fix}")


class FireSpread(eqx.Module):
    r"""The stochastic fire-spread automaton on one landscape (see the module docstring).

    **Arguments:**

    - `fuel`: the fuel factor ``(1 + p_veg)(1 + p_den)`` of every cell, ``(ny, nx)``,
      finite and >= 0 (0: the cell cannot burn).
    - `elevation`: terrain height in metres, ``(ny, nx)`` like `fuel`.
    - `wind_speed`: ``V`` in m/s (>= 0); `wind_direction`: the direction the wind blows
      towards, in radians counter-clockwise from ``+x``.
    - `base_probability`: ``p_h`` in [0, 1] (0.58).
    - `cell_size`: the grid spacing in metres (> 0).
    - `wind_c1`, `wind_c2` (s/m), `slope_a` (per degree): the paper's coefficients.

    The landscape arrays are fields (batch them with `jax.vmap`, e.g. over the output of
    [`random_landscape`][]); the coefficients are static. States are integer arrays of
    ``UNBURNT`` (0), ``BURNING`` (1) and ``BURNT`` (2).
    """

    fuel: Float[Array, "ny nx"]
    elevation: Float[Array, "ny nx"]
    wind_speed: Float[Array, ""] = eqx.field(converter=lambda v: jnp.asarray(v, float))
    wind_direction: Float[Array, ""] = eqx.field(converter=lambda v: jnp.asarray(v, float))
    base_probability: float = eqx.field(static=True, default=0.58)
    cell_size: float = eqx.field(static=True, default=30.0)
    wind_c1: float = eqx.field(static=True, default=0.045)
    wind_c2: float = eqx.field(static=True, default=0.131)
    slope_a: float = eqx.field(static=True, default=0.078)

    def __check_init__(self):
        _require_number(
            "base_probability", self.base_probability, 0.0, 1.0,
            " It is the ignition probability p_h of a neighbour on flat ground.",
        )  # fmt: skip
        _require_number("cell_size", self.cell_size, 0.0, fix=" It is in metres.")
        if self.cell_size == 0:
            raise ValueError("`cell_size` must be > 0 (the grid spacing in metres), got 0.")
        for name in ("wind_c1", "wind_c2", "slope_a"):
            _require_number(name, getattr(self, name), 0.0)
        fuel, elevation = concrete(self.fuel), concrete(self.elevation)
        if fuel is not None:
            if fuel.ndim != 2 or min(fuel.shape) < 1:
                raise ValueError(f"`fuel` must be a 2-D map (ny, nx), got shape {fuel.shape}.")
            if not np.all(np.isfinite(fuel)) or fuel.min() < 0:
                raise ValueError(
                    "`fuel` (the factor (1 + p_veg)(1 + p_den)) must be finite and >= 0; "
                    "use 0 for cells that cannot burn."
                )
        if elevation is not None:
            if fuel is not None and elevation.shape != fuel.shape:
                raise ValueError(
                    f"`elevation` must be on the grid of `fuel` {fuel.shape}, got shape "
                    f"{elevation.shape}."
                )
            if not np.all(np.isfinite(elevation)):
                raise ValueError("`elevation` holds non-finite values.")
        speed, direction = concrete(self.wind_speed), concrete(self.wind_direction)
        if speed is not None and (speed.ndim != 0 or not np.isfinite(speed) or speed < 0):
            raise ValueError(
                f"`wind_speed` must be a scalar >= 0 (m/s), got {self.wind_speed!r}; give the "
                "direction in `wind_direction`."
            )
        if direction is not None and (direction.ndim != 0 or not np.isfinite(direction)):
            raise ValueError(
                f"`wind_direction` must be a finite scalar (radians), got {self.wind_direction!r}."
            )

    @property
    def grid_shape(self) -> tuple[int, int]:
        return self.fuel.shape[-2:]

    def spread_probabilities(self) -> Float[Array, "8 ny nx"]:
        r"""``p[d, i]``: the probability that cell ``i`` is ignited by its neighbour in
        direction ``NEIGHBOURS[d]`` when that neighbour burns (the formula of the module
        docstring, clipped to [0, 1])."""
        dy, dx = (np.array(offsets, float)[:, None, None] for offsets in np.transpose(NEIGHBOURS))
        distance = np.hypot(dy, dx)
        # Spread goes from the neighbour at offset (dy, dx) to the cell: along -(dx, dy).
        direction, speed = self.wind_direction, self.wind_speed
        cos_theta = -(dx * jnp.cos(direction) + dy * jnp.sin(direction)) / distance
        wind = jnp.exp(self.wind_c1 * speed + self.wind_c2 * speed * (cos_theta - 1.0))
        # Outside the grid nothing burns; edge padding keeps the slope finite there.
        source = _neighbours(self.elevation)
        rise = (self.elevation[None] - source) / (self.cell_size * distance)
        slope = jnp.exp(self.slope_a * jnp.degrees(jnp.arctan(rise)))
        return jnp.clip(self.base_probability * self.fuel[None] * wind * slope, 0.0, 1.0)

    def check_state(self, state: Int[ArrayLike, "ny nx"]) -> StateArray:
        """The state as an integer array on this grid; a `ValueError` if its shape or
        dtype is wrong, or (outside `jit`, where they are known) its values."""
        state = jnp.asarray(state)
        if state.shape != tuple(self.grid_shape):
            raise ValueError(
                f"`state` must be on the landscape's grid {tuple(self.grid_shape)}, got shape "
                f"{state.shape}."
            )
        if not jnp.issubdtype(state.dtype, jnp.integer):
            raise ValueError(
                f"`state` must hold integers 0 (unburnt), 1 (burning), 2 (burnt), got dtype "
                f"{state.dtype}; build one with `FireSpread.ignite(mask)`."
            )
        values = concrete(state)
        if values is not None and (values.min() < UNBURNT or values.max() > BURNT):
            raise ValueError(
                "`state` must hold only 0 (unburnt), 1 (burning) and 2 (burnt), got values "
                f"from {values.min()} to {values.max()}."
            )
        # Traced values are not checked: an `eqx.error_if` here would put a host callback
        # in every compiled program of the automaton, and XLA programs with callbacks are
        # never stored in JAX's persistent compilation cache (measured: 7 s of recompiling
        # for each run of the paper script). The automaton itself only makes valid states.
        return state

    def ignite(self, mask: Shaped[ArrayLike, "ny nx"]) -> StateArray:
        """A state with the cells of the boolean `mask` burning, all others unburnt."""
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_ or mask.shape != tuple(self.grid_shape):
            raise ValueError(
                f"`mask` must be a boolean map on the grid {tuple(self.grid_shape)}, got "
                f"{mask.dtype} of shape {mask.shape}."
            )
        return jnp.where(mask, BURNING, UNBURNT).astype(jnp.int8)

    def ignition_probability(self, state: Int[ArrayLike, "ny nx"]) -> Float[Array, "ny nx"]:
        """The probability that each cell is burning after one step from `state`: 0 for
        cells already burning or burnt, ``1 − ∏_j (1 − p_{j→i})`` for unburnt ones."""
        return _ignition_probability(self.spread_probabilities(), self.check_state(state))

    def step(self, state: Int[ArrayLike, "ny nx"], key: PRNGKeyArray) -> StateArray:
        """One step of the automaton: burning cells burn out, unburnt cells ignite with
        their [`ignition_probability`][] (one uniform draw per cell from `key`)."""
        state = self.check_state(state)
        uniforms = _uniform(key, state.shape, self.fuel.dtype)
        return _update(self.spread_probabilities(), state, uniforms)

    def trajectory(
        self, state: Int[ArrayLike, "ny nx"], key: PRNGKeyArray, steps: int
    ) -> Int[Array, "steps_plus_one ny nx"]:
        """The states at steps ``0..steps``: one `lax.scan` over the steps, with the
        uniform draws of all steps taken from `key` beforehand."""
        require_count("steps", steps, "automaton steps")
        state = self.check_state(state)
        spread = self.spread_probabilities()  # the same at every step
        uniforms = _uniform(key, (steps, *state.shape), spread.dtype)

        def body(current, step_uniforms):
            new = _update(spread, current, step_uniforms)
            return new, new

        _, states = jax.lax.scan(body, state, uniforms)
        return jnp.concatenate([state[None], states])

    def run(self, state: Int[ArrayLike, "ny nx"], key: PRNGKeyArray, steps: int) -> StateArray:
        """The state after `steps` steps (the last entry of [`trajectory`][], same draws)."""
        require_count("steps", steps, "automaton steps")
        state = self.check_state(state)
        spread = self.spread_probabilities()
        uniforms = _uniform(key, (steps, *state.shape), spread.dtype)
        final, _ = jax.lax.scan(lambda c, u: (_update(spread, c, u), None), state, uniforms)
        return final

    def ensemble(
        self, state: Int[ArrayLike, "ny nx"], key: PRNGKeyArray, members: int, steps: int
    ) -> Int[Array, "members ny nx"]:
        """`members` independent realisations of [`run`][] from the same `state`:
        member ``i`` is ``run(state, jax.random.split(key, members)[i], steps)``
        (`jax.vmap` over the keys)."""
        require_count("members", members, "ensemble members")
        keys = jax.random.split(key, members)
        return jax.vmap(lambda k: self.run(state, k, steps))(keys)


def _ignition_probability(spread: Array, state: Array) -> Array:
    burning = _neighbours(state == BURNING, False)  # (8, ny, nx)
    survive = jnp.prod(1.0 - spread * burning, axis=0)
    return jnp.where(state == UNBURNT, 1.0 - survive, 0.0)


def _neighbours(field: Array, fill=None) -> Array:
    """``out[d, i, j] = field[i + dy_d, j + dx_d]`` for the 8 ``NEIGHBOURS``; outside the
    grid `fill`, or the nearest edge value when `fill` is ``None``."""
    if fill is None:
        padded = jnp.pad(field, 1, mode="edge")
    else:
        padded = jnp.pad(field, 1, constant_values=fill)
    ny, nx = field.shape
    return jnp.stack([padded[1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx] for dy, dx in NEIGHBOURS])


def _uniform(key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """U[0, 1) draws of `shape`, drawn flat and reshaped: the same distribution, but XLA
    on CPU compiles a flat draw in a fraction of a second where a multi-dimensional one
    under `vmap` took seconds (measured with JAX 0.10, partitionable threefry)."""
    return jax.random.uniform(key, (math.prod(shape),), dtype).reshape(shape)


def _update(spread: Array, state: Array, uniforms: Array) -> Array:
    """One step from a checked `state` with the precomputed spread probabilities and one
    uniform draw per cell: a cell ignites if its draw is below its ignition probability."""
    ignite = uniforms < _ignition_probability(spread, state)
    new = jnp.where(state == BURNING, BURNT, jnp.where(ignite, BURNING, state))
    return new.astype(state.dtype)


def burnt_area(state: Int[ArrayLike, "*batch ny nx"]) -> Bool[Array, "*batch ny nx"]:
    """The cells reached by the fire: burning or burnt."""
    return jnp.asarray(state) >= BURNING


# ---------------------------------------------------------------------------- landscapes


def smooth_field(
    key: PRNGKeyArray, shape: tuple[int, int], correlation_length: float, count: int = 1
) -> Float[Array, "count ny nx"]:
    """`count` standardised (zero mean, unit std over the grid) Gaussian random fields:
    white noise filtered by a Gaussian kernel of std `correlation_length` cells (via FFT,
    on a doubly periodic grid of twice the size, cropped, so the fields are not periodic)."""
    if correlation_length <= 0:
        raise ValueError(f"`correlation_length` must be > 0 cells, got {correlation_length!r}.")
    big = (2 * shape[0], 2 * shape[1])
    noise = jax.random.normal(key, (count * big[0] * big[1],)).reshape(count, *big)  # flat
    ky = jnp.fft.fftfreq(big[0])[:, None]
    kx = jnp.fft.rfftfreq(big[1])[None, :]
    kernel = jnp.exp(-2.0 * (math.pi * correlation_length) ** 2 * (kx**2 + ky**2))
    field = jnp.fft.irfft2(jnp.fft.rfft2(noise) * kernel[None], big)[:, : shape[0], : shape[1]]
    mean = field.mean(axis=(1, 2), keepdims=True)
    return (field - mean) / (field.std(axis=(1, 2), keepdims=True) + 1e-12)


def random_landscape(
    key: PRNGKeyArray,
    shape: tuple[int, int],
    *,
    correlation_length: float = 4.0,
    relief: float = 40.0,
    nonburnable_fraction: float = 0.1,
    max_wind_speed: float = 8.0,
    base_probability: float = 0.58,
    cell_size: float = 30.0,
) -> FireSpread:
    """A random landscape for [`FireSpread`][]: fuel, elevation and wind.

    - Vegetation type and density: terciles of two independent smooth random fields
      ([`smooth_field`][]) pick ``p_veg`` from ``VEGETATION`` and ``p_den`` from
      ``DENSITY``; the fuel factor is ``(1 + p_veg)(1 + p_den)`` (0.42 … 1.82).
    - Non-burnable patches (fuel 0) where a third field is below its
      `nonburnable_fraction` quantile (for a Gaussian field).
    - Elevation: `relief` metres times a fourth smooth field.
    - Wind: speed uniform in ``[0, max_wind_speed]`` m/s, direction uniform.

    `shape` is static (Python ints); `jax.vmap` over keys gives a batch of landscapes.
    """
    if len(shape) != 2:
        raise ValueError(f"`shape` must be (ny, nx), got {shape!r}.")
    for size in shape:
        require_count("shape", size, "grid cells along each axis")
    _require_number("nonburnable_fraction", nonburnable_fraction, 0.0, 1.0)
    _require_number("max_wind_speed", max_wind_speed, 0.0)
    _require_number("relief", relief, 0.0, fix=" It is the elevation std in metres.")
    keys = jax.random.split(key, 3)
    vegetation_field, density_field, hole_field, height = smooth_field(
        keys[0], shape, correlation_length, count=4
    )
    tercile = 0.4307272992954576  # Φ⁻¹(2/3)

    def classes(field, values):
        return jnp.where(
            field < -tercile, values[0], jnp.where(field < tercile, values[1], values[2])
        )

    fuel = (1.0 + classes(vegetation_field, VEGETATION)) * (1.0 + classes(density_field, DENSITY))
    if nonburnable_fraction > 0:
        threshold = statistics.NormalDist().inv_cdf(min(nonburnable_fraction, 1 - 1e-9))
        fuel = jnp.where(hole_field < threshold, 0.0, fuel)
    speed = max_wind_speed * jax.random.uniform(keys[1])
    direction = 2 * math.pi * jax.random.uniform(keys[2])
    return FireSpread(
        fuel,
        relief * height,
        speed,
        direction,
        base_probability=base_probability,
        cell_size=cell_size,
    )


def random_ignition(key: PRNGKeyArray, fire: FireSpread, count: int = 1) -> StateArray:
    """A state with `count` burning cells drawn uniformly among the burnable ones
    (fuel > 0; among all cells if none can burn), without replacement."""
    require_count("count", count, "ignition cells")
    ny, nx = fire.grid_shape
    if count > ny * nx:
        raise ValueError(f"`count` ({count}) exceeds the number of cells ({ny * nx}).")
    burnable = (fire.fuel > 0).reshape(-1)
    weights = jnp.where(jnp.any(burnable), burnable.astype(float), 1.0)
    cells = jax.random.choice(key, ny * nx, (count,), replace=False, p=weights / weights.sum())
    mask = jnp.zeros(ny * nx, bool).at[cells].set(True).reshape(ny, nx)
    return fire.ignite(mask)

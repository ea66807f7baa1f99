"""The stochastic fire-spread automaton (Alexandridis et al. 2008) against exact answers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.dynamics import FireSpread, burnt_area, random_ignition, random_landscape
from hybridda.dynamics.wildfire import BURNING, BURNT, NEIGHBOURS, UNBURNT

# Jitted once per module: op-by-op dispatch would compile every primitive separately.
trajectory = jax.jit(FireSpread.trajectory, static_argnums=3)
ensemble = jax.jit(FireSpread.ensemble, static_argnums=(3, 4))
ignition_probability = jax.jit(FireSpread.ignition_probability)


def _flat(n=11, fuel=1.0, **kwargs) -> FireSpread:
    return FireSpread(jnp.full((n, n), fuel), jnp.zeros((n, n)), 0.0, 0.0, **kwargs)


def _centre(fire: FireSpread):
    n = fire.grid_shape[0]
    return fire.ignite(jnp.zeros((n, n), bool).at[n // 2, n // 2].set(True))


def test_no_spread_without_fuel():
    fire = _flat(fuel=0.0, base_probability=1.0)
    states = np.asarray(trajectory(fire, _centre(fire), jax.random.key(0), 5))
    assert states[1, 5, 5] == BURNT and states[1].sum() == BURNT  # the ignition burns out
    assert np.all(states[1:] == states[1])


def test_certain_spread_advances_one_moore_ring_per_step():
    # p = p_h · fuel = 1, no wind, flat: after t steps the fire has reached every cell
    # within Chebyshev distance t, and exactly the ring at distance t is burning.
    fire = _flat(n=11, base_probability=1.0)
    states = np.asarray(trajectory(fire, _centre(fire), jax.random.key(1), 5))
    rows, cols = np.indices((11, 11))
    distance = np.maximum(abs(rows - 5), abs(cols - 5))
    for t in range(6):
        np.testing.assert_array_equal(states[t] == BURNING, distance == t)
        np.testing.assert_array_equal(states[t] == BURNT, distance < t)


@pytest.fixture(scope="module")
def random_runs():
    """8 random 12 x 12 landscapes, 2 random ignitions each, 10 steps of the automaton."""
    keys = jax.random.split(jax.random.key(2), 8)

    @jax.jit
    def simulate(keys):
        fires = jax.vmap(lambda k: random_landscape(k, (12, 12)))(keys)
        starts = jax.vmap(lambda k, f: random_ignition(k, f, 2))(keys, fires)
        return fires, jax.vmap(lambda f, s, k: f.trajectory(s, k, 10))(fires, starts, keys)

    fires, states = simulate(keys)
    return fires, np.asarray(states)


def test_states_only_advance_and_burnt_cells_stay_burnt(random_runs):
    fires, states = random_runs
    before, after = states[:, :-1], states[:, 1:]
    assert np.all(after >= before)
    assert np.all(after[before == BURNT] == BURNT)
    assert np.all(after[before == BURNING] == BURNT)  # a cell burns for one step
    assert np.all(after[np.asarray(fires.fuel)[:, None].repeat(10, 1) == 0] == UNBURNT)
    assert states[:, -1].max() == BURNT and (states[:, 1] == BURNING).any()


def test_random_landscape_and_ignition(random_runs):
    fires, states = random_runs
    fuel = np.asarray(fires.fuel)
    allowed = {0.0} | {round((1 + v) * (1 + d), 10) for v in (-0.3, 0, 0.4) for d in (-0.4, 0, 0.3)}
    assert set(np.round(fuel, 10).ravel()) <= allowed
    assert 0.03 < (fuel == 0).mean() < 0.25  # nonburnable_fraction = 0.1
    speed = np.asarray(fires.wind_speed)
    assert np.all((speed >= 0) & (speed <= 8)) and speed.std() > 0
    np.testing.assert_allclose(np.asarray(fires.elevation).std(axis=(1, 2)), 40, rtol=1e-6)
    ignited = states[:, 0] == BURNING
    assert np.all(ignited.sum(axis=(1, 2)) == 2) and np.all(fuel[ignited] > 0)


def test_spread_probability_is_the_papers_formula():
    speed, direction, gradient = 5.0, 0.3, 0.2  # wind (m/s, rad), elevation rise per m in x
    n, cell = 5, 30.0
    elevation = gradient * cell * jnp.tile(jnp.arange(n, dtype=float), (n, 1))
    fuel = jnp.full((n, n), 1.3)
    fire = FireSpread(fuel, elevation, speed, direction, cell_size=cell)
    state = _centre(fire)
    probability = np.asarray(ignition_probability(fire, state))
    for dy, dx in NEIGHBOURS:  # the cell at (2 - dy, 2 - dx) has the fire at offset (dy, dx)
        distance = math.hypot(dy, dx)
        cos_theta = (-dx * math.cos(direction) - dy * math.sin(direction)) / distance
        wind = math.exp(0.045 * speed) * math.exp(0.131 * speed * (cos_theta - 1))
        slope = math.degrees(math.atan(-dx * gradient * cell / (cell * distance)))
        expected = min(1.0, 0.58 * 1.3 * wind * math.exp(0.078 * slope))
        assert probability[2 - dy, 2 - dx] == pytest.approx(expected, rel=1e-12)
    assert probability[2, 2] == 0 and probability[0].sum() == 0  # burning; out of reach
    # Two burning neighbours ignite independently: 1 - (1 - p1)(1 - p2).
    only_east = fire.ignite(jnp.zeros((n, n), bool).at[2, 3].set(True))
    p_east = float(ignition_probability(fire, only_east)[1, 2])
    both = float(ignition_probability(fire, state.at[2, 3].set(BURNING))[1, 2])
    assert both == pytest.approx(1 - (1 - probability[1, 2]) * (1 - p_east), rel=1e-12)


def test_wind_makes_downwind_spread_more_likely():
    # Wind of 8 m/s towards +x: the cell east of the fire ignites with 0.58 e^{0.36} ≈
    # 0.831, the one west with 0.831 e^{-2·0.131·8} ≈ 0.102 (Alexandridis et al. 2008).
    fire = FireSpread(jnp.ones((5, 5)), jnp.zeros((5, 5)), 8.0, 0.0)
    members = ensemble(fire, _centre(fire), jax.random.key(3), 4000, 1)
    east, west = np.asarray(members[:, 2, 3] == BURNING), np.asarray(members[:, 2, 1] == BURNING)
    p_east = 0.58 * math.exp(0.045 * 8)
    p_west = p_east * math.exp(-2 * 0.131 * 8)
    for frequency, p in ((east.mean(), p_east), (west.mean(), p_west)):
        assert abs(frequency - p) < 4.5 * math.sqrt(p * (1 - p) / 4000)  # seeded: 4.5 σ
    assert east.mean() > west.mean() + 0.6


def test_ensemble_members_are_independent_runs():
    fire = _flat(fuel=0.6, base_probability=1.0)  # p = 0.6; the ring test's program
    state, key = _centre(fire), jax.random.key(6)
    members = np.asarray(ensemble(fire, state, key, 3, 5))
    assert len({m.tobytes() for m in members}) == 3  # distinct realisations
    for member, member_key in zip(members, jax.random.split(key, 3), strict=True):
        np.testing.assert_array_equal(member, trajectory(fire, state, member_key, 5)[-1])
    assert burnt_area(members).dtype == bool


def test_bad_inputs_raise_clear_errors():
    fuel, flat = jnp.ones((4, 4)), jnp.zeros((4, 4))
    with pytest.raises(ValueError, match="base_probability"):
        FireSpread(fuel, flat, 0.0, 0.0, base_probability=1.5)
    with pytest.raises(ValueError, match="base_probability"):
        FireSpread(fuel, flat, 0.0, 0.0, base_probability=-0.1)
    with pytest.raises(ValueError, match="`fuel`"):
        FireSpread(-fuel, flat, 0.0, 0.0)
    # (jaxtyping's shape check fires first in the tests; the ValueError without it.)
    with pytest.raises((ValueError, TypeError), match="elevation|ny nx|shape"):
        FireSpread(fuel, jnp.zeros((4, 5)), 0.0, 0.0)
    with pytest.raises(ValueError, match="wind_speed"):
        FireSpread(fuel, flat, -1.0, 0.0)
    with pytest.raises(ValueError, match="cell_size"):
        FireSpread(fuel, flat, 0.0, 0.0, cell_size=0.0)
    fire = FireSpread(fuel, flat, 0.0, 0.0)
    with pytest.raises(ValueError, match="grid"):
        fire.step(jnp.zeros((3, 4), jnp.int8), jax.random.key(0))
    with pytest.raises(ValueError, match="only 0"):
        fire.step(jnp.full((4, 4), 3, jnp.int8), jax.random.key(0))
    with pytest.raises((ValueError, TypeError), match="integers|Int"):  # jaxtyping first
        fire.step(jnp.zeros((4, 4)), jax.random.key(0))
    with pytest.raises(ValueError, match="boolean"):
        fire.ignite(jnp.ones((4, 4)))
    with pytest.raises(ValueError, match="steps"):
        fire.run(jnp.zeros((4, 4), jnp.int8), jax.random.key(0), 0)
    with pytest.raises(ValueError, match="nonburnable_fraction"):
        random_landscape(jax.random.key(0), (4, 4), nonburnable_fraction=1.5)

"""QG channel observation networks: in-situ points, random points, a moving swath.

Oracles: fields bilinear in (x, y), SciPy's linear grid interpolation, the analytic
winds of a single streamfunction mode, brute-force column lists and distances, and the
global ETKF for the LETKF with 2-D localisation.

Most tests observe `POINTS` points of all three fields, so that the QG operator (a PV
inversion by FFTs) compiles once for them.
"""

import importlib.util
import json
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.interpolate

from hybridda.dynamics import QG
from hybridda.filters import ETKF, LETKF, Localisation
from hybridda.observe import (
    GaussianError,
    QGPointObservation,
    QGSwathObservation,
    RandomQGPointObservation,
)

from .filters.helpers import gaspari_cohn, gc_half_width

MODEL = QG()  # OOPS's 40 x 20 grid, 12 x 6.3 channel
LENGTH_X, LENGTH_Y = MODEL.lengths
DX, DY = MODEL.grid_spacing
ZONAL_WIND = np.array([2.0, 0.5])  # the default (U_1, U_2)
UNIT = GaussianError(1.0)
ALL_FIELDS = ("streamfunction", "u", "v")
POINTS = 40
KEY = jax.random.key(0)


# Jitted entry points: the QG inversion op by op compiles every primitive separately.
@eqx.filter_jit
def observe(observation, state):
    return observation(state)


@eqx.filter_jit
def network_at(network, cycle):
    return network.at_cycle(cycle)


@eqx.filter_jit
def locate(observation, coordinates):
    return observation.locations(coordinates)


@eqx.filter_jit
def sample(observation, state, key):
    return observation.sample(state, key)


@eqx.filter_jit
def state_to_obs(localisation, observation):
    return localisation.state_to_obs(observation)


@eqx.filter_jit
def state_from(model, psi):
    return model.from_streamfunction(psi)


@eqx.filter_jit
def diagnostics(model, state):
    """(fields with walls, total streamfunction, (u, v)) on the grid."""
    return model.fields_with_walls(state), model.streamfunction(state), model.velocities(state)


def points_network(points, layers, model=MODEL, error=UNIT):
    return QGPointObservation(model, points, layers, error, ALL_FIELDS)


def mode_streamfunction(model, amplitudes=(1.0, 0.5)):
    """psi' = A_i sin(k x) sin(l y): periodic in x and zero on both walls."""
    x, y = model.grid()
    k, l = 2 * np.pi / model.lengths[0], np.pi / model.lengths[1]
    shape = np.sin(k * x)[None, :] * np.sin(l * y)[:, None]
    return np.stack([a * shape for a in amplitudes]), k, l


def random_state(seed, scale=1.0):
    """A smooth random state: random low modes of the perturbation streamfunction."""
    rng = np.random.default_rng(seed)
    x, y = MODEL.grid()
    psi = np.zeros((2, MODEL.ny, MODEL.nx))
    for k in range(4):
        for m in range(1, 4):
            amplitude, phase = rng.normal(size=(2, 1, 1)), rng.uniform(0, 2 * np.pi, (2, 1, 1))
            wave = np.cos(2 * np.pi * k * x / LENGTH_X + phase)
            psi += amplitude * wave * np.sin(np.pi * m * y / LENGTH_Y)[:, None]
    return state_from(MODEL, jnp.asarray(scale * psi))


def random_points(rng, count):
    x = rng.uniform(-LENGTH_X, 2 * LENGTH_X, count)  # any real x: wraps
    return np.stack([x, rng.uniform(0.0, LENGTH_Y, count)], axis=-1)


# ----------------------------------------------------------- interpolation


def test_interpolation_is_exact_for_fields_bilinear_in_x_and_y():
    # psi' = a + b x + c y + d x y on the grid: centred differences are exact, u = U - c
    # - d x and v = b + d y, and bilinear interpolation reproduces all three inside
    # cells whose corners' stencils stay off the periodic seam and the walls.
    coefficients = np.array([[0.3, -0.2, 0.5, 0.07], [-1.0, 0.1, -0.3, 0.02]])
    x, y = MODEL.grid()
    X, Y = np.meshgrid(x, y)
    psi = np.stack([a + b * X + c * Y + d * X * Y for a, b, c, d in coefficients])
    state = state_from(MODEL, jnp.asarray(psi))
    rng = np.random.default_rng(1)
    px, py = rng.uniform(x[1], x[-2], POINTS), rng.uniform(y[1], y[-2], POINTS)
    layers = rng.integers(0, 2, POINTS)
    values = observe(points_network(np.stack([px, py], -1), layers), state)
    a, b, c, d = coefficients[layers].T
    wind = ZONAL_WIND[layers]
    expected = np.concatenate(
        [
            a + b * px + c * py + d * px * py - wind * (py - 0.5 * LENGTH_Y),
            wind - (c + d * px),
            b + d * py,
        ]
    )
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-11)


def test_interpolation_matches_scipy_across_the_seam_and_up_to_the_walls():
    state = random_state(seed=2)
    grids = np.asarray(diagnostics(MODEL, state)[0])  # (field, layer, row, column)
    rng = np.random.default_rng(3)
    # Points in the seam cell, on and next to both walls, on grid nodes; random others.
    x, y = MODEL.grid()
    special = [
        [0.05, 2.0], [LENGTH_X - 0.05, 4.0], [-0.1, 1.0], [0.0, 3.0],
        [3.3, 0.0], [7.1, LENGTH_Y], [5.0, 0.1], [9.9, LENGTH_Y - 0.05],
        [x[3], y[5]], [x[-1], y[0]], [x[0], y[-1]],
    ]  # fmt: skip
    points = np.concatenate([special, random_points(rng, POINTS - len(special))])
    layers = rng.integers(0, 2, POINTS)
    values = np.asarray(observe(points_network(points, layers), state)).reshape(3, POINTS)
    # SciPy on the grid extended by one column each side (periodic) and the wall rows.
    columns = (np.arange(-1, MODEL.nx + 1) + 0.5) * DX
    rows = np.arange(MODEL.ny + 2) * DY
    wrapped = np.mod(points[:, 0], LENGTH_X)
    for field in range(3):
        for layer in (0, 1):
            grid = grids[field, layer]
            extended = np.concatenate([grid[:, -1:], grid, grid[:, :1]], axis=1)
            interpolator = scipy.interpolate.RegularGridInterpolator(
                (rows, columns), extended, method="linear"
            )
            chosen = layers == layer
            expected = interpolator(np.stack([points[chosen, 1], wrapped[chosen]], axis=-1))
            np.testing.assert_allclose(values[field, chosen], expected, rtol=0, atol=1e-12)


def test_periodic_in_x():
    state = random_state(seed=4)
    rng = np.random.default_rng(5)
    points = random_points(rng, POINTS)
    layers = rng.integers(0, 2, POINTS)
    values = observe(points_network(points, layers), state)
    for turns in (-3, 1, 2):
        moved = points + np.array([turns * LENGTH_X, 0.0])
        again = observe(points_network(moved, layers), state)
        np.testing.assert_allclose(again, values, rtol=0, atol=1e-11)


def test_grid_fields_and_walls_of_a_single_mode():
    # Centred differences of one mode are exact multiples of it, on the walls too: the
    # odd reflection of sin(l y) about a wall is sin(l y) itself.
    psi, k, l = mode_streamfunction(MODEL)
    state = state_from(MODEL, jnp.asarray(psi))
    grids, psi_total, (u, v) = diagnostics(MODEL, state)
    grids = np.asarray(grids)
    x = MODEL.grid()[0]
    y = np.arange(MODEL.ny + 2) * DY  # walls included
    mode = np.sin(k * x)[None, :] * np.sin(l * y)[:, None]
    for layer, (amplitude, wind) in enumerate(zip((1.0, 0.5), ZONAL_WIND, strict=True)):
        expected_psi = amplitude * mode - wind * (y[:, None] - 0.5 * LENGTH_Y)
        expected_u = wind - amplitude * (np.sin(l * DY) / DY) * np.outer(
            np.cos(l * y), np.sin(k * x)
        )
        expected_v = amplitude * (np.sin(k * DX) / DX) * np.outer(np.sin(l * y), np.cos(k * x))
        np.testing.assert_allclose(grids[0, layer], expected_psi, atol=1e-12)
        np.testing.assert_allclose(grids[1, layer], expected_u, atol=1e-12)
        np.testing.assert_allclose(grids[2, layer], expected_v, atol=1e-12)
    np.testing.assert_array_equal(grids[2, :, [0, -1]], 0.0)  # no flow through the walls
    # The interior rows are the model's own diagnostics.
    np.testing.assert_allclose(grids[0, :, 1:-1], psi_total, atol=1e-13)
    np.testing.assert_array_equal(grids[1, :, 1:-1], u)
    np.testing.assert_array_equal(grids[2, :, 1:-1], v)


def test_winds_of_an_analytic_streamfunction_converge_at_second_order():
    # psi' = sin(2 pi x / L_x) sin(pi y / L_y): u = U - psi'_y, v = psi'_x. Off-grid
    # points see centred differences and bilinear interpolation, both O(h^2); the rms
    # over many points averages the position within a cell, so halving h divides it by 4.
    rng = np.random.default_rng(6)
    batches = [(random_points(rng, POINTS), rng.integers(0, 2, POINTS)) for _ in range(10)]
    k, l = 2 * np.pi / LENGTH_X, np.pi / LENGTH_Y
    errors = []
    for nx, ny in ((40, 20), (80, 41)):  # grid steps 0.3 and 0.15 in both directions
        model = QG(nx=nx, ny=ny)
        state = state_from(model, jnp.asarray(mode_streamfunction(model)[0]))
        squared = 0.0
        for points, layers in batches:
            amplitude, wind = np.array([1.0, 0.5])[layers], ZONAL_WIND[layers]
            px, py = points.T
            exact = np.stack(
                [
                    amplitude * np.sin(k * px) * np.sin(l * py) - wind * (py - 0.5 * LENGTH_Y),
                    wind - amplitude * l * np.sin(k * px) * np.cos(l * py),
                    amplitude * k * np.cos(k * px) * np.sin(l * py),
                ]
            )
            values = observe(points_network(points, layers, model), state)
            squared = squared + np.sum((np.asarray(values).reshape(3, POINTS) - exact) ** 2, 1)
        errors.append(np.sqrt(squared / (10 * POINTS)))  # rms per field
    assert np.all(errors[0] < 0.05 * (k**2 + l**2) * 0.3**2), errors  # ~ (k h)^2 / 20
    ratio = errors[0] / errors[1]
    assert np.all((3.6 < ratio) & (ratio < 4.4)), ratio


# ------------------------------------------------------------ derivatives


@eqx.filter_jit
def tangent_and_adjoint(observation, state, direction, cotangent):
    _, tangent = jax.jvp(observation, (state,), (direction,))
    _, pullback = jax.vjp(observation, state)
    return tangent, pullback(cotangent)[0]


def test_operator_is_affine_and_jvp_vjp_pass_the_dot_product_test():
    rng = np.random.default_rng(7)
    observation = points_network(random_points(rng, POINTS), rng.integers(0, 2, POINTS))
    first, second = random_state(8), random_state(9)
    offset = observe(observation, jnp.zeros(MODEL.state_size))  # H(0): the mean flow
    combined = observe(observation, 2.0 * first - 0.7 * second)
    linear = 2.0 * (observe(observation, first) - offset) - 0.7 * (
        observe(observation, second) - offset
    )
    np.testing.assert_allclose(combined - offset, linear, rtol=0, atol=1e-11)

    direction = jnp.asarray(rng.normal(size=MODEL.state_size))
    cotangent = jnp.asarray(rng.normal(size=observation.obs_size))
    tangent, adjoint = tangent_and_adjoint(observation, first, direction, cotangent)
    lhs, rhs = float(jnp.dot(tangent, cotangent)), float(jnp.dot(direction, adjoint))
    assert lhs == pytest.approx(rhs, rel=1e-12)
    # Affine: the tangent-linear model is the exact difference.
    difference = observe(observation, first + direction) - observe(observation, first)
    np.testing.assert_allclose(tangent, difference, rtol=0, atol=1e-10)


def test_sample_adds_the_configured_error():
    rng = np.random.default_rng(10)
    points, layers = random_points(rng, POINTS), rng.integers(0, 2, POINTS)
    std = rng.uniform(0.1, 2.0, 3 * POINTS)  # one per observation: 3 fields per point
    observation = points_network(points, layers, error=GaussianError(std))
    state = random_state(11)
    key = jax.random.key(12)
    noise = sample(observation, state, key) - observe(observation, state)
    np.testing.assert_allclose(noise, std * jax.random.normal(key, (3 * POINTS,)), rtol=1e-10)
    wrong = points_network(points, layers, error=GaussianError(np.ones(POINTS)))
    with pytest.raises(ValueError, match=f"`std` has {POINTS} entries"):
        sample(wrong, state, key)


# ---------------------------------------------------------- random points


def test_random_points_are_redrawn_each_cycle_inside_the_channel():
    network = RandomQGPointObservation(MODEL, POINTS, UNIT, KEY, ALL_FIELDS, observed_layers=(1,))
    assert network.obs_size == 3 * POINTS and network.state_size == MODEL.state_size
    draws = [network_at(network, jnp.asarray(cycle)) for cycle in range(4)]
    for draw in draws:
        positions = np.asarray(draw.positions)
        assert positions.shape == (POINTS, 2) and draw.obs_size == 3 * POINTS
        assert np.all((positions >= 0) & (positions < np.array([LENGTH_X, LENGTH_Y])))
        np.testing.assert_array_equal(draw.layers, 1)
    for first in range(4):
        for second in range(first + 1, 4):
            assert not np.allclose(draws[first].positions, draws[second].positions)
    # Deterministic in (key, cycle): a second network with the same key draws the same.
    again = RandomQGPointObservation(MODEL, POINTS, UNIT, KEY, ALL_FIELDS, (1,))
    np.testing.assert_array_equal(network_at(again, jnp.asarray(2)).positions, draws[2].positions)
    other = RandomQGPointObservation(MODEL, POINTS, UNIT, jax.random.key(1), ALL_FIELDS, (1,))
    assert not np.allclose(network_at(other, jnp.asarray(2)).positions, draws[2].positions)
    # The drawn operator observes like a fixed network at those points.
    state = random_state(13)
    fixed = points_network(np.asarray(draws[3].positions), np.ones(POINTS, dtype=int))
    np.testing.assert_array_equal(observe(draws[3], state), observe(fixed, state))
    both = network_at(RandomQGPointObservation(MODEL, POINTS, UNIT, KEY), jnp.asarray(0))
    assert set(np.asarray(both.layers).tolist()) == {0, 1}  # default: both layers
    with pytest.raises(TypeError, match="at_cycle"):
        network(state)
    with pytest.raises(TypeError, match="at_cycle"):
        network.locations(MODEL.grid_coordinates())


# ------------------------------------------------------------------ swath


def test_swath_moves_wraps_and_observes_the_grid_values():
    state = random_state(14)
    _, psi, (_, v) = diagnostics(MODEL, state)
    psi, v = np.asarray(psi), np.asarray(v)
    x_grid, y_grid = MODEL.grid()
    width = 5
    shape = (2, 2, MODEL.ny, width)  # field, layer, row, column
    for shift, start in ((3, 0), (-7, 38)):
        swath = QGSwathObservation(
            MODEL, width, shift, UNIT, start=start, fields=("streamfunction", "v"),
            observed_layers=(0, 1),
        )  # fmt: skip
        assert swath.obs_size == np.prod(shape)
        for cycle in range(0, 30, 7):
            columns = [(start + cycle * shift + i) % MODEL.nx for i in range(width)]
            np.testing.assert_array_equal(swath.columns(cycle), columns)
            observation = network_at(swath, jnp.asarray(cycle))
            expected = np.stack([psi[:, :, columns], v[:, :, columns]]).reshape(-1)
            np.testing.assert_allclose(observe(observation, state), expected, atol=1e-12)
            where = np.asarray(locate(observation, MODEL.grid_coordinates()))
            grid_x = np.broadcast_to(x_grid[columns], shape).reshape(-1)
            grid_y = np.broadcast_to(y_grid[:, None], shape).reshape(-1)
            np.testing.assert_allclose(where, np.stack([grid_x, grid_y], axis=-1), atol=1e-12)
    # As wide as the channel: every column, whatever the cycle.
    full = QGSwathObservation(MODEL, MODEL.nx, 11, UNIT, start=2)
    for cycle in (0, 5, 13):
        np.testing.assert_array_equal(np.sort(full.columns(cycle)), np.arange(MODEL.nx))


def test_swath_shapes_are_static_under_jit_and_across_cycles():
    swath = QGSwathObservation(MODEL, 6, 5, GaussianError(0.1))
    state = random_state(15)
    psi = np.asarray(diagnostics(MODEL, state)[1])[0]  # upper layer
    traces = []

    @jax.jit
    @jax.vmap
    def observe_cycles(cycle):  # as synthesise_observations does
        traces.append(cycle)
        return swath.at_cycle(cycle)(state)

    results = np.asarray(observe_cycles(jnp.arange(10)))
    assert len(traces) == 1 and results.shape == (10, swath.obs_size)
    assert swath.obs_size == MODEL.ny * 6
    for cycle in range(10):
        columns = [(5 * cycle + i) % MODEL.nx for i in range(6)]
        np.testing.assert_allclose(results[cycle], psi[:, columns].reshape(-1), atol=1e-12)
    # cycle 8 = one full turn (8 x 5 = 40 columns): the swath is back where it started
    np.testing.assert_allclose(results[8], results[0], rtol=0, atol=1e-12)
    assert not np.allclose(results[1], results[0])


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("positions", "layers", "fields", "message"),
    [
        ([[1.0, -0.1]], [0], "u", "`positions` must have y in the channel"),
        ([[1.0, LENGTH_Y + 1e-6]], [0], "u", "`positions` must have y in the channel"),
        ([[np.nan, 1.0]], [0], "u", "`positions` must be finite"),
        ([[1.0, 2.0, 3.0]], [0], "u", r"`positions` must have shape \(p, 2\)"),
        ([[1.0, 2.0]], [2], "u", "`layers` must be 0"),
        ([[1.0, 2.0]], [0, 1], "u", r"`layers` must have shape \(1,\)"),
        ([[1.0, 2.0]], [0], "w", "`fields` must be distinct names"),
        ([[1.0, 2.0]], [0], ("u", "u"), "`fields` must be distinct names"),
        ([[1.0, 2.0]], [0], (), "`fields` must be distinct names"),
    ],
)
def test_bad_point_network_raises(positions, layers, fields, message):
    with pytest.raises(ValueError, match=message):
        QGPointObservation(MODEL, positions, layers, UNIT, fields)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"width": 41}, "`width`"),
        ({"width": 0}, "`width`"),
        ({"width": 2.5}, "`width`"),
        ({"start": 40}, "`start`"),
        ({"start": -1}, "`start`"),
        ({"shift": 1.5}, "`shift`"),
        ({"observed_layers": (0, 2)}, "`observed_layers`"),
        ({"observed_layers": ()}, "`observed_layers`"),
        ({"fields": ("pv",)}, "`fields`"),
    ],
)
def test_bad_swath_raises(arguments, message):
    with pytest.raises(ValueError, match=message):
        QGSwathObservation(**{"model": MODEL, "width": 4, "shift": 1, "error": UNIT, **arguments})


def test_numpy_integers_configure_a_swath():
    swath = QGSwathObservation(MODEL, np.int64(4), np.int32(-2), UNIT, start=np.int64(1))
    assert (swath.width, swath.shift, swath.start) == (4, -2, 1)
    assert all(type(value) is int for value in (swath.width, swath.shift, swath.start))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"obs_count": 0}, "`obs_count`"),
        ({"observed_layers": (1, 1)}, "`observed_layers`"),
        ({"fields": ("u", "psi")}, "`fields`"),
    ],
)
def test_bad_random_network_raises(arguments, message):
    with pytest.raises(ValueError, match=message):
        RandomQGPointObservation(
            **{"model": MODEL, "obs_count": 3, "error": UNIT, "key": KEY, **arguments}
        )


# --------------------------------------------------- filters, 2-D localisation


def channel_localisation(radius):
    return Localisation(
        radius, coordinates=MODEL.grid_coordinates(), domain_length=(LENGTH_X, math.inf)
    )


def channel_distance(coordinates, points):
    """Brute force: distances (n, p), periodic in x only."""
    difference = np.abs(coordinates[:, None, :] - points[None, :, :])
    along_x = np.mod(difference[..., 0], LENGTH_X)
    along_x = np.minimum(along_x, LENGTH_X - along_x)
    return np.hypot(along_x, difference[..., 1])


def test_localisation_tapers_with_distance_periodic_in_x_only():
    rng = np.random.default_rng(17)
    points = np.concatenate([[[0.1, 0.2]], random_points(rng, POINTS - 1)])
    observation = points_network(points, rng.integers(0, 2, POINTS))
    radius = 1.5
    taper = np.asarray(state_to_obs(channel_localisation(radius), observation))
    coordinates = np.asarray(MODEL.grid_coordinates())
    where = np.tile(points, (3, 1))  # one location per observation: 3 fields per point
    expected = gaspari_cohn(channel_distance(coordinates, where), gc_half_width(radius))
    np.testing.assert_allclose(taper, expected, rtol=0, atol=1e-13)
    # the point near (0, 0) reaches the east end of the channel but not the north wall
    east = (coordinates[:, 0] > 11.5) & (coordinates[:, 1] < 0.5)
    north = (coordinates[:, 0] < 0.5) & (coordinates[:, 1] > 5.8)
    assert np.all(taper[east, 0] > 0.5) and np.all(taper[north, 0] == 0.0)


@pytest.fixture(scope="module")
def corner_analyses():
    """A QG ensemble, points near the south-west corner, and three analyses of them.

    The points have x within 0.6 of the periodic seam and y < 0.8: a local analysis must
    reach the east end of the channel and leave the north side alone.
    """
    centre = random_state(16)
    E = jnp.stack([centre + random_state(100 + m, 0.3) for m in range(6)])
    rng = np.random.default_rng(18)
    points = np.stack([rng.uniform(-0.6, 0.6, POINTS), rng.uniform(0.0, 0.8, POINTS)], -1)
    observation = points_network(points, rng.integers(0, 2, POINTS), error=GaussianError(0.2))
    y = sample(observation, random_state(19), jax.random.key(20))

    @eqx.filter_jit  # one compilation for the three
    def analyses(E, y, observation):
        return {
            "etkf": ETKF().analysis(E, y, observation, KEY),
            "global_letkf": LETKF(channel_localisation(math.inf)).analysis(E, y, observation, KEY),
            "local_letkf": LETKF(channel_localisation(1.0)).analysis(E, y, observation, KEY),
        }

    return E, points, analyses(E, y, observation)


def test_letkf_with_infinite_radius_equals_the_etkf(corner_analyses):
    E, _, analyses = corner_analyses
    np.testing.assert_allclose(analyses["global_letkf"], analyses["etkf"], rtol=0, atol=1e-9)
    # the update is not trivial
    assert np.abs(np.asarray(analyses["etkf"]) - np.asarray(E)).max() > 1e-2


def test_local_update_reaches_across_the_seam_not_across_the_channel(corner_analyses):
    # GC support 2 * 1.83 = 3.65: the east end of the channel (distance < 1 through the
    # periodic seam) is updated; the north side (distance > 5: y is not periodic) and
    # everything beyond the support are not.
    E, points, analyses = corner_analyses
    change = np.abs(np.asarray(analyses["local_letkf"]) - np.asarray(E)).max(axis=0)
    coordinates = np.asarray(MODEL.grid_coordinates())
    distance = channel_distance(coordinates, np.mod(points, [LENGTH_X, np.inf])).min(axis=1)
    far = distance >= 2 * gc_half_width(1.0)
    assert far.sum() > 900  # of 1600
    np.testing.assert_allclose(change[far], 0.0, atol=1e-12)
    east = (coordinates[:, 0] > 11.5) & (coordinates[:, 1] < 0.5)
    north = coordinates[:, 1] > 5.0
    assert east.sum() == 4 and np.all(change[east] > 1e-4)
    assert np.all(far[north])
    # The global analysis changes the north side: the locality is the taper's doing.
    global_change = np.abs(np.asarray(analyses["global_letkf"]) - np.asarray(E)).max(axis=0)
    assert np.all(global_change[north] > 1e-6)


# ----------------------------------------------------------------- the script


@pytest.mark.slow
def test_experiment_script_twin_beats_the_free_run(tmp_path):
    # LETKF on 100 random streamfunction points per cycle, from the free run's states.
    script_path = Path(__file__).resolve().parents[1] / "experiments" / "qg_run.py"
    spec = importlib.util.spec_from_file_location("qg_run", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    arguments = ["--quick", "--steps", "300", "--twin", "letkf", "--members", "8"]
    metrics = script.main([*arguments, "--cycles", "10", "--out", str(tmp_path)])
    assert (tmp_path / "twin.png").stat().st_size > 0
    saved = json.loads((tmp_path / "metrics.json").read_text())["twin"]
    assert saved == json.loads(json.dumps(metrics["twin"]))
    assert saved["finite"] and saved["obs_per_cycle"] == 100 and saved["cycles"] == 10
    assert saved["analysis_rmse"] < saved["forecast_rmse"] < 0.3 * saved["free_rmse"]

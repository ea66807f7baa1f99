"""Localisation tapers (Gaspari-Cohn 1999) and the ring geometry they act on."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.filters import GaspariCohn, Gaussian, Localisation, Step, periodic_distance
from hybridda.observe import GaussianError, IndexObservation, LinearObservation, every_kth

from .helpers import gaspari_cohn, gc_half_width, ring_distance

RADII = [0.7, 4.0, 10.0]


@eqx.filter_jit
def state_to_obs(localisation, observation):
    return localisation.state_to_obs(observation)


@pytest.mark.parametrize("radius", RADII)
def test_gaspari_cohn_matches_the_published_formula(radius):
    c = gc_half_width(radius)
    distance = np.linspace(0.0, 2.3 * c, 1001)
    taper = GaspariCohn()(jnp.asarray(distance), radius)
    np.testing.assert_allclose(taper, gaspari_cohn(distance, c), rtol=0, atol=1e-13)


@pytest.mark.parametrize("radius", RADII)
def test_gaspari_cohn_shape(radius):
    c = gc_half_width(radius)
    taper = GaspariCohn()
    assert float(taper(jnp.asarray(0.0), radius)) == 1.0
    # continuous where the pieces join (c) and at the edge of the support (2c)
    for joint in (c, 2 * c):
        left, right = taper(jnp.asarray([joint * (1 - 1e-10), joint * (1 + 1e-10)]), radius)
        assert abs(float(left) - float(right)) < 1e-8
    np.testing.assert_allclose(taper(jnp.asarray(c), radius), 5 / 24, rtol=1e-12)
    # compact support: zero at (up to round-off) and beyond 2c, positive inside
    assert abs(float(taper(jnp.asarray(2 * c), radius))) < 1e-15
    beyond = taper(jnp.asarray([2 * c * (1 + 1e-12), 2 * c + 1e-6, 3 * c, 100 * c]), radius)
    np.testing.assert_array_equal(beyond, 0.0)
    inside = np.asarray(taper(jnp.linspace(0.0, 2 * c, 2001), radius))
    assert np.all(inside >= -1e-15) and np.all(inside <= 1)  # round-off near 2c
    # strictly decreasing on its support (away from the edge, where it is ~ (2 - d/c)⁵)
    assert np.all(np.diff(inside[:1900]) < 0)
    assert np.all(np.diff(inside) <= 1e-15)


@pytest.mark.parametrize("radius", RADII)
def test_gaspari_cohn_matches_a_gaussian_of_length_radius_at_short_range(radius):
    # The half-width radius·√(10/3) makes GC(d) = 1 - d²/(2 radius²) + O(d³): the
    # curvature at 0 of exp(-d²/(2 radius²)) (GC ≈ 1 - (5/3)(d/c)² near 0).
    h = 1e-3 * radius
    one_minus = 1 - float(GaspariCohn()(jnp.asarray(h), radius))
    np.testing.assert_allclose(one_minus / (h**2 / (2 * radius**2)), 1.0, rtol=1e-3)
    # at distance = radius it is still within a few percent of exp(-1/2)
    assert abs(float(GaspariCohn()(jnp.asarray(radius), radius)) - math.exp(-0.5)) < 0.03


def test_gaspari_cohn_at_the_radius_has_the_documented_value():
    # Half-width c = radius·√(10/3), so distance = radius is r = √(3/10), where the
    # first segment of Gaspari and Cohn (1999, eq. 4.10) gives
    # 1 - 5/3 r² + 5/8 r³ + 1/2 r⁴ - 1/4 r⁵.
    r = math.sqrt(0.3)
    expected = 1 - 5 / 3 * r**2 + 5 / 8 * r**3 + 0.5 * r**4 - 0.25 * r**5
    radius = 4.0
    value = float(GaspariCohn()(jnp.asarray(radius), radius))
    assert value == pytest.approx(expected, abs=1e-14)
    assert value == pytest.approx(0.6354, abs=1e-4)


def test_gaspari_cohn_is_differentiable_everywhere():
    radius = 2.0
    c = gc_half_width(radius)
    grad = jax.vmap(jax.grad(lambda d: GaspariCohn()(d, radius)))
    distance = jnp.asarray([0.0, 0.5 * c, c, 1.5 * c, 2 * c, 3 * c])
    slopes = np.asarray(grad(distance))
    assert np.all(np.isfinite(slopes))
    assert slopes[0] == 0.0 and slopes[-1] == 0.0
    # the taper is C² at the joints: central differences agree with the derivative
    h = 1e-6
    for d, slope in zip(np.asarray(distance)[1:4], slopes[1:4], strict=True):
        fd = (gaspari_cohn(d + h, c) - gaspari_cohn(d - h, c)) / (2 * h)
        np.testing.assert_allclose(slope, fd, rtol=1e-6, atol=1e-9)


def test_gaussian_and_step_tapers():
    d = jnp.asarray([0.0, 1.0, 3.0, 3.5])
    np.testing.assert_allclose(Gaussian()(d, 3.0), np.exp(-0.5 * (np.asarray(d) / 3) ** 2))
    np.testing.assert_array_equal(Step()(d, 3.0), [1.0, 1.0, 1.0, 0.0])


def test_periodic_distance_on_a_ring():
    a = jnp.asarray([0.0, 1.0, 9.0])
    b = jnp.asarray([0.0, 5.0, 9.5, 19.0])
    d = np.asarray(periodic_distance(a, b, 10.0))
    expected = [[ring_distance(i, j, 10.0) for j in np.asarray(b)] for i in np.asarray(a)]
    np.testing.assert_allclose(d, expected, rtol=0, atol=1e-14)
    assert d[0, 3] == 1.0 and d[2, 0] == 1.0  # wraps around
    assert np.all(d <= 5.0) and np.all(d >= 0.0)
    np.testing.assert_allclose(periodic_distance(a, a, 10.0), periodic_distance(a, a, 10.0).T)
    # an infinite period is the real line
    np.testing.assert_allclose(
        periodic_distance(a, b, math.inf), np.abs(np.asarray(a)[:, None] - np.asarray(b)[None, :])
    )


def test_state_to_obs_and_obs_to_obs_tapers():
    n, radius = 16, 2.0
    observation = every_kth(n, 3, GaussianError(1.0), offset=1)
    indices = np.asarray(observation.indices)
    c = gc_half_width(radius)
    localisation = Localisation(radius)
    expected = np.array(
        [[gaspari_cohn(ring_distance(i, j, n), c) for j in indices] for i in range(n)]
    )
    np.testing.assert_allclose(state_to_obs(localisation, observation), expected, atol=1e-14)
    np.testing.assert_allclose(localisation.obs_to_obs(observation), expected[indices], atol=1e-14)
    # coordinates in other units: the same taper when the radius is in those units
    scaled = Localisation(0.5 * radius, coordinates=0.5 * jnp.arange(n), domain_length=0.5 * n)
    np.testing.assert_allclose(state_to_obs(scaled, observation), expected, atol=1e-13)
    # a non-periodic domain does not wrap: the last point is far from the first
    line = state_to_obs(Localisation(radius, domain_length=math.inf), observation)
    assert float(line[n - 1, 0]) == 0.0 and expected[n - 1, 0] > 0
    # radius = inf: no tapering
    np.testing.assert_array_equal(state_to_obs(Localisation(math.inf), observation), 1.0)


@pytest.mark.parametrize("radius", [0.0, -2.0])
def test_non_positive_radius_is_rejected(radius):
    with pytest.raises(ValueError, match="localisation_radius"):
        Localisation(radius)


def test_geometry_errors_name_the_argument():
    with pytest.raises(ValueError, match="coordinates"):
        Localisation(2.0, coordinates=jnp.arange(5.0)).state_to_obs(
            every_kth(8, 2, GaussianError(1.0))
        )
    observation = LinearObservation(jnp.ones((2, 4)), GaussianError(1.0))
    with pytest.raises(ValueError, match="obs_locations"):
        Localisation(2.0).state_to_obs(observation)
    located = LinearObservation(
        jnp.ones((2, 4)), GaussianError(1.0), obs_locations=jnp.asarray([0.0, 2.0])
    )
    np.testing.assert_allclose(
        state_to_obs(Localisation(1.0), located)[:, 0],
        gaspari_cohn(np.array([0.0, 1.0, 2.0, 1.0]), gc_half_width(1.0)),
        atol=1e-14,
    )


# ------------------------------------------------------------- 2-D geometry


def brute_force_distance(a, b, periods):
    """Euclidean distance with each axis on a ring of its period (inf: a line)."""
    return np.array(
        [
            [
                math.hypot(
                    *(
                        abs(p - q) if math.isinf(length) else ring_distance(p, q, length)
                        for p, q, length in zip(point, other, periods, strict=True)
                    )
                )
                for other in b
            ]
            for point in a
        ]
    )


@pytest.mark.parametrize(
    "periods", [(12.0, math.inf), (12.0, 6.3), (math.inf, math.inf), (5.0, math.inf, 3.0)]
)
def test_periodic_distance_in_several_dimensions_matches_brute_force(periods):
    rng = np.random.default_rng(len(periods))
    scale = np.array([10.0 if math.isinf(length) else length for length in periods])
    a = rng.uniform(-1.0, 2.0, (7, len(periods))) * scale  # beyond one period: wraps
    b = np.concatenate([a[:2], rng.uniform(0.0, 1.0, (5, len(periods))) * scale])
    d = np.asarray(periodic_distance(jnp.asarray(a), jnp.asarray(b), periods))
    np.testing.assert_allclose(d, brute_force_distance(a, b, periods), rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(np.diag(d[:2, :2]), 0.0, atol=1e-12)


def test_two_dimensional_distance_wraps_in_x_only():
    periods = (12.0, math.inf)
    a = jnp.asarray([[0.1, 0.2], [0.1, 0.2]])
    b = jnp.asarray([[11.9, 0.2], [0.1, 6.1]])
    d = np.asarray(periodic_distance(a, b, periods))
    np.testing.assert_allclose(d[0, 0], 0.2, rtol=1e-12)  # across the periodic seam
    np.testing.assert_allclose(d[1, 1], 5.9, rtol=1e-12)  # y does not wrap
    np.testing.assert_allclose(d[0, 1], 5.9, rtol=1e-12)


def test_two_dimensional_distance_has_finite_gradients_at_coincident_points():
    points = jnp.asarray([[1.0, 2.0], [3.0, 0.5]])

    def total(a):
        return jnp.sum(periodic_distance(a, points, (12.0, math.inf)))

    gradient = np.asarray(jax.grad(total)(points))
    assert np.all(np.isfinite(gradient))
    # d|a - b| / da = (a - b) / |a - b| from the other point only
    unit = (np.asarray(points[0]) - np.asarray(points[1])) / np.linalg.norm(points[0] - points[1])
    np.testing.assert_allclose(gradient, [unit, -unit], rtol=1e-12)


def grid_2d(nx=6, ny=4, spacing=(1.5, 1.0)):
    """Points of an nx x ny grid as (n, 2) coordinates, x fastest."""
    x = np.arange(nx) * spacing[0]
    y = np.arange(ny) * spacing[1]
    return np.stack([np.tile(x, ny), np.repeat(y, nx)], axis=-1)


@pytest.mark.parametrize("radius", [0.8, 2.0])
def test_two_dimensional_state_to_obs_and_obs_to_obs_tapers(radius):
    coordinates = grid_2d()  # 24 points on a 9 x 4 channel (x periodic)
    periods = (9.0, math.inf)
    localisation = Localisation(radius, coordinates=jnp.asarray(coordinates), domain_length=periods)
    c = gc_half_width(radius)
    # Grid-point observations: locations are the coordinates of the observed variables.
    indices = np.array([0, 5, 7, 18, 23])
    observation = IndexObservation(indices, 24, GaussianError(1.0))
    expected = gaspari_cohn(brute_force_distance(coordinates, coordinates[indices], periods), c)
    np.testing.assert_allclose(state_to_obs(localisation, observation), expected, atol=1e-14)
    np.testing.assert_allclose(localisation.obs_to_obs(observation), expected[indices], atol=1e-14)
    # Off-grid observations with 2-D locations.
    where = np.array([[0.3, 0.1], [8.9, 2.9], [4.4, 1.7]])
    located = LinearObservation(np.ones((3, 24)), GaussianError(1.0), jnp.asarray(where))
    expected = gaspari_cohn(brute_force_distance(coordinates, where, periods), c)
    np.testing.assert_allclose(state_to_obs(localisation, located), expected, atol=1e-14)
    np.testing.assert_allclose(
        localisation.obs_to_obs(located),
        gaspari_cohn(brute_force_distance(where, where, periods), c),
        atol=1e-14,
    )
    # radius = inf: no tapering
    unbounded = Localisation(math.inf, coordinates=jnp.asarray(coordinates), domain_length=periods)
    np.testing.assert_array_equal(state_to_obs(unbounded, located), 1.0)


def test_integer_domain_lengths_become_floats():
    assert Localisation(1.0, domain_length=16).domain_length == 16.0
    two_d = Localisation(1.0, coordinates=jnp.zeros((3, 2)), domain_length=[9, math.inf])
    assert two_d.domain_length == (9.0, math.inf)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"coordinates": jnp.zeros((4, 2))}, "`domain_length`"),
        ({"coordinates": jnp.zeros((4, 2)), "domain_length": 9.0}, "`domain_length`"),
        ({"coordinates": jnp.zeros((4, 2)), "domain_length": (9.0,)}, "`domain_length`"),
        ({"coordinates": jnp.zeros((4, 2)), "domain_length": (9.0, -1.0)}, "`domain_length`"),
        ({"domain_length": (9.0, math.inf)}, "`coordinates`"),
        ({"coordinates": jnp.zeros(4), "domain_length": (9.0, math.inf)}, "`coordinates`"),
    ],
)
def test_bad_two_dimensional_geometry_raises(arguments, message):
    with pytest.raises(ValueError, match=message):
        Localisation(2.0, **arguments)


def test_locations_of_another_dimension_raise():
    # 1-D localisation, 2-D observation locations, and the converse
    located_2d = LinearObservation(
        jnp.ones((2, 4)), GaussianError(1.0), obs_locations=jnp.zeros((2, 2))
    )
    with pytest.raises(ValueError, match="same dimension"):
        Localisation(2.0).state_to_obs(located_2d)
    located_1d = LinearObservation(
        jnp.ones((2, 4)), GaussianError(1.0), obs_locations=jnp.asarray([0.0, 1.0])
    )
    two_d = Localisation(2.0, coordinates=jnp.zeros((4, 2)), domain_length=(4.0, math.inf))
    with pytest.raises(ValueError, match="same dimension"):
        two_d.obs_to_obs(located_1d)
    # grid-point observations take the dimension of the coordinates they select
    assert two_d.obs_to_obs(every_kth(4, 2, GaussianError(1.0))).shape == (2, 2)
    with pytest.raises(ValueError, match="`domain_length`"):
        periodic_distance(jnp.zeros(3), jnp.zeros(2), (4.0, 1.0))
    with pytest.raises(ValueError, match="`domain_length`"):
        periodic_distance(jnp.zeros((3, 2)), jnp.zeros((2, 2)), 4.0)
    with pytest.raises(ValueError, match="obs_locations"):
        LinearObservation(jnp.ones((2, 4)), GaussianError(1.0), obs_locations=jnp.zeros((3, 2)))

"""MAOOAM: qgs oracle, inner products by quadrature, conservation by the advection terms,
truncation, x_0 handling, integration, derivatives and bad input.

The qgs values are in ``tests/data/maooam_qgs_oracle.npz``, made by
``tests/data/make_maooam_oracle.py`` (see there how to regenerate them); qgs itself is not
needed.
"""

import dataclasses
import functools
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hybridda import Resolvent
from hybridda.dynamics import MAOOAM, MAOOAMParameters
from hybridda.dynamics import maooam as maooam_module

ORACLE = np.load(Path(__file__).parents[1] / "data" / "maooam_qgs_oracle.npz")
CONFIGS = ["a22_o24", "a24_o24"]
T0 = jnp.asarray(0.0)
DEFAULT = MAOOAM()  # atmosphere (2, 2), ocean (2, 4): 36 variables
HIGH = MAOOAM(atmosphere_modes=(2, 4))  # 56 variables, the truth of Brajard et al. (2021)


def model_for(config: str) -> MAOOAM:
    atmosphere, ocean = (tuple(int(v) for v in row) for row in ORACLE[f"{config}_modes"])
    return {(2, 2): DEFAULT, (2, 4): HIGH}[atmosphere] if ocean == (2, 4) else None


@eqx.filter_jit
def batched_tendency(model, states):
    return jax.vmap(lambda x: model.tendency(T0, x))(states)


@functools.cache
def ours_on_oracle_states(config: str):
    """Our tendencies on the oracle's states and Jacobians on its Jacobian states."""

    @eqx.filter_jit
    def evaluate(model, states):
        tendency = jax.vmap(lambda x: model.tendency(T0, x))(states)
        return tendency, jax.vmap(jax.jacfwd(lambda x: model.tendency(T0, x)))(states[-2:])

    states = np.concatenate([ORACLE[f"{config}_states"], ORACLE[f"{config}_jacobian_states"]])
    tendencies, jacobians = evaluate(model_for(config), jnp.asarray(states))
    return np.asarray(tendencies[:-2]), np.asarray(jacobians)


# -- qgs oracle -----------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS)
def test_tendency_matches_qgs(config):
    model = model_for(config)
    states, expected = ORACLE[f"{config}_states"], ORACLE[f"{config}_tendencies"]
    assert states.shape == (20, model.state_size)
    ours = ours_on_oracle_states(config)[0]
    # Relative to each variable's size over the states (psi_o tendencies are ~1e-7).
    scale = np.abs(expected).max(axis=0)
    assert np.max(np.abs(ours - expected) / scale) < 1e-12


@pytest.mark.parametrize("config", CONFIGS)
def test_jacobian_matches_qgs(config):
    expected = ORACLE[f"{config}_jacobians"]
    ours = ours_on_oracle_states(config)[1]
    assert ours.shape == expected.shape
    assert np.max(np.abs(ours - expected)) < 1e-12 * np.abs(expected).max()


@pytest.mark.parametrize("config", CONFIGS)
def test_nondimensional_parameters_match_qgs(config):
    ours = model_for(config).parameters.nondimensional()
    for name, value in zip(ORACLE["derived_names"], ORACLE[f"{config}_derived"], strict=True):
        assert ours[str(name)] == pytest.approx(value, rel=1e-13), name


def test_default_parameters_are_the_ones_given_to_qgs():
    given = dict(zip(ORACLE["input_names"], ORACLE["input_values"], strict=True))
    p = MAOOAMParameters()
    ours = {
        "general.kd": p.atmosphere_bottom_friction,
        "general.kdp": p.atmosphere_internal_friction,
        "general.n": p.aspect_ratio,
        "general.r": p.ocean_bottom_friction,
        "general.h": p.ocean_depth,
        "general.d": p.coupling,
        "atmosphere_temperature.eps": p.emissivity,
        "atmosphere_temperature.T0": p.atmosphere_temperature,
        "atmosphere_temperature.hlambda": p.heat_exchange,
        "ocean_temperature.gamma": p.ocean_heat_capacity,
        "ocean_temperature.T0": p.ocean_temperature,
        "atmosphere_insolation": p.atmosphere_insolation,
        "ocean_insolation": p.ocean_insolation,
    }
    assert set(ours) == set(given)
    for name, value in ours.items():
        assert value == given[name], name


# -- inner products against quadrature ---------------------------------------------------------


def _mode_fields(mode, x, y, aspect_ratio, basin):
    """A basis function and its x- and y-derivatives on the grid (x, y)."""
    kind, p, m, h = mode
    if kind == maooam_module._A:
        f = math.sqrt(2) * np.cos(p * y) + 0 * x
        return f, 0 * f, -math.sqrt(2) * p * np.sin(p * y) + 0 * x
    k = aspect_ratio * (h / 2 if basin else (m + h))
    trig, dtrig = (np.cos, lambda z: -np.sin(z)) if kind == maooam_module._K else (np.sin, np.cos)
    f = 2 * trig(k * x) * np.sin(p * y)
    return f, 2 * k * dtrig(k * x) * np.sin(p * y), 2 * p * trig(k * x) * np.cos(p * y)


def _quadrature_grid(aspect_ratio, points=48):
    nodes, weights = np.polynomial.legendre.leggauss(points)
    width = 2 * math.pi / aspect_ratio
    x, wx = (nodes + 1) * width / 2, weights * width / 2
    y, wy = (nodes + 1) * math.pi / 2, weights * math.pi / 2
    # (S, G) = n / (2 pi^2) * integral of S G over the domain.
    weight = np.outer(wx, wy) * aspect_ratio / (2 * math.pi**2)
    return x[:, None], y[None, :], weight


def test_inner_products_match_quadrature():
    n = 1.5
    x, y, weight = _quadrature_grid(n)
    atmosphere = maooam_module._channel_modes(2, 2)
    ocean = maooam_module._basin_modes(2, 4)
    fa = [_mode_fields(mode, x, y, n, basin=False) for mode in atmosphere]
    fo = [_mode_fields(mode, x, y, n, basin=True) for mode in ocean]

    def inner(s, g):
        return float(np.sum(weight * s * g))

    def jacobian(a, b):
        return a[1] * b[2] - a[2] * b[1]

    g = np.array([[[inner(fi[0], jacobian(fj, fk)) for fk in fa] for fj in fa] for fi in fa])
    np.testing.assert_allclose(maooam_module._channel_jacobian(atmosphere, n), g, atol=1e-12)
    o = np.array([[[inner(fi[0], jacobian(fj, fk)) for fk in fo] for fj in fo] for fi in fo])
    np.testing.assert_allclose(maooam_module._basin_jacobian(ocean, n), o, atol=1e-12)
    c = np.array([[inner(fi[0], fj[1]) for fj in fa] for fi in fa])
    np.testing.assert_allclose(maooam_module._channel_beta(atmosphere, n), c, atol=1e-12)
    n_matrix = np.array([[inner(fi[0], fj[1]) for fj in fo] for fi in fo])
    np.testing.assert_allclose(maooam_module._basin_beta(ocean, n), n_matrix, atol=1e-12)
    s = np.array([[inner(fi[0], phi[0]) for phi in fo] for fi in fa])
    np.testing.assert_allclose(
        maooam_module._atmosphere_ocean_overlap(atmosphere, ocean), s, atol=1e-12
    )
    # Orthonormal bases.
    np.testing.assert_allclose(
        [[inner(a[0], b[0]) for b in fa] for a in fa], np.eye(10), atol=1e-12
    )
    np.testing.assert_allclose([[inner(a[0], b[0]) for b in fo] for a in fo], np.eye(8), atol=1e-12)


# -- physics ---------------------------------------------------------------------------------


def _energy_weights(model: MAOOAM) -> np.ndarray:
    """Weights w with E = 1/2 sum w_i x_i^2 conserved by the advection (quadratic) terms.

    Atmospheric energy -a psi_a^2 + (1/sigma_0 - a) theta_a^2 (kinetic + available
    potential), ocean energy -(M + G) psi_o^2, ocean temperature variance delta T_o^2.
    """
    p = model.parameters.nondimensional()
    a = maooam_module._channel_laplacian(
        maooam_module._channel_modes(*model.atmosphere_modes), p["n"]
    )
    m = maooam_module._basin_laplacian(maooam_module._basin_modes(*model.ocean_modes), p["n"])
    return np.concatenate([-a, 1 / p["sig0"] - a, -(m + p["G"]), np.ones_like(m)])


@pytest.mark.parametrize("model", [DEFAULT, HIGH], ids=["36", "56"])
def test_advection_conserves_energy_and_temperature_variance(model):
    rng = np.random.default_rng(model.state_size)
    weights = _energy_weights(model)
    zero = MAOOAM.__new__(MAOOAM)  # the same model with only its quadratic part
    for name, value in vars(model).items():
        object.__setattr__(zero, name, value)
    object.__setattr__(zero, "constant", jnp.zeros_like(model.constant))
    object.__setattr__(zero, "linear", jnp.zeros_like(model.linear))
    states = rng.normal(size=(20, model.state_size))  # 20 like the oracle: same compilation
    advection = np.asarray(batched_tendency(zero, jnp.asarray(states)))
    assert np.abs(advection).max() > 1.0  # the check below is not vacuous
    rates = np.sum(weights * states * advection, axis=-1)
    scale = np.sum(np.abs(weights * states * advection), axis=-1)
    np.testing.assert_array_less(np.abs(rates), 1e-13 * scale)


def test_truncated_model_is_the_full_one_on_shared_modes():
    rng = np.random.default_rng(4)
    truncated_states = jnp.asarray(rng.normal(size=(20, DEFAULT.state_size)) * 0.05)
    embedded = HIGH.embed(truncated_states, DEFAULT)
    assert embedded.shape == (20, HIGH.state_size)
    np.testing.assert_array_equal(HIGH.restrict(embedded, DEFAULT), truncated_states)
    full = batched_tendency(HIGH, embedded)
    truncated = batched_tendency(DEFAULT, truncated_states)
    np.testing.assert_allclose(HIGH.restrict(full, DEFAULT), truncated, rtol=0, atol=1e-15)
    # ...while the extra modes are forced by the shared ones (the missing tendency).
    extra = np.setdiff1d(np.arange(HIGH.state_size), HIGH.shared_variables(DEFAULT))
    assert np.abs(np.asarray(full)[:, extra]).max() > 1e-3


def test_shared_variables_follow_the_modes():
    indices = HIGH.shared_variables(DEFAULT)
    names = HIGH.variable_names()
    # Atmosphere (2, 2) = blocks (1,1) (1,2) (2,1) (2,2); in (2, 4) the blocks (1,3) (1,4)
    # (6 modes) sit before (2,1).
    expected_psi_a = [0, 1, 2, 3, 4, 5, 12, 13, 14, 15]
    np.testing.assert_array_equal(indices[:10], expected_psi_a)
    np.testing.assert_array_equal(indices[10:20], np.add(expected_psi_a, 20))
    np.testing.assert_array_equal(indices[20:], np.arange(40, 56))
    assert [names[i] for i in indices[:2]] == ["psi_a_1", "psi_a_2"]
    np.testing.assert_array_equal(DEFAULT.shared_variables(DEFAULT), np.arange(36))
    with pytest.raises(ValueError, match="lacks"):
        DEFAULT.shared_variables(HIGH)
    with pytest.raises(ValueError, match="lacks"):
        DEFAULT.shared_variables(MAOOAM(ocean_modes=(3, 2)))
    with pytest.raises(ValueError, match="`x`"):
        HIGH.restrict(jnp.zeros(36), DEFAULT)
    with pytest.raises(ValueError, match="`x`"):
        HIGH.embed(jnp.zeros(56), DEFAULT)


def test_x0_handling_qgs_style_tensor_and_vmap():
    states = np.random.default_rng(0).normal(size=(20, 36)) * 0.05
    tensor = np.asarray(eqx.filter_jit(MAOOAM.tensor)(DEFAULT))
    assert tensor.shape == (37, 37, 37)
    np.testing.assert_array_equal(tensor[0], 0.0)  # x_0 = 1 is constant
    # vmap of the tendency = the tensor contracted with (1, x), state by state.
    extended = np.concatenate([np.ones((20, 1)), states], axis=1)
    np.testing.assert_allclose(
        np.einsum("ijk,bj,bk->bi", tensor, extended, extended)[:, 1:],
        batched_tendency(DEFAULT, jnp.asarray(states)),
        rtol=1e-13,
        atol=1e-17,
    )
    # At rest only the insolation acts: on theta_a_1 and on the ocean temperature modes
    # that overlap F^A_1 = sqrt(2) cos(y), those of odd H and even P: (H, P) = (1, 2), (1, 4).
    forcing = np.asarray(batched_tendency(DEFAULT, jnp.zeros((20, 36)))[0])
    names = np.array(DEFAULT.variable_names())
    assert set(names[forcing != 0]) == {"theta_a_1", "delta_T_o_2", "delta_T_o_4"}
    np.testing.assert_array_equal(forcing, DEFAULT.constant)
    with pytest.raises(ValueError, match=r"`x` must have shape \(36,\).*x_0"):
        DEFAULT.tendency(T0, jnp.zeros(37))


def test_integration_stays_bounded_and_is_chaotic():
    # RK4 with dt = 0.1 (16 min), 100 steps (10 time units, 27 h) per cycle; two states
    # 1e-8 apart, integrated together for 800 time units (~3 months).
    resolvent = Resolvent(DEFAULT, dt=0.1, steps_per_cycle=100)

    @eqx.filter_jit
    def run(states):
        step = jax.vmap(resolvent)
        return jax.lax.scan(lambda x, _: (step(x), x), states, None, length=80)[1]

    x0 = DEFAULT.default_initial_state()
    trajectory = np.asarray(run(jnp.stack([x0, x0 + 1e-8 * jnp.sin(jnp.arange(36.0))])))
    assert np.all(np.isfinite(trajectory))
    psi_a, theta_a, psi_o, temp_o = DEFAULT.split(jnp.asarray(trajectory[:, 0]))
    assert 0.01 < np.abs(psi_a).max() < 0.2 and np.abs(theta_a).max() < 0.2
    assert np.abs(psi_o).max() < 1e-3 and np.abs(temp_o).max() < 1.0
    # The two separate to the size of the atmospheric variability.
    separation = np.linalg.norm(trajectory[:, 0] - trajectory[:, 1], axis=-1)
    assert separation[5] < 1e-6 and separation[50:].max() > 1e-2


def test_gradients_with_respect_to_the_tensor():
    # d/dvalues of w . f(x) = w_i x_j x_k for each stored quadratic term (i, j, k).
    weights = jnp.asarray(np.random.default_rng(3).normal(size=36))
    x = jnp.asarray(np.random.default_rng(2).normal(size=36) * 0.05)

    @eqx.filter_jit
    @eqx.filter_grad
    def grad(model):
        return weights @ model.tendency(T0, x)

    gradient = grad(DEFAULT)
    row, left, right = DEFAULT.quadratic_indices
    np.testing.assert_allclose(gradient.quadratic_values, weights[row] * x[left] * x[right])
    np.testing.assert_allclose(gradient.constant, weights)


def test_sizes_names_and_time_unit():
    assert (DEFAULT.state_size, DEFAULT.n_atmosphere, DEFAULT.n_ocean) == (36, 10, 8)
    assert (HIGH.state_size, HIGH.n_atmosphere, HIGH.n_ocean) == (56, 20, 8)
    assert len(HIGH.variable_names()) == 56 and HIGH.variable_names()[-1] == "delta_T_o_8"
    assert DEFAULT.default_initial_state().shape == (36,)
    assert DEFAULT.time_unit_days == pytest.approx(1 / (1.032e-4 * 86400))
    assert [part.shape[-1] for part in DEFAULT.split(jnp.zeros((2, 36)))] == [10, 10, 8, 8]


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("modes", [(0, 2), (2, -1), (2,), (2, 2, 2), (2.0, 2), "22", (True, 2)])
@pytest.mark.parametrize("argument", ["atmosphere_modes", "ocean_modes"])
def test_bad_resolution_raises(argument, modes):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        MAOOAM(**{argument: modes})


@pytest.mark.parametrize(
    "change", [{"coupling": -1e-7}, {"aspect_ratio": 0.0}, {"ocean_depth": math.nan}]
)
def test_bad_parameters_raise(change):
    (name,) = change
    with pytest.raises(ValueError, match=f"`{name}`"):
        dataclasses.replace(MAOOAMParameters(), **change)


def test_parameters_must_be_a_parameter_set():
    with pytest.raises(ValueError, match="`parameters`"):
        MAOOAM(parameters={"coupling": 1e-7})
    weaker = MAOOAM(parameters=dataclasses.replace(MAOOAMParameters(), coupling=1e-8))
    assert weaker.parameters.nondimensional()["d"] == pytest.approx(1e-8 / 1.032e-4)
    assert not np.allclose(weaker.linear, DEFAULT.linear)

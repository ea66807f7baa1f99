"""Two-layer QG channel: PV inversion, Arakawa Jacobian, invariants, Rossby waves,
derivatives, bad input, batching and the experiment script."""

import importlib.util
import json
import math
from pathlib import Path

import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.dynamics import QG
from hybridda.dynamics.qg import (
    arakawa_jacobian,
    channel_jacobian,
    gaussian_hill,
    inverse_sine_fourier_transform,
    laplacian,
    sine_fourier_transform,
)
from hybridda.integrate import Resolvent

T0 = jnp.asarray(0.0)
SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "qg_run.py"


def inviscid(**changes) -> QG:
    """No shear, beta, orography or damping: the conservative core of the model."""
    parameters = dict(
        beta=0.0,
        zonal_wind=(0.0, 0.0),
        friction=0.0,
        thermal_damping=0.0,
        hyperviscosity=0.0,
        orography=0.0,
    )
    return QG(**{**parameters, **changes})


def smooth_fields(model: QG, seed: int, amplitude: float = 1.0) -> np.ndarray:
    """A random smooth perturbation streamfunction (2, ny, nx), zero on the walls."""
    rng = np.random.default_rng(seed)
    x, y = model.grid()
    length_x, length_y = model.lengths
    psi = np.zeros((2, model.ny, model.nx))
    for k in range(4):
        for m in range(1, 4):
            coefficients = rng.normal(size=(2, 2)) / (1 + k + m)
            wave_x = (
                coefficients[:, 0, None] * np.cos(2 * np.pi * k * x / length_x)[None]
                + coefficients[:, 1, None] * np.sin(2 * np.pi * k * x / length_x)[None]
            )
            psi += wave_x[:, None, :] * np.sin(np.pi * m * y / length_y)[None, :, None]
    return amplitude * psi


@eqx.filter_jit
def jit_tendency(model, x):
    return model.tendency(T0, x)


@eqx.filter_jit
def rates(model, x, tendency):
    """d/dt of the energy and the enstrophy along `tendency`."""
    energy_rate = jax.jvp(model.energy, (x,), (tendency,))[1]
    enstrophy_rate = jax.jvp(model.enstrophy, (x,), (tendency,))[1]
    return energy_rate, enstrophy_rate


# --------------------------------------------------------------- PV inversion


@eqx.filter_jit
def round_trips(model, psi):
    """psi -> q -> psi, through the fields and through the state helpers."""
    fields = model.invert(model.pv_from_streamfunction(psi))
    state = model.perturbation_streamfunction(model.from_streamfunction(psi))
    return fields, state


@pytest.mark.parametrize(("nx", "ny"), [(40, 20), (9, 4), (128, 64)])
def test_inversion_is_exact(nx, ny):
    model = QG(nx=nx, ny=ny, depths=(5500.0, 4500.0))
    psi = jnp.asarray(np.random.default_rng(nx * ny).normal(size=(2, ny, nx)))
    for recovered in round_trips(model, psi):
        np.testing.assert_allclose(recovered, psi, atol=1e-12 * float(jnp.abs(psi).max()))


def dense_pv_operator(nx: int, ny: int, dx: float, dy: float, f1: float, f2: float):
    """The PV operator as a (2 ny nx)^2 matrix, built point by point (walls: psi = 0)."""
    size = ny * nx

    def index(layer, j, i):
        return layer * size + j * nx + i % nx

    matrix = np.zeros((2 * size, 2 * size))
    coupling = (f1, f2)
    for layer in range(2):
        for j in range(ny):
            for i in range(nx):
                row = index(layer, j, i)
                matrix[row, index(layer, j, i + 1)] += 1 / dx**2
                matrix[row, index(layer, j, i - 1)] += 1 / dx**2
                if j + 1 < ny:
                    matrix[row, index(layer, j + 1, i)] += 1 / dy**2
                if j > 0:
                    matrix[row, index(layer, j - 1, i)] += 1 / dy**2
                matrix[row, row] -= 2 / dx**2 + 2 / dy**2 + coupling[layer]
                matrix[row, index(1 - layer, j, i)] += coupling[layer]
    return matrix


def test_inversion_matches_dense_numpy_solve():
    model = QG(nx=8, ny=6, depths=(7000.0, 3000.0), rossby_radius=0.8, lengths=(5.0, 3.0))
    dx, dy = model.grid_spacing
    f1, f2 = (float(f) for f in model.coupling())
    matrix = dense_pv_operator(8, 6, dx, dy, f1, f2)
    rng = np.random.default_rng(3)
    psi = rng.normal(size=96)
    np.testing.assert_allclose(
        model.pv_from_streamfunction(jnp.asarray(psi.reshape(2, 6, 8))).reshape(-1),
        matrix @ psi,
        rtol=1e-13,
        atol=1e-12,
    )
    q = rng.normal(size=96)
    np.testing.assert_allclose(
        model.invert(jnp.asarray(q.reshape(2, 6, 8))).reshape(-1),
        np.linalg.solve(matrix, q),
        rtol=1e-11,
        atol=1e-13,
    )


def test_sine_fourier_transform_matches_definition():
    rng = np.random.default_rng(5)
    field = rng.normal(size=(3, 7, 10))
    sines = np.sin(np.pi * np.outer(np.arange(1, 8), np.arange(1, 8)) / 8)
    expected = np.einsum("mj,bjk->bmk", sines, np.fft.rfft(field, axis=-1))
    spectrum = sine_fourier_transform(jnp.asarray(field))
    np.testing.assert_allclose(spectrum, expected, atol=1e-12)
    np.testing.assert_allclose(inverse_sine_fourier_transform(spectrum, 10), field, atol=1e-13)


def test_laplacian_converges_at_second_order():
    errors = []
    for n in (16, 32, 64):
        model = QG(nx=2 * n, ny=n)
        x, y = model.grid()
        k, l = 2 * np.pi * 3 / model.lengths[0], np.pi * 2 / model.lengths[1]
        field = np.cos(k * x)[None, :] * np.sin(l * y)[:, None]
        numerical = laplacian(jnp.asarray(field), *model.grid_spacing)
        errors.append(float(np.abs(numerical + (k**2 + l**2) * field).max()))
    assert 3.5 < errors[0] / errors[1] < 4.5 and 3.5 < errors[1] / errors[2] < 4.5


def test_dissipation_matches_stencil_form():
    # Spectral damping terms = -nu lap^2(lap psi) - r lap psi_2 +- kappa F_i (psi_1 - psi_2)
    # with the 5-point Laplacian (zero wall rows): take the tendency with minus without.
    damped = inviscid(nx=12, ny=7, friction=0.3, thermal_damping=0.2, hyperviscosity=6.0)
    undamped = damped.perturbed(friction=0.0, thermal_damping=0.0, hyperviscosity=0.0)
    psi = jnp.asarray(np.random.default_rng(6).normal(size=(2, 7, 12)))
    state = damped.from_streamfunction(psi)
    difference = damped.to_fields(jit_tendency(damped, state) - jit_tendency(undamped, state))
    dx, dy = damped.grid_spacing
    f1, f2 = damped.coupling()
    vorticity = laplacian(psi, dx, dy)
    expected = -damped.viscosity() * laplacian(laplacian(vorticity, dx, dy), dx, dy)
    expected = expected.at[1].add(-0.3 * vorticity[1])
    expected = expected + 0.2 * jnp.stack([f1, -f2])[:, None, None] * (psi[0] - psi[1])[None]
    np.testing.assert_allclose(
        difference, expected, rtol=1e-11, atol=1e-11 * float(jnp.abs(expected).max())
    )
    # The grid-scale damping rate is `hyperviscosity`.
    k2_max = 4 / dx**2 * np.sin(np.pi * 6 / 12) ** 2 + 4 / dy**2 * np.sin(np.pi * 7 / 16) ** 2
    np.testing.assert_allclose(damped.viscosity() * k2_max**2, 6.0, rtol=1e-12)


# ------------------------------------------------------------ Arakawa Jacobian


@settings(max_examples=15, deadline=None)
@given(
    a=hnp.arrays(np.float64, (6, 8), elements=st.floats(-10.0, 10.0)),
    b=hnp.arrays(np.float64, (6, 8), elements=st.floats(-10.0, 10.0)),
)
def test_periodic_arakawa_invariants(a, b):
    a, b = jnp.asarray(a), jnp.asarray(b)
    jacobian = arakawa_jacobian(a, b, 0.3, 0.7)
    # Round-off scale: the number of terms times the size of one, |a| |b| / (dx dy).
    term = float(jnp.abs(a).max() * jnp.abs(b).max()) / (0.3 * 0.7)
    scale = 1e-14 * a.size * (1.0 + term)
    assert abs(float(jnp.sum(jacobian))) <= scale
    assert abs(float(jnp.sum(a * jacobian))) <= scale * (1 + float(jnp.abs(a).max()))
    assert abs(float(jnp.sum(b * jacobian))) <= scale * (1 + float(jnp.abs(b).max()))
    assert float(jnp.abs(arakawa_jacobian(a, a, 0.3, 0.7)).max()) <= scale
    np.testing.assert_allclose(jacobian, -arakawa_jacobian(b, a, 0.3, 0.7), atol=scale)


def test_channel_jacobian_conserves_energy_and_enstrophy():
    rng = np.random.default_rng(11)
    a, b = (jnp.asarray(rng.normal(size=(2, 7, 12))) for _ in range(2))
    jacobian = channel_jacobian(a, b, 0.3, 0.25)
    assert jacobian.shape == (2, 7, 12)
    np.testing.assert_allclose(jnp.sum(a * jacobian, axis=(-2, -1)), 0.0, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(b * jacobian, axis=(-2, -1)), 0.0, atol=1e-12)
    np.testing.assert_allclose(channel_jacobian(a, a, 0.3, 0.25), 0.0, atol=1e-13)
    np.testing.assert_allclose(jacobian, -channel_jacobian(b, a, 0.3, 0.25), atol=1e-12)
    # The domain sum is not an invariant with walls (documented): it is O(1) here.
    assert abs(float(jnp.sum(jacobian))) > 1e-3


def test_jacobian_converges_at_second_order():
    errors = []
    for n in (16, 32, 64):
        model = QG(nx=2 * n, ny=n)
        x, y = model.grid()
        length_x, length_y = model.lengths
        k, l = 2 * np.pi / length_x, np.pi / length_y
        a = np.sin(k * x)[None, :] * np.sin(l * y)[:, None]
        b = np.cos(2 * k * x)[None, :] * np.sin(2 * l * y)[:, None]
        exact = (k * np.cos(k * x)[None, :] * np.sin(l * y)[:, None]) * (
            2 * l * np.cos(2 * k * x)[None, :] * np.cos(2 * l * y)[:, None]
        ) - (l * np.sin(k * x)[None, :] * np.cos(l * y)[:, None]) * (
            -2 * k * np.sin(2 * k * x)[None, :] * np.sin(2 * l * y)[:, None]
        )
        numerical = channel_jacobian(jnp.asarray(a), jnp.asarray(b), *model.grid_spacing)
        errors.append(float(np.abs(numerical - exact).max()))
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5


# ---------------------------------------------------------------- invariants


@pytest.mark.parametrize("depths", [(6000.0, 4000.0), (3000.0, 7000.0)])
def test_tendency_conserves_energy_and_enstrophy(depths):
    model = inviscid(nx=16, ny=8, depths=depths)
    state = model.from_streamfunction(jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 16))))
    tendency = jit_tendency(model, state)
    energy_rate, enstrophy_rate = rates(model, state, tendency)
    # Compare with the size of the terms: energy * |tendency| / |state|.
    relative = float(jnp.linalg.norm(tendency) / jnp.linalg.norm(state))
    assert abs(float(energy_rate)) < 1e-13 * float(model.energy(state)) * relative
    assert abs(float(enstrophy_rate)) < 1e-13 * float(model.enstrophy(state)) * relative
    assert relative > 0.1  # the flow is far from steady


def test_beta_and_orography_keep_energy_and_damping_removes_it():
    free = inviscid(nx=16, ny=8, beta=1.5, orography=gaussian_hill(16, 8, (12.0, 6.3)))
    state = free.from_streamfunction(jnp.asarray(smooth_fields(free, 2)))
    rate, _ = rates(free, state, jit_tendency(free, state))
    assert abs(float(rate)) < 1e-12 * float(free.energy(state))
    for changes in ({"friction": 0.3}, {"thermal_damping": 0.3}, {"hyperviscosity": 5.0}):
        damped = free.perturbed(**changes)
        rate, _ = rates(damped, state, jit_tendency(damped, state))
        assert float(rate) < -1e-4 * float(damped.energy(state)), changes


def test_rk4_drift_is_small_and_fourth_order():
    model = inviscid(nx=16, ny=8)
    state = model.from_streamfunction(jnp.asarray(smooth_fields(model, 4)))
    energy0, enstrophy0 = float(model.energy(state)), float(model.enstrophy(state))
    drifts = []
    for dt, steps in ((0.1, 10), (0.05, 20)):
        final = eqx.filter_jit(lambda r, x: r(x))(
            Resolvent(model, dt=dt, steps_per_cycle=steps), state
        )
        drifts.append(
            (
                abs(float(model.energy(final)) / energy0 - 1),
                abs(float(model.enstrophy(final)) / enstrophy0 - 1),
            )
        )
        assert jnp.linalg.norm(final - state) > 0.1 * jnp.linalg.norm(state)  # it moved
    for coarse, fine in zip(drifts[0], drifts[1], strict=True):
        assert coarse < 1e-4
        assert coarse / fine > 10.0  # 16 for a fourth-order method


@pytest.mark.parametrize("mode", ["barotropic", "baroclinic"])
def test_rossby_wave_follows_discrete_dispersion_relation(mode):
    model = inviscid(nx=32, ny=15, beta=1.5)
    x, y = model.grid()
    (dx, dy), (length_x, length_y) = model.grid_spacing, model.lengths
    k, l = 2 * np.pi * 2 / length_x, np.pi / length_y
    f1, f2 = (float(f) for f in model.coupling())
    vertical, stretching = {"barotropic": ((1.0, 1.0), 0.0), "baroclinic": ((f1, -f2), f1 + f2)}[
        mode
    ]
    shape = np.cos(k * x)[None, :] * np.sin(l * y)[:, None]
    psi = 0.1 * np.asarray(vertical)[:, None, None] * shape[None]
    # Discrete: Arakawa's J(psi, beta y) is beta times a centred x difference averaged
    # with weights (1, 4, 1) / 6 over the rows j-1, j, j+1.
    k_discrete = np.sin(k * dx) / dx * (2 + np.cos(l * dy)) / 3
    k2_discrete = 4 * np.sin(k * dx / 2) ** 2 / dx**2 + 4 * np.sin(l * dy / 2) ** 2 / dy**2
    omega_discrete = -1.5 * k_discrete / (k2_discrete + stretching)
    omega_continuous = -1.5 * k / (k**2 + l**2 + stretching)

    resolvent = Resolvent(model, dt=0.02, steps_per_cycle=100)
    time = resolvent.cycle_length
    final = model.perturbation_streamfunction(
        eqx.filter_jit(lambda r, s: r(s))(resolvent, model.from_streamfunction(jnp.asarray(psi)))
    )
    # psi(T) = A cos(k x - omega T) sin(l y): project on cos(kx) and sin(kx).
    layer = np.asarray(final)[0] / vertical[0]
    cosine = np.sum(layer * shape)
    sine = np.sum(layer * np.sin(k * x)[None, :] * np.sin(l * y)[:, None])
    omega_numerical = math.atan2(sine, cosine) / time
    assert omega_numerical < 0  # westward
    np.testing.assert_allclose(omega_numerical, omega_discrete, rtol=1e-6)
    np.testing.assert_allclose(omega_numerical, omega_continuous, rtol=0.05)
    # A single mode is an exact nonlinear solution: the shape is kept.
    reconstructed = 0.1 * (np.cos(k * x - omega_numerical * time)[None, :] * np.sin(l * y)[:, None])
    np.testing.assert_allclose(layer, reconstructed, atol=1e-8)


# ------------------------------------------------------------- forced runs


@pytest.fixture(scope="module")
def default_run():
    """600 steps of dt = 0.05 (30 time units) from the default state, energy every 20."""
    model = QG()
    resolvent = Resolvent(model, dt=0.05, steps_per_cycle=20)

    @eqx.filter_jit
    def run(resolvent, state):
        def step(state, _):
            state = resolvent(state)
            return state, model.energy(state)

        return jax.lax.scan(step, state, None, length=30)

    state0 = model.default_initial_state()
    final, energies = run(resolvent, state0)
    return model, state0, final, np.asarray(energies)


def test_default_run_spins_up_and_saturates(default_run):
    model, state0, final, energies = default_run
    assert np.all(np.isfinite(final))
    energy0 = float(model.energy(state0))
    assert energy0 < 1e-3
    assert energies[-1] > 300 * energy0  # baroclinic instability grew the perturbation
    late = energies[15:]  # t >= 16
    assert late.max() < 10.0 and late.min() > 0.3  # saturated, not blowing up
    assert late.max() / late.min() < 5.0
    courant = model.check_cfl(final, 0.05)
    assert 0.3 < courant < 2.0


def test_default_initial_state_is_deterministic_and_small():
    model = QG()
    first, second = model.default_initial_state(), QG().default_initial_state()
    np.testing.assert_array_equal(first, second)
    psi = model.perturbation_streamfunction(first)
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(psi**2)), 0.01, rtol=1e-10)


def test_higher_resolution_grid_runs():
    model = QG(nx=128, ny=64)
    state = model.default_initial_state()
    final = eqx.filter_jit(lambda r, x: r(x))(Resolvent(model, dt=0.015, steps_per_cycle=10), state)
    assert final.shape == (2 * 128 * 64,) and np.all(np.isfinite(final))


# ---------------------------------------------------------------- derivatives


@pytest.fixture(scope="module")
def small_turbulent():
    """A small model, an O(1) smooth state (winds of a few units) and jitted maps:
    one cycle (4 RK4 steps) M, its tangent-linear M' and its adjoint M'^T."""
    model = QG(nx=12, ny=8)
    state = model.from_streamfunction(jnp.asarray(smooth_fields(model, 7)))
    resolvent = Resolvent(model, dt=0.05, steps_per_cycle=4)
    forward = jax.jit(lambda x: resolvent(x))
    tangent = jax.jit(lambda x, dx: jax.jvp(resolvent, (x,), (dx,))[1])
    adjoint = jax.jit(lambda x, dy: jax.vjp(resolvent, x)[1](dy)[0])
    return model, resolvent, state, forward, tangent, adjoint


def test_gradient_matches_finite_differences(small_turbulent):
    _, _, state, forward, _, adjoint = small_turbulent
    rng = np.random.default_rng(8)
    weights = jnp.asarray(rng.normal(size=state.shape))
    # The gradient of <w, M(x)> is M'^T w.
    gradient = adjoint(state, weights)
    for _ in range(3):
        direction = jnp.asarray(rng.normal(size=state.shape))
        epsilon = 1e-5
        plus, minus = forward(state + epsilon * direction), forward(state - epsilon * direction)
        finite = jnp.dot(weights, plus - minus) / (2 * epsilon)
        np.testing.assert_allclose(jnp.dot(gradient, direction), finite, rtol=1e-7)


def test_tangent_linear_and_adjoint_pass_the_dot_product_test(small_turbulent):
    _, _, state, forward, tangent, adjoint = small_turbulent
    rng = np.random.default_rng(10)
    dx = jnp.asarray(rng.normal(size=state.shape))
    dy = jnp.asarray(rng.normal(size=state.shape))
    left = float(jnp.dot(tangent(state, dx), dy))
    right = float(jnp.dot(dx, adjoint(state, dy)))
    assert abs(left - right) <= 1e-12 * abs(left)
    # Taylor test: the linearisation error falls like epsilon^2.
    base, linear = forward(state), tangent(state, dx)
    errors = [
        float(jnp.linalg.norm(forward(state + eps * dx) - base - eps * linear))
        for eps in (1e-2, 1e-3)
    ]
    assert 70 < errors[0] / errors[1] < 130


def test_gradient_with_respect_to_parameters(small_turbulent):
    model, _, state, *_ = small_turbulent
    weights = jnp.asarray(np.random.default_rng(13).normal(size=state.shape))

    @jax.jit
    def loss(parameters):
        depths, friction = parameters
        changed = eqx.tree_at(lambda m: (m.depths, m.friction), model, (depths, friction))
        return jnp.dot(weights, changed.tendency(T0, state))

    parameters = (jnp.asarray([5500.0, 4500.0]), jnp.asarray(0.2))
    gradient = jax.jit(jax.grad(loss))(parameters)
    for index, step in ((0, 1.0), (1, 1.0)):
        shift = jnp.zeros(2).at[index].set(step)
        finite = (
            loss((parameters[0] + shift, parameters[1]))
            - loss((parameters[0] - shift, parameters[1]))
        ) / (2 * step)
        np.testing.assert_allclose(gradient[0][index], finite, rtol=1e-6)
    finite = (
        loss((parameters[0], parameters[1] + 1e-4)) - loss((parameters[0], parameters[1] - 1e-4))
    ) / 2e-4
    np.testing.assert_allclose(gradient[1], finite, rtol=1e-7)


# ------------------------------------------------------------------ batching


def test_jit_and_ensemble_equal_loop(small_turbulent):
    model, resolvent, state, forward, *_ = small_turbulent
    rng = np.random.default_rng(12)
    ensemble = state[None] + 0.1 * jnp.asarray(rng.normal(size=(3, state.shape[0])))
    batched = eqx.filter_jit(lambda r, e: r.ensemble(e))(resolvent, ensemble)
    looped = jnp.stack([forward(member) for member in ensemble])
    np.testing.assert_allclose(batched, looped, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(forward(state), resolvent(state), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        jax.vmap(model.energy)(ensemble),
        jnp.stack([model.energy(member) for member in ensemble]),
        rtol=1e-13,
    )


# ----------------------------------------------------------- helpers, geometry


def test_fields_coordinates_and_parameters():
    model = QG(nx=10, ny=6)
    state = jnp.arange(model.state_size, dtype=float)
    fields = model.to_fields(state)
    assert fields.shape == (2, 6, 10) and model.state_size == 120
    np.testing.assert_array_equal(model.from_fields(fields), state)
    assert model.to_fields(jnp.stack([state, state])).shape == (2, 2, 6, 10)
    coordinates = np.asarray(model.coordinates())
    assert coordinates.shape == (120,) and model.domain_length() == 12.0
    assert 0 < coordinates.min() < coordinates.max() < 12.0
    # OOPS: F_i = f0^2 L^2 / (g' D_i) = 1e4 / D_i for its constants.
    for depths in ((6000.0, 4000.0), (5500.0, 4500.0)):
        f1, f2 = model.perturbed(depths=depths).coupling()
        np.testing.assert_allclose([f1, f2], [1e4 / depths[0], 1e4 / depths[1]], rtol=1e-14)
    # OOPS: the hill top gives R_s close to horog / (Ro D2) = 5.
    assert 4.0 < float(QG().orography_pv().max()) <= 5.0


def test_velocities_and_total_fields():
    model = QG(nx=16, ny=8)
    x, y = model.grid()
    dx, dy = model.grid_spacing
    k, l = 2 * np.pi / model.lengths[0], np.pi / model.lengths[1]
    shape = np.sin(k * x)[None, :] * np.sin(l * y)[:, None]
    psi = jnp.asarray(np.stack([shape, 0.5 * shape]))
    state = model.from_streamfunction(psi)
    u, v = model.velocities(state)
    # Centred differences of a single mode are exact multiples of it.
    expected_v = (np.sin(k * dx) / dx) * np.cos(k * x)[None, :] * np.sin(l * y)[:, None]
    expected_u = -(np.sin(l * dy) / dy) * np.sin(k * x)[None, :] * np.cos(l * y)[:, None]
    np.testing.assert_allclose(v, np.stack([expected_v, 0.5 * expected_v]), atol=1e-12)
    np.testing.assert_allclose(u, np.stack([2.0 + expected_u, 0.5 + 0.5 * expected_u]), atol=1e-12)
    # Total streamfunction = perturbation - U (y - y_c).
    total = model.streamfunction(state) - psi
    np.testing.assert_allclose(total[0], -2.0 * (y - 3.15)[:, None] + 0 * x, atol=1e-12)
    rest = model.potential_vorticity(jnp.zeros(model.state_size))
    f1, _ = model.coupling()
    np.testing.assert_allclose(rest[0, :, 0], (1.5 + f1 * 1.5) * (y - 3.15), atol=1e-12)


def test_perturbed_builds_an_imperfect_model():
    truth = QG()
    model = truth.perturbed(depths=(5500.0, 4500.0), friction=0.3)
    assert float(model.friction) == 0.3 and float(truth.friction) == 0.2
    state = truth.default_initial_state()
    difference = jit_tendency(truth, state) - jit_tendency(model, state)
    assert float(jnp.abs(difference).max()) > 1e-3
    with pytest.raises(ValueError, match="Unknown QG arguments"):
        truth.perturbed(depth=(1.0, 2.0))
    with pytest.raises(ValueError, match="`depths`"):
        truth.perturbed(depths=(5500.0, -1.0))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(("nx", "ny"), [(3, 20), (40, 3), (0, 5), (40, 2.5)])
def test_too_small_grid_raises(nx, ny):
    with pytest.raises(ValueError, match=">= 4 grid points"):
        QG(nx=nx, ny=ny)


def test_numpy_integer_grid_sizes_are_accepted():
    model = QG(nx=np.int64(8), ny=np.int32(4))
    assert type(model.nx) is int and model.state_size == 64


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"depths": (6000.0, 0.0)}, "`depths` must be finite and > 0"),
        ({"depths": (-1.0, 4000.0)}, "`depths` must be finite and > 0"),
        ({"depths": (1.0, 2.0, 3.0)}, r"`depths` must have shape \(2,\)"),
        ({"rossby_radius": 0.0}, "`rossby_radius` must be finite and > 0"),
        ({"rossby_radius": -1.0}, "`rossby_radius` must be finite and > 0"),
        ({"rossby_number": 0.0}, "`rossby_number`"),
        ({"friction": -0.1}, "`friction` must be finite and >= 0"),
        ({"hyperviscosity": float("nan")}, "`hyperviscosity`"),
        ({"orography": np.zeros((3, 3))}, "`orography` must be a scalar or have shape"),
        ({"lengths": (12.0, 0.0)}, "`lengths`"),
    ],
)
def test_bad_parameters_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        QG(nx=8, ny=6, **changes)


def test_check_cfl_reports_the_limit(default_run):
    model, _, final, _ = default_run
    limit = float(model.max_stable_dt(final))
    assert 0.05 < limit < 0.25
    assert model.check_cfl(final, 0.5 * limit) < 2.0
    with pytest.raises(ValueError, match=r"Courant number .* \(limit 2\)") as info:
        model.check_cfl(final, 2.0 * limit)
    assert f"{limit:.3g}" in str(info.value)
    with pytest.raises(ValueError, match="concrete values"):
        jax.jit(lambda x: model.check_cfl(x, 0.05))(final)
    with pytest.raises(ValueError, match="not finite"):
        model.check_cfl(final.at[0].set(jnp.nan), 0.05)
    # The damping limit: a huge hyperviscosity needs a tiny step.
    with pytest.raises(ValueError, match="damping limit"):
        model.perturbed(hyperviscosity=1000.0).check_cfl(final, 0.01)


# ----------------------------------------------------------------- the script


def test_experiment_script_quick(tmp_path):
    spec = importlib.util.spec_from_file_location("qg_run", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    metrics = script.main(["--quick", "--out", str(tmp_path), "--seed", "1", "--steps", "100"])
    for name in ("metrics.json", "config.json", "fields.png", "timeseries.png", "qg_run.nc"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["finite"] and saved["steps"] == 100
    for name in ("final_energy", "final_enstrophy", "max_courant", "seconds_per_step"):
        assert math.isfinite(saved[name]) and saved[name] > 0, name
    assert saved["final_energy"] > 10 * saved["initial_energy"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["seed"] == 1 and config["model"]["nx"] == 40

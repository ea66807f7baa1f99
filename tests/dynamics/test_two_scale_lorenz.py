"""Two-scale Lorenz-96: a NumPy oracle written from the equations, energy budget, layout."""

import equinox as eqx
import hypothesis.extra.numpy as hnp
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridda.dynamics import Lorenz96, TwoScaleLorenz96

T0 = jnp.asarray(0.0)


@eqx.filter_jit
def jit_tendency(model, x):
    return model.tendency(T0, x)


def numpy_two_scale(slow, fast, forcing, h, c, b):
    """Lorenz (1996) / Wilks (2005) two-scale model, element by element.

    dX_k/dt = X_{k-1} (X_{k+1} - X_{k-2}) - X_k + F - (h c / b) sum_j Y_{j,k}
    dY_{j,k}/dt = c b Y_{j+1,k} (Y_{j-1,k} - Y_{j+2,k}) - c Y_{j,k} + (h c / b) X_k
    with Y_{J+1,k} = Y_{1,k+1} (one ring of fast variables, k periodic).
    """
    n_slow, n_fast = fast.shape

    def y(j, k):
        # Carry j past the end of a sector into the neighbouring sector.
        while j >= n_fast:
            j -= n_fast
            k += 1
        while j < 0:
            j += n_fast
            k -= 1
        return fast[k % n_slow, j]

    def x(k):
        return slow[k % n_slow]

    dslow = np.empty(n_slow)
    for k in range(n_slow):
        dslow[k] = (
            x(k - 1) * (x(k + 1) - x(k - 2))
            - x(k)
            + forcing
            - h * c / b * sum(fast[k, j] for j in range(n_fast))
        )
    dfast = np.empty((n_slow, n_fast))
    for k in range(n_slow):
        for j in range(n_fast):
            dfast[k, j] = (
                c * b * y(j + 1, k) * (y(j - 1, k) - y(j + 2, k))
                - c * fast[k, j]
                + h * c / b * slow[k]
            )
    return dslow, dfast


PARAMETER_SETS = [
    # (n_slow, n_fast, forcing, coupling h, time_scale c, amplitude_ratio b)
    (4, 1, 10.0, 1.0, 10.0, 10.0),
    (5, 3, 18.0, 0.7, 5.0, 7.0),
    (8, 32, 20.0, 1.0, 10.0, 10.0),
    (36, 10, 10.0, 1.0, 10.0, 10.0),
]


def make_state(n_slow, n_fast, seed):
    rng = np.random.default_rng(seed)
    slow = rng.normal(2.0, 4.0, size=n_slow)
    fast = rng.normal(0.0, 0.5, size=(n_slow, n_fast))
    return slow, fast, np.concatenate([slow, fast.reshape(-1)])


@pytest.mark.parametrize("n_slow, n_fast, forcing, h, c, b", PARAMETER_SETS)
def test_tendency_matches_numpy_oracle(n_slow, n_fast, forcing, h, c, b):
    model = TwoScaleLorenz96(
        n_slow=n_slow,
        n_fast=n_fast,
        forcing=forcing,
        coupling=h,
        time_scale=c,
        amplitude_ratio=b,
    )
    slow, fast, state = make_state(n_slow, n_fast, seed=n_slow * 100 + n_fast)
    dslow, dfast = numpy_two_scale(slow, fast, forcing, h, c, b)
    tendency = jit_tendency(model, jnp.asarray(state))
    assert tendency.shape == (n_slow * (1 + n_fast),)
    np.testing.assert_allclose(tendency[:n_slow], dslow, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tendency[n_slow:], dfast.reshape(-1), rtol=1e-12, atol=1e-12)


def energy_rate_expected(slow, fast, forcing, c):
    # Both advections conserve energy and the coupling terms cancel in pairs.
    return float(-np.sum(slow**2) + forcing * np.sum(slow) - c * np.sum(fast**2))


@pytest.mark.parametrize("n_slow, n_fast, forcing, h, c, b", PARAMETER_SETS)
def test_energy_budget(n_slow, n_fast, forcing, h, c, b):
    model = TwoScaleLorenz96(n_slow, n_fast, forcing, h, c, b)
    slow, fast, state = make_state(n_slow, n_fast, seed=3)
    rate = float(jnp.asarray(state) @ jit_tendency(model, jnp.asarray(state)))
    np.testing.assert_allclose(rate, energy_rate_expected(slow, fast, forcing, c), rtol=1e-11)


@settings(max_examples=20, deadline=None)
@given(
    state=hnp.arrays(np.float64, (5 * 4,), elements=st.floats(-10.0, 10.0)),
    coupling=st.floats(0.0, 2.0),
)
def test_energy_budget_property(state, coupling):
    n_slow, n_fast, forcing, c, b = 5, 3, 10.0, 10.0, 10.0
    model = TwoScaleLorenz96(n_slow, n_fast, forcing, coupling, c, b)
    slow, fast = state[:n_slow], state[n_slow:]
    rate = float(jnp.asarray(state) @ jit_tendency(model, jnp.asarray(state)))
    expected = energy_rate_expected(slow, fast, forcing, c)
    scale = 1.0 + c * b * np.sum(np.abs(state) ** 3) + np.sum(state**2) * (1 + c + coupling * c)
    assert abs(rate - expected) <= 1e-12 * scale


def test_uncoupled_slow_part_is_lorenz96():
    n_slow, n_fast = 6, 4
    model = TwoScaleLorenz96(n_slow, n_fast, forcing=8.0, coupling=0.0)
    _, _, state = make_state(n_slow, n_fast, seed=11)
    single = Lorenz96(n=n_slow, forcing=8.0)
    np.testing.assert_allclose(
        jit_tendency(model, jnp.asarray(state))[:n_slow],
        jit_tendency(single, jnp.asarray(state[:n_slow])),
        rtol=1e-14,
    )


def test_coupling_term():
    n_slow, n_fast, h, c, b = 4, 5, 0.5, 4.0, 8.0
    model = TwoScaleLorenz96(n_slow, n_fast, coupling=h, time_scale=c, amplitude_ratio=b)
    _, fast, state = make_state(n_slow, n_fast, seed=5)
    np.testing.assert_allclose(
        model.coupling_term(jnp.asarray(state)), -h * c / b * fast.sum(axis=1), rtol=1e-14
    )


def test_state_size_and_split():
    n_slow, n_fast = 5, 3
    model = TwoScaleLorenz96(n_slow=n_slow, n_fast=n_fast)
    assert model.state_size == 5 * 4
    state = jnp.arange(20.0)
    slow, fast = model.split(state)
    np.testing.assert_array_equal(slow, np.arange(5.0))
    assert fast.shape == (5, 3)
    # Y_{j,k} (j fastest) sits at n_slow + k * n_fast + j.
    for k in range(n_slow):
        for j in range(n_fast):
            assert fast[k, j] == n_slow + k * n_fast + j

    batch = jnp.stack([state, state + 100.0])
    slow_batch, fast_batch = model.split(batch)
    assert slow_batch.shape == (2, 5)
    assert fast_batch.shape == (2, 5, 3)
    np.testing.assert_array_equal(fast_batch[1], np.asarray(fast) + 100.0)


def test_coordinates():
    n_slow, n_fast = 4, 5
    model = TwoScaleLorenz96(n_slow=n_slow, n_fast=n_fast)
    coordinates = np.asarray(model.coordinates())
    assert coordinates.shape == (model.state_size,)
    np.testing.assert_array_equal(coordinates[:n_slow], np.arange(n_slow))
    fast = coordinates[n_slow:].reshape(n_slow, n_fast)
    # Each sector's fast variables are evenly spaced around their slow variable.
    np.testing.assert_allclose(fast.mean(axis=1), np.arange(n_slow), atol=1e-14)
    np.testing.assert_allclose(np.diff(coordinates[n_slow:]), 1.0 / n_fast, atol=1e-14)
    assert fast.min() >= -0.5
    assert fast.max() < n_slow - 0.5
    assert model.domain_length() == float(n_slow)


def test_default_initial_state_shape():
    model = TwoScaleLorenz96(n_slow=8, n_fast=32)
    assert model.default_initial_state().shape == (8 * 33,)


def test_constructor_errors():
    with pytest.raises(ValueError, match="`n_slow`"):
        TwoScaleLorenz96(n_slow=3, n_fast=10)
    with pytest.raises(ValueError, match="`n_fast`"):
        TwoScaleLorenz96(n_slow=8, n_fast=0)

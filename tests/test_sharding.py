"""Sharded runs equal single-device runs (4 forced host CPU devices, see conftest).

The batch of 4D-Var windows split over devices is checked by the quick run of
`experiments/benchmarks/sharding.py` (tests/test_sharding_benchmark.py)."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda as hda
from hybridda.dynamics import Lorenz96
from hybridda.filters import (
    ETKF,
    LETKF,
    AugmentedModel,
    EnKF,
    Localisation,
    Multiplicative,
    ParameterAugmentation,
)
from hybridda.observe import GaussianError, every_kth
from hybridda.sharding import device_mesh, member_sharding, shard_batch, shard_members

DEVICES = 4
N, n, CYCLES = 8, 20, 15

pytestmark = pytest.mark.skipif(
    len(jax.devices()) < DEVICES,
    reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=4 (set by conftest)",
)


@pytest.fixture(scope="module")
def twin():
    keys = jax.random.split(jax.random.key(0), 4)
    model = hda.Resolvent(Lorenz96(n=n, forcing=8.0), dt=0.05)
    x0 = hda.spin_up(model, model.dynamics.default_initial_state(), 300)
    truth = hda.simulate(model, x0, CYCLES)[1:]
    observation = every_kth(n, 2, GaussianError(1.0))
    y = hda.synthesise_observations(observation, truth, keys[1])
    E0 = hda.initial_ensemble(keys[2], x0, N, 1.0)
    return model, observation, y, E0, keys[3]


def _per_device_carry_shapes(compiled_text: str) -> set[str]:
    """Shapes of the f64 arrays carried by the compiled program's while loops."""
    shapes = set()
    for line in compiled_text.split("\n"):
        if " while(" in line:
            shapes.update(re.findall(r"f64\[\d+,\d+\]", line.split(" while(")[0]))
    return shapes


@pytest.mark.parametrize(
    "method",
    [
        ETKF(inflation=Multiplicative(1.02)),
        EnKF(inflation=Multiplicative(1.02)),  # stochastic: the same draws on any mesh
        LETKF(localisation=Localisation(radius=3.0), inflation=Multiplicative(1.02)),
    ],
    ids=["etkf", "enkf", "letkf"],
)
def test_sharded_filter_run_equals_single_device(twin, method):
    model, observation, y, E0, key = twin
    run = jax.jit(lambda E: hda.assimilate(model, observation, method, y, E, key))
    single = run(E0)
    sharded_E0 = shard_members(E0, device_mesh(DEVICES))
    sharded = run(sharded_E0)
    np.testing.assert_allclose(sharded.analysis_mean, single.analysis_mean, rtol=0, atol=1e-11)
    np.testing.assert_allclose(sharded.final_ensemble, single.final_ensemble, rtol=0, atol=1e-11)
    # The members stay split over the devices, also inside the cycling loop.
    assert sharded.final_ensemble.sharding.spec == member_sharding(device_mesh(DEVICES)).spec
    carried = _per_device_carry_shapes(run.lower(sharded_E0).compile().as_text())
    assert f"f64[{N // DEVICES},{n}]" in carried
    assert f"f64[{N},{n}]" not in carried


def test_sharded_online_parameter_learning_equals_single_device(twin):
    model, observation, y, E0, key = twin
    augmented = AugmentedModel(
        hda.Resolvent(Lorenz96(n=n, forcing=7.0), dt=0.05), where=lambda m: m.dynamics.forcing
    )
    Z0 = augmented.initial_ensemble(jax.random.key(5), E0, parameter_std=0.5)
    method = ParameterAugmentation(ETKF(inflation=Multiplicative(1.02)), parameter_noise_std=0.01)
    run = jax.jit(lambda Z: hda.assimilate(augmented, observation, method, y, Z, key))
    single = run(Z0)
    sharded = run(shard_members(Z0, device_mesh(DEVICES)))
    np.testing.assert_allclose(sharded.analysis_mean, single.analysis_mean, rtol=0, atol=1e-11)


def test_sharded_loss_gradient_equals_single_device(twin):
    model, observation, y, E0, key = twin
    method = ETKF(inflation=Multiplicative(1.02))

    def loss(parts, E):
        model, method = parts
        return hda.cycled_loss(model, observation, method, y, E, key)

    gradient = eqx.filter_jit(eqx.filter_grad(loss))
    single = gradient((model, method), E0)
    sharded = gradient((model, method), shard_members(E0, device_mesh(DEVICES)))
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-11)


def test_bad_sharding_requests_name_the_numbers():
    mesh = device_mesh(DEVICES)
    with pytest.raises(ValueError, match=r"ensemble size N \(6\).*number of devices \(4\)"):
        shard_members(jnp.zeros((6, 3)), mesh)
    with pytest.raises(ValueError, match=r"asks for 64 devices but 4 are available"):
        device_mesh(64)
    with pytest.raises(ValueError, match=r"no axis 'batch'"):
        shard_batch(jnp.zeros((4, 2)), mesh)
    with pytest.raises(ValueError, match=r"same leading .*\['4', '8'\]"):
        shard_batch((jnp.zeros((4, 2)), jnp.zeros((8,))), device_mesh(DEVICES, axis="batch"))
    with pytest.raises(ValueError, match=r"batch size \(6\)"):
        shard_batch(jnp.zeros((6, 2)), device_mesh(DEVICES, axis="batch"))
    # (under the tests' runtime type checking the annotation catches it first)
    with pytest.raises((ValueError, TypeError), match=r"shape \(N, n\)|'N n'"):
        shard_members(jnp.zeros(8), mesh)

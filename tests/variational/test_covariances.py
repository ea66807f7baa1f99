"""Background covariance models: each entry against its definition, pair by pair."""

import jax.numpy as jnp
import numpy as np
import pytest

from hybridda.dynamics import QG
from hybridda.variational import channel_gaussian_covariance, climatological_covariance


def test_climatological_covariance_is_the_sample_covariance():
    rng = np.random.default_rng(66)
    states = rng.standard_normal((50, 4)) @ rng.standard_normal((4, 4))
    np.testing.assert_allclose(
        climatological_covariance(jnp.asarray(states)), np.cov(states, rowvar=False), rtol=1e-12
    )


def test_channel_gaussian_covariance_matches_the_kernel_entry_by_entry():
    model = QG(nx=6, ny=4)
    std, length, rho, nugget = 0.3, 1.7, 0.4, 1e-3
    B = channel_gaussian_covariance(model, std, length, rho, nugget)
    # State order (layer, y, x) from the model's own coordinates.
    xy = np.asarray(model.grid_coordinates())
    layer = np.repeat([0, 1], model.ny * model.nx)
    expected = np.empty_like(B)
    for i in range(B.shape[0]):
        for j in range(B.shape[0]):
            dx = abs(xy[i, 0] - xy[j, 0])
            dx = min(dx, model.lengths[0] - dx)  # periodic in x
            dy = xy[i, 1] - xy[j, 1]  # walls in y: no wrap
            c_layer = 1.0 if layer[i] == layer[j] else rho
            expected[i, j] = std**2 * c_layer * np.exp(-0.5 * (dx**2 + dy**2) / length**2)
    expected += nugget * std**2 * np.eye(B.shape[0])
    np.testing.assert_allclose(B, expected, rtol=1e-13, atol=1e-15)
    np.linalg.cholesky(B)  # positive definite


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"std": 0.0}, "std"),
        ({"length": -1.0}, "length"),
        ({"layer_correlation": 1.0}, "layer_correlation"),
        ({"nugget": -1e-3}, "nugget"),
    ],
)
def test_channel_gaussian_covariance_rejects_bad_settings(kwargs, name):
    settings = {"std": 0.3, "length": 1.0} | kwargs
    with pytest.raises(ValueError, match=name):
        channel_gaussian_covariance(QG(nx=6, ny=4), **settings)

"""Background-error covariance models for variational DA: climatology and Gaussian kernels."""

import numpy as np
from jaxtyping import Array, Float


def climatological_covariance(states: Float[Array, "K n"]) -> Float[Array, "n n"]:
    """Sample covariance of a long trajectory (rows are times)."""
    anomalies = states - states.mean(axis=0, keepdims=True)
    return anomalies.T @ anomalies / (states.shape[0] - 1)


def channel_gaussian_covariance(
    model,
    std: float,
    length: float,
    layer_correlation: float = 0.5,
    nugget: float = 1e-6,
) -> np.ndarray:
    r"""A separable Gaussian covariance on a layered zonal channel (e.g. the QG model).

    $$B = \sigma^2\,(C_\text{layers} \otimes C_y \otimes C_x) + \epsilon\,\sigma^2 I,\qquad
    (C_x)_{ij} = \exp\!\Big(-\frac{d_x(x_i, x_j)^2}{2\ell^2}\Big),\quad
    (C_y)_{ij} = \exp\!\Big(-\frac{(y_i - y_j)^2}{2\ell^2}\Big),$$

    with $d_x$ the periodic distance in x (period ``L_x``) and $C_\text{layers}$ the 2 × 2
    matrix with `layer_correlation` off the diagonal, in the state order of
    [`hybridda.dynamics.QG`][] (layer, y, x). The nugget ``ε`` keeps ``B`` numerically
    positive definite: a Gaussian kernel sampled on a grid finer than ``ℓ`` is singular
    to round-off.

    **Arguments:**

    - `model`: a model with ``grid() -> (x, y)`` and ``lengths = (L_x, L_y)`` (the QG
      channel); two layers.
    - `std`: ``σ``, the standard deviation of every state variable.
    - `length`: ``ℓ``, the correlation length, in the model's length unit.
    - `layer_correlation`: correlation between the two layers at the same point, in (-1, 1).
    - `nugget`: ``ε``, relative diagonal load.

    Returns a NumPy array of shape ``(2 ny nx, 2 ny nx)`` (float64).
    """
    if not std > 0 or not length > 0:
        raise ValueError(
            f"`std` and `length` must be positive, got std={std!r}, length={length!r}."
        )
    if not -1 < layer_correlation < 1:
        raise ValueError(f"`layer_correlation` must lie in (-1, 1), got {layer_correlation!r}.")
    if not nugget >= 0:
        raise ValueError(f"`nugget` must be non-negative, got {nugget!r}.")
    x, y = model.grid()
    distance_x = np.abs(x[:, None] - x[None, :])
    distance_x = np.minimum(distance_x, model.lengths[0] - distance_x)
    c_x = np.exp(-0.5 * (distance_x / length) ** 2)
    c_y = np.exp(-0.5 * ((y[:, None] - y[None, :]) / length) ** 2)
    c_layers = np.array([[1.0, layer_correlation], [layer_correlation, 1.0]])
    covariance = std**2 * np.kron(c_layers, np.kron(c_y, c_x))
    return covariance + nugget * std**2 * np.eye(covariance.shape[0])


__all__ = ["channel_gaussian_covariance", "climatological_covariance"]

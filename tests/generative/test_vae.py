"""VAE: ELBO gradients against finite differences, the probabilistic-PCA optimum,
likelihoods, training with resumable checkpoints, and errors on bad input."""

import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from hybridda.generative import (
    VAE,
    CensoredGaussian,
    Gaussian,
    HeteroscedasticGaussian,
    fine_tune,
    fit_vae,
    mlp_vae,
    negative_elbo,
)

KEY = jax.random.key(0)


class LinearEncoder(eqx.Module):
    """``q(z | x) = N(V (x - offset), diag exp(log_var))``, the variance independent of x."""

    matrix: jax.Array
    offset: jax.Array
    log_var: jax.Array

    def __call__(self, x):
        return self.matrix @ (x - self.offset), self.log_var


class LinearDecoder(eqx.Module):
    matrix: jax.Array
    offset: jax.Array

    def __call__(self, z):
        return self.matrix @ z + self.offset


def ppca(data: np.ndarray, latent: int):
    """Maximum-likelihood probabilistic PCA (Tipping and Bishop 1999, eqs. 7-8).

    Returns ``W = U_q (Λ_q - σ² I)^{1/2}`` (orthogonal columns), σ², the mean and the
    exact log-likelihood of each row under ``N(mean, W Wᵀ + σ² I)``.
    """
    mean = data.mean(axis=0)
    S = np.cov(data, rowvar=False, ddof=0)
    eigenvalues, U = np.linalg.eigh(S)
    eigenvalues, U = eigenvalues[::-1], U[:, ::-1]
    sigma2 = eigenvalues[latent:].mean()
    W = U[:, :latent] * np.sqrt(eigenvalues[:latent] - sigma2)
    C = W @ W.T + sigma2 * np.eye(data.shape[1])
    log_likelihood = scipy.stats.multivariate_normal(mean, C).logpdf(data)
    return W, sigma2, mean, log_likelihood


def ppca_data(seed=0, examples=400, n=4, latent=2):
    rng = np.random.default_rng(seed)
    W_true = rng.standard_normal((n, latent))
    z = rng.standard_normal((examples, latent))
    return z @ W_true.T + 0.3 * rng.standard_normal((examples, n)) + rng.standard_normal(n)


def test_elbo_of_the_exact_ppca_posterior_is_the_log_likelihood():
    # At the PPCA optimum with orthogonal columns of W, the posterior
    # N(M⁻¹ Wᵀ (x - μ), σ² M⁻¹), M = Wᵀ W + σ² I, is diagonal, so a linear VAE holds it
    # exactly: log p(x|z) + log p(z) - log q(z|x) = log p(x) for every draw z (the ELBO
    # is tight), and the analytic-KL ELBO agrees up to Monte Carlo error.
    data = ppca_data()
    W, sigma2, mean, log_likelihood = ppca(data, 2)
    M = W.T @ W + sigma2 * np.eye(2)
    assert np.allclose(M, np.diag(np.diag(M)))
    encoder = LinearEncoder(
        jnp.asarray(np.linalg.solve(M, W.T)),
        jnp.asarray(mean),
        jnp.asarray(np.log(sigma2 / np.diag(M))),
    )
    decoder = LinearDecoder(jnp.asarray(W), jnp.asarray(mean))
    vae = VAE(encoder, decoder, Gaussian(np.sqrt(sigma2), learn_std=True), 4, 2)
    keys = jax.random.split(KEY, data.shape[0])
    x = jnp.asarray(data)
    elbo = eqx.filter_jit(jax.vmap(lambda v, xi, k: v.elbo(xi, k, analytic_kl=False), (None, 0, 0)))
    np.testing.assert_allclose(elbo(vae, x, keys), log_likelihood, rtol=0, atol=1e-10)
    averaged = -eqx.filter_jit(negative_elbo)(vae, x, KEY, samples=256)
    assert abs(float(averaged) - log_likelihood.mean()) < 0.01


def test_trained_linear_vae_approaches_the_ppca_log_likelihood_from_below():
    # Lucas et al. (2019): the global optimum of a linear VAE's ELBO is the PPCA
    # likelihood. Trained from a random start the bound stays below it and gets close.
    data = ppca_data(seed=1)
    _, _, mean, log_likelihood = ppca(data, 2)
    k1, k2, k3 = jax.random.split(KEY, 3)
    vae = VAE(
        LinearEncoder(0.1 * jax.random.normal(k1, (2, 4)), jnp.asarray(mean), jnp.zeros(2)),
        LinearDecoder(0.1 * jax.random.normal(k2, (4, 2)), jnp.asarray(mean)),
        Gaussian(1.0, learn_std=True),
        4,
        2,
    )
    result = fit_vae(vae, data, key=k3, steps=1500, batch_size=None, learning_rate=3e-2, samples=4)
    elbo = -float(eqx.filter_jit(negative_elbo)(result.vae, jnp.asarray(data), KEY, samples=256))
    optimum = float(log_likelihood.mean())
    assert result.losses[-1] < result.losses[0]
    assert elbo <= optimum + 0.01  # a lower bound, up to Monte Carlo error
    assert elbo > optimum - 0.05  # and a tight one at the optimum


@pytest.mark.parametrize(
    "likelihood",
    [
        Gaussian(0.5, learn_std=True),
        HeteroscedasticGaussian(min_std=1e-3),
        CensoredGaussian(lower=-1.0, upper=jnp.array([1.0, 0.5, jnp.inf]), std=0.4, learn_std=True),
    ],
    ids=["gaussian-learnt-std", "heteroscedastic", "censored"],
)
def test_elbo_gradient_matches_central_differences(likelihood):
    key_model, key_data, key_direction, key_noise = jax.random.split(KEY, 4)
    data = jax.random.normal(key_data, (6, 3))
    data = data.at[0, 0].set(-1.0).at[1, 1].set(0.5)  # on bounds (censored case)
    vae = mlp_vae(3, 2, key=key_model, likelihood=likelihood, width=8, depth=1, data=data)
    params, static = eqx.partition(vae, eqx.is_inexact_array)

    # One compiled function for both the gradient and the shifted values.
    value_and_grad = jax.jit(
        jax.value_and_grad(
            lambda p: negative_elbo(eqx.combine(p, static), data, key_noise, samples=2)
        )
    )
    gradient = value_and_grad(params)[1]
    leaves, treedef = jax.tree.flatten(params)
    directions = jax.tree.unflatten(
        treedef,
        [
            jax.random.normal(k, leaf.shape, leaf.dtype)
            for k, leaf in zip(jax.random.split(key_direction, len(leaves)), leaves, strict=True)
        ],
    )
    # The MLP statistics and the decoder offset are fixed (zero gradient): leave them out
    # of the direction so that the finite difference sees only trained parameters.
    directions = jax.tree.map(lambda d, g: jnp.where(g == 0, 0.0, d), directions, gradient)
    pairs = zip(jax.tree.leaves(gradient), jax.tree.leaves(directions), strict=True)
    analytic = sum(jnp.vdot(g, d) for g, d in pairs)
    h = 1e-5

    def shifted(sign):
        return value_and_grad(jax.tree.map(lambda p, d: p + sign * h * d, params, directions))[0]

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * h)
    assert abs(float(analytic)) > 1e-3
    np.testing.assert_allclose(float(analytic), float(numeric), rtol=1e-6)


def test_censored_likelihood_is_a_distribution_that_respects_the_bounds():
    likelihood = CensoredGaussian(lower=0.0, upper=1.0, std=0.3)
    head = jnp.array([0.8])
    cells = 4000
    midpoints = (jnp.arange(cells) + 0.5) / cells  # the midpoint rule on (0, 1)
    log_density = eqx.filter_jit(jax.vmap(lambda x: likelihood.log_prob(x[None], head)))
    interior = float(jnp.sum(jnp.exp(log_density(midpoints))) / cells)
    at_lower = float(jnp.exp(likelihood.log_prob(jnp.array([0.0]), head)))
    at_upper = float(jnp.exp(likelihood.log_prob(jnp.array([1.0]), head)))
    np.testing.assert_allclose(at_lower, scipy.stats.norm.cdf(0.0, 0.8, 0.3), rtol=1e-12)
    np.testing.assert_allclose(at_upper, scipy.stats.norm.sf(1.0, 0.8, 0.3), rtol=1e-12)
    np.testing.assert_allclose(interior + at_lower + at_upper, 1.0, atol=1e-6)
    sample = eqx.filter_jit(jax.vmap(lambda k: likelihood.sample(jnp.array([0.95]), k)))
    draws = sample(jax.random.split(KEY, 500))
    assert float(draws.min()) >= 0.0 and float(draws.max()) == 1.0
    assert float(likelihood.point(jnp.array([1.4]))[0]) == 1.0


def test_fit_resumes_bit_identically_from_a_checkpoint(tmp_path):
    data = jnp.asarray(ppca_data(seed=2, examples=64))
    vae = mlp_vae(4, 2, key=KEY, width=8, depth=1, data=data)
    kwargs = dict(key=jax.random.key(3), steps=40, batch_size=16, learning_rate=1e-2)
    plain = fit_vae(vae, data, **kwargs)
    directory = tmp_path / "vae"
    first = fit_vae(vae, data, checkpoint_dir=directory, checkpoint_every=20, **kwargs)
    shutil.rmtree(directory / "40")  # as if interrupted after step 20
    resumed = fit_vae(
        vae, data, checkpoint_dir=directory, checkpoint_every=20, resume=True, **kwargs
    )
    for result in (first, resumed):
        np.testing.assert_array_equal(result.losses, plain.losses)
        for a, b in zip(jax.tree.leaves(result.vae), jax.tree.leaves(plain.vae), strict=True):
            if eqx.is_array(a):
                np.testing.assert_array_equal(a, b)
    assert plain.losses[-5:].mean() < plain.losses[:5].mean()
    with pytest.raises(FileExistsError, match="--resume"):
        fit_vae(vae, data, checkpoint_dir=directory, checkpoint_every=20, **kwargs)


def test_fine_tune_trains_only_the_selected_leaves():
    data = jnp.asarray(ppca_data(seed=3, examples=32))
    vae = mlp_vae(4, 2, key=KEY, width=8, depth=1, data=data)

    def decoder_only(v):
        return eqx.tree_at(lambda m: m.decoder, jax.tree.map(lambda _: False, v), True)

    tuned = eqx.filter_jit(fine_tune)(
        vae, data, KEY, steps=3, learning_rate=1e-2, trainable=decoder_only
    )
    for before, after in ((vae.encoder, tuned.encoder), (vae.decoder, tuned.decoder)):
        changed = [
            not np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)
            if eqx.is_inexact_array(a)
        ]
        assert any(changed) == (before is vae.decoder)


def test_bad_input_raises_errors_naming_the_argument():
    with pytest.raises(ValueError, match="`latent_size`"):
        mlp_vae(3, 0, key=KEY)
    vae = mlp_vae(3, 2, key=KEY, width=4, depth=1)
    with pytest.raises(ValueError, match="`latent_size`"):
        VAE(vae.encoder, vae.decoder, vae.likelihood, 3, 0)
    wrong_decoder = LinearDecoder(jnp.ones((4, 2)), jnp.zeros(4))
    with pytest.raises(ValueError, match="`decoder` output has shape \\(4,\\).*data shape"):
        VAE(vae.encoder, wrong_decoder, Gaussian(), 3, 2)
    with pytest.raises(ValueError, match="`encoder`"):
        VAE(vae.encoder, vae.decoder, vae.likelihood, 3, 3)
    with pytest.raises(ValueError, match="`std`"):
        Gaussian(std=jnp.ones(2)).check_data_size(3)
    with pytest.raises(ValueError, match="`std`"):
        Gaussian(std=0.0)
    with pytest.raises(ValueError, match="`lower` must be < `upper`"):
        CensoredGaussian(lower=1.0, upper=1.0)
    data = np.zeros((5, 3))
    data[2, 1] = np.nan
    with pytest.raises(ValueError, match="`data` contains 1 non-finite"):
        fit_vae(vae, data, key=KEY, steps=1)
    with pytest.raises(ValueError, match="`data` has 2 variables"):
        fit_vae(vae, np.zeros((5, 2)), key=KEY, steps=1)
    with pytest.raises(ValueError, match="`steps`"):
        fit_vae(vae, np.zeros((5, 3)), key=KEY, steps=0)

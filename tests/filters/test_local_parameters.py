"""Local parameters and localised augmented filters: a local parameter is a state variable.

Malartic, Farchi and Bocquet (2022) treat a local parameter (a forcing F_i per grid point)
as an extra state variable at its position. The oracle: the same filter run on an
explicitly enlarged state [x; θ_local] whose localisation coordinates list the
parameters' positions after the state's.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hybridda
from hybridda.dynamics import MultiLayerLorenz96
from hybridda.filters import (
    LETKF,
    AugmentedModel,
    DomainCovarianceEnKF,
    EnKF,
    Localisation,
    LocalParameters,
    Multiplicative,
    ParameterAugmentation,
)
from hybridda.observe import GaussianError, IndexObservation


@eqx.filter_jit
def analyse_all(cases, key):
    """``method.analysis(E, y, observation, key)`` of each case, compiled together."""
    return [method.analysis(E, y, observation, key) for method, E, y, observation in cases]


KEY = jax.random.key(0)
N_STATE, INDICES, STD = 12, [0, 3, 4, 8, 10], 0.7
# Three local parameters between and on grid points, then two global ones.
POSITIONS = np.array([1.5, 5.0, 9.0])


def _problem(seed=0, members=6, globals_=2):
    rng = np.random.default_rng(seed)
    q_local = POSITIONS.shape[0]
    width = N_STATE + q_local + globals_
    offset = np.r_[np.zeros(N_STATE), 3.0 + np.arange(q_local), -np.ones(globals_)]
    Z = jnp.asarray(rng.standard_normal((members, width)) + offset)
    y = jnp.asarray(rng.standard_normal(len(INDICES)))
    return Z, y, IndexObservation(INDICES, N_STATE, GaussianError(STD))


def _enlarged(make_localisation):
    """The observation and a localisation of the enlarged state [x; θ_local]."""
    size = N_STATE + POSITIONS.shape[0]
    observation = IndexObservation(INDICES, size, GaussianError(STD))
    coordinates = jnp.asarray(np.r_[np.arange(N_STATE), POSITIONS], dtype=float)
    return observation, make_localisation(coordinates)


def _filters(kind, coordinates=None):
    """The filter of `kind`, on the state's geometry or (with `coordinates`) another."""

    def loc(radius, **kwargs):
        return Localisation(radius, coordinates=coordinates, domain_length=N_STATE, **kwargs)

    if kind == "letkf":
        return LETKF(loc(2.0))
    if kind == "enkf":
        return EnKF(localisation=loc(2.5))
    return DomainCovarianceEnKF(domain=loc(2.0), covariance=loc(1.5))


@pytest.mark.parametrize("kind", ["letkf-domains", "enkf", "domain-covariance"])
def test_a_local_parameter_is_updated_like_a_state_variable_at_its_position(kind):
    # Augmented analysis of [x; θ_local; θ_global] with the local parameters at POSITIONS
    # against the same filter on the enlarged state [x; θ_local] (global parameters
    # dropped: they do not act on the others' updates). Linear-Gaussian analysis,
    # same key: equal to round-off.
    Z, y, observation = _problem()
    q_local, n_big = POSITIONS.shape[0], N_STATE + POSITIONS.shape[0]
    base = kind.removesuffix("-domains")
    local = LocalParameters(q_local, POSITIONS)
    big_observation, big_filter = _enlarged(lambda c: _filters(base, c))
    filter_ = _filters(base)
    if kind == "letkf-domains":  # the state's domains precomputed (the parameters' not)
        filter_ = LETKF(
            filter_.localisation, domains=filter_.localisation.local_domains(observation)
        )
        big_filter = LETKF(
            big_filter.localisation, domains=big_filter.localisation.local_domains(big_observation)
        )
    ours, reference = analyse_all(
        [
            (ParameterAugmentation(filter_, local_parameters=local), Z, y, observation),
            (big_filter, Z[:, :n_big], y, big_observation),
        ],
        KEY,
    )
    np.testing.assert_allclose(ours[:, :n_big], reference, rtol=0, atol=1e-11)
    # Not vacuous: every local parameter moved.
    moved = np.abs(np.asarray(ours - Z)).max(axis=0)[N_STATE:n_big]
    assert moved.min() > 1e-3


def test_enkf_gives_a_global_parameter_the_mean_of_its_increments_at_every_site():
    # The "mean" rule for global parameters in the covariance-localised EnKF (the mean
    # of the state variables' tapers) is the mean over n copies of the parameter, each
    # a local parameter at one state variable's position: the update is linear in the
    # tapers. (The LETKF's rule is checked in test_augmented.py.)
    Z, y, observation = _problem(seed=4, globals_=1)
    q_local = POSITIONS.shape[0]
    Z_copies = jnp.concatenate([Z[:, :-1], jnp.tile(Z[:, -1:], (1, N_STATE))], axis=1)
    local = LocalParameters(q_local, POSITIONS)
    at_every_site = LocalParameters(
        q_local + N_STATE, jnp.asarray(np.r_[POSITIONS, np.arange(N_STATE)], dtype=float)
    )
    enkf = _filters("enkf")
    ours, copied = analyse_all(
        [
            (ParameterAugmentation(enkf, local_parameters=local), Z, y, observation),
            (ParameterAugmentation(enkf, local_parameters=at_every_site), Z_copies, y, observation),
        ],
        KEY,
    )
    np.testing.assert_allclose(ours[:, :-1], copied[:, :-N_STATE], rtol=0, atol=1e-11)
    np.testing.assert_allclose(ours[:, -1], copied[:, -N_STATE:].mean(axis=1), rtol=0, atol=1e-11)
    assert np.abs(np.asarray(ours[:, -1] - Z[:, -1])).max() > 1e-3


def test_local_parameters_at_the_state_variables_share_their_domains():
    # Without coordinates, local parameter j sits at state variable j: with the LETKF it
    # gets exactly variable j's transform (the state's precomputed domains are reused).
    rng = np.random.default_rng(1)
    n = N_STATE
    Z = jnp.asarray(rng.standard_normal((6, 2 * n + 1)))
    observation = IndexObservation(INDICES, n, GaussianError(STD))
    y = jnp.asarray(rng.standard_normal(len(INDICES)))
    localisation = Localisation(2.0)
    letkf = LETKF(localisation, domains=localisation.local_domains(observation))
    explicit = ParameterAugmentation(
        LETKF(localisation), local_parameters=LocalParameters(n, jnp.arange(n, dtype=float))
    )
    ours, reference = analyse_all(
        [
            (ParameterAugmentation(letkf, local_parameters=LocalParameters(n)), Z, y, observation),
            (explicit, Z, y, observation),
        ],
        KEY,
    )
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-11)


def test_infinite_radius_localised_augmented_enkf_is_the_augmented_enkf():
    # Tapers of ones: the covariance-localised augmented EnKF is the unlocalised one
    # (same key, same perturbations), local and global parameters alike; so is the
    # DomainCovarianceEnKF with infinite radii.
    Z, y, observation = _problem(seed=2, members=8)
    inf = Localisation(math.inf)
    local = LocalParameters(POSITIONS.shape[0], POSITIONS)
    methods = [
        ParameterAugmentation(EnKF()),
        ParameterAugmentation(EnKF(localisation=inf), local_parameters=local),
        ParameterAugmentation(DomainCovarianceEnKF(inf, inf), local_parameters=local),
    ]
    reference, *localised = analyse_all([(m, Z, y, observation) for m in methods], KEY)
    for ours in localised:
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-11)


def test_domain_covariance_enkf_with_a_global_domain_is_the_covariance_localised_enkf():
    # An infinite domain radius leaves covariance localisation alone (the plain filter,
    # no augmentation), with its tapers on 2-D (horizontal, layer) coordinates split by
    # `axes`: the vertical covariance taper of the radiances.
    rng = np.random.default_rng(3)
    model = MultiLayerLorenz96(layers=4, n=8)
    observation = hybridda.observe.RadianceObservation(
        hybridda.observe.radiance_weights(4, 2), 8, GaussianError(0.5), jnp.asarray([0, 3, 5])
    )
    E = jnp.asarray(rng.standard_normal((7, model.state_size)))
    y = jnp.asarray(rng.standard_normal(observation.obs_size))

    def loc(radius, axes):
        return Localisation(
            radius, coordinates=model.coordinates(), domain_length=model.domain_length(), axes=axes
        )

    vertical = loc(1.0, 1)
    ours, reference, unlocalised = analyse_all(
        [
            (DomainCovarianceEnKF(loc(math.inf, 0), vertical), E, y, observation),
            (EnKF(localisation=vertical), E, y, observation),
            (EnKF(), E, y, observation),
        ],
        KEY,
    )
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-11)
    # The vertical taper acts: the unlocalised EnKF differs (same key).
    assert np.abs(np.asarray(ours - unlocalised)).max() > 1e-2


def test_augmented_model_puts_local_parameters_first():
    forcing = jnp.arange(10.0).reshape(2, 5)
    model = AugmentedModel(
        hybridda.Resolvent(MultiLayerLorenz96(layers=2, n=5, forcing=forcing, coupling=0.3)),
        where=lambda m: (m.dynamics.forcing, m.dynamics.coupling),
        local_where=lambda m: m.dynamics.forcing,
    )
    assert (model.parameter_size, model.local_parameter_size) == (11, 10)
    np.testing.assert_array_equal(model.parameters(), np.r_[np.arange(10.0), 0.3])
    learnt = model.with_parameters(jnp.arange(11.0) + 100).dynamics
    np.testing.assert_array_equal(learnt.forcing, np.arange(100.0, 110.0).reshape(2, 5))
    assert float(learnt.coupling) == 110.0
    assert model.local_parameters().size == 10  # at the 10 state variables
    assert model.local_parameters(jnp.zeros((10, 2))).coordinates.shape == (10, 2)


# ------------------------------------------- parameters global along some axes (per layer)

LAYERS, COLUMNS = 3, 8


def _layered_problem(seed=5, members=7):
    """A multi-layer state with radiances, and [x; θ_layer (P); θ_global (1)]."""
    rng = np.random.default_rng(seed)
    model = MultiLayerLorenz96(layers=LAYERS, n=COLUMNS)
    observation = hybridda.observe.RadianceObservation(
        hybridda.observe.radiance_weights(LAYERS, 2),
        COLUMNS,
        GaussianError(0.5),
        jnp.asarray([0, 2, 3, 6]),
    )
    offset = np.r_[np.zeros(model.state_size), 5.0 + np.arange(LAYERS), 1.0]
    Z = jnp.asarray(rng.standard_normal((members, model.state_size + LAYERS + 1)) + offset)
    y = jnp.asarray(rng.standard_normal(observation.obs_size))

    def loc(radius, axes):
        return Localisation(
            radius, coordinates=model.coordinates(), domain_length=model.domain_length(), axes=axes
        )

    return model, Z, y, observation, DomainCovarianceEnKF(loc(2.0, 0), loc(1.2, 1))


def test_shared_domains_solve_each_column_once_with_the_same_analysis():
    # The layers of one column share their horizontal domain: the filter solves one
    # p x p system per column (3 x fewer here) and gathers; the analysis is the
    # per-variable one to round-off, with local parameters at the state variables too.
    from hybridda.filters.domain_covariance import domain_covariance_update, shared_domains

    model, Z, y, observation, filter_ = _layered_problem()
    first, inverse = filter_.domain_groups
    assert len(first) == COLUMNS and len(inverse) == model.state_size
    assert shared_domains(Localisation(2.0)) is None  # 1-D, every domain distinct
    # Groups are found at construction: an eqx.tree_at that swaps the domain for one
    # along the other axis is detected (one solve per variable, never stale groups).
    swapped = eqx.tree_at(lambda f: f.domain, filter_, filter_.covariance)
    assert swapped.current_domain_groups() is None
    assert len(DomainCovarianceEnKF(filter_.covariance, filter_.domain).domain_groups[0]) == LAYERS
    n = model.state_size
    E = Z[:, :n]

    @eqx.filter_jit
    def both(filter_, E, y, observation):
        stats = hybridda.filters.ensemble_innovations(E, y, observation)
        tapers = dict(
            domain_taper=filter_.domain.state_to_obs(observation),
            covariance_taper=filter_.covariance.state_to_obs(observation),
            obs_to_obs=filter_.covariance.obs_to_obs(observation),
            averaged_domains=n,
        )
        return [
            domain_covariance_update(E, stats, KEY, **tapers, domain_groups=groups)
            for groups in ((first, inverse), None)
        ]

    grouped, plain = both(filter_, E, y, observation)
    np.testing.assert_allclose(grouped, plain, rtol=0, atol=1e-12)
    # Local parameters at the state variables reuse the groups; explicit coordinates
    # (the same positions) are solved one by one: same analysis.
    Zl = jnp.concatenate([E, E[:, ::-1] + 8.0], axis=1)
    at_state, explicit = analyse_all(
        [
            (ParameterAugmentation(filter_, local_parameters=local), Zl, y, observation)
            for local in (LocalParameters(n), LocalParameters(n, model.coordinates()))
        ],
        KEY,
    )
    np.testing.assert_allclose(at_state, explicit, rtol=0, atol=1e-11)
    assert np.abs(np.asarray(at_state - Zl)).max(axis=0)[n:].min() > 1e-4


def test_a_per_layer_parameter_is_the_mean_of_copies_in_every_column():
    # One forcing per layer, global along the horizontal (axis 0): it gets the mean of
    # its increments over the state's domains, tapered vertically at its layer. Oracle:
    # a local copy of it in every column of its layer (a local parameter at (i, z),
    # analysed like a state variable there), averaged over the columns; the state and
    # the global parameter are unchanged by the parameters' layout.
    model, Z, y, observation, filter_ = _layered_problem()
    n = model.state_size
    layer_position = np.stack([np.zeros(LAYERS), np.arange(LAYERS)], axis=1)
    per_layer = LocalParameters(LAYERS, layer_position, global_axes=(0,))
    z, i = np.meshgrid(np.arange(LAYERS), np.arange(COLUMNS), indexing="ij")
    copies = LocalParameters(LAYERS * COLUMNS, np.stack([i.ravel(), z.ravel()], axis=1))
    layer_block = Z[:, n : n + LAYERS]
    Z_copies = jnp.concatenate([Z[:, :n], jnp.repeat(layer_block, COLUMNS, axis=1), Z[:, -1:]], 1)
    ours, copied = analyse_all(
        [
            (ParameterAugmentation(filter_, local_parameters=per_layer), Z, y, observation),
            (ParameterAugmentation(filter_, local_parameters=copies), Z_copies, y, observation),
        ],
        KEY,
    )
    np.testing.assert_allclose(ours[:, :n], copied[:, :n], rtol=0, atol=1e-11)
    column_mean = copied[:, n:-1].reshape(-1, LAYERS, COLUMNS).mean(axis=-1)
    np.testing.assert_allclose(ours[:, n : n + LAYERS], column_mean, rtol=0, atol=1e-11)
    np.testing.assert_allclose(ours[:, -1], copied[:, -1], rtol=0, atol=1e-11)
    # Not vacuous: the vertical taper acts (layers 0 and 2 move differently).
    moved = np.abs(np.asarray(ours - Z)).max(axis=0)[n : n + LAYERS]
    assert moved.min() > 1e-3


def test_parameters_global_along_an_axis_need_domains_along_it():
    model, Z, y, observation, filter_ = _layered_problem()
    position = np.stack([np.zeros(LAYERS), np.arange(LAYERS)], axis=1)
    with pytest.raises(ValueError, match="`global_axes` \\(0, 1\\).*at least one local axis"):
        LocalParameters(LAYERS, position, global_axes=(0, 1))
    with pytest.raises(ValueError, match="`global_axes` \\(2,\\)"):
        LocalParameters(LAYERS, position, global_axes=2)
    per_layer = LocalParameters(LAYERS, position, global_axes=0)
    assert per_layer.global_axes == (0,)
    with pytest.raises(ValueError, match="need the DomainCovarianceEnKF.*got EnKF"):
        ParameterAugmentation(EnKF(localisation=filter_.covariance), local_parameters=per_layer)
    vertical_domains = DomainCovarianceEnKF(filter_.covariance, filter_.domain)
    with pytest.raises(ValueError, match="axes=\\(0,\\).*domain axes \\(1,\\)"):
        ParameterAugmentation(vertical_domains, local_parameters=per_layer)
    everywhere = eqx.tree_at(lambda f: f.covariance, filter_, filter_.domain)
    method = ParameterAugmentation(everywhere, local_parameters=per_layer)
    with pytest.raises(ValueError, match="no position there.*axes \\(0,\\)"):
        method.analysis(Z, y, observation, KEY)


# ------------------------------------------------------------------------ bad input


def test_bad_local_parameters_and_localisations_are_rejected():
    model = AugmentedModel(
        hybridda.Resolvent(MultiLayerLorenz96(layers=2, n=5, forcing=jnp.ones((2, 5)))),
        where=lambda m: (m.dynamics.forcing, m.dynamics.coupling),
        local_where=lambda m: m.dynamics.forcing,
    )
    with pytest.raises(ValueError, match="`coordinates` must have shape \\(10,\\)"):
        model.local_parameters(jnp.arange(9.0))  # 10 local parameters
    with pytest.raises(ValueError, match="`coordinates` must have shape \\(3,\\)"):
        LocalParameters(3, jnp.arange(2.0))
    with pytest.raises(ValueError, match="`size`"):
        LocalParameters(0)
    with pytest.raises(ValueError, match="parameter_std"):
        model.initial_ensemble(KEY, jnp.zeros((4, 10)), 0.0)
    with pytest.raises(ValueError, match="parameter_std"):
        model.initial_ensemble(KEY, jnp.zeros((4, 10)), -jnp.ones(11))
    with pytest.raises(ValueError, match="`local_where` must select leaves that `where`"):
        AugmentedModel(
            model.model, where=lambda m: m.dynamics.coupling, local_where=model.local_where
        )
    global_only = AugmentedModel(model.model, where=lambda m: m.dynamics.coupling)
    with pytest.raises(ValueError, match="no local parameters.*local_where"):
        global_only.local_parameters()
    for radius in (0.0, -2.0):
        with pytest.raises(ValueError, match="radius.*> 0"):
            Localisation(radius)
    with pytest.raises(ValueError, match="`axes`"):
        Localisation(1.0, axes=(0,))  # 1-D coordinates
    with pytest.raises(ValueError, match="`axes`"):
        Localisation(1.0, coordinates=jnp.zeros((4, 2)), domain_length=(4.0, 4.0), axes=(2,))
    with pytest.raises(ValueError, match="`local_parameter_update` must be 'mean'"):
        ParameterAugmentation(
            DomainCovarianceEnKF(Localisation(1.0), Localisation(1.0)),
            local_parameter_update="global",
        )
    # At analysis time: more local parameters than parameters, or local parameters
    # "at the state variables" that are not n of them.
    Z, y, observation = _problem()
    letkf = LETKF(Localisation(2.0), Multiplicative(1.0))
    with pytest.raises(ValueError, match="6 local parameters but .* only 5"):
        ParameterAugmentation(letkf, local_parameters=LocalParameters(6)).analysis(
            Z, y, observation, KEY
        )
    with pytest.raises(ValueError, match="sit at the state variables.*n = 12"):
        ParameterAugmentation(letkf, local_parameters=LocalParameters(3)).analysis(
            Z, y, observation, KEY
        )

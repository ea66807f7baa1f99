"""Online learning of state and model parameters: an EnKF on the augmented state ``[x; θ]``.

Three small pieces, each usable alone, make any global filter learn a model's
parameters online inside [`hybridda.assimilate`][], with no change to the cycling code:

- [`AugmentedModel`][] wraps a one-cycle model and acts on augmented members
  ``z = [x; θ]``: every member is forecast with its own parameters (``x⁺ = M_θ(x)``,
  a `vmap` over ``(x_i, θ_i)``) and the parameters persist (``θ⁺ = θ``). ``θ`` is the
  flattened vector (`jax.flatten_util.ravel_pytree`) of the model's learnt leaves.
- [`AugmentedObservation`][] lifts an observation operator to augmented states: it sees
  ``x`` only (``H_z = [H, 0]``).
- [`ParameterAugmentation`][] wraps a global filter (ETKF, EnKF, EnKF-N; Optax-style):
  its analysis updates ``[x; θ]`` jointly with the lifted operator, so the parameters
  move through their ensemble correlation with the forecast state. Wrapping the LETKF,
  the state is analysed locally and the global parameters globally (section 4). Around it, separate
  inflations of the state and parameter blocks and an optional random walk of the
  parameters (a parameter model error).
- [`LocalParameters`][] says where *local* parameters sit (a forcing ``F_i`` per grid
  point, Malartic et al. 2022): a localised filter (LETKF, EnKF with covariance
  localisation, [`hybridda.filters.DomainCovarianceEnKF`][]) then updates each like an
  extra state variable at its position. ``θ = [θ_local; θ_global]``: the local
  parameters (`AugmentedModel`'s `local_where`) come first.

Typical use::

    model = AugmentedModel(Resolvent(MonomialDynamics(40, guess)))
    method = ParameterAugmentation(EnKFN(), parameter_noise_std=1e-3)
    init = model.initial_ensemble(key, state_ensemble, parameter_std=0.1)
    trajectory = assimilate(model, observation, method, y, init, key)
    state_mean, parameter_mean = model.split(trajectory.analysis_mean)

!!! cite "References"
    Bocquet, Farchi and Malartic (2021), Online learning of both state and dynamics
    using ensemble Kalman filters, *Found. Data Sci.* 3, 305-330, sections 3 (global
    EnKF on the augmented state) and 4 (local EnKF). Malartic, Farchi and Bocquet
    (2022), State, global, and local parameter estimation using local ensemble Kalman
    filters, *Q. J. R. Meteorol. Soc.* 148, 2167-2193 (local parameters).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from .._checks import concrete, require_positive
from .._method import AbstractAnalysisMethod
from .._parameters import check_learnt, learnt_filter_spec, partition_learnt, with_learnt
from ..cycle import EnsembleModel
from ..observe import AbstractObservation, AbstractObservationError
from ._base import AbstractEnsembleFilter, ensemble_innovations
from ._util import ensemble_transform
from .domain_covariance import DomainCovarianceEnKF, domain_covariance_update
from .enkf import EnKF, perturbed_observations_update
from .inflation import AbstractInflation, NoInflation
from .letkf import LETKF, apply_local_transforms, tapered_transforms
from .localisation import Localisation, _as_axes


def _optional_float_array(value):
    return None if value is None else jnp.asarray(value, dtype=float)


class LocalParameters(eqx.Module):
    """Where the local parameters of an augmented state ``[x; θ_local; θ_global]`` sit.

    Local parameters (Malartic, Farchi and Bocquet 2022) are attached to positions of
    the domain, e.g. the forcing ``F_i`` of grid point ``i``: a localised filter treats
    each as an extra state variable at its position (the LETKF updates it with the
    local transform of its own domain; the EnKF tapers its covariances with the
    observations by distance). Build it with [`AugmentedModel.local_parameters`][],
    which checks the count against the model, and pass it to
    [`ParameterAugmentation`][]'s `local_parameters`.

    **Arguments:**

    - `size`: the number ``q_l`` ≥ 1 of local parameters, the first ``q_l`` entries of
      ``θ`` (static).
    - `coordinates`: the position of each, shape ``(q_l,)`` or ``(q_l, d)``, in the
      geometry of the filter's [`hybridda.filters.Localisation`][] (its
      `coordinates`, default ``0, 1, ..., n-1``). ``None`` (default): the same
      positions as the state variables, parameter ``j`` at variable ``j``
      (``q_l = n``), e.g. one forcing per variable.
    - `global_axes`: axes of ``(q_l, d)`` `coordinates` along which every parameter
      acts everywhere (static; default none): e.g. one forcing per layer of
      [`hybridda.dynamics.MultiLayerLorenz96`][] acts on its whole layer, so it is
      global along the horizontal (axis 0) and local along the vertical (axis 1); its
      coordinate along a global axis is ignored. Such parameters need the
      [`hybridda.filters.DomainCovarianceEnKF`][] with local domains along the global
      axes and covariance localisation along the others: each then gets the mean of
      its increments over the state's domains (the rule for global parameters), with
      its covariances tapered by the covariance localisation at its position.
    """

    size: int = eqx.field(static=True)
    coordinates: Float[Array, " q_l"] | Float[Array, "q_l d"] | None = eqx.field(
        default=None, converter=_optional_float_array
    )
    global_axes: tuple[int, ...] = eqx.field(static=True, default=(), converter=_as_axes)

    def __check_init__(self):
        q = self.size
        if isinstance(q, bool) or not isinstance(q, int | np.integer) or q < 1:
            raise ValueError(f"`size` (number of local parameters) must be an int >= 1, got {q!r}.")
        if self.coordinates is not None and (
            self.coordinates.ndim not in (1, 2) or self.coordinates.shape[0] != q
        ):
            raise ValueError(
                f"Local-parameter `coordinates` must have shape ({q},) or ({q}, d), one "
                f"position per local parameter, got {self.coordinates.shape}."
            )
        if self.global_axes:
            c = self.coordinates
            d = 0 if c is None or c.ndim == 1 else c.shape[1]
            local_axes = set(range(d)) - set(self.global_axes)
            if not all(0 <= axis < d for axis in self.global_axes) or not local_axes:
                raise ValueError(
                    f"`global_axes` {self.global_axes} must be axes of (q_l, d) `coordinates` "
                    f"(0 <= axis < d), leaving at least one local axis; the coordinates have "
                    f"shape {None if self.coordinates is None else self.coordinates.shape}."
                )

    def tapers(self, localisation: Localisation, observation: AbstractObservation):
        """``(q_l, p)``: the taper between each local parameter and each observation."""
        if self.global_axes:
            axes = localisation.axes
            if axes is None or set(axes) & set(self.global_axes):
                raise ValueError(
                    f"Local parameters global along axes {self.global_axes} have no position "
                    f"there: a localisation measuring distances along axes "
                    f"{'all' if axes is None else axes} cannot taper them. Localise them "
                    "along their local axes only (Localisation(..., axes=...))."
                )
        if self.coordinates is None:
            return localisation.state_to_obs(observation)
        return localisation.points_to_obs(self.coordinates, observation)


class AugmentedModel(eqx.Module):
    """A one-cycle model acting on augmented states ``z = [x; θ]``: ``x⁺ = M_θ(x)``, ``θ⁺ = θ``.

    ``θ`` is the flattened vector of the learnt leaves of `model` (selected by `where`),
    in the order of `jax.flatten_util.ravel_pytree`; [`parameters`][] gives the model's
    own values, [`with_parameters`][] puts a vector back. [`ensemble`][] runs every
    member with its own parameters (a `vmap` over ``(x_i, θ_i)``), so the forecast
    ensemble carries the state-parameter correlations through which an analysis of ``x``
    alone updates ``θ``. Satisfies [`hybridda.cycle.EnsembleModel`][]: pass it to
    [`hybridda.assimilate`][] with a [`ParameterAugmentation`][] method and an initial
    ensemble from [`initial_ensemble`][].

    **Arguments:**

    - `model`: the one-cycle model, e.g. ``Resolvent(MonomialDynamics(...))``, a hybrid
      model or a [`hybridda.Surrogate`][].
    - `where`: selects the learnt part of `model`, as in `equinox.tree_at`, e.g.
      ``lambda m: m.dynamics.coefficients`` or a tuple of nodes; every floating-point
      array below the selected nodes is learnt. ``None`` (default): every floating-point
      array leaf of `model`.
    - `local_where`: selects which of the learnt leaves are *local* parameters (e.g.
      ``lambda m: m.dynamics.forcing`` for one forcing per grid point); they come first
      in ``θ = [θ_local; θ_global]``, and [`local_parameters`][] says where they sit.
      ``None`` (default): every learnt parameter is global.
    """

    model: EnsembleModel
    where: Callable[[PyTree], PyTree] | None = eqx.field(static=True, default=None)
    local_where: Callable[[PyTree], PyTree] | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.model, EnsembleModel):
            raise ValueError(
                "`model` must be a one-cycle ensemble model (with `cycle_length`, `ensemble` and "
                f"`__call__`, e.g. a hybridda.Resolvent), got {type(self.model).__name__}."
            )
        check_learnt(self.model, self.where)
        if self.local_where is not None:
            check_learnt(self.model, self.local_where)
            learnt = jax.tree.leaves(learnt_filter_spec(self.model, self.where))
            local = jax.tree.leaves(learnt_filter_spec(self.model, self.local_where))
            pairs = zip(local, learnt, strict=True)
            if any(is_local and not is_learnt for is_local, is_learnt in pairs):
                raise ValueError(
                    "`local_where` must select leaves that `where` selects (the local "
                    "parameters are part of the learnt ones)."
                )

    def _specs(self):
        """``(local, global)`` filter specs of the learnt leaves (``local`` None: none)."""
        learnt = learnt_filter_spec(self.model, self.where)
        if self.local_where is None:
            return None, learnt
        local = learnt_filter_spec(self.model, self.local_where)
        return local, jax.tree.map(lambda a, b: a and not b, learnt, local)

    def _partition(self):
        """``(θ, unravel, rest)`` with ``θ = [θ_local; θ_global]``."""
        local_spec, global_spec = self._specs()
        if local_spec is None:
            return partition_learnt(self.model, self.where)
        theta_local, unravel_local = ravel_pytree(eqx.filter(self.model, local_spec))
        theta_global, unravel_global = ravel_pytree(eqx.filter(self.model, global_spec))
        rest_spec = jax.tree.map(lambda a, b: not (a or b), local_spec, global_spec)
        rest = eqx.filter(self.model, rest_spec)
        q_local = theta_local.shape[0]

        def unravel(theta):
            return eqx.combine(unravel_local(theta[:q_local]), unravel_global(theta[q_local:]))

        return jnp.concatenate([theta_local, theta_global]), unravel, rest

    @property
    def local_parameter_size(self) -> int:
        """Number ``q_l`` of local parameters (the first entries of ``θ``; 0 if none)."""
        local_spec, _ = self._specs()
        if local_spec is None:
            return 0
        return ravel_pytree(eqx.filter(self.model, local_spec))[0].shape[0]

    def local_parameters(self, coordinates=None, global_axes=()) -> LocalParameters:
        """The [`LocalParameters`][] of this model, for [`ParameterAugmentation`][].

        **Arguments:**

        - `coordinates`: the position of each local parameter, shape ``(q_l,)`` or
          ``(q_l, d)`` in the geometry of the filter's localisation; ``None``: the
          local parameters sit at the state variables (``q_l = n``).
        - `global_axes`: axes along which each acts everywhere (see
          [`LocalParameters`][]), e.g. ``(0,)`` for one forcing per layer.
        """
        q = self.local_parameter_size
        if q == 0:
            raise ValueError(
                "The model has no local parameters: select them with `local_where` "
                "(e.g. local_where=lambda m: m.dynamics.forcing)."
            )
        if coordinates is None:
            n = self.state_size
            if n is not None and n != q:
                raise ValueError(
                    f"Local parameters without `coordinates` sit at the state variables, so "
                    f"there must be n = {n} of them, but the model has {q}: give their "
                    "`coordinates`."
                )
            return LocalParameters(q, global_axes=global_axes)
        coordinates = jnp.asarray(coordinates, dtype=float)
        if coordinates.ndim not in (1, 2) or coordinates.shape[0] != q:
            raise ValueError(
                f"Local-parameter `coordinates` must have shape ({q},) or ({q}, d), one "
                f"position per local parameter of the model, got {coordinates.shape}."
            )
        return LocalParameters(q, coordinates, global_axes)

    @property
    def cycle_length(self) -> float:
        """Model time covered by one cycle (that of `model`)."""
        return self.model.cycle_length

    @property
    def parameter_size(self) -> int:
        """Number ``q`` of learnt parameters (the length of ``θ``)."""
        return self._partition()[0].shape[0]

    @property
    def state_size(self) -> int | None:
        """Number ``n`` of state variables, when `model` says (``model.state_size``)."""
        return getattr(self.model, "state_size", None)

    def parameters(self) -> Float[Array, " q"]:
        """The learnt leaves of `model`, flattened: ``θ`` of the model as it is."""
        return self._partition()[0]

    def with_parameters(self, theta: Float[Array, " q"]) -> EnsembleModel:
        """`model` with its learnt leaves replaced by those of the vector `theta`."""
        if self.local_where is None:
            return with_learnt(self.model, self.where, theta)
        _, unravel, rest = self._partition()
        return eqx.combine(unravel(theta), rest)

    def split(
        self, Z: Float[Array, "*batch augmented"]
    ) -> tuple[Float[Array, "*batch n"], Float[Array, "*batch q"]]:
        """``(x, θ)`` from augmented states (last axis ``n + q``), e.g. a trajectory's means."""
        q = self.parameter_size
        if Z.ndim < 1 or Z.shape[-1] <= q:
            raise ValueError(
                f"Augmented states need a last axis of n + {q} (state, then the {q} "
                f"parameters), got shape {Z.shape}."
            )
        return Z[..., :-q], Z[..., -q:]

    def join(
        self, X: Float[Array, "*batch n"], Theta: Float[Array, "*batch q"]
    ) -> Float[Array, "*batch augmented"]:
        """Augmented states ``[x; θ]`` from states and parameter vectors."""
        q = self.parameter_size
        if Theta.shape[-1:] != (q,) or X.shape[:-1] != Theta.shape[:-1]:
            raise ValueError(
                f"States of shape {X.shape} and parameters of shape {Theta.shape} do not pair: "
                f"the parameters need a last axis of {q} and the same leading axes."
            )
        return jnp.concatenate([X, Theta.astype(X.dtype)], axis=-1)

    def initial_ensemble(
        self,
        key: PRNGKeyArray,
        state_ensemble: Float[Array, "N n"],
        parameter_std,
        parameter_mean: Float[Array, " q"] | None = None,
    ) -> Float[Array, "N augmented"]:
        """Augment `state_ensemble` with parameters drawn from ``N(mean, diag(std²))``.

        **Arguments:**

        - `key`: draws the parameters.
        - `state_ensemble`: the members' states, shape ``(N, n)`` with ``N ≥ 2``.
        - `parameter_std`: prior standard deviation of ``θ``, a scalar or one value per
          parameter, each > 0 (a prior variance ≤ 0 is an error: the filter could then
          never move the parameters).
        - `parameter_mean`: prior mean, shape ``(q,)``; default [`parameters`][].
        """
        q = self.parameter_size
        if state_ensemble.ndim != 2 or state_ensemble.shape[0] < 2:
            raise ValueError(
                "`state_ensemble` must have shape (N, n) with ensemble_size N >= 2 (anomalies "
                f"need two members), got {state_ensemble.shape}."
            )
        n = self.state_size
        if n is not None and state_ensemble.shape[1] != n:
            raise ValueError(
                f"`state_ensemble` has {state_ensemble.shape[1]} state variables but the model "
                f"has {n}."
            )
        std = jnp.asarray(parameter_std, dtype=state_ensemble.dtype)
        if std.shape not in ((), (q,)):
            raise ValueError(
                f"`parameter_std` must be a scalar or have shape ({q},), got {std.shape}."
            )
        require_positive(
            "parameter_std",
            std,
            "The prior variance of every parameter must be > 0: give the spread of your "
            "uncertainty about it.",
        )
        mean = self.parameters() if parameter_mean is None else jnp.asarray(parameter_mean)
        if mean.shape != (q,):
            raise ValueError(f"`parameter_mean` must have shape ({q},), got {mean.shape}.")
        draws = jax.random.normal(key, (state_ensemble.shape[0], q), dtype=state_ensemble.dtype)
        return self.join(
            state_ensemble, mean[None, :] + jnp.broadcast_to(std, (q,))[None, :] * draws
        )

    def __call__(
        self, z: Float[Array, " augmented"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, " augmented"]:
        """One cycle of one augmented state: ``[M_θ(x); θ]``."""
        x, theta = self.split(z)
        return self.join(self.with_parameters(theta)(x, t0), theta)

    def ensemble(
        self, Z: Float[Array, "N augmented"], t0: float | Float[Array, ""] = 0.0
    ) -> Float[Array, "N augmented"]:
        """One cycle of every member, each with its own parameters."""
        return jax.vmap(lambda z: self(z, t0))(Z)


class AugmentedObservation(AbstractObservation):
    """An observation operator on augmented states ``[x; θ]`` that sees ``x`` only.

    ``H_z(z) = H(x)``, with the error model of `observation`; any filter applied with it
    to an augmented ensemble updates the parameters through their ensemble correlations
    with the observed state. [`ParameterAugmentation`][] builds it for you.

    **Arguments:**

    - `observation`: the operator on states (its `state_size` is ``n``).
    - `parameter_size`: ``q`` ≥ 1, the number of parameters after the state.
    """

    observation: AbstractObservation
    parameter_size: int = eqx.field(static=True)

    def __check_init__(self):
        q = self.parameter_size
        if isinstance(q, bool) or not isinstance(q, int | np.integer) or q < 1:
            raise ValueError(f"`parameter_size` must be an int >= 1, got {q!r}.")

    @property
    def error(self) -> AbstractObservationError:
        return self.observation.error

    @property
    def state_size(self) -> int:
        return self.observation.state_size + self.parameter_size

    @property
    def obs_size(self) -> int:
        return self.observation.obs_size

    def __call__(self, x: Float[Array, " augmented"]) -> Float[Array, " p"]:
        return self.observation(x[..., : self.observation.state_size])

    def at_cycle(self, cycle) -> "AugmentedObservation":
        return AugmentedObservation(self.observation.at_cycle(cycle), self.parameter_size)

    def linearise(self, x: Float[Array, " augmented"]) -> Float[Array, "p augmented"]:
        H = self.observation.linearise(x[: self.observation.state_size])
        return jnp.concatenate([H, jnp.zeros((H.shape[0], self.parameter_size), H.dtype)], 1)

    def locations(self, state_coordinates):
        raise ValueError(
            "Parameters have no position: localise the state only, with "
            "ParameterAugmentation(LETKF(...)) (local state analyses, global parameter "
            "update; Bocquet et al. 2021, section 4), or use a global filter."
        )


class ParameterAugmentation(AbstractAnalysisMethod):
    r"""Joint analysis of state and parameters: a global filter on ``[x; θ]``.

    The analysis of an augmented forecast ensemble ``Z = [X, Θ]`` (``(N, n + q)``; ``n``
    is ``observation.state_size``, so ``q`` follows from the shapes) is:

    1. with `parameter_noise_std` ``σ``, a random walk of the parameters,
       ``θ_i ← θ_i + σ ξ_i`` with ``ξ_i ~ N(0, I)`` centred over the members: the
       parameter model error of the forecast step, ``θ_{k+1} = θ_k + η_k``, added here
       because the model is deterministic and the method holds the key;
    2. the `prior` of `state_inflation` on ``X`` and of `parameter_inflation` on ``Θ``;
    3. `filter`'s analysis of ``Z`` with [`AugmentedObservation`][] (``H`` sees ``x``
       only; the filter's own `inflation` acts on the whole augmented ensemble, e.g.
       EnKF-N's adaptive one);
    4. the `posterior` of each block's inflation.

    Without noise the key goes to `filter` unchanged, so ``ParameterAugmentation(f)`` is
    exactly ``f`` applied to the augmented system.

    **Arguments:**

    - `filter`: a global [`hybridda.filters.AbstractEnsembleFilter`][] (ETKF, EnKF
      without localisation, EnKF-N), or a localised one:

        - the [`hybridda.filters.LETKF`][]: the state is updated by the local analyses,
          the global parameters as `local_parameter_update` says (Bocquet, Farchi and
          Malartic 2021, section 4; with the LETKF's `domains` a cycle costs ``O(n)``)
          and each local parameter by the local analysis of its own domain (centred
          at its position);
        - the [`hybridda.filters.EnKF`][] with covariance localisation: the
          state-observation covariances are tapered by the filter's localisation,
          those of the local parameters by the distance from their positions, and
          those of the global parameters by the mean of the state variables' tapers
          with each observation (`local_parameter_update` ``"mean"``: the mean of
          the increments the parameter would get at each state variable's position,
          the counterpart of the LETKF's rule) or not at all (``"global"``: the
          global EnKF's update, noisy with few members: on Lorenz-96 with N = 20 it
          made the learnt dynamics blow up);
        - the [`hybridda.filters.DomainCovarianceEnKF`][]: the state and the local
          parameters by their domains (with covariance localisation inside), the
          global parameters by the mean of their increments over the state's
          domains, without covariance taper; local parameters global along the
          domains' axes (`global_axes` of [`LocalParameters`][], e.g. a forcing per
          layer) by that mean too, with the covariance taper of their position.

      Local parameters (Malartic, Farchi and Bocquet 2022) are thus analysed exactly
      like extra state variables at their positions.
    - `parameter_inflation`: an inflation of the parameter block (e.g.
      ``Multiplicative(1.01)``, ``RTPS(0.5)``); default none.
    - `state_inflation`: an inflation of the state block only; default none.
    - `parameter_noise_std`: ``σ`` ≥ 0, a scalar or one per parameter; ``None``
      (default) for no random walk.
    - `local_parameter_update` (the rule for the global parameters; LETKF and EnKF
      with covariance localisation):
      ``"mean"`` (default) gives ``θ`` the mean of its local analyses, one per local
      domain (the mean of the local weights and transforms applied to the parameter
      anomalies), so each observation acts on ``θ`` with its local taper; ``"global"``
      the global ETKF analysis with every observation, the exact marginal of the joint
      analysis for a linear-Gaussian system but, with ``N`` much smaller than the
      number of observed degrees of freedom, a collapse of the parameter spread
      (measured on Lorenz-96, n = 40, 20 observations, N = 10: F stuck at 7.07
      against 8; ``"mean"`` reaches 8.01).
    - `local_parameters`: where the local parameters sit, from
      [`AugmentedModel.local_parameters`][] (the first ``q_l`` entries of ``θ``);
      ``None`` (default): every parameter is global. Global filters (ETKF, EnKF-N,
      EnKF without localisation) update every parameter alike and ignore it.

    !!! cite "References"
        Bocquet, Farchi and Malartic (2021), *Found. Data Sci.* 3, 305-330, sections 3-4.
        Malartic, Farchi and Bocquet (2022), *Q. J. R. Meteorol. Soc.* 148, 2167-2193.
    """

    filter: AbstractEnsembleFilter
    parameter_inflation: AbstractInflation = NoInflation()
    state_inflation: AbstractInflation = NoInflation()
    parameter_noise_std: Float[Array, "*q"] | None = eqx.field(
        default=None, converter=_optional_float_array
    )
    local_parameter_update: str = eqx.field(static=True, default="mean")
    local_parameters: LocalParameters | None = None

    def __check_init__(self):
        if not isinstance(self.filter, AbstractEnsembleFilter):
            raise ValueError(
                "`filter` must be an ensemble filter (ETKF, EnKF, EnKFN), got "
                f"{type(self.filter).__name__}."
            )
        if self.local_parameter_update not in ("mean", "global"):
            raise ValueError(
                "`local_parameter_update` must be 'mean' (mean of the local analyses of "
                f"the parameters) or 'global', got {self.local_parameter_update!r}."
            )
        if isinstance(self.filter, DomainCovarianceEnKF) and self.local_parameter_update != "mean":
            raise ValueError(
                "`local_parameter_update` must be 'mean' with the DomainCovarianceEnKF (its "
                "global parameters get the mean of their increments over the domains)."
            )
        if self.local_parameters is not None and not isinstance(
            self.local_parameters, LocalParameters
        ):
            raise ValueError(
                "`local_parameters` must be a LocalParameters (from AugmentedModel."
                f"local_parameters(...)), got {type(self.local_parameters).__name__}."
            )
        local = self.local_parameters
        if local is not None and local.global_axes:
            domain = getattr(self.filter, "domain", None)
            if not isinstance(self.filter, DomainCovarianceEnKF) or (
                domain.axes is None or not set(domain.axes) <= set(local.global_axes)
            ):
                raise ValueError(
                    f"Local parameters global along axes {local.global_axes} need the "
                    "DomainCovarianceEnKF with its `domain` localisation along those axes "
                    f"(Localisation(..., axes={local.global_axes})); got "
                    f"{type(self.filter).__name__}"
                    + ("" if domain is None else f" with domain axes {domain.axes}")
                    + "."
                )
        std = self.parameter_noise_std
        if std is not None:
            if std.ndim > 1:
                raise ValueError(
                    f"`parameter_noise_std` must be a scalar or a vector, got shape {std.shape}."
                )
            value = concrete(std)
            if value is not None and not np.all(np.isfinite(value) & (value >= 0)):
                raise ValueError(
                    f"`parameter_noise_std` must be finite and >= 0 (None: no random walk), "
                    f"got {value}."
                )

    @property
    def min_ensemble_size(self) -> int:
        return self.filter.min_ensemble_size

    def prior_state_ensemble(
        self, E: Float[Array, "N augmented"], state_size: int
    ) -> Float[Array, "N n"]:
        """The state block of `E` as the analysis sees it: after `state_inflation`'s
        prior and the wrapped filter's own prior inflation (which acts on the whole
        augmented ensemble). Its sample covariance is the forecast covariance of ``x``
        that the analysis uses, e.g. for the observation likelihood of
        [`hybridda.cycled_loss`][]."""
        X, Theta = E[:, :state_size], E[:, state_size:]
        Z = jnp.concatenate(
            [self.state_inflation.prior(X), self.parameter_inflation.prior(Theta)], axis=1
        )
        if isinstance(self.filter, AbstractEnsembleFilter):
            Z = self.filter.inflation.prior(Z)
        return Z[:, :state_size]

    def analysis(
        self,
        E: Float[Array, "N augmented"],
        y: Float[Array, " p"],
        observation: AbstractObservation,
        key: PRNGKeyArray,
    ) -> Float[Array, "N augmented"]:
        n = observation.state_size
        if E.ndim != 2 or E.shape[1] <= n:
            raise ValueError(
                f"The augmented ensemble must have shape (N, n + q) with n = {n} state variables "
                f"(the observation's) and q >= 1 parameters, got {E.shape}; build it with "
                "AugmentedModel.initial_ensemble."
            )
        if E.shape[0] < self.min_ensemble_size:
            raise ValueError(
                f"`ensemble_size` must be >= {self.min_ensemble_size}, got N={E.shape[0]}: "
                "anomalies and covariances need at least two members."
            )
        q = E.shape[1] - n
        local = self.local_parameters
        if local is not None and local.size > q:
            raise ValueError(
                f"`local_parameters` has {local.size} local parameters but the augmented "
                f"ensemble has only {q} parameters."
            )
        if local is not None and local.coordinates is None and local.size != n:
            raise ValueError(
                f"Local parameters without `coordinates` sit at the state variables, so there "
                f"must be n = {n} of them, got {local.size}: give their `coordinates`."
            )
        X, Theta = E[:, :n], E[:, n:]
        std = self.parameter_noise_std
        if std is not None:
            if std.shape not in ((), (q,)):
                raise ValueError(
                    f"`parameter_noise_std` has shape {std.shape} but there are {q} parameters."
                )
            key, noise_key = jax.random.split(key)
            noise = jax.random.normal(noise_key, Theta.shape, Theta.dtype)
            scale = jnp.broadcast_to(std, (q,))[None, :]
            Theta = Theta + scale * (noise - noise.mean(axis=0, keepdims=True))
        X_prior = self.state_inflation.prior(X)
        Theta_prior = self.parameter_inflation.prior(Theta)
        Z_prior = jnp.concatenate([X_prior, Theta_prior], axis=1)
        if isinstance(self.filter, LETKF):
            Z = self._local_analysis(Z_prior, y, observation, key)
        elif isinstance(self.filter, DomainCovarianceEnKF) or (
            isinstance(self.filter, EnKF) and self.filter.localisation is not None
        ):
            Z = self._covariance_localised_analysis(Z_prior, y, observation, key)
        else:
            Z = self.filter.analysis(Z_prior, y, AugmentedObservation(observation, q), key)
        X_analysis = self.state_inflation.posterior(X_prior, Z[:, :n])
        Theta_analysis = self.parameter_inflation.posterior(Theta_prior, Z[:, n:])
        return jnp.concatenate([X_analysis, Theta_analysis], axis=1)

    def _local_analysis(self, Z, y, observation, key):
        """The LETKF on ``[x; θ]`` (Bocquet, Farchi and Malartic 2021, section 4): the
        state by the local analyses; the global parameters by the mean of their local
        analyses or by the global analysis (`local_parameter_update`). Both share the
        whitened anomalies ``S`` and innovation ``d``."""
        letkf = self.filter
        n = observation.state_size
        y = letkf._checked(Z[:, :n], y, observation)
        Z_prior = letkf.inflation.prior(Z)
        X, Theta = Z_prior[:, :n], Z_prior[:, n:]
        del key  # the LETKF is deterministic
        stats = ensemble_innovations(X, y, observation)
        S, d = stats.obs_anomalies, stats.innovation
        # One set of local transforms serves the state and (by default) the parameters.
        local_weights, local_T = letkf.local_transforms(S, d, observation)
        X_analysis = apply_local_transforms(stats.mean, stats.anomalies, local_weights, local_T)
        q_local = 0 if self.local_parameters is None else self.local_parameters.size
        if q_local:  # each local parameter: the local analysis of its own domain
            if self.local_parameters.coordinates is None:
                weights, T = local_weights, local_T  # the domains of the state variables
            else:
                taper = self.local_parameters.tapers(letkf.localisation, observation)
                weights, T = tapered_transforms(S, d, taper)
            Theta_local = Theta[:, :q_local]
            mean = Theta_local.mean(axis=0)
            X_analysis = jnp.concatenate(
                [
                    X_analysis,
                    apply_local_transforms(mean, Theta_local - mean[None, :], weights, T),
                ],
                axis=1,
            )
            Theta = Theta[:, q_local:]
        N1 = Z.shape[0] - 1
        if self.local_parameter_update == "global":
            C = S @ S.T + N1 * jnp.eye(Z.shape[0], dtype=Z.dtype)
            weights, T = ensemble_transform(C, S @ d, N1)
        else:  # the mean of the local analyses of θ: mean weights and transforms
            weights, T = local_weights.mean(axis=0), local_T.mean(axis=0)
        mean = Theta.mean(axis=0)
        Theta_analysis = mean[None, :] + (weights[None, :] + T) @ (Theta - mean[None, :])
        Z_analysis = jnp.concatenate([X_analysis, Theta_analysis], axis=1)
        return letkf.inflation.posterior(Z_prior, Z_analysis)

    def _covariance_localised_analysis(self, Z, y, observation, key):
        """The EnKF with covariance localisation, or the DomainCovarianceEnKF, on
        ``[x; θ_local; θ_global]``: a local parameter is tapered like a state variable
        at its position, a global parameter by the mean of the state variables' tapers
        (the increment is then the mean of the increments it would get at each state
        variable's position), or not at all (EnKF, ``local_parameter_update="global"``)."""
        enkf = self.filter
        n, q = observation.state_size, Z.shape[1] - observation.state_size
        lifted = AugmentedObservation(observation, q)
        y = enkf._checked(Z, y, lifted)
        Z_prior = enkf.inflation.prior(Z)
        stats = ensemble_innovations(Z_prior, y, lifted)
        local = self.local_parameters

        def rows(localisation):  # tapers of the state and the local parameters
            taper = localisation.state_to_obs(observation)
            if local is None:
                return taper
            return jnp.concatenate([taper, local.tapers(localisation, observation)], axis=0)

        if isinstance(enkf, DomainCovarianceEnKF):
            groups = enkf.current_domain_groups()
            if local is not None and local.global_axes:
                # Global along the domains' axes: with the global parameters (mean of
                # the increments over the state's domains), tapered at their position.
                domain_taper = enkf.domain.state_to_obs(observation)
                covariance_taper = enkf.covariance.state_to_obs(observation)
                local_taper = local.tapers(enkf.covariance, observation)
                global_taper = jnp.concatenate(
                    [
                        local_taper,
                        jnp.ones((q - local.size, local_taper.shape[1]), local_taper.dtype),
                    ]
                )
            else:
                domain_taper, covariance_taper = rows(enkf.domain), rows(enkf.covariance)
                global_taper, groups = None, _with_local_rows(groups, local)
            Z_analysis = domain_covariance_update(
                Z_prior,
                stats,
                key,
                domain_taper=domain_taper,
                covariance_taper=covariance_taper,
                obs_to_obs=enkf.covariance.obs_to_obs(observation),
                averaged_domains=n,
                global_covariance_taper=global_taper,
                domain_groups=groups,
            )
        else:
            taper = rows(enkf.localisation)
            if self.local_parameter_update == "mean":  # the mean of the state's rows
                row = taper[:n].mean(axis=0, keepdims=True)
            else:  # untapered
                row = jnp.ones((1, taper.shape[1]), taper.dtype)
            rows_global = jnp.broadcast_to(row, (Z.shape[1] - taper.shape[0], row.shape[1]))
            Z_analysis = perturbed_observations_update(
                Z_prior,
                stats,
                key,
                state_to_obs=jnp.concatenate([taper, rows_global], axis=0),
                obs_to_obs=enkf.localisation.obs_to_obs(observation),
            )
        return enkf.inflation.posterior(Z_prior, Z_analysis)


def _with_local_rows(groups, local: LocalParameters | None):
    """The state's shared domains extended to local parameters sitting at the state
    variables (``coordinates=None``: parameter ``j``'s domain is variable ``j``'s)."""
    if groups is None or local is None or local.coordinates is not None:
        return groups
    first, inverse = groups
    return first, inverse + inverse

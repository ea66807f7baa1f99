"""Learnt parameters of a model: the floating-point leaves selected by `where`.

Shared by the two families that estimate model parameters with the state: the augmented
ensemble filters ([`hybridda.filters.AugmentedModel`][]) and the variational costs
with parameters in the control ([`hybridda.variational.WithModelParameters`][]). ``θ``
is the flat vector of the selected leaves, in the order of
`jax.flatten_util.ravel_pytree`.
"""

from collections.abc import Callable

import equinox as eqx
import jax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree


def no_parameters_message(model) -> str:
    return (
        f"The model {type(model).__name__} has no learnt parameters: `where` must select "
        "floating-point array leaves of it (e.g. where=lambda m: m.dynamics.forcing)."
    )


def learnt_filter_spec(model: PyTree, where: Callable | None) -> PyTree:
    """``True`` on the leaves below the nodes `where` selects (every floating-point
    array leaf when `where` is ``None``)."""
    if where is None:
        return jax.tree.map(eqx.is_inexact_array, model)
    nothing = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(where, nothing, replace_fn=lambda node: jax.tree.map(lambda _: True, node))


def check_learnt(model: PyTree, where: Callable | None) -> None:
    """Raise unless `where` selects at least one leaf, all floating-point arrays."""
    selected = jax.tree.leaves(eqx.filter(model, learnt_filter_spec(model, where)))
    if not selected:
        raise ValueError(no_parameters_message(model))
    if not all(eqx.is_inexact_array(leaf) for leaf in selected):
        kinds = sorted({type(leaf).__name__ for leaf in selected})
        raise ValueError(
            f"`where` must select floating-point arrays only (learnt parameters), got "
            f"leaves of types {kinds}."
        )


def partition_learnt(
    model: PyTree, where: Callable | None
) -> tuple[Float[Array, " q"], Callable, PyTree]:
    """``(θ, unravel, rest)``: the learnt leaves as one vector, the map back to their
    pytree, and the rest of `model` (combine with `eqx.combine`)."""
    learnt, rest = eqx.partition(model, learnt_filter_spec(model, where))
    flat, unravel = ravel_pytree(learnt)
    return flat, unravel, rest


def with_learnt(model: PyTree, where: Callable | None, theta: Float[Array, " q"]) -> PyTree:
    """`model` with its learnt leaves replaced by those of the vector `theta`."""
    _, unravel, rest = partition_learnt(model, where)
    return eqx.combine(unravel(theta), rest)

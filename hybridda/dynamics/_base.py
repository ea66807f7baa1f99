"""The dynamics interface: a tendency ``dx/dt = f(t, x, args)`` for one state vector."""

import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractDynamics(eqx.Module):
    """A physical model ``dx/dt = f(t, x, args)``.

    Subclasses implement [`hybridda.dynamics.AbstractDynamics.tendency`][] for one
    state of shape ``(state_size,)``; ensembles use `jax.vmap`. Parameters that may
    later be learnt are array fields; sizes that change the computation graph are
    static fields.
    """

    @property
    @abc.abstractmethod
    def state_size(self) -> int:
        """Number of state variables ``n``."""

    @abc.abstractmethod
    def tendency(self, t: Float[Array, ""], x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        """Time derivative of ``x`` at time ``t``."""

    def coordinates(self) -> Float[Array, " n"]:
        """Position of each state variable on a 1-D periodic domain (for localisation).

        Default: variable ``i`` sits at ``i``, the domain has period ``state_size``.
        """
        return jnp.arange(self.state_size, dtype=float)

    def domain_length(self) -> float:
        """Period of the domain on which [`coordinates`][] lie (``inf`` if not periodic)."""
        return float(self.state_size)

    def default_initial_state(self) -> Float[Array, " n"]:
        """A deterministic, non-equilibrium state from which a spin-up reaches the attractor."""
        n = self.state_size
        return 1.0 + 0.01 * jnp.sin(jnp.arange(n, dtype=float))

    def __call__(self, t, x, args=None):
        """Alias of `tendency`, so a dynamics is a `diffrax.ODETerm` vector field."""
        return self.tendency(t, x, args)

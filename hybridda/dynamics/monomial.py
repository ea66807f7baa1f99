"""A local quadratic-monomial surrogate: a learnable tendency shared by every site of a ring."""

import itertools

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import as_float_array
from ._base import AbstractDynamics


def monomial_exponents(radius: int, product_distance: int) -> tuple[tuple[int, ...], ...]:
    """The monomials of [`MonomialDynamics`][] as tuples of stencil offsets, in order.

    ``()`` is the constant, ``(j,)`` the linear term ``x_{i+j}`` (``-radius ≤ j ≤ radius``)
    and ``(j, k)`` the product ``x_{i+j} x_{i+k}`` (``j ≤ k``, ``k - j ≤ product_distance``).
    """
    offsets = range(-radius, radius + 1)
    products = [
        (j, k)
        for j, k in itertools.combinations_with_replacement(offsets, 2)
        if k - j <= product_distance
    ]
    return ((), *((j,) for j in offsets), *products)


def _offset_name(offset: int) -> str:
    return "x[i]" if offset == 0 else f"x[i{offset:+d}]"


class MonomialDynamics(AbstractDynamics):
    r"""$\dot x_i = \sum_m a_m\, r_m(x)_i$: a linear combination of local monomials.

    The monomials of site ``i`` on a periodic ring of `n` variables are the constant 1,
    the stencil values $x_{i+j}$ for $|j| \le L$ (`radius`), and the products
    $x_{i+j} x_{i+k}$ for $-L \le j \le k \le L$ with $k - j \le$ `product_distance`
    (default ``L``); the same `coefficients` $a$ serve every site (a homogeneous model),
    so $L = 2$ gives 18 coefficients. Lorenz-96 lies in this span (for $L \ge 2$):
    [`MonomialDynamics.lorenz96`][] builds its exact coefficients, so the learnt
    coefficients of a surrogate have a known truth. [`monomial_exponents`][] and
    [`MonomialDynamics.monomial_names`][] give the order of the coefficients.

    **Arguments:**

    - `n`: number of variables on the ring (> 2 `radius`), static.
    - `coefficients`: shape ``(number_of_monomials,)``, the learnable parameters.
    - `radius`: stencil half-width ``L`` ≥ 1, static.
    - `product_distance`: largest ``k - j`` of a product, in ``[0, 2L]``; ``None`` is
      ``L``, static.

    !!! cite "References"
        Bocquet, Brajard, Carrassi and Bertino (2019), Data assimilation as a learning
        tool to infer ordinary differential equation representations of dynamical
        models, *Nonlin. Processes Geophys.* 26, 143-162, section 4.1. Bocquet, Farchi and
        Malartic (2021), Online learning of both state and dynamics using ensemble
        Kalman filters, *Found. Data Sci.* 3, 305-330, section 5.
    """

    n: int = eqx.field(static=True)
    coefficients: Float[Array, " monomials"] = eqx.field(converter=as_float_array)
    radius: int = eqx.field(static=True, default=2)
    product_distance: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if isinstance(self.radius, bool) or not isinstance(self.radius, int) or self.radius < 1:
            raise ValueError(
                f"`radius` (stencil half-width) must be an int >= 1, got {self.radius!r}."
            )
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n <= 2 * self.radius:
            raise ValueError(
                f"`n` must be an int > 2 * radius = {2 * self.radius} (the stencil must fit on "
                f"the ring), got {self.n!r}."
            )
        distance = self.distance
        if isinstance(distance, bool) or not isinstance(distance, int):
            raise ValueError(f"`product_distance` must be an int or None, got {distance!r}.")
        if not 0 <= distance <= 2 * self.radius:
            raise ValueError(
                f"`product_distance` must lie in [0, 2 * radius] = [0, {2 * self.radius}], got "
                f"{distance}."
            )
        expected = self.number_of_monomials(self.radius, distance)
        if self.coefficients.shape != (expected,):
            raise ValueError(
                f"`coefficients` must have shape ({expected},), one per monomial for radius="
                f"{self.radius} and product_distance={distance}, got {self.coefficients.shape}."
            )

    @property
    def distance(self) -> int:
        """The effective `product_distance`."""
        return self.radius if self.product_distance is None else self.product_distance

    @staticmethod
    def number_of_monomials(radius: int = 2, product_distance: int | None = None) -> int:
        """How many coefficients a model with this stencil has."""
        distance = radius if product_distance is None else product_distance
        return len(monomial_exponents(radius, distance))

    def monomial_names(self) -> tuple[str, ...]:
        """A readable name per coefficient, e.g. ``"x[i-1]*x[i+1]"``."""
        return tuple(
            "*".join(_offset_name(j) for j in term) if term else "1"
            for term in monomial_exponents(self.radius, self.distance)
        )

    @classmethod
    def lorenz96(
        cls,
        n: int = 40,
        forcing: float = 8.0,
        radius: int = 2,
        product_distance: int | None = None,
    ) -> "MonomialDynamics":
        r"""The exact Lorenz-96 tendency $x_{i-1}x_{i+1} - x_{i-2}x_{i-1} - x_i + F$."""
        distance = radius if product_distance is None else product_distance
        if radius < 2 or distance < 2:
            raise ValueError(
                "Lorenz-96 needs `radius` >= 2 and `product_distance` >= 2 (its advection "
                f"term x[i-1]*x[i+1] spans two sites), got radius={radius}, "
                f"product_distance={distance}."
            )
        terms = monomial_exponents(radius, distance)
        coefficients = np.zeros(len(terms))
        for term, value in (((), forcing), ((0,), -1.0), ((-1, 1), 1.0), ((-2, -1), -1.0)):
            coefficients[terms.index(term)] = value
        return cls(n, coefficients, radius, product_distance)

    def features(self, x: Float[Array, " n"]) -> Float[Array, "n monomials"]:
        """The monomials of every site, ``r(x)``: the tendency is ``r(x) @ coefficients``."""
        L = self.radius
        # One padded copy [x_{n-L}, ..., x_{n-1}, x_0, ..., x_{n-1}, x_0, ..., x_{L-1}]:
        # shifted[j] = x_{i+j} for every site i at once.
        padded = jnp.concatenate([x[-L:], x, x[:L]])
        shifted = {j: padded[L + j : L + j + self.n] for j in range(-L, L + 1)}
        columns = [
            shifted[term[0]] * shifted[term[1]]
            if len(term) == 2
            else (shifted[term[0]] if term else jnp.ones_like(x))
            for term in monomial_exponents(L, self.distance)
        ]
        return jnp.stack(columns, axis=-1)

    @property
    def state_size(self) -> int:
        return self.n

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        return self.features(x) @ self.coefficients.astype(x.dtype)


def quadratic_exponents(n: int) -> tuple[tuple[int, ...], ...]:
    """The monomials of [`QuadraticDynamics`][]: ``()``, ``(j,)``, ``(j, k)`` (``j ≤ k``)."""
    return ((), *((j,) for j in range(n)), *itertools.combinations_with_replacement(range(n), 2))


class QuadraticDynamics(AbstractDynamics):
    r"""$\dot x_i = \sum_m a_{im}\, r_m(x)$: every quadratic polynomial of a small state.

    The monomials $r(x)$ are the constant 1, the variables $x_j$ and the products
    $x_j x_k$ ($j \le k$), in the order of [`quadratic_exponents`][]: ``1 + n + n(n+1)/2``
    of them (10 for ``n = 3``), each variable with its own coefficients (no locality or
    homogeneity, unlike [`MonomialDynamics`][]), so ``n`` × 10 = 30 coefficients for
    Lorenz-63, which lies in this span: [`QuadraticDynamics.lorenz63`][] builds its
    exact coefficients (7 non-zero), a known truth for a learnt surrogate.

    **Arguments:**

    - `coefficients`: shape ``(n, number_of_monomials)``, the learnable parameters.

    !!! cite "Reference"
        Bocquet, Brajard, Carrassi and Bertino (2019), Data assimilation as a learning
        tool to infer ordinary differential equation representations of dynamical
        models, *Nonlin. Processes Geophys.* 26, 143-162, section 4.
    """

    coefficients: Float[Array, "n monomials"] = eqx.field(converter=as_float_array)

    def __check_init__(self):
        shape = self.coefficients.shape
        if len(shape) != 2 or shape[0] < 1:
            raise ValueError(f"`coefficients` must have shape (n, 1 + n + n(n+1)/2), got {shape}.")
        expected = self.number_of_monomials(shape[0])
        if shape[1] != expected:
            raise ValueError(
                f"`coefficients` must have shape ({shape[0]}, {expected}): one row per "
                f"variable, one column per monomial of {shape[0]} variables, got {shape}."
            )

    @staticmethod
    def number_of_monomials(n: int) -> int:
        """``1 + n + n(n+1)/2``."""
        return 1 + n + n * (n + 1) // 2

    @classmethod
    def zeros(cls, n: int) -> "QuadraticDynamics":
        """All coefficients zero (the tendency of persistence)."""
        return cls(np.zeros((n, cls.number_of_monomials(n))))

    @classmethod
    def lorenz63(
        cls, sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0
    ) -> "QuadraticDynamics":
        r"""The exact Lorenz-63 tendency ($\sigma(y-x)$, $x(\rho-z)-y$, $xy-\beta z$)."""
        terms = quadratic_exponents(3)
        coefficients = np.zeros((3, len(terms)))
        for row, term, value in (
            (0, (0,), -sigma),
            (0, (1,), sigma),
            (1, (0,), rho),
            (1, (1,), -1.0),
            (1, (0, 2), -1.0),
            (2, (0, 1), 1.0),
            (2, (2,), -beta),
        ):
            coefficients[row, terms.index(term)] = value
        return cls(coefficients)

    def monomial_names(self) -> tuple[str, ...]:
        """A readable name per column, e.g. ``"x[0]*x[2]"``."""
        return tuple(
            "*".join(f"x[{j}]" for j in term) if term else "1"
            for term in quadratic_exponents(self.state_size)
        )

    def features(self, x: Float[Array, " n"]) -> Float[Array, " monomials"]:
        """The monomials ``r(x)``: the tendency is ``coefficients @ r(x)``."""
        rows, columns = np.triu_indices(self.state_size)
        return jnp.concatenate([jnp.ones_like(x[:1]), x, x[rows] * x[columns]])

    @property
    def state_size(self) -> int:
        return self.coefficients.shape[0]

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        return self.coefficients.astype(x.dtype) @ self.features(x)

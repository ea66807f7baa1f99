"""Steady incompressible flow and a passive scalar in a 2-D channel, by finite elements.

The reference solver behind the urban-canopy data set (`experiments/mesh_data.py`),
built on scikit-fem (Gustafsson & McBain 2020) and NumPy/SciPy, not JAX.

Flow: the steady Navier–Stokes equations ``(u·∇)u - ν Δu + ∇p = 0, ∇·u = 0`` with
Taylor–Hood (P2 velocity, P1 pressure) elements, solved by Newton's method started from
the Stokes solution. Boundaries of the box ``[x0, x1] x [y0, y1]`` that bounds the mesh:

- the inlet (``x = x0``): a prescribed profile ``u = (inflow(y), 0)``;
- the outlet (``x = x1``): do-nothing, ``ν ∂u/∂n - p n = 0`` (natural in the gradient
  form of the viscous term, so it also fixes the pressure level);
- the lid (``y = y1``): free-slip, ``v = 0`` and zero tangential stress;
- every other boundary (ground, buildings): no-slip, ``u = 0``.

Scalar: steady advection–diffusion ``u·∇c - κ Δc = s`` with P1 elements and SUPG
stabilisation (Brooks & Hughes 1982), ``c = 0`` at the inlet and zero diffusive flux on
all other boundaries.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

__all__ = ["FlowSolution", "power_law_inflow", "solve_flow", "solve_scalar"]


def power_law_inflow(exponent: float, height: float = 1.0, speed: float = 1.0) -> Callable:
    """The profile ``u(y) = speed (y / height)^exponent`` (a stratification-like family).

    Small exponents (~0.1) resemble an unstable (well-mixed) boundary layer, ~1/7 a
    neutral one and larger ones (0.3-0.4) a stable one.
    """
    if not exponent > 0:
        raise ValueError(f"`exponent` must be > 0, got {exponent}.")

    def profile(y):
        return speed * np.clip(np.asarray(y) / height, 0.0, None) ** exponent

    return profile


@dataclasses.dataclass(frozen=True, eq=False)
class FlowSolution:
    """A Taylor–Hood solution: P2 velocity and P1 pressure coefficients and their bases."""

    velocity_basis: object  # skfem.Basis, vector P2
    pressure_basis: object  # skfem.Basis, P1
    velocity: np.ndarray
    pressure: np.ndarray
    viscosity: float
    newton_steps: int
    last_update: float  # the last Newton update, relative (max-norm)

    def velocity_at_nodes(self) -> np.ndarray:
        """``(nodes, 2)``: velocity at the mesh vertices (P2 vertex values)."""
        return self.velocity[self.velocity_basis.nodal_dofs].T

    def pressure_at_nodes(self) -> np.ndarray:
        """``(nodes,)``: pressure at the mesh vertices."""
        return self.pressure[self.pressure_basis.nodal_dofs[0]]

    def divergence_ratio(self) -> float:
        """``‖∇·u‖ / ‖∇u‖`` in L2 over the domain (Taylor–Hood is only weakly div-free)."""
        from skfem import Functional
        from skfem.helpers import ddot, div, grad

        field = self.velocity_basis.interpolate(self.velocity)
        divergence = Functional(lambda w: div(w["u"]) ** 2).assemble(self.velocity_basis, u=field)
        gradient = Functional(lambda w: ddot(grad(w["u"]), grad(w["u"]))).assemble(
            self.velocity_basis, u=field
        )
        return float(np.sqrt(divergence / gradient))


def _boundaries(mesh) -> dict[str, np.ndarray]:
    """Boundary facets by role, from their midpoints on the bounding box."""
    low, high = mesh.p.min(axis=1), mesh.p.max(axis=1)
    tol = 1e-9 * float(np.max(high - low))
    facets = mesh.boundary_facets()
    x, y = mesh.p[:, mesh.facets[:, facets]].mean(axis=1)
    inflow = np.abs(x - low[0]) < tol
    outflow = np.abs(x - high[0]) < tol
    top = (np.abs(y - high[1]) < tol) & ~inflow & ~outflow
    wall = ~(inflow | outflow | top)
    return {
        "inflow": facets[inflow],
        "outflow": facets[outflow],
        "top": facets[top],
        "wall": facets[wall],
    }


def _forms():
    from skfem import BilinearForm
    from skfem.helpers import ddot, div, dot, grad, mul

    @BilinearForm
    def viscous(u, v, w):
        return ddot(grad(u), grad(v))

    @BilinearForm
    def divergence(u, q, w):
        return div(u) * q

    @BilinearForm
    def convection(du, v, w):  # (w·∇) du · v
        return dot(mul(grad(du), w["wind"]), v)

    @BilinearForm
    def convection_derivative(du, v, w):  # (du·∇) w · v
        return dot(mul(grad(w["wind"]), du), v)

    return viscous, divergence, convection, convection_derivative


def solve_flow(
    positions: np.ndarray,
    triangles: np.ndarray,
    inflow: Callable,
    viscosity: float,
    *,
    tolerance: float = 1e-8,
    max_newton_steps: int = 20,
    continuation: tuple[float, ...] = (),
) -> FlowSolution:
    """Steady Navier–Stokes by Newton's method from the Stokes solution.

    **Arguments:**

    - `positions`, `triangles`: the mesh, ``(n, 2)`` and ``(m, 3)``.
    - `inflow`: the inlet profile, a vectorised function of ``y``.
    - `viscosity`: kinematic viscosity ν (``Re = U H / ν``).
    - `tolerance`: stop when the Newton update is below this (max-norm, relative to the
      velocity's max-norm).
    - `continuation`: larger viscosities solved first, in order, each solution starting
      Newton for the next (for Reynolds numbers where Newton from Stokes diverges).

    **Returns:** a `FlowSolution`. Raises `RuntimeError` if Newton does not converge.
    """
    import scipy.sparse as sp
    from skfem import Basis, ElementTriP1, ElementTriP2, ElementVector, MeshTri, condense, solve

    if not viscosity > 0:
        raise ValueError(f"`viscosity` must be > 0, got {viscosity}.")
    mesh = MeshTri(
        np.ascontiguousarray(np.asarray(positions, float).T),
        np.ascontiguousarray(np.asarray(triangles).T),
    )
    velocity_basis = Basis(mesh, ElementVector(ElementTriP2()), intorder=4)
    pressure_basis = velocity_basis.with_element(ElementTriP1())
    n_velocity = velocity_basis.N
    viscous, divergence, convection, convection_derivative = _forms()

    laplace = viscous.assemble(velocity_basis)
    coupling = divergence.assemble(velocity_basis, pressure_basis)  # (N_p, N_u)

    boundaries = _boundaries(mesh)
    dirichlet_all = velocity_basis.get_dofs(
        np.concatenate([boundaries["wall"], boundaries["inflow"]])
    ).all()
    dirichlet_top = velocity_basis.get_dofs(boundaries["top"]).all(["u^2"])
    dirichlet = np.unique(np.concatenate([dirichlet_all, dirichlet_top]))
    inflow_u = velocity_basis.get_dofs(boundaries["inflow"]).all(["u^1"])

    x = np.zeros(n_velocity + pressure_basis.N)
    x[inflow_u] = inflow(velocity_basis.doflocs[1, inflow_u])
    # The corners shared with the walls stay at no-slip.
    wall_dofs = velocity_basis.get_dofs(boundaries["wall"]).all()
    x[wall_dofs] = 0.0

    # Weak form: ν (∇u, ∇v) + ((u·∇)u, v) - (p, ∇·v) = 0 and -(∇·u, q) = 0. The
    # convection is quadratic, C(u) u, so the residual is system(ν, C(u)) x and the
    # Jacobian adds the derivative of C(w) in w, ((du·∇)u, v).
    def system(nu, convective):
        blocks = [[nu * laplace + convective, -coupling.T], [-coupling, None]]
        return sp.bmat(blocks, format="csr")

    stokes = system(viscosity if not continuation else continuation[0], 0 * laplace)
    x = solve(*condense(stokes, np.zeros_like(x), x=x, D=dirichlet))

    steps, update_norm = 0, np.inf
    for nu in (*continuation, viscosity):
        for _ in range(max_newton_steps):
            wind = velocity_basis.interpolate(x[:n_velocity])
            oseen = convection.assemble(velocity_basis, wind=wind)
            residual = system(nu, oseen) @ x
            jacobian = system(nu, oseen + convection_derivative.assemble(velocity_basis, wind=wind))
            dx = solve(*condense(jacobian, -residual, D=dirichlet))
            x = x + dx
            steps += 1
            scale = max(np.max(np.abs(x[:n_velocity])), 1e-30)
            update_norm = np.max(np.abs(dx[:n_velocity])) / scale
            if not np.isfinite(update_norm) or update_norm < tolerance:
                break
        if not update_norm < tolerance:
            raise RuntimeError(
                f"Newton did not converge at viscosity {nu:.3g} (last relative update "
                f"{update_norm:.2e}); add `continuation` viscosities or refine the mesh."
            )
    return FlowSolution(
        velocity_basis=velocity_basis,
        pressure_basis=pressure_basis,
        velocity=x[:n_velocity],
        pressure=x[n_velocity:],
        viscosity=viscosity,
        newton_steps=steps,
        last_update=float(update_norm),
    )


def solve_scalar(
    flow: FlowSolution,
    source: Callable,
    diffusivity: float,
    *,
    supg: bool = True,
) -> np.ndarray:
    """Steady advection–diffusion of a passive scalar in the flow; P1 values at the nodes.

    **Arguments:**

    - `flow`: the velocity (any `FlowSolution`; its P2 field is used at quadrature points).
    - `source`: the source rate density ``s(x, y)``, vectorised.
    - `diffusivity`: κ > 0.
    - `supg`: streamline-upwind Petrov–Galerkin stabilisation with the optimal
      ``τ = h / (2|u|) (coth Pe_h - 1 / Pe_h)``, ``Pe_h = |u| h / (2κ)``.
    """
    from skfem import BilinearForm, ElementTriP1, LinearForm, condense, solve
    from skfem.helpers import dot, grad

    if not diffusivity > 0:
        raise ValueError(f"`diffusivity` must be > 0, got {diffusivity}.")
    basis = flow.velocity_basis.with_element(ElementTriP1())
    wind = flow.velocity_basis.interpolate(flow.velocity)

    def stabilisation(w):
        if not supg:
            return 0.0 * w.x[0]
        speed = np.sqrt(dot(w["wind"], w["wind"])) + 1e-12
        peclet = speed * w.h / (2 * diffusivity)
        upwinding = 1.0 / np.tanh(peclet) - 1.0 / peclet
        return w.h / (2 * speed) * upwinding

    @BilinearForm
    def operator(c, phi, w):
        streamline = dot(w["wind"], grad(phi))
        advection = dot(w["wind"], grad(c))
        return (
            diffusivity * dot(grad(c), grad(phi))
            + advection * phi
            + stabilisation(w) * advection * streamline
        )

    @LinearForm
    def load(phi, w):
        s = source(*w.x)
        return s * phi + stabilisation(w) * s * dot(w["wind"], grad(phi))

    matrix = operator.assemble(basis, wind=wind)
    rhs = load.assemble(basis, wind=wind)
    inlet = basis.get_dofs(_boundaries(basis.mesh)["inflow"]).all()
    concentration = solve(*condense(matrix, rhs, D=inlet))
    return concentration[basis.nodal_dofs[0]]

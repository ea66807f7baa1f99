"""The finite-element reference solver: exact solutions and conservation laws."""

import numpy as np
import pytest
from skfem import Basis, ElementTriP1, ElementTriP2, ElementVector, FacetBasis, Functional
from skfem.helpers import dot

from hybridda.mesh import NodeType, fem, urban

LENGTH, VISCOSITY, SPEED = 3.0, 0.01, 1.0  # Re = U H / ν = 100


def half_poiseuille(y):
    """Fully developed flow under a free-slip lid (y = 1) over a no-slip floor (y = 0)."""
    return SPEED * (2 * y - y**2)


@pytest.fixture(scope="module")
def channel():
    positions, cells, node_type = urban.triangulate(urban.Canopy(length=LENGTH), max_area=0.01)
    flow = fem.solve_flow(positions, cells, half_poiseuille, VISCOSITY)
    return positions, node_type, flow


def boundary_integral(flow, x, integrand, element, coefficients):
    """∫ integrand over the boundary facets at abscissa `x` (inlet or outlet)."""
    mesh = flow.velocity_basis.mesh
    facets = mesh.facets_satisfying(lambda p: np.isclose(p[0], x), boundaries_only=True)
    basis = FacetBasis(mesh, element, facets=facets, intorder=6)
    return Functional(integrand).assemble(basis, f=basis.interpolate(coefficients))


def test_poiseuille_channel_is_reproduced_exactly(channel):
    positions, node_type, flow = channel
    x, y = positions.T
    velocity, pressure = flow.velocity_at_nodes(), flow.pressure_at_nodes()
    # Navier–Stokes solution: u = U (2y - y²), v = 0, and from ν u'' = ∂p/∂x with the
    # do-nothing outlet (p = 0 where ∂u/∂x = 0): p = 2 ν U (L - x) / H². Taylor–Hood
    # contains both exactly (P2 parabola, P1 linear pressure): errors are round-off.
    assert np.max(np.abs(velocity[:, 0] - half_poiseuille(y))) < 1e-10
    assert np.max(np.abs(velocity[:, 1])) < 1e-10
    pressure_drop = 2 * VISCOSITY * SPEED * LENGTH
    assert np.max(np.abs(pressure - pressure_drop * (LENGTH - x) / LENGTH)) < 1e-10 * pressure_drop
    assert flow.divergence_ratio() < 1e-10
    assert flow.newton_steps <= 2  # the Stokes solution already solves Navier–Stokes
    assert set(np.unique(node_type)) == {
        NodeType.FLUID,
        NodeType.WALL,
        NodeType.INFLOW,
        NodeType.OUTFLOW,
        NodeType.TOP,
    }


def test_scalar_matches_the_exact_one_dimensional_solution(channel):
    positions, _, flow = channel
    # Plug flow u = (U, 0), uniform source s = 1, c(0) = 0, no diffusive flux at x = L:
    # U c' - κ c'' = 1  ⇒  c = x / U - κ / U² (exp(U (x - L) / κ) - exp(-U L / κ)).
    plug = flow.velocity_basis.project(lambda p: np.stack([SPEED + 0 * p[0], 0 * p[1]]))
    plug_flow = fem.FlowSolution(
        flow.velocity_basis, flow.pressure_basis, plug, 0 * flow.pressure, VISCOSITY, 0, 0.0
    )
    x = positions[:, 0]
    for diffusivity in (0.3, 0.05):
        exact = x / SPEED - diffusivity / SPEED**2 * (
            np.exp(SPEED * (x - LENGTH) / diffusivity) - np.exp(-SPEED * LENGTH / diffusivity)
        )
        concentration = fem.solve_scalar(plug_flow, lambda x, y: 1.0 + 0 * x, diffusivity)
        # Measured: 2e-4 (κ = 0.3) and 1.4e-3 (κ = 0.05, outlet layer of width κ / U ≈ h).
        assert np.max(np.abs(concentration - exact)) < 3e-3 * exact.max(), diffusivity


def test_scalar_mass_leaves_through_the_outlet(channel):
    _, _, flow = channel
    width = 0.15

    def source(x, y):
        r2 = (x - 1.0) ** 2 + (y - 0.5) ** 2
        return np.exp(-r2 / (2 * width**2)) / (2 * np.pi * width**2)

    concentration = fem.solve_scalar(flow, source, diffusivity=0.01)
    released = Functional(lambda w: source(*w.x)).assemble(
        Basis(flow.velocity_basis.mesh, ElementTriP1(), intorder=8)
    )
    outflow = boundary_integral(
        flow, LENGTH, lambda w: half_poiseuille(w.x[1]) * w["f"], ElementTriP1(), concentration
    )
    # Zero diffusive flux at the outlet and walls, and the inlet is far upstream
    # (exp(-U x / κ) ~ e^-100): all released mass is advected out. Measured: 5e-7.
    assert abs(outflow / released - 1) < 1e-4


def test_urban_case_converges_with_boundary_conditions_and_mass_balance():
    canopy = urban.random_canopy(np.random.default_rng(3))
    positions, cells, node_type = urban.triangulate(canopy, max_area=0.012, wall_spacing=0.06)
    inflow = fem.power_law_inflow(0.2)
    flow = fem.solve_flow(positions, cells, inflow, VISCOSITY)
    assert flow.newton_steps <= 8  # quadratic convergence from Stokes
    velocity = flow.velocity_at_nodes()
    walls = np.isin(node_type, [NodeType.WALL, NodeType.BUILDING])
    assert walls.sum() > 0 and np.all(velocity[walls] == 0.0)
    np.testing.assert_array_equal(velocity[node_type == NodeType.TOP, 1], 0.0)
    at_inlet = node_type == NodeType.INFLOW
    np.testing.assert_allclose(velocity[at_inlet, 0], inflow(positions[at_inlet, 1]))
    # Taylor–Hood is divergence-free against P1 test functions; with q = 1 the flux in
    # equals the flux out to solver precision. Both approximate ∫ (y/H)^0.2 dy = 1 / 1.2
    # only to the P2 interpolation error of the inflow's y^0.2 singularity (0.9 %).
    element = ElementVector(ElementTriP2())
    flux_in = -boundary_integral(flow, 0.0, lambda w: dot(w["f"], w.n), element, flow.velocity)
    flux_out = boundary_integral(
        flow, canopy.length, lambda w: dot(w["f"], w.n), element, flow.velocity
    )
    np.testing.assert_allclose([flux_in, flux_out], 1 / 1.2, rtol=2e-2)
    assert abs(flux_in - flux_out) < 1e-9
    # Pointwise divergence: small but not zero (corner singularities), measured 0.1.
    assert flow.divergence_ratio() < 0.2

    # Continuation in the Reynolds number reaches the same solution; too few Newton
    # steps is an error, not a silently unconverged field.
    continued = fem.solve_flow(
        positions, cells, inflow, VISCOSITY, continuation=(4 * VISCOSITY, 2 * VISCOSITY)
    )
    np.testing.assert_allclose(continued.velocity, flow.velocity, atol=1e-7)
    with pytest.raises(RuntimeError, match="Newton did not converge"):
        fem.solve_flow(positions, cells, inflow, VISCOSITY, max_newton_steps=2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="exponent"):
        fem.power_law_inflow(0.0)
    with pytest.raises(ValueError, match="Buildings must lie"):
        urban.Canopy(buildings=((1.0, 0.5, 0.2), (1.3, 0.5, 0.2)))
    with pytest.raises(ValueError, match="height"):
        urban.Canopy(buildings=((1.0, 0.5, 1.2),))

r"""Two-layer quasi-geostrophic channel model (the "QG" toy model of ECMWF's OOPS).

The model of Fisher et al. shipped with OOPS and used by Farchi et al. (2021): two
layers on a $\beta$-plane in a zonal channel, periodic in $x$, bounded by rigid walls
in $y$, with orography under the lower layer and a vertical shear that makes the flow
baroclinically unstable.

**Equations** (non-dimensional; OOPS ``qg_constants.f90``, ``calc_pv.f90``):

$$q_1 = \nabla^2\psi_1 - F_1(\psi_1 - \psi_2) + \beta y,\qquad
  q_2 = \nabla^2\psi_2 - F_2(\psi_2 - \psi_1) + \beta y + R_s,$$
$$\partial_t q_i + J(\psi_i, q_i) = -\nu\,\nabla^4\nabla^2\psi_i
  - \delta_{i2}\, r\,\nabla^2\psi_2 \pm \kappa F_i (\psi'_1 - \psi'_2),$$

with $J(a, b) = a_x b_y - a_y b_x$, $u = -\psi_y$, $v = \psi_x$,
$F_i = f_0^2 L^2 / (g' D_i)$ and $R_s = f_0 h / D_2$ (non-dimensionally
$h / (\mathrm{Ro}\, D_2)$); the sign of the last term is $+$ in layer 1, $-$ in layer 2.
The mean flow is imposed through the wall values of the streamfunction, as in OOPS
(``invent_state.f90``): $\psi_i = -U_i y$ on the walls, so the layer-mean zonal wind
$U_i$ is fixed and $U_1 \neq U_2$ is a permanent source of baroclinic instability. Here
this is a change of variable,

$$\psi_i = \psi'_i - U_i (y - y_c),\qquad q_i = q'_i + Q_i(y) + \delta_{i2} R_s,\qquad
  Q_i = \big(\beta + F_i (U_i - U_j)\big)(y - y_c),$$

and **the state is the perturbation PV** $q'_i$ of both layers, flattened from shape
``(2, ny, nx)`` (layer, y, x; layer 0 is the upper layer). $\psi'_i = 0$ on the walls.

OOPS has no explicit dissipation (its semi-Lagrangian scheme damps the small scales).
We add three linear terms, all of which only remove energy: a biharmonic
hyperviscosity $\nu$ on relative vorticity (the enstrophy sink), Ekman friction $r$ on
the lower layer (the energy sink) and a Newtonian relaxation $\kappa$ of the interface
towards the imposed shear (which keeps the shear in the interior of the channel).

**Units** (OOPS): length $L = 1000$ km, velocity $U = 10$ m/s, so the time unit is
$L/U = 10^5$ s $\approx 27.8$ h. Geometry and physics are OOPS's: a 12000 km x 6300 km
channel, $f_0 = 10^{-4}$ s$^{-1}$, $\beta_0 = 1.5\times 10^{-11}$ m$^{-1}$ s$^{-1}$
($\beta = 1.5$), $g' = g\,\Delta\ln\theta = 1$ m s$^{-2}$, depths $D_1 = 6000$ m,
$D_2 = 4000$ m (its "truth"; its 4D-Var model uses 5500 / 4500 m), a 2000 m Gaussian
hill of 1000 km e-folding width centred at $(L_x/4, 3L_y/4)$. The shear is weaker:
OOPS's $U_1 = 40$, $U_2 = 10$ m/s, held by our explicit dissipation, settles at an
eddy energy of about 40 (winds near 200 m/s, error growth rate only ~0.02 per time
unit), so the default is $U = (20, 5)$ m/s.

**Default regime** (40 x 20, ``dt = 0.05``, i.e. 1.4 h): from
[`QG.default_initial_state`][] the energy grows by four orders of magnitude and
saturates after about 15 time units (300 steps) at $E \approx 2 \pm 0.6$ (rms wind
about 20 m/s, maxima 40-60 m/s); the Courant number stays near 1-1.5; the leading
Lyapunov exponent is about 0.13-0.16 per time unit (errors double in about 5 units,
6 days). RK4 stays stable up to ``dt = 0.15`` there; [`QG.check_cfl`][] allows
Courant numbers up to 2.

**Discretisation.** OOPS advects PV semi-Lagrangian (cubic Lagrange interpolation);
that is unconditionally stable but neither smooth (``floor``) nor conservative. Here the
tendency is a method of lines for hybridda's RK4 [`hybridda.integrate.Resolvent`][], so
tangent-linear and adjoint models are exact derivatives of a smooth map:

- Grid (OOPS): ``nx`` points in $x$, $\Delta x = L_x / n_x$; ``ny`` interior rows
  in $y$, $\Delta y = L_y / (n_y + 1)$, walls on rows $0$ and $n_y + 1$.
- Advection: the Arakawa (1966) Jacobian of the *total* fields on the interior rows,
  with wall ghost rows holding $\psi' = 0$, $q' = 0$ (free slip: the odd reflection that
  the sine transform implies), the analytic background, and the orography extrapolated
  linearly; as in OOPS the wall values do not change in time. It conserves the
  perturbation energy exactly (without shear and damping), the potential enstrophy
  exactly when the PV vanishes on the walls (no shear, $\beta$ or orography), and
  $J(a, a) = 0$. The domain-mean PV is not conserved: with fixed wall values the wall
  circulation is not a discrete invariant.
- PV inversion: the vertical coupling $[[-F_1, F_1], [F_2, -F_2]]$ has the barotropic
  eigenvector $(1, 1)$ (eigenvalue 0) and the baroclinic one $(F_1, -F_2)$
  (eigenvalue $-(F_1 + F_2)$), so $\nabla^2\psi_{bt} = q_{bt}$ and
  $(\nabla^2 - F_1 - F_2)\psi_{bc} = q_{bc}$ with $q_{bt} = (F_2 q_1 + F_1 q_2)/(F_1+F_2)$,
  $q_{bc} = q_1 - q_2$. Each is solved exactly for the 5-point Laplacian by an FFT in
  $x$ and a type-I discrete sine transform in $y$ (an FFT of the odd extension; all
  `jnp.fft`, so jit / vmap / grad / jvp work). The same transforms apply the
  dissipation exactly.

!!! cite "References"
    Fisher, M., Tremolet, Y., Auvinen, H., Tan, D., Poli, P. (2011). Weak-constraint
    and long-window 4D-Var. ECMWF Technical Memorandum 655; the model's code is in OOPS
    (``oops/qg/model``, ECMWF / JCSDA). Farchi, A., Laloyaux, P., Bonavita, M.,
    Bocquet, M. (2021). Using machine learning to correct model error in data
    assimilation and forecast applications. *QJRMS* 147. Arakawa, A. (1966).
    Computational design for long-term numerical integration of the equations of fluid
    motion. *J. Comput. Phys.* 1, 119-143. Pedlosky, J. (1987). *Geophysical Fluid
    Dynamics*, 2nd ed., Springer (two-layer model, chapter 6).
"""

import dataclasses
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._checks import concrete
from ._base import AbstractDynamics

# RK4's stability region reaches 2 sqrt(2) on the imaginary axis and about 2.79 on the
# negative real axis. Arakawa's Jacobian of a uniform flow u has eigenvalues up to
# i u / dx, so dt (|u|/dx + |v|/dy) <= 2 keeps a margin for pure advection; measured at
# 40 x 20 with the default damping, RK4 survives Courant numbers up to ~4 and blows up
# near 5. The damping limit keeps a margin below 2.79.
_COURANT_LIMIT = 2.0
_DAMPING_LIMIT = 2.5


def _shift(padded: Array, di: int, dj: int) -> Array:
    """Values at (i + di, j + dj) for the interior rows of a wall-padded field.

    ``padded`` has shape ``(..., ny + 2, nx)`` (ghost rows 0 and ny + 1); x is periodic.
    """
    rows = padded.shape[-2]
    shifted = jnp.roll(padded, -di, axis=-1) if di else padded
    return shifted[..., 1 + dj : rows - 1 + dj, :]


def _arakawa_padded(a: Array, b: Array, dx: float, dy: float) -> Array:
    """Arakawa's Jacobian on the interior rows of wall-padded fields ``(..., ny+2, nx)``."""

    def A(i, j):
        return _shift(a, i, j)

    def B(i, j):
        return _shift(b, i, j)

    # Arakawa (1966): the mean of the three second-order forms J++, J+x and Jx+.
    j_pp = (A(1, 0) - A(-1, 0)) * (B(0, 1) - B(0, -1)) - (A(0, 1) - A(0, -1)) * (B(1, 0) - B(-1, 0))
    j_px = (
        A(1, 0) * (B(1, 1) - B(1, -1))
        - A(-1, 0) * (B(-1, 1) - B(-1, -1))
        - A(0, 1) * (B(1, 1) - B(-1, 1))
        + A(0, -1) * (B(1, -1) - B(-1, -1))
    )
    j_xp = (
        B(0, 1) * (A(1, 1) - A(-1, 1))
        - B(0, -1) * (A(1, -1) - A(-1, -1))
        - B(1, 0) * (A(1, 1) - A(1, -1))
        + B(-1, 0) * (A(-1, 1) - A(-1, -1))
    )
    return (j_pp + j_px + j_xp) / (12.0 * dx * dy)


def arakawa_jacobian(
    a: Float[Array, "*batch ny nx"], b: Float[Array, "*batch ny nx"], dx: float, dy: float
) -> Float[Array, "*batch ny nx"]:
    r"""Arakawa's (1966) Jacobian $J(a, b) = a_x b_y - a_y b_x$ on a doubly periodic grid.

    Second-order accurate; $\sum J = \sum a J = \sum b J = 0$ and $J(a, a) = 0$ to
    round-off. Axis -1 is $x$ (spacing `dx`), axis -2 is $y$ (spacing `dy`).
    """
    a_pad = jnp.concatenate([a[..., -1:, :], a, a[..., :1, :]], axis=-2)
    b_pad = jnp.concatenate([b[..., -1:, :], b, b[..., :1, :]], axis=-2)
    return _arakawa_padded(a_pad, b_pad, dx, dy)


def _pad_walls(field: Array) -> Array:
    """Add zero ghost rows (the walls) below and above ``(..., ny, nx)``."""
    zero = jnp.zeros_like(field[..., :1, :])
    return jnp.concatenate([zero, field, zero], axis=-2)


def channel_jacobian(
    a: Float[Array, "*batch ny nx"], b: Float[Array, "*batch ny nx"], dx: float, dy: float
) -> Float[Array, "*batch ny nx"]:
    r"""Arakawa's Jacobian in the channel, for fields that vanish on both walls.

    ``a`` and ``b`` hold the interior rows; the wall rows (``0`` and ``ny + 1``, one grid
    step outside) are zero. Then $\sum a J(a, b) = \sum b J(a, b) = 0$ exactly and
    $J(a, a) = 0$; $\sum J(a, b)$ is not zero (the wall circulation is not an invariant
    of the free-slip, fixed-wall-streamfunction channel).
    """
    return _arakawa_padded(_pad_walls(a), _pad_walls(b), dx, dy)


def laplacian(
    field: Float[Array, "*batch ny nx"], dx: float, dy: float
) -> Float[Array, "*batch ny nx"]:
    """The 5-point Laplacian, periodic in x, zero on the walls (Dirichlet) in y."""
    padded = _pad_walls(field)
    d2x = jnp.roll(field, -1, axis=-1) - 2.0 * field + jnp.roll(field, 1, axis=-1)
    d2y = padded[..., 2:, :] - 2.0 * field + padded[..., :-2, :]
    return d2x / dx**2 + d2y / dy**2


def _odd_extension(field: Array) -> Array:
    """``[0, f_1..f_N, 0, -f_N..-f_1]`` along axis -2: period 2(N+1), odd about the walls."""
    zero = jnp.zeros_like(field[..., :1, :])
    return jnp.concatenate([zero, field, zero, -jnp.flip(field, axis=-2)], axis=-2)


def sine_fourier_transform(field: Float[Array, "*batch ny nx"]) -> Array:
    r"""Real FFT in x, type-I discrete sine transform in y.

    Returns $\hat f_{m,k} = \sum_{j=1}^{N}\sin\frac{\pi m j}{N+1}\sum_i f_{j,i}
    e^{-2\pi i k i/n_x}$ for $m = 1..N$ (axis -2) and $k = 0..n_x/2$ (axis -1), via an FFT
    of the odd extension: the DST of $f$ is $\tfrac{i}{2}$ times that FFT.
    """
    n = field.shape[-2]
    return 0.5j * jnp.fft.rfft2(_odd_extension(field))[..., 1 : n + 1, :]


def inverse_sine_fourier_transform(spectrum: Array, nx: int) -> Float[Array, "*batch ny nx"]:
    """Inverse of [`sine_fourier_transform`][] (``nx`` fixes the length of the x axis)."""
    n = spectrum.shape[-2]
    # DST-I is its own inverse up to 2 / (N + 1); an inverse FFT of the odd extension
    # equals i / (N + 1) times the DST, hence the factor -2i.
    full = jnp.fft.irfft2(-2.0j * _odd_extension(spectrum), s=(2 * n + 2, nx))
    return full[..., 1 : n + 1, :]


def gaussian_hill(
    nx: int,
    ny: int,
    lengths: tuple[float, float],
    height: float = 2000.0,
    width: float = 1.0,
    centre: tuple[float, float] = (0.25, 0.75),
) -> Float[Array, "ny nx"]:
    """OOPS's orography: a Gaussian hill (metres) on the model grid.

    `height` in metres, e-folding `width` in model length units (1 = 1000 km), `centre`
    as fractions of the channel (OOPS centres it on the grid point ``(nx/4, 3 ny/4)``,
    within a grid step of this); periodic in x.
    """
    length_x, length_y = lengths
    dx, dy = length_x / nx, length_y / (ny + 1)
    x = (np.arange(nx) + 0.5) * dx
    y = (np.arange(ny) + 1.0) * dy
    distance_x = np.abs(x - centre[0] * length_x)
    distance_x = np.minimum(distance_x, length_x - distance_x)
    distance_y = y - centre[1] * length_y
    squared = distance_x[None, :] ** 2 + distance_y[:, None] ** 2
    return jnp.asarray(height * np.exp(-squared / width**2))


class QG(AbstractDynamics):
    r"""Two-layer quasi-geostrophic channel model; the state is the perturbation PV.

    See the module docstring for the equations, units and discretisation.

    **Arguments** (non-dimensional unless stated; defaults: OOPS's "truth" except the
    weaker shear):

    - `nx`, `ny`: grid points in x (periodic) and interior rows in y (static, >= 4 each;
      any size, odd included; default 40 x 20 as in OOPS; e.g. 128 x 64 for a finer grid).
    - `lengths`: channel size ``(L_x, L_y)`` (static; default 12 x 6.3, i.e.
      12000 km x 6300 km, giving 300 km grid steps at 40 x 20).
    - `depths`: layer depths ``(D_1, D_2)`` in metres (upper, lower), default 6000, 4000.
    - `rossby_radius`: $L_R = \sqrt{g' (D_1 + D_2)} / f_0$ in length units (default 1,
      OOPS's $g' = 1$ m/s$^2$, $D_1 + D_2 = 10$ km, $f_0 = 10^{-4}$). Then
      $F_i = (D_1 + D_2) / (D_i L_R^2)$ (1.67 and 2.5 by default). Changing the depths at
      fixed `rossby_radius` and fixed total depth (OOPS's imperfect model, 5500 / 4500 m)
      reproduces OOPS's $F_i$; changing the total depth implicitly rescales $g'$.
    - `rossby_number`: $U / (f_0 L)$, default 0.1; only scales the orography term
      $R_s = h / (\mathrm{Ro}\, D_2)$.
    - `beta`: $\beta_0 L^2 / U$, default 1.5.
    - `zonal_wind`: layer-mean winds ``(U_1, U_2)``, default (2, 0.5), i.e. 20 and
      5 m/s (OOPS: (4, 1)); equal values mean no shear.
    - `friction`: Ekman friction rate $r$ on the lower layer, default 0.2 (5.8 days).
    - `thermal_damping`: relaxation rate $\kappa$ of the interface, default 0.1.
    - `hyperviscosity`: damping rate of the shortest resolved wave by the biharmonic
      viscosity, default 10 (per time unit); $\nu = $ `hyperviscosity` / $K_{max}^4$ with
      $K_{max}^2$ the largest eigenvalue of minus the discrete Laplacian, so the
      dissipation scale follows the grid.
    - `orography`: height $h$ in metres on the ``(ny, nx)`` grid, a scalar (0 for a
      flat bottom), or ``None`` for OOPS's 2000 m hill ([`gaussian_hill`][]).

    All but the grid are arrays, so they can be learnt or perturbed: a "truth" and an
    imperfect model are ``truth = QG()`` and ``model = truth.perturbed(depths=(5500.0,
    4500.0))`` (see [`QG.perturbed`][]). Suggested step: ``dt = 0.05`` at 40 x 20 and
    about ``0.015`` at 128 x 64 (check with [`QG.check_cfl`][]).
    """

    nx: int = eqx.field(static=True)
    ny: int = eqx.field(static=True)
    lengths: tuple[float, float] = eqx.field(static=True)
    depths: Float[Array, "2"]
    rossby_radius: Float[Array, ""]
    rossby_number: Float[Array, ""]
    beta: Float[Array, ""]
    zonal_wind: Float[Array, "2"]
    friction: Float[Array, ""]
    thermal_damping: Float[Array, ""]
    hyperviscosity: Float[Array, ""]
    orography: Float[Array, "_ny _nx"]

    def __init__(
        self,
        nx=40,
        ny=20,
        lengths=(12.0, 6.3),
        depths=(6000.0, 4000.0),
        rossby_radius=1.0,
        rossby_number=0.1,
        beta=1.5,
        zonal_wind=(2.0, 0.5),
        friction=0.2,
        thermal_damping=0.1,
        hyperviscosity=10.0,
        orography=None,
    ):
        for name, value in (("nx", nx), ("ny", ny)):
            integer = isinstance(value, int | np.integer) and not isinstance(value, bool)
            if not integer or value < 4:
                raise ValueError(
                    f"QG needs `{name}` >= 4 grid points (an integer), got {name}={value!r}; "
                    "the Arakawa stencil and the sine/Fourier transforms need at least 4."
                )
        nx, ny = int(nx), int(ny)
        lengths = tuple(float(length) for length in lengths)
        if len(lengths) != 2 or not all(math.isfinite(v) and v > 0 for v in lengths):
            raise ValueError(
                f"`lengths` must be two finite positive lengths (L_x, L_y), got {lengths}."
            )
        self.nx, self.ny, self.lengths = nx, ny, lengths
        self.depths = jnp.asarray(depths, dtype=float)
        self.rossby_radius = jnp.asarray(rossby_radius, dtype=float)
        self.rossby_number = jnp.asarray(rossby_number, dtype=float)
        self.beta = jnp.asarray(beta, dtype=float)
        self.zonal_wind = jnp.asarray(zonal_wind, dtype=float)
        self.friction = jnp.asarray(friction, dtype=float)
        self.thermal_damping = jnp.asarray(thermal_damping, dtype=float)
        self.hyperviscosity = jnp.asarray(hyperviscosity, dtype=float)
        if orography is None:
            orography = gaussian_hill(nx, ny, lengths)
        orography = jnp.asarray(orography, dtype=float)
        if orography.ndim == 0:
            orography = jnp.broadcast_to(orography, (ny, nx))
        self.orography = orography

    def __check_init__(self):
        if self.depths.shape != (2,):
            raise ValueError(f"`depths` must have shape (2,) (D_1, D_2), got {self.depths.shape}.")
        if self.zonal_wind.shape != (2,):
            raise ValueError(
                f"`zonal_wind` must have shape (2,) (U_1, U_2), got {self.zonal_wind.shape}."
            )
        if self.orography.shape != (self.ny, self.nx):
            raise ValueError(
                f"`orography` must be a scalar or have shape (ny, nx) = ({self.ny}, {self.nx}), "
                f"got {self.orography.shape}."
            )
        for name in (
            "rossby_radius",
            "rossby_number",
            "beta",
            "friction",
            "thermal_damping",
            "hyperviscosity",
        ):
            if getattr(self, name).shape != ():
                raise ValueError(
                    f"`{name}` must be a scalar, got shape {getattr(self, name).shape}."
                )
        for name, fix in (
            ("depths", "Layer depths are in metres, e.g. depths=(6000.0, 4000.0)."),
            ("rossby_radius", "It is sqrt(g' (D_1 + D_2)) / f_0 in units of L; OOPS: 1.0."),
            ("rossby_number", "It is U / (f_0 L); OOPS: 0.1."),
        ):
            value = concrete(getattr(self, name))
            if value is not None and not np.all(np.isfinite(value) & (value > 0)):
                raise ValueError(f"`{name}` must be finite and > 0, got {value}. {fix}")
        for name in ("friction", "thermal_damping", "hyperviscosity"):
            value = concrete(getattr(self, name))
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be finite and >= 0, got {value}.")
        for name in ("beta", "zonal_wind", "orography"):
            value = concrete(getattr(self, name))
            if value is not None and not np.all(np.isfinite(value)):
                raise ValueError(f"`{name}` must be finite.")

    def perturbed(self, **changes) -> "QG":
        """A copy with some arguments changed, validated like a new model.

        E.g. OOPS's imperfect model: ``truth.perturbed(depths=(5500.0, 4500.0))``.
        """
        arguments = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        unknown = set(changes) - set(arguments)
        if unknown:
            raise ValueError(f"Unknown QG arguments {sorted(unknown)}; known: {sorted(arguments)}.")
        arguments.update(changes)
        return QG(**arguments)

    # ---------------------------------------------------------------- geometry

    @property
    def state_size(self) -> int:
        return 2 * self.ny * self.nx

    @property
    def grid_spacing(self) -> tuple[float, float]:
        """``(dx, dy)``: ``L_x / nx`` and ``L_y / (ny + 1)`` (walls one step outside)."""
        return self.lengths[0] / self.nx, self.lengths[1] / (self.ny + 1)

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates ``x`` (nx,) and ``y`` (ny,) of the grid points, from the south wall."""
        dx, dy = self.grid_spacing
        return (np.arange(self.nx) + 0.5) * dx, (np.arange(self.ny) + 1.0) * dy

    def coordinates(self) -> Float[Array, " n"]:
        """The x coordinate of every state variable (periodic with period ``L_x``).

        Only a placeholder for the base class's 1-D localisation: it ignores the
        distance in y and between layers. For 2-D localisation use
        [`QG.grid_coordinates`][].
        """
        x, _ = self.grid()
        return jnp.asarray(np.broadcast_to(x, (2, self.ny, self.nx)).reshape(-1))

    def grid_coordinates(self) -> Float[Array, "n 2"]:
        """The horizontal position ``(x, y)`` of every state variable, shape (n, 2).

        In the order of the state vector (layer, y, x); both layers share the grid, so
        localisation with these coordinates is horizontal only. x is periodic with period
        ``L_x``, y is not: ``Localisation(radius, coordinates=model.grid_coordinates(),
        domain_length=(L_x, math.inf))``.
        """
        x, y = self.grid()
        shape = (2, self.ny, self.nx)
        xs = np.broadcast_to(x[None, None, :], shape).reshape(-1)
        ys = np.broadcast_to(y[None, :, None], shape).reshape(-1)
        return jnp.asarray(np.stack([xs, ys], axis=-1))

    def domain_length(self) -> float:
        return float(self.lengths[0])

    def to_fields(self, x: Float[Array, "*batch n"]) -> Float[Array, "*batch 2 _ny _nx"]:
        """Reshape a state (or a batch) to ``(..., 2, ny, nx)`` (layer, y, x)."""
        return x.reshape(*x.shape[:-1], 2, self.ny, self.nx)

    def from_fields(self, fields: Float[Array, "*batch 2 _ny _nx"]) -> Float[Array, "*batch n"]:
        """Inverse of [`QG.to_fields`][]."""
        return fields.reshape(*fields.shape[:-3], self.state_size)

    # ------------------------------------------------------- derived parameters

    def coupling(self) -> tuple[Array, Array]:
        r"""$F_1, F_2 = (D_1 + D_2) / (D_i L_R^2)$."""
        total = self.depths[0] + self.depths[1]
        scale = total / self.rossby_radius**2
        return scale / self.depths[0], scale / self.depths[1]

    def _layer_weights(self) -> Array:
        # D_i / (D_1 + D_2): the weights that make the PV operator symmetric (w_1 F_1 = w_2 F_2).
        return self.depths / (self.depths[0] + self.depths[1])

    def _centred_y(self) -> Array:
        """y - y_c on the rows 0..ny+1 (walls included)."""
        dy = self.grid_spacing[1]
        return jnp.asarray((np.arange(self.ny + 2) - 0.5 * (self.ny + 1)) * dy)

    def _laplacian_symbol(self) -> np.ndarray:
        """Eigenvalues K^2 of minus the discrete Laplacian, shape (ny, nx // 2 + 1)."""
        dx, dy = self.grid_spacing
        k = np.arange(self.nx // 2 + 1)
        m = np.arange(1, self.ny + 1)
        kx2 = 4.0 * np.sin(np.pi * k / self.nx) ** 2 / dx**2
        ky2 = 4.0 * np.sin(0.5 * np.pi * m / (self.ny + 1)) ** 2 / dy**2
        return ky2[:, None] + kx2[None, :]

    def viscosity(self) -> Array:
        r"""The biharmonic coefficient $\nu$ = `hyperviscosity` / $K_{max}^4$."""
        return self.hyperviscosity / float(self._laplacian_symbol().max() ** 2)

    def orography_pv(self) -> Float[Array, "_ny _nx"]:
        r"""$R_s = h / (\mathrm{Ro}\, D_2)$ (OOPS: 5 at the top of the default hill)."""
        return self.orography / (self.rossby_number * self.depths[1])

    # ------------------------------------------------------- PV and inversion

    def pv_from_streamfunction(
        self, psi: Float[Array, "*batch 2 _ny _nx"]
    ) -> Float[Array, "*batch 2 _ny _nx"]:
        r"""Discrete PV operator on perturbations: $\nabla^2\psi_i - F_i(\psi_i - \psi_j)$."""
        f1, f2 = self.coupling()
        dx, dy = self.grid_spacing
        difference = psi[..., 0, :, :] - psi[..., 1, :, :]
        stretching = jnp.stack([-f1 * difference, f2 * difference], axis=-3)
        return laplacian(psi, dx, dy) + stretching

    def _invert_spectral(self, q_hat: Array) -> Array:
        """Spectral PV inversion, (..., 2, ny, nkx) -> (..., 2, ny, nkx)."""
        f1, f2 = self.coupling()
        q1, q2 = q_hat[..., 0, :, :], q_hat[..., 1, :, :]
        k2 = jnp.broadcast_to(jnp.asarray(self._laplacian_symbol()), q1.shape)
        # Barotropic and baroclinic modes (left eigenvectors of the coupling matrix).
        psi_bt = -((f2 * q1 + f1 * q2) / (f1 + f2)) / k2
        psi_bc = -(q1 - q2) / (k2 + (f1 + f2))
        psi1 = psi_bt + (f1 / (f1 + f2)) * psi_bc
        psi2 = psi_bt - (f2 / (f1 + f2)) * psi_bc
        return jnp.stack([psi1, psi2], axis=-3)

    def invert(self, q: Float[Array, "*batch 2 _ny _nx"]) -> Float[Array, "*batch 2 _ny _nx"]:
        """Perturbation streamfunction from perturbation PV (exact inverse of
        [`QG.pv_from_streamfunction`][], zero on the walls)."""
        psi_hat = self._invert_spectral(sine_fourier_transform(q))
        return inverse_sine_fourier_transform(psi_hat, self.nx)

    def from_streamfunction(
        self, psi: Float[Array, "*batch 2 _ny _nx"]
    ) -> Float[Array, "*batch n"]:
        """The state whose perturbation streamfunction is ``psi`` (shape (..., 2, ny, nx))."""
        return self.from_fields(self.pv_from_streamfunction(psi))

    def perturbation_streamfunction(self, x: Float[Array, " n"]) -> Float[Array, "2 _ny _nx"]:
        r"""$\psi'$ (zero on the walls)."""
        return self.invert(self.to_fields(x))

    def _background_streamfunction(self) -> Array:
        """-U_i (y - y_c) on rows 0..ny+1, shape (2, ny + 2, 1)."""
        return -self.zonal_wind[:, None, None] * self._centred_y()[None, :, None]

    def _background_pv(self) -> Array:
        """Q_i(y) = (beta + F_i (U_i - U_j)) (y - y_c) on rows 0..ny+1, shape (2, ny + 2, 1)."""
        f1, f2 = self.coupling()
        shear = self.zonal_wind[0] - self.zonal_wind[1]
        gradient = jnp.stack([self.beta + f1 * shear, self.beta - f2 * shear])
        return gradient[:, None, None] * self._centred_y()[None, :, None]

    def streamfunction(self, x: Float[Array, " n"]) -> Float[Array, "2 _ny _nx"]:
        r"""Total streamfunction $\psi_i = \psi'_i - U_i (y - y_c)$, shape (2, ny, nx)."""
        background = self._background_streamfunction()[:, 1:-1, :]
        return self.perturbation_streamfunction(x) + background

    def potential_vorticity(self, x: Float[Array, " n"]) -> Float[Array, "2 _ny _nx"]:
        r"""Total PV $q_i = q'_i + Q_i(y) + \delta_{i2} R_s$, shape (2, ny, nx)."""
        background = self._background_pv()[:, 1:-1, :]
        orography = jnp.stack([jnp.zeros_like(self.orography), self.orography_pv()])
        return self.to_fields(x) + background + orography

    def velocities(self, x: Float[Array, " n"]) -> tuple[Array, Array]:
        r"""Total winds ``(u, v)``, each of shape (2, ny, nx).

        $u = U_i - \delta_y\psi'$, $v = \delta_x\psi'$ with centred differences
        ($\psi' = 0$ on the walls).
        """
        u, v = self._winds_with_walls(self.perturbation_streamfunction(x))
        return u[..., 1:-1, :], v[..., 1:-1, :]

    def _winds_with_walls(self, psi: Array) -> tuple[Array, Array]:
        """Total ``(u, v)`` on rows 0..ny+1 from the perturbation streamfunction (2, ny, nx)."""
        dx, dy = self.grid_spacing
        padded = _pad_walls(psi)
        # Free slip: psi' is odd about each wall (the reflection the sine transform
        # implies), so one more ghost row each side gives centred differences on the walls.
        odd = jnp.concatenate([-psi[..., :1, :], padded, -psi[..., -1:, :]], axis=-2)
        u = self.zonal_wind[:, None, None] - (odd[..., 2:, :] - odd[..., :-2, :]) / (2 * dy)
        v = (jnp.roll(padded, -1, axis=-1) - jnp.roll(padded, 1, axis=-1)) / (2 * dx)
        return u, v

    def fields_with_walls(self, x: Float[Array, " n"]) -> Float[Array, "3 2 _rows _nx"]:
        r"""Total streamfunction, $u$ and $v$ of both layers on the grid rows 0..ny+1.

        Shape ``(3, 2, ny + 2, nx)``: (field, layer, row, column) with fields
        streamfunction, u, v; row ``j`` lies at $y = j\,\Delta y$, so rows 0 and
        ``ny + 1`` are the walls, where $\psi' = 0$, $v = 0$ and $u$ is the centred
        difference across the wall of the odd (free-slip) reflection of $\psi'$. The
        interior rows equal [`QG.streamfunction`][] and [`QG.velocities`][]. For
        interpolating observations anywhere between the walls.
        """
        psi = self.perturbation_streamfunction(x)
        u, v = self._winds_with_walls(psi)
        psi_total = _pad_walls(psi) + self._background_streamfunction()
        return jnp.stack([psi_total, u, v])

    # ------------------------------------------------------------- diagnostics

    def _area_mean(self, field: Array) -> Array:
        # Interior sum times the cell area over the channel area (wall rows contribute 0).
        return jnp.sum(field, axis=(-2, -1)) / (self.nx * (self.ny + 1))

    def energy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        r"""Perturbation energy per unit area, depth-weighted over the layers.

        $E = -\tfrac12\sum_i w_i\,\overline{\psi'_i q'_i}$, $w_i = D_i / (D_1 + D_2)$: the
        kinetic energy $\tfrac12\sum_i w_i\overline{|\nabla\psi'_i|^2}$ plus the available
        potential energy $\tfrac12 w_1 F_1 \overline{(\psi'_1 - \psi'_2)^2}$ (discrete).
        """
        q = self.to_fields(x)
        psi = self.invert(q)
        per_layer = self._area_mean(psi * q)
        return -0.5 * jnp.dot(self._layer_weights(), per_layer)

    def enstrophy(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        r"""Perturbation potential enstrophy $\tfrac12\sum_i w_i\,\overline{q_i'^2}$."""
        q = self.to_fields(x)
        return 0.5 * jnp.dot(self._layer_weights(), self._area_mean(q**2))

    # ---------------------------------------------------------------- dynamics

    def _dissipation_spectral(self, psi_hat: Array) -> Array:
        # -nu del^4 zeta_i - delta_i2 r del^2 psi_2; with del^2 -> -K^2 this is
        # nu K^6 psi_hat_i + delta_i2 r K^2 psi_hat_2.
        k2 = jnp.asarray(self._laplacian_symbol())
        hyper = (self.viscosity() * k2**3)[None] * psi_hat
        ekman = jnp.stack([jnp.zeros_like(k2), self.friction * k2])
        # Newtonian relaxation of the interface height (the baroclinic mode) towards the
        # imposed shear: d/dt (psi_1 - psi_2) = -kappa (psi'_1 - psi'_2), in PV terms.
        f1, f2 = self.coupling()
        thickness = self.thermal_damping * (psi_hat[0] - psi_hat[1])
        thermal = jnp.stack([f1 * thickness, -f2 * thickness])
        return hyper + ekman * psi_hat + thermal

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        q = self.to_fields(x)
        dx, dy = self.grid_spacing
        psi_hat = self._invert_spectral(sine_fourier_transform(q))
        # One inverse transform for the streamfunction and the dissipation together.
        spectra = jnp.concatenate([psi_hat, self._dissipation_spectral(psi_hat)], axis=0)
        fields = inverse_sine_fourier_transform(spectra, self.nx)
        psi, dissipation = fields[:2], fields[2:]
        # Total fields with wall ghost rows: psi' = q' = 0 on the walls (free slip), the
        # background is analytic there, the orography is extrapolated linearly.
        orography = self.orography_pv()
        south = 2.0 * orography[:1] - orography[1:2]
        north = 2.0 * orography[-1:] - orography[-2:-1]
        orography = jnp.concatenate([south, orography, north], axis=0)
        orography = jnp.stack([jnp.zeros_like(orography), orography])
        psi_total = _pad_walls(psi) + self._background_streamfunction()
        q_total = _pad_walls(q) + self._background_pv() + orography
        advection = _arakawa_padded(psi_total, q_total, dx, dy)
        return self.from_fields(dissipation - advection)

    # --------------------------------------------------------------- stability

    def courant_number(self, x: Float[Array, " n"], dt) -> Float[Array, ""]:
        r"""$\Delta t\,\max(|u|/\Delta x + |v|/\Delta y)$ over both layers (traceable)."""
        dx, dy = self.grid_spacing
        u, v = self.velocities(x)
        return dt * jnp.max(jnp.abs(u) / dx + jnp.abs(v) / dy)

    def _damping_rate(self) -> Array:
        # Upper bound on the decay rate of any mode under the linear damping terms.
        return self.hyperviscosity + self.friction + self.thermal_damping

    def max_stable_dt(self, x: Float[Array, " n"]) -> Float[Array, ""]:
        """Largest RK4 step this state allows, with margin (traceable).

        The smaller of the step at which the Courant number
        ``dt * max(|u|/dx + |v|/dy)`` is 2 (RK4's imaginary-axis limit is 2.83; the
        default flow at 40 x 20 blows up near 5) and 2.5 over the largest damping rate
        (`hyperviscosity` + `friction` + `thermal_damping`; RK4's real-axis limit is
        2.79).
        """
        advective = _COURANT_LIMIT / self.courant_number(x, 1.0)
        damping = _DAMPING_LIMIT / (self._damping_rate())
        return jnp.minimum(advective, damping)

    def check_cfl(self, x: Float[Array, " n"], dt) -> float:
        """Raise `ValueError` if `dt` breaks the stability limit at state `x`.

        Concrete values only (call it outside `jit`; inside, use
        [`QG.max_stable_dt`][] with `eqx.error_if`). Returns the Courant number.
        """
        state = concrete(x)
        step = concrete(dt)
        if state is None or step is None:
            raise ValueError(
                "`check_cfl` needs concrete values; call it outside jit, or use "
                "`max_stable_dt` with `eqx.error_if` inside traced code."
            )
        step = float(step)
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"`dt` must be finite and > 0, got {dt}.")
        state = jnp.asarray(state)
        courant = float(self.courant_number(state, step))
        if not math.isfinite(courant):
            raise ValueError("The state is not finite: the integration has already blown up.")
        limit = float(self.max_stable_dt(state))
        if step > limit:
            damping = _DAMPING_LIMIT / float(self._damping_rate())
            raise ValueError(
                f"dt={step:g} violates the stability limit of the QG model at this state: "
                f"Courant number dt*max(|u|/dx + |v|/dy) = {courant:.3g} (limit "
                f"{_COURANT_LIMIT:g}), damping limit dt <= {damping:.3g}. Use dt <= "
                f"{limit:.3g} (e.g. more steps per cycle)."
            )
        return courant

    # --------------------------------------------------------------- initial state

    def default_initial_state(self) -> Float[Array, " n"]:
        """The uniform sheared flow plus a small, smooth, deterministic perturbation.

        A perturbation streamfunction of rms 0.01 (winds of order 0.1 m/s) made of the
        6 x 4 gravest modes with pseudo-random amplitudes and phases (NumPy seed 0, so the
        same on every call); baroclinic instability makes it turbulent.
        """
        rng = np.random.default_rng(0)
        x, y = self.grid()
        length_x, length_y = self.lengths
        psi = np.zeros((2, self.ny, self.nx))
        for k in range(1, 7):
            for m in range(1, 5):
                amplitude = rng.normal(size=2) / (k * m)
                phase = rng.uniform(0.0, 2.0 * np.pi, size=2)
                wave = np.cos(2 * np.pi * k * x[None, None, :] / length_x + phase[:, None, None])
                psi += amplitude[:, None, None] * wave * np.sin(np.pi * m * y / length_y)[:, None]
        psi *= 0.01 / np.sqrt(np.mean(psi**2))
        return self.from_streamfunction(jnp.asarray(psi))

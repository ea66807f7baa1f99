r"""MAOOAM: the Modular Arbitrary-Order Ocean-Atmosphere Model (De Cruz et al. 2016).

A reduced-order coupled ocean-atmosphere model: a two-layer quasi-geostrophic atmosphere
in a zonally periodic channel over a one-layer (reduced-gravity) quasi-geostrophic ocean
in a closed basin, coupled by wind stress and by radiative and heat exchanges. The fields
are projected on Fourier modes (Galerkin), so the model is a system of ODEs that is
quadratic in the spectral coefficients,

$$\dot x_i = \sum_{j,k=0}^{n} T_{ijk}\, x_j x_k,\qquad x_0 = 1,$$

whose tensor $T$ is built from analytic inner products of the basis functions. This is
a port of the model as implemented by ``qgs`` (Demaeyer, De Cruz and Vannitsem 2020),
whose tendencies it reproduces to round-off (``tests/dynamics/test_maooam.py``).

**Basis** (domain $0 \le x \le 2\pi/n$, $0 \le y \le \pi$, aspect ratio $n = 2L_y/L_x$).
Atmosphere, channel modes of maximal wavenumbers ``atmosphere_modes = (Nx, Ny)``: for each
block $(M, P)$, $1 \le M \le N_x$, $1 \le P \le N_y$ (``M`` outer, ``P`` inner), the modes
$F^A_P = \sqrt2\cos(Py)$ (for $M = 1$ only), $F^K_{M,P} = 2\cos(Mnx)\sin(Py)$ and
$F^L_{M,P} = 2\sin(Mnx)\sin(Py)$: ``n_a = Ny (2 Nx + 1)`` modes. Ocean, basin modes of
``ocean_modes = (Nx, Ny)``: $\phi_{H,P} = 2\sin(Hnx/2)\sin(Py)$, ``n_o = Nx Ny`` modes.

**State** (size ``2 n_a + 2 n_o``, nondimensional, the order of qgs without its ``x_0``):
atmospheric barotropic streamfunction $\psi_a$ (``n_a``), baroclinic streamfunction
(temperature) $\theta_a$ (``n_a``), oceanic streamfunction $\psi_o$ (``n_o``), oceanic
temperature anomaly $\delta T_o$ (``n_o``). The time unit is $1/f_0$ (2.69 h for the
default $f_0$; [`MAOOAM.time_unit_days`][]).

**Equations** (De Cruz et al. 2016, section 2, linearised radiative scheme), with the
inner products $a_{ii} = (F_i, \nabla^2 F_i)$, $c_{ij} = (F_i, \partial_x F_j)$,
$g_{ijk} = (F_i, J(F_j, F_k))$, $s_{ij} = (F_i, \phi_j)$, $M_{ii} = (\phi_i, \nabla^2\phi_i)$,
$N_{ij} = (\phi_i, \partial_x\phi_j)$, $O_{ijk} = (\phi_i, J(\phi_j, \phi_k))$:

$$a_{ii}\dot\psi_{a,i} = -\sum_{jk} g_{ijk} a_{kk}(\psi_{a,j}\psi_{a,k} + \theta_{a,j}\theta_{a,k})
  - \beta \sum_j c_{ij}\psi_{a,j} - \tfrac{k_d}{2} a_{ii}(\psi_{a,i} - \theta_{a,i})
  + \tfrac{k_d}{2}\sum_j s_{ij} M_{jj}\psi_{o,j},$$

$$(\sigma_0 a_{ii} - 1)\dot\theta_{a,i} = \sum_{jk} g_{ijk}\big(\psi_{a,j}\theta_{a,k}
  - \sigma_0 a_{kk}(\psi_{a,j}\theta_{a,k} + \theta_{a,j}\psi_{a,k})\big)
  - \beta\sigma_0\sum_j c_{ij}\theta_{a,j} + \ldots$$

(the friction, coupling and radiative terms of the baroclinic equation, and the two
ocean equations, are written out term by term in ``_assemble``).

**Parameters** ([`MAOOAMParameters`][]): the defaults are those of the qgs MAOOAM example,
i.e. of De Cruz et al. (2016) (the strongly coupled regime with low-frequency variability
of Vannitsem et al. 2015): $n = 1.5$, $k_d = k'_d = 0.029$, $r = 10^{-7}$ s$^{-1}$,
$d = 1.1\times10^{-7}$ s$^{-1}$, $h = 136.5$ m, $C_a = 103.3333$ and $C_o = 310$ W m$^{-2}$,
$\epsilon_a = 0.7$, $T_a^0 = 289.3$ K, $T_o^0 = 301.46$ K, $\lambda = 15.06$ W m$^{-2}$
K$^{-1}$, $\gamma_o = 5.6\times10^8$ J m$^{-2}$ K$^{-1}$, the rest qgs's defaults. The
default resolution is the 36-variable one (atmosphere 2x2, ocean 2x4).

**Truncation.** Models of different resolutions share their common modes, and the
tensor restricted to the common modes does not depend on the other modes (the
inner products of a Fourier basis do not change when modes are added). So a truncated
model's tendency is the full model's tendency restricted to the shared variables when
the other variables are zero. [`MAOOAM.restrict`][] and [`MAOOAM.embed`][] map states
between a model and a truncated one (Brajard et al. 2021 use a 56-variable truth and a
36-variable physical model).

**Implementation.** The inner products are computed once, in NumPy, from the analytic
formulas of Cehelsky and Tung (1987) as given by De Cruz et al. (2016) and coded in qgs
(``qgs/inner_products/analytic.py``: the helper functions $S_1..S_4$, $B_1, B_2$); a test
checks them against numerical quadrature. The tendency is split as
``constant + linear @ x + quadratic(x, x)``; the quadratic part is kept as its non-zero
entries with $j \le k$ (COO: 208 for 36 variables, 1192 for 56, out of $n^3$) and applied
by gather-multiply-scatter, which measured 3-6x faster than a dense ``einsum`` for RK4
steps of one state or of 20 (CPU, 36 and 56 variables). The values are the module's
array leaves: jit, vmap, grad and jvp work, and gradients with respect to the tensor are
available for learning.

!!! cite "References"
    De Cruz, L., Demaeyer, J. and Vannitsem, S. (2016). The Modular Arbitrary-Order
    Ocean-Atmosphere Model: MAOOAM v1.0. *Geosci. Model Dev.* 9, 2793-2808.
    Vannitsem, S., Demaeyer, J., De Cruz, L. and Ghil, M. (2015). Low-frequency
    variability and heat transport in a low-order nonlinear coupled ocean-atmosphere
    model. *Physica D* 309, 71-85.
    Demaeyer, J., De Cruz, L. and Vannitsem, S. (2020). qgs: A flexible Python framework
    of reduced-order multiscale climate models. *J. Open Source Softw.* 5(56), 2597.
    Cehelsky, P. and Tung, K. K. (1987). Theories of multiple equilibria and weather
    regimes. Part II. *J. Atmos. Sci.* 44, 3282-3303.
"""

import dataclasses
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._base import AbstractDynamics

# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MAOOAMParameters:
    r"""Physical parameters of MAOOAM (SI units unless nondimensional), with qgs's names.

    Defaults: De Cruz et al. (2016) / the qgs MAOOAM example; the parameters that example
    does not set take qgs's defaults. Frozen (hashable): change one with
    ``dataclasses.replace(parameters, coupling=1e-7)``.

    - `aspect_ratio` ($n = 2L_y/L_x$, ``n``): 1.5.
    - `meridional_extent` ($L_y = \pi L$, ``scale``): 5e6 m.
    - `coriolis` ($f_0$, ``f0``): 1.032e-4 s⁻¹; `earth_radius` (``rra``): 6.37e6 m;
      `latitude` ($\phi_0/\pi$, ``phi0_npi``): 0.25 (45°N).
    - `atmosphere_bottom_friction` ($k_d$, ``kd``, nondimensional): 0.029;
      `atmosphere_internal_friction` ($k'_d$, ``kdp``, nondimensional): 0.029;
      `static_stability` ($\sigma$, ``sigma``, nondimensional): 0.2.
    - `ocean_bottom_friction` ($r$, ``r``): 1e-7 s⁻¹; `coupling` (wind-stress coupling
      $d$, ``d``): 1.1e-7 s⁻¹; `ocean_depth` ($h$, ``h``): 136.5 m; `reduced_gravity`
      ($g'$, ``gp``): 0.031 m s⁻².
    - `atmosphere_heat_capacity` ($\gamma_a$): 1e7, `ocean_heat_capacity` ($\gamma_o$):
      5.6e8 J m⁻² K⁻¹.
    - `atmosphere_insolation` ($C_a$): 103.3333, `ocean_insolation` ($C_o$): 310 W m⁻²
      (projected on the first atmospheric mode $F^A_1$).
    - `emissivity` ($\epsilon_a$): 0.7; `atmosphere_temperature` ($T_a^0$): 289.3 K;
      `ocean_temperature` ($T_o^0$): 301.46 K; `heat_exchange` ($\lambda$, ``hlambda``):
      15.06 W m⁻² K⁻¹; `surface_temperature_ratio` (``sc``): 1.
    - `gas_constant` ($R$ of dry air): 287.058 J kg⁻¹ K⁻¹; `stefan_boltzmann`
      ($\sigma_B$): 5.67e-8 W m⁻² K⁻⁴.
    """

    aspect_ratio: float = 1.5
    meridional_extent: float = 5.0e6
    coriolis: float = 1.032e-4
    earth_radius: float = 6370.0e3
    latitude: float = 0.25
    atmosphere_bottom_friction: float = 0.029
    atmosphere_internal_friction: float = 0.029
    static_stability: float = 0.2
    ocean_bottom_friction: float = 1.0e-7
    coupling: float = 1.1e-7
    ocean_depth: float = 136.5
    reduced_gravity: float = 3.1e-2
    atmosphere_heat_capacity: float = 1.0e7
    ocean_heat_capacity: float = 5.6e8
    atmosphere_insolation: float = 103.3333
    ocean_insolation: float = 310.0
    emissivity: float = 0.7
    atmosphere_temperature: float = 289.3
    ocean_temperature: float = 301.46
    heat_exchange: float = 15.06
    surface_temperature_ratio: float = 1.0
    gas_constant: float = 287.058
    stefan_boltzmann: float = 5.67e-8

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
                raise ValueError(f"`{field.name}` must be a real number, got {value!r}.")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{field.name}` must be finite and > 0, got {value!r}.")

    def nondimensional(self) -> dict[str, float]:
        r"""The nondimensional coefficients of the equations (qgs's names).

        ``n``, ``beta`` ($L\cot\phi_0/a$), ``kd``, ``kdp``, ``sig0`` ($\sigma/2$), ``G``
        ($-L^2/L_R^2$, $L_R = \sqrt{g'h}/f_0$), ``r``, ``d`` (divided by $f_0$), ``Cpa``,
        ``Lpa``, ``LSBpa``, ``LSBpgo`` (atmospheric heat budget), ``Cpgo``, ``Lpgo``,
        ``sbpgo``, ``sbpa`` (oceanic heat budget), ``sc``. Formulas: De Cruz et al. (2016),
        section 2, as in qgs (``qgs/params/params.py``).
        """
        f0 = self.coriolis
        length = self.meridional_extent / math.pi  # L
        phi0 = self.latitude * math.pi
        deformation_radius = math.sqrt(self.reduced_gravity * self.ocean_depth) / f0
        gamma_a, gamma_o = self.atmosphere_heat_capacity, self.ocean_heat_capacity
        sigma_b, eps = self.stefan_boltzmann, self.emissivity
        t_a, t_o = self.atmosphere_temperature, self.ocean_temperature
        radiative = self.gas_constant / (f0**2 * length**2)
        return {
            "n": float(self.aspect_ratio),
            "beta": length / self.earth_radius * math.cos(phi0) / math.sin(phi0),
            "kd": float(self.atmosphere_bottom_friction),
            "kdp": float(self.atmosphere_internal_friction),
            "sig0": self.static_stability / 2,
            "G": -(length**2) / deformation_radius**2,
            "r": self.ocean_bottom_friction / f0,
            "d": self.coupling / f0,
            "Cpa": self.atmosphere_insolation / (gamma_a * f0) * radiative / 2,
            "Lpa": self.heat_exchange / (gamma_a * f0),
            "LSBpa": 8 * eps * sigma_b * t_a**3 / (gamma_a * f0),
            "LSBpgo": 2 * eps * sigma_b * t_o**3 / (gamma_a * f0),
            "Cpgo": self.ocean_insolation / (gamma_o * f0) * radiative,
            "Lpgo": self.heat_exchange / (gamma_o * f0),
            "sbpgo": 4 * sigma_b * t_o**3 / (gamma_o * f0),
            "sbpa": 8 * eps * sigma_b * t_a**3 / (gamma_o * f0),
            "sc": float(self.surface_temperature_ratio),
        }


# ---------------------------------------------------------------------------------------
# Basis functions and their analytic inner products (NumPy, at construction)
# ---------------------------------------------------------------------------------------

_A, _K, _L = 0, 1, 2  # mode kinds: sqrt(2) cos(Py), 2 cos(Mnx) sin(Py), 2 sin(Hnx) sin(Py)


class _Mode(NamedTuple):
    kind: int
    P: int  # meridional wavenumber
    M: int  # zonal wavenumber of a K (cosine) mode, else 0
    H: int  # zonal wavenumber index of an L (sine) mode, else 0


def _channel_modes(nx_max: int, ny_max: int) -> list[_Mode]:
    """Atmospheric modes, in qgs's order: blocks (M, P), M outer; A, K, L within a block."""
    modes = []
    for m in range(1, nx_max + 1):
        for p in range(1, ny_max + 1):
            if m == 1:
                modes.append(_Mode(_A, p, 0, 0))
            modes += [_Mode(_K, p, m, 0), _Mode(_L, p, 0, m)]
    return modes


def _basin_modes(nx_max: int, ny_max: int) -> list[_Mode]:
    """Oceanic modes 2 sin(H n x / 2) sin(P y), in qgs's order (H outer)."""
    return [_Mode(_L, p, 0, h) for h in range(1, nx_max + 1) for p in range(1, ny_max + 1)]


def _delta(r) -> float:
    return 1.0 if r == 0 else 0.0


def _odd(r) -> float:
    return 1.0 if r % 2 else 0.0


def _parity_and_order(keys) -> tuple[int, list[int]]:
    """Sign of the permutation that stably sorts ``keys``, and that stable order."""
    order = sorted(range(len(keys)), key=lambda position: keys[position])
    inversions = sum(keys[a] > keys[b] for a in range(len(keys)) for b in range(a + 1, len(keys)))
    return (-1 if inversions % 2 else 1), order


def _jacobian_lll(i: _Mode, j: _Mode, k: _Mode) -> float:
    """(F_i, J(F_j, F_k)) / n for three sine modes, in increasing index order."""
    s3 = (k.P * j.H + j.P * k.H) / 2  # S_3 of Cehelsky and Tung (1987)
    s4 = (k.P * j.H - j.P * k.H) / 2  # S_4
    d = _delta
    return s3 * (
        (d(k.H - j.H - i.H) - d(k.H - j.H + i.H)) * d(k.P + j.P - i.P)
        + d(k.H + j.H - i.H) * (d(k.P - j.P + i.P) - d(k.P - j.P - i.P))
    ) + s4 * (
        d(k.H + j.H - i.H) * d(k.P - j.P - i.P)
        + (d(k.H - j.H + i.H) - d(k.H - j.H - i.H)) * (d(k.P - j.P - i.P) - d(k.P - j.P + i.P))
    )


def _jacobian_akl(a: _Mode, k: _Mode, ell: _Mode) -> float:
    """(F^A, J(F^K, F^L)) / n."""
    value = -2 * (math.sqrt(2) / math.pi) * k.M * _delta(k.M - ell.H) * _odd(a.P + k.P + ell.P)
    if value != 0:
        b1 = (ell.P + k.P) / a.P  # B_1 of Cehelsky and Tung (1987)
        b2 = (ell.P - k.P) / a.P  # B_2
        value *= b1**2 / (b1**2 - 1) - b2**2 / (b2**2 - 1)
    return value


def _jacobian_kkl(i: _Mode, j: _Mode, k: _Mode) -> float:
    """(F^K_i, J(F^K_j, F^L_k)) / n."""
    s1 = -(k.P * j.M + j.P * k.H) / 2  # S_1 of Cehelsky and Tung (1987)
    s2 = (k.P * j.M - j.P * k.H) / 2  # S_2
    d = _delta
    return s1 * (
        d(i.M - k.H - j.M) * d(i.P - k.P + j.P)
        - d(i.M - k.H - j.M) * d(i.P + k.P - j.P)
        + (d(k.H - j.M + i.M) + d(k.H - j.M - i.M)) * d(k.P + j.P - i.P)
    ) + s2 * (
        d(i.M - k.H - j.M) * d(i.P - k.P - j.P)
        + (d(k.H - j.M - i.M) + d(i.M + k.H - j.M)) * (d(i.P - k.P + j.P) - d(k.P - j.P + i.P))
    )


def _channel_jacobian(modes: list[_Mode], aspect_ratio: float) -> np.ndarray:
    """g_ijk = (F_i, J(F_j, F_k)) for channel modes, totally antisymmetric."""
    size = len(modes)
    g = np.zeros((size, size, size))
    for index in np.ndindex(size, size, size):
        kinds = [modes[position].kind for position in index]
        if kinds == [_L, _L, _L]:
            sign, order = _parity_and_order(list(index))
            value = _jacobian_lll(*(modes[index[position]] for position in order))
        elif sorted(kinds) == [_A, _K, _L]:
            sign, order = _parity_and_order(kinds)
            value = _jacobian_akl(*(modes[index[position]] for position in order))
        elif sorted(kinds) == [_K, _K, _L]:
            sign, order = _parity_and_order(kinds)
            value = _jacobian_kkl(*(modes[index[position]] for position in order))
        else:
            continue  # every other combination vanishes by parity in x or y
        g[index] = sign * value * aspect_ratio
    return g


def _basin_jacobian(modes: list[_Mode], aspect_ratio: float) -> np.ndarray:
    """O_ijk = (phi_i, J(phi_j, phi_k)) for basin modes, totally antisymmetric."""
    size = len(modes)
    jacobian = np.zeros((size, size, size))
    for index in np.ndindex(size, size, size):
        sign, order = _parity_and_order(list(index))
        value = _jacobian_lll(*(modes[index[position]] for position in order))
        # The basin modes have half the zonal wavenumber of the channel modes: n / 2.
        jacobian[index] = sign * value * aspect_ratio / 2
    return jacobian


def _channel_laplacian(modes: list[_Mode], aspect_ratio: float) -> np.ndarray:
    """a_ii = (F_i, ∇²F_i) (the Laplacian is diagonal in this basis)."""
    return np.array([-(aspect_ratio**2) * (m.M + m.H) ** 2 - m.P**2 for m in modes], float)


def _basin_laplacian(modes: list[_Mode], aspect_ratio: float) -> np.ndarray:
    """M_ii = (phi_i, ∇²phi_i)."""
    return np.array([-(aspect_ratio**2) * (m.H / 2) ** 2 - m.P**2 for m in modes], float)


def _channel_beta(modes: list[_Mode], aspect_ratio: float) -> np.ndarray:
    """c_ij = (F_i, ∂_x F_j)."""
    c = np.zeros((len(modes), len(modes)))
    for i, fi in enumerate(modes):
        for j, fj in enumerate(modes):
            if (fi.kind, fj.kind) == (_K, _L):
                c[i, j] = aspect_ratio * fi.M * _delta(fi.M - fj.H) * _delta(fi.P - fj.P)
            elif (fi.kind, fj.kind) == (_L, _K):
                c[i, j] = -aspect_ratio * fj.M * _delta(fj.M - fi.H) * _delta(fj.P - fi.P)
    return c


def _basin_beta(modes: list[_Mode], aspect_ratio: float) -> np.ndarray:
    """N_ij = (phi_i, ∂_x phi_j)."""
    n_matrix = np.zeros((len(modes), len(modes)))
    for i, fi in enumerate(modes):
        for j, fj in enumerate(modes):
            if fi.P == fj.P and (fi.H + fj.H) % 2:
                n_matrix[i, j] = -2 * fj.H * fi.H * aspect_ratio / ((fj.H**2 - fi.H**2) * math.pi)
    return n_matrix


def _atmosphere_ocean_overlap(atmosphere: list[_Mode], ocean: list[_Mode]) -> np.ndarray:
    """s_ij = (F_i, phi_j), the projection of the ocean modes on the atmospheric ones."""
    s = np.zeros((len(atmosphere), len(ocean)))
    for i, fi in enumerate(atmosphere):
        for j, phi in enumerate(ocean):
            if fi.kind == _A and phi.H % 2 and (phi.P + fi.P) % 2:
                s[i, j] = 8 * math.sqrt(2) * phi.P / (math.pi**2 * (phi.P**2 - fi.P**2) * phi.H)
            elif fi.kind == _K and phi.H % 2 and phi.P == fi.P:
                s[i, j] = 4 * phi.H / (math.pi * (phi.H**2 - 4 * fi.M**2))
            elif fi.kind == _L and phi.P == fi.P and phi.H == 2 * fi.H:
                s[i, j] = 1.0
    return s


def _assemble(atmosphere, ocean, parameters: MAOOAMParameters):
    """The tendency ``constant + linear @ x + sum_jk quadratic_ijk x_j x_k`` (NumPy arrays).

    Each term follows the projected equations of De Cruz et al. (2016, section 2) in
    qgs's form (``qgs/tensors/qgtensor.py``), without orography and with the linearised
    radiative scheme; the equations are divided by their left-hand-side operator.
    ``quadratic`` is dense, with zeros below the diagonal in its last two axes.
    """
    p = parameters.nondimensional()
    n, beta, kd, kdp, sig0 = p["n"], p["beta"], p["kd"], p["kdp"], p["sig0"]
    n_a, n_o = len(atmosphere), len(ocean)
    size = 2 * n_a + 2 * n_o
    psi_a, theta_a = np.arange(n_a), n_a + np.arange(n_a)
    psi_o, temp_o = 2 * n_a + np.arange(n_o), 2 * n_a + n_o + np.arange(n_o)

    a = _channel_laplacian(atmosphere, n)  # a_ii
    c = _channel_beta(atmosphere, n)  # c_ij
    g = _channel_jacobian(atmosphere, n)  # g_ijk
    b = g * a[None, None, :]  # b_ijk = (F_i, J(F_j, ∇²F_k))
    s = _atmosphere_ocean_overlap(atmosphere, ocean)  # s_ij
    m = _basin_laplacian(ocean, n)  # M_ii
    n_beta = _basin_beta(ocean, n)  # N_ij
    o = _basin_jacobian(ocean, n)  # O_ijk
    wind = s * m[None, :]  # d_ij = (F_i, ∇²phi_j)
    insolation_a = np.zeros(n_a)
    insolation_a[0] = 1.0  # C_a and C_o project on F^A_1 = sqrt(2) cos(y) only
    eye_a, eye_o = np.eye(n_a), np.eye(n_o)

    constant = np.zeros(size)
    linear = np.zeros((size, size))
    quadratic = np.zeros((size, size, size))

    def block(rows, cols):
        return np.ix_(rows, cols)

    def block3(rows, cols, deps):
        return np.ix_(rows, cols, deps)

    # Barotropic vorticity: divided by a_ii.
    inv_a = 1 / a
    linear[block(psi_a, psi_a)] = -beta * c * inv_a[:, None] - kd / 2 * eye_a
    linear[block(psi_a, theta_a)] = kd / 2 * eye_a
    linear[block(psi_a, psi_o)] = kd / 2 * wind * inv_a[:, None]
    quadratic[block3(psi_a, psi_a, psi_a)] = -b * inv_a[:, None, None]
    quadratic[block3(psi_a, theta_a, theta_a)] = -b * inv_a[:, None, None]

    # Baroclinic vorticity and thermodynamics: divided by sigma_0 a_ii - 1.
    inv_t = 1 / (sig0 * a - 1)
    constant[theta_a] = -inv_t * p["Cpa"] * insolation_a
    linear[block(theta_a, psi_a)] = np.diag(inv_t * a * kd * sig0 / 2)
    linear[block(theta_a, theta_a)] = (
        np.diag(inv_t * (-a * (kd / 2 + 2 * kdp) * sig0 + p["sc"] * p["Lpa"] + p["LSBpa"]))
        - beta * sig0 * c * inv_t[:, None]
    )
    linear[block(theta_a, psi_o)] = -sig0 * kd / 2 * wind * inv_t[:, None]
    linear[block(theta_a, temp_o)] = -(p["Lpa"] / 2 + p["LSBpgo"]) * s * inv_t[:, None]
    quadratic[block3(theta_a, psi_a, theta_a)] = (g - sig0 * b) * inv_t[:, None, None]
    quadratic[block3(theta_a, theta_a, psi_a)] = -sig0 * b * inv_t[:, None, None]

    # Oceanic vorticity: divided by M_ii + G (G = -L^2 / L_R^2).
    inv_m = 1 / (m + p["G"])
    wind_on_ocean = s.T * a[None, :] * inv_m[:, None] * p["d"]  # d K_ij / (M_ii + G)
    linear[block(psi_o, psi_a)] = wind_on_ocean
    linear[block(psi_o, theta_a)] = -wind_on_ocean
    linear[block(psi_o, psi_o)] = -beta * n_beta * inv_m[:, None] - np.diag(
        inv_m * m * (p["r"] + p["d"])
    )
    quadratic[block3(psi_o, psi_o, psi_o)] = -o * m[None, None, :] * inv_m[:, None, None]

    # Oceanic temperature: W_ij = s_ji.
    constant[temp_o] = s.T @ insolation_a * p["Cpgo"]
    linear[block(temp_o, theta_a)] = s.T * (2 * p["sc"] * p["Lpgo"] + p["sbpa"])
    linear[block(temp_o, temp_o)] = -(p["Lpgo"] + p["sbpgo"]) * eye_o
    quadratic[block3(temp_o, psi_o, temp_o)] = -o

    # Fold onto j <= k (qgs's "upper-triangular" form): the same tendency, half the terms.
    upper = np.triu(np.ones((size, size), bool))
    quadratic = np.where(upper, quadratic + np.swapaxes(quadratic, 1, 2), 0.0)
    quadratic[:, np.arange(size), np.arange(size)] /= 2
    return constant, linear, quadratic


# ---------------------------------------------------------------------------------------
# The dynamics
# ---------------------------------------------------------------------------------------


def _check_modes(name: str, value) -> tuple[int, int]:
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in value)
        or min(value) < 1
    ):
        raise ValueError(
            f"`{name}` must be a pair of positive integers (maximal x- and y-wavenumbers), "
            f"e.g. (2, 2); got {value!r}."
        )
    return int(value[0]), int(value[1])


class MAOOAM(AbstractDynamics):
    r"""MAOOAM coupled ocean-atmosphere model (De Cruz et al. 2016), ported from qgs.

    See the module docstring for the equations, basis and state layout.

    **Arguments:**

    - `atmosphere_modes`: maximal (x, y) wavenumbers of the atmospheric channel basis;
      default ``(2, 2)`` (10 modes). ``(2, 4)`` gives 20 modes.
    - `ocean_modes`: maximal (x, y) wavenumbers of the oceanic basin basis; default
      ``(2, 4)`` (8 modes).
    - `parameters`: a [`MAOOAMParameters`][] (default: De Cruz et al. 2016).

    The state has ``2 n_a + 2 n_o`` variables (36 by default; 56 for an atmosphere of
    ``(2, 4)``), without qgs's constant ``x_0 = 1``. The resolution and parameters are
    static: the tensor is computed from them at construction (about 0.1 s for 56
    variables). The arrays `constant`, `linear` and `quadratic_values` are the inexact
    array leaves (`quadratic_indices` holds the ``(i, j, k)`` of each quadratic term,
    sorted by ``i``, ``j <= k``); [`MAOOAM.tensor`][] gives the dense qgs-style tensor.
    """

    atmosphere_modes: tuple[int, int] = eqx.field(static=True)
    ocean_modes: tuple[int, int] = eqx.field(static=True)
    parameters: MAOOAMParameters = eqx.field(static=True)
    constant: Float[Array, " n"]
    linear: Float[Array, "n n"]
    quadratic_values: Float[Array, " nnz"]
    quadratic_indices: Int[Array, "3 nnz"]

    # Arguments unannotated on purpose: bad values get the ValueError of `_check_modes`
    # (naming the argument), not a runtime type-checker's error.
    def __init__(self, atmosphere_modes=(2, 2), ocean_modes=(2, 4), parameters=None):
        self.atmosphere_modes = _check_modes("atmosphere_modes", atmosphere_modes)
        self.ocean_modes = _check_modes("ocean_modes", ocean_modes)
        if parameters is None:
            parameters = MAOOAMParameters()
        if not isinstance(parameters, MAOOAMParameters):
            raise ValueError(
                f"`parameters` must be a MAOOAMParameters, got {type(parameters).__name__}."
            )
        self.parameters = parameters
        constant, linear, quadratic = _assemble(
            _channel_modes(*self.atmosphere_modes), _basin_modes(*self.ocean_modes), parameters
        )
        self.constant = jnp.asarray(constant)
        self.linear = jnp.asarray(linear)
        indices = np.nonzero(quadratic)  # C order: sorted by the output row i
        self.quadratic_values = jnp.asarray(quadratic[indices])
        self.quadratic_indices = jnp.asarray(np.stack(indices))

    def __check_init__(self):
        n = self.state_size
        if self.constant.shape != (n,) or self.linear.shape != (n, n):
            raise ValueError(
                f"MAOOAM arrays do not match the resolution ({n} variables): `constant` "
                f"{self.constant.shape}, `linear` {self.linear.shape}."
            )
        nnz = self.quadratic_values.shape
        if self.quadratic_values.ndim != 1 or self.quadratic_indices.shape != (3, *nnz):
            raise ValueError(
                f"`quadratic_values` {self.quadratic_values.shape} and `quadratic_indices` "
                f"{self.quadratic_indices.shape} must have shapes (nnz,) and (3, nnz)."
            )

    # -- sizes and layout ----------------------------------------------------------------

    @property
    def n_atmosphere(self) -> int:
        """Number of atmospheric modes ``n_a = Ny (2 Nx + 1)``."""
        nx, ny = self.atmosphere_modes
        return ny * (2 * nx + 1)

    @property
    def n_ocean(self) -> int:
        """Number of oceanic modes ``n_o = Nx Ny``."""
        nx, ny = self.ocean_modes
        return nx * ny

    @property
    def state_size(self) -> int:
        return 2 * self.n_atmosphere + 2 * self.n_ocean

    @property
    def time_unit_days(self) -> float:
        """One model time unit, ``1 / f_0``, in days (0.112 for the default f_0)."""
        return 1 / (self.parameters.coriolis * 86400)

    def split(self, x: Float[Array, "... n"]):
        """Split states into ``(psi_a, theta_a, psi_o, delta_T_o)`` along the last axis."""
        n_a, n_o = self.n_atmosphere, self.n_ocean
        bounds = np.cumsum([n_a, n_a, n_o])
        return tuple(jnp.split(x, bounds, axis=-1))

    def variable_names(self) -> list[str]:
        """Name of each state variable, qgs-style: ``psi_a_1 .. theta_a_1 .. delta_T_o_8``."""
        n_a, n_o = self.n_atmosphere, self.n_ocean
        return (
            [f"psi_a_{i + 1}" for i in range(n_a)]
            + [f"theta_a_{i + 1}" for i in range(n_a)]
            + [f"psi_o_{i + 1}" for i in range(n_o)]
            + [f"delta_T_o_{i + 1}" for i in range(n_o)]
        )

    # -- tendency ------------------------------------------------------------------------

    def tendency(self, t, x: Float[Array, " n"], args=None) -> Float[Array, " n"]:
        if x.shape != (self.state_size,):
            raise ValueError(
                f"MAOOAM.tendency: `x` must have shape ({self.state_size},) "
                "(psi_a, theta_a, psi_o, delta_T_o, without qgs's x_0 = 1), "
                f"got {x.shape}; use jax.vmap for ensembles."
            )
        row, left, right = self.quadratic_indices
        quadratic = jax.ops.segment_sum(
            self.quadratic_values * x[left] * x[right],
            row,
            num_segments=self.state_size,
            indices_are_sorted=True,
        )
        return self.constant + self.linear @ x + quadratic

    def tensor(self) -> Float[Array, "m m m"]:
        r"""The qgs-style tensor $T$ with $\dot x_i = \sum_{jk} T_{ijk} \tilde x_j \tilde x_k$,
        $\tilde x = (1, x)$ (row 0, the tendency of $x_0$, is zero)."""
        n = self.state_size
        tensor = jnp.zeros((n + 1, n + 1, n + 1))
        tensor = tensor.at[1:, 0, 0].set(self.constant)
        tensor = tensor.at[1:, 1:, 0].set(self.linear)
        row, left, right = self.quadratic_indices
        return tensor.at[1 + row, 1 + left, 1 + right].add(self.quadratic_values)

    def default_initial_state(self) -> Float[Array, " n"]:
        """The equilibrium of the linear terms, nudged by a small deterministic wiggle.

        Without advection the forcing drives a zonally symmetric flow, the steady state
        ``-linear⁻¹ constant`` (a strong jet, ``psi_a_1 ≈ theta_a_1 ≈ 0.1``, and a warm
        ocean). It is baroclinically unstable: with the default parameters and RK4
        (``dt = 0.1``) the atmosphere is chaotic after a few hundred time units; the ocean
        needs 1e5-1e6 time units (decades) to reach its attractor.
        """
        n_a, n_o = self.n_atmosphere, self.n_ocean
        equilibrium = jnp.linalg.solve(self.linear, -self.constant)
        wiggle = jnp.sin(1.0 + jnp.arange(self.state_size, dtype=float))
        scale = jnp.concatenate([jnp.full(2 * n_a, 1e-3), jnp.full(n_o, 1e-6), jnp.full(n_o, 1e-3)])
        return equilibrium + scale * wiggle

    # -- truncation ----------------------------------------------------------------------

    def shared_variables(self, truncated: "MAOOAM") -> np.ndarray:
        """Index in this model's state of each variable of a `truncated` model.

        Raises ``ValueError`` unless every mode of `truncated` is a mode of this model.
        """
        if not isinstance(truncated, MAOOAM):
            raise ValueError(f"`truncated` must be a MAOOAM, got {type(truncated).__name__}.")
        own_a = _channel_modes(*self.atmosphere_modes)
        own_o = _basin_modes(*self.ocean_modes)
        try:
            atmosphere = [own_a.index(mode) for mode in _channel_modes(*truncated.atmosphere_modes)]
            ocean = [own_o.index(mode) for mode in _basin_modes(*truncated.ocean_modes)]
        except ValueError:
            raise ValueError(
                f"`truncated` (atmosphere {truncated.atmosphere_modes}, ocean "
                f"{truncated.ocean_modes}) has modes that this model (atmosphere "
                f"{self.atmosphere_modes}, ocean {self.ocean_modes}) lacks."
            ) from None
        n_a, n_o = self.n_atmosphere, self.n_ocean
        atmosphere, ocean = np.array(atmosphere, int), np.array(ocean, int)
        return np.concatenate(
            [atmosphere, n_a + atmosphere, 2 * n_a + ocean, 2 * n_a + n_o + ocean]
        )

    def restrict(self, x: Float[Array, "... n"], truncated: "MAOOAM") -> Float[Array, "... m"]:
        """The variables of `truncated` taken from this model's states `x` (last axis)."""
        self._check_last_axis(x)
        return x[..., self.shared_variables(truncated)]

    def embed(self, x: Float[Array, "... m"], truncated: "MAOOAM") -> Float[Array, "... n"]:
        """States of this model from states `x` of `truncated`, the other modes zero."""
        if x.shape[-1:] != (truncated.state_size,):
            raise ValueError(
                f"`x` must end in the truncated model's {truncated.state_size} variables, "
                f"got shape {x.shape}."
            )
        full = jnp.zeros((*x.shape[:-1], self.state_size), dtype=x.dtype)
        return full.at[..., self.shared_variables(truncated)].set(x)

    def _check_last_axis(self, x) -> None:
        if x.shape[-1:] != (self.state_size,):
            raise ValueError(
                f"`x` must end in this model's {self.state_size} variables, got shape {x.shape}."
            )

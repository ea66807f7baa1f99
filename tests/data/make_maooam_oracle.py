"""Regenerate ``tests/data/maooam_qgs_oracle.npz``: MAOOAM tendencies computed by qgs.

`hybridda.dynamics.MAOOAM` is a port of the MAOOAM model of De Cruz, Demaeyer and
Vannitsem (2016) as implemented by the ``qgs`` package. ``tests/dynamics/test_maooam.py``
compares our tendencies and Jacobians with the values this script saves, so neither the
tests nor the library depend on qgs at run time.

qgs is installed in a throw-away virtual environment only (qgs 1.0 needs ``sparse<0.15``;
with a newer ``sparse`` it fails with "Cannot convert a sparse array to dense
automatically")::

    python3 -m venv /tmp/qgsvenv
    /tmp/qgsvenv/bin/pip install qgs "sparse<0.15"
    /tmp/qgsvenv/bin/python tests/data/make_maooam_oracle.py

(the file was made with qgs 1.0.0, sparse 0.14.0, numpy 2.4.6, numba 0.68.1; it takes
about a minute, mostly numba compilation.)

**Configurations**, both with the parameters of the qgs MAOOAM example, which are those of
De Cruz et al. (2016) (the strong-coupling, low-frequency-variability regime of Vannitsem
et al. 2015):

- ``a22_o24``: atmosphere 2x2 (10 modes), ocean 2x4 (8 modes): 36 variables;
- ``a24_o24``: atmosphere 2x4 (20 modes), ocean 2x4 (8 modes): 56 variables (the truth of
  Brajard et al. 2021).

For each, ``<config>_states`` holds 20 random states (each block of the state drawn at its
typical size on the attractor), ``<config>_tendencies`` qgs's tendencies there,
``<config>_jacobian_states`` / ``<config>_jacobians`` two states and qgs's Jacobian
matrices at them, ``<config>_modes`` the (atmosphere, ocean) maximal wavenumbers, and
``<config>_derived`` the nondimensional coefficients qgs derived (names in
``derived_names``). ``input_names`` / ``input_values`` are the physical parameters set.
"""

from pathlib import Path

import numpy as np
from qgs.functions.tendencies import create_tendencies
from qgs.params.params import QgParams

OUT = Path(__file__).with_name("maooam_qgs_oracle.npz")
CONFIGS = {"a22_o24": ((2, 2), (2, 4)), "a24_o24": ((2, 4), (2, 4))}
N_STATES = 20
N_JACOBIANS = 2

# The physical parameters of the qgs MAOOAM example (De Cruz et al. 2016); the others are
# qgs's defaults (f0 = 1.032e-4 s^-1, L_y = 5000 km, phi0 = pi/4, sigma = 0.2, g' = 0.031
# m s^-2, gamma_a = 1e7 J m^-2 K^-1, ...).
GENERAL = {"kd": 0.0290, "kdp": 0.0290, "n": 1.5, "r": 1.0e-7, "h": 136.5, "d": 1.1e-7}
ATMOSPHERE_TEMPERATURE = {"eps": 0.7, "T0": 289.3, "hlambda": 15.06}
OCEAN_TEMPERATURE = {"gamma": 5.6e8, "T0": 301.46}
ATMOSPHERE_INSOLATION = 103.3333
OCEAN_INSOLATION = 310.0

DERIVED = [
    "n", "beta", "kd", "kdp", "sig0", "G", "r", "d",
    "Cpa", "Lpa", "LSBpa", "LSBpgo", "Cpgo", "Lpgo", "sbpgo", "sbpa", "sc",
]  # fmt: skip


def make_params(atmosphere, ocean) -> QgParams:
    params = QgParams({"n": GENERAL["n"]})
    params.set_atmospheric_channel_fourier_modes(*atmosphere)
    params.set_oceanic_basin_fourier_modes(*ocean)
    params.set_params(GENERAL)
    params.atemperature_params.set_params(ATMOSPHERE_TEMPERATURE)
    params.gotemperature_params.set_params(OCEAN_TEMPERATURE)
    params.atemperature_params.set_insolation(ATMOSPHERE_INSOLATION, 0)
    params.gotemperature_params.set_insolation(OCEAN_INSOLATION, 0)
    return params


def derived_values(params: QgParams) -> np.ndarray:
    ap, scp, op, atp = (
        params.atmospheric_params,
        params.scale_params,
        params.oceanic_params,
        params.atemperature_params,
    )
    values = {
        "n": scp.n,
        "beta": scp.beta,
        "kd": ap.kd,
        "kdp": ap.kdp,
        "sig0": ap.sig0,
        "G": params.G,
        "r": op.r,
        "d": op.d,
        "Cpa": params.Cpa[0],
        "Lpa": params.Lpa,
        "LSBpa": params.LSBpa,
        "LSBpgo": params.LSBpgo,
        "Cpgo": params.Cpgo[0],
        "Lpgo": params.Lpgo,
        "sbpgo": params.sbpgo,
        "sbpa": params.sbpa,
        "sc": atp.sc,
    }
    return np.array([float(values[name]) for name in DERIVED])


def random_states(rng, n_atmosphere, n_ocean, count) -> np.ndarray:
    # Typical sizes on the attractor: psi_a, theta_a ~ 0.05, psi_o ~ 1e-4, delta T_o ~ 0.1.
    scale = np.concatenate(
        [
            np.full(2 * n_atmosphere, 0.05),
            np.full(n_ocean, 1e-4),
            np.full(n_ocean, 0.1),
        ]
    )
    return rng.normal(size=(count, scale.size)) * scale


def main():
    rng = np.random.default_rng(20160908)
    data = {
        "derived_names": np.array(DERIVED),
        "input_names": np.array(
            [f"general.{k}" for k in GENERAL]
            + [f"atmosphere_temperature.{k}" for k in ATMOSPHERE_TEMPERATURE]
            + [f"ocean_temperature.{k}" for k in OCEAN_TEMPERATURE]
            + ["atmosphere_insolation", "ocean_insolation"]
        ),
        "input_values": np.array(
            list(GENERAL.values())
            + list(ATMOSPHERE_TEMPERATURE.values())
            + list(OCEAN_TEMPERATURE.values())
            + [ATMOSPHERE_INSOLATION, OCEAN_INSOLATION]
        ),
    }
    for name, (atmosphere, ocean) in CONFIGS.items():
        params = make_params(atmosphere, ocean)
        n_atmosphere, n_ocean = params.nmod
        tendency, jacobian = create_tendencies(params)
        states = random_states(rng, n_atmosphere, n_ocean, N_STATES + N_JACOBIANS)
        assert states.shape[1] == params.ndim
        data[f"{name}_modes"] = np.array([atmosphere, ocean])
        data[f"{name}_derived"] = derived_values(params)
        data[f"{name}_states"] = states[:N_STATES]
        data[f"{name}_tendencies"] = np.stack([tendency(0.0, x) for x in states[:N_STATES]])
        data[f"{name}_jacobian_states"] = states[N_STATES:]
        data[f"{name}_jacobians"] = np.stack([jacobian(0.0, x) for x in states[N_STATES:]])
        print(f"{name}: {params.ndim} variables ({n_atmosphere} atm., {n_ocean} ocean modes)")
    np.savez_compressed(OUT, **data)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()

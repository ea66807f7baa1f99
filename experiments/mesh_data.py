"""Generate the urban-canopy flow data set: steady 2-D flow past random buildings.

Each case is a channel ``[0, 6] x [0, 1]`` (height H = 1) with 1-4 random rectangular
buildings on the ground, a quality triangle mesh refined at the buildings (`triangle`),
and on it

- the steady incompressible Navier–Stokes solution at Reynolds number ``U H / ν`` (100
  by default) with Taylor–Hood elements and Newton's method from Stokes (scikit-fem;
  `hybridda.mesh.fem`), driven by a power-law inflow ``u(y) = U (y / H)^α`` whose
  exponent α (a stratification-like parameter: ~0.1 unstable, 1/7 neutral, ~0.4
  stable) is drawn per case; no-slip ground and buildings, free-slip lid, do-nothing
  outflow;
- a passive scalar (pollutant) from a small Gaussian source near the ground at a random
  position upstream of or among the buildings: steady advection–diffusion, SUPG.

Per case ``DIR/cases/case_XXXXX.npz`` holds the mesh (``positions``, ``cells``,
``node_type`` as `hybridda.mesh.NodeType`), the fields at the nodes (``velocity``
(n, 2), ``pressure``, ``scalar``; P2 velocity at the vertices) and the parameters
(``inflow_exponent``, ``reynolds``, ``buildings`` rows (left, width, height),
``source``). ``DIR/index.json`` lists the cases with their sizes, the train/val/test
ids and every generation setting; ``metrics.json`` has the timing (cases per second).
Each case draws from its own seed (``SeedSequence(seed).spawn``), so a case is the same
whatever `--cases` or `--workers` is.

Usage::

    python experiments/mesh_data.py --cases 300 --workers 2 --out runs/mesh_data
    python experiments/mesh_data.py --quick --out runs/mesh_data_quick    # 6 coarse cases
    python experiments/mesh_data.py --cases 50 --seed 1 --max-area 1e-3 --wall-spacing 0.015 \
        --out runs/mesh_data_fine                                         # larger meshes
    python experiments/mesh_data.py --cases 20 --seed 2 --length 9 --max-buildings 6 \
        --out runs/mesh_data_long                                         # longer channels

``--length L`` stretches the channel; the buildings then lie in ``(1, L - 2.5)`` and the
source in ``(0.4, L - 3)`` (for the default L = 6: ``(1, 3.5)`` and ``(0.4, 3)``).
"""

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from hybridda.mesh import fem, urban


@dataclasses.dataclass(frozen=True)
class Config:
    """Every generation setting (written to config.json and index.json)."""

    cases: int = 300
    seed: int = 0
    length: float = 6.0
    height: float = 1.0
    max_buildings: int = 4
    building_region: tuple[float, float] = (1.0, 3.5)
    reynolds: float = 100.0
    inflow_speed: float = 1.0
    exponent_range: tuple[float, float] = (0.1, 0.4)
    max_area: float = 4e-3
    wall_spacing: float = 0.03
    diffusivity: float = 0.01
    source_width: float = 0.04
    source_region: tuple[float, float] = (0.4, 3.0)
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    workers: int = 1


QUICK = {"cases": 6, "max_area": 1.2e-2, "wall_spacing": 0.06}


def source_position(rng: np.random.Generator, canopy: urban.Canopy, config: Config):
    """A point one source width above the ground or roof at a random streamwise place."""
    x = rng.uniform(*config.source_region)
    ground = 0.0
    for left, width, building_height in canopy.buildings:
        if left - config.source_width <= x <= left + width + config.source_width:
            ground = building_height
    return float(x), float(ground + 1.5 * config.source_width)


def solve_case(positions, cells, exponent: float, source, config: Config):
    """The flow (a `fem.FlowSolution`) and the scalar at the nodes for one case's mesh."""
    viscosity = config.inflow_speed * config.height / config.reynolds
    inflow = fem.power_law_inflow(exponent, config.height, config.inflow_speed)
    try:
        flow = fem.solve_flow(positions, cells, inflow, viscosity)
    except RuntimeError:  # Newton from Stokes failed: continue in the Reynolds number
        flow = fem.solve_flow(
            positions, cells, inflow, viscosity, continuation=(4 * viscosity, 2 * viscosity)
        )
    width = config.source_width

    def source_density(x, y):  # unit total rate (the part inside the fluid)
        r2 = (x - source[0]) ** 2 + (y - source[1]) ** 2
        return np.exp(-r2 / (2 * width**2)) / (2 * np.pi * width**2)

    return flow, fem.solve_scalar(flow, source_density, config.diffusivity)


def generate_case(case_id: int, config: Config, seed_sequence, out: Path) -> dict:
    """Mesh, solve and save one case; returns its index entry."""
    rng = np.random.default_rng(seed_sequence)
    canopy = urban.random_canopy(
        rng,
        length=config.length,
        height=config.height,
        max_buildings=config.max_buildings,
        region=config.building_region,
    )
    exponent = float(rng.uniform(*config.exponent_range))
    source = source_position(rng, canopy, config)

    start, cpu_start = time.perf_counter(), time.process_time()
    positions, cells, node_type = urban.triangulate(
        canopy, max_area=config.max_area, wall_spacing=config.wall_spacing
    )
    flow, scalar = solve_case(positions, cells, exponent, source, config)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start

    name = f"case_{case_id:05d}.npz"
    np.savez_compressed(
        out / "cases" / name,
        positions=positions,
        cells=cells,
        node_type=node_type,
        velocity=flow.velocity_at_nodes(),
        pressure=flow.pressure_at_nodes(),
        scalar=scalar,
        inflow_exponent=exponent,
        reynolds=config.reynolds,
        buildings=np.asarray(canopy.buildings, dtype=float).reshape(-1, 3),
        source=np.asarray(source),
    )
    return {
        "id": case_id,
        "file": f"cases/{name}",
        "nodes": int(len(positions)),
        "cells": int(len(cells)),
        "buildings": len(canopy.buildings),
        "inflow_exponent": exponent,
        "source": list(source),
        "newton_steps": flow.newton_steps,
        "divergence_ratio": flow.divergence_ratio(),
        "solve_seconds": seconds,
        "solve_cpu_seconds": cpu_seconds,
    }


def _generate_star(arguments):
    return generate_case(*arguments)


def split_ids(ids: list[int], fractions, rng: np.random.Generator) -> dict[str, list[int]]:
    """A random train/val/test partition of `ids` with the given fractions."""
    shuffled = [int(i) for i in rng.permutation(ids)]
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    if len(ids) >= 3:  # every split non-empty
        n_val = max(n_val, 1)
        n_train = min(max(n_train, 1), len(ids) - n_val - 1)
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=None, help="number of cases (300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/mesh_data"))
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--reynolds", type=float, default=Config.reynolds)
    parser.add_argument(
        "--max-area", type=float, default=None, help=f"largest triangle ({Config.max_area})"
    )
    parser.add_argument(
        "--wall-spacing",
        type=float,
        default=None,
        help=f"mesh size on building walls ({Config.wall_spacing}); smaller = finer meshes",
    )
    parser.add_argument(
        "--length", type=float, default=None, help=f"channel length ({Config.length})"
    )
    parser.add_argument(
        "--max-buildings", type=int, default=None, help=f"per case ({Config.max_buildings})"
    )
    parser.add_argument("--quick", action="store_true", help="6 coarse cases (tests)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    settings = dict(QUICK) if args.quick else {}
    for name in ("cases", "max_area", "wall_spacing", "max_buildings"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.length is not None:  # buildings and source keep their distance to the outflow
        settings["length"] = args.length
        settings["building_region"] = (1.0, args.length - 2.5)
        settings["source_region"] = (0.4, args.length - 3.0)
    config = Config(seed=args.seed, workers=args.workers, reynolds=args.reynolds, **settings)
    if config.cases < 1 or config.workers < 1:
        parser.error("--cases and --workers must be >= 1")
    out = args.out
    (out / "cases").mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(config.seed)
    # One child per case for the geometry and fields, one more for the split.
    children = root.spawn(config.cases + 1)
    jobs = [(i, config, children[i], out) for i in range(config.cases)]
    start = time.perf_counter()
    progress = dict(total=config.cases, desc="cases", disable=args.no_progress)
    if config.workers == 1:
        entries = [generate_case(*job) for job in tqdm(jobs, **progress)]
    else:
        # "spawn": workers must not inherit a forked (multithreaded) JAX runtime.
        context = multiprocessing.get_context("spawn")
        with context.Pool(config.workers) as pool:
            entries = list(tqdm(pool.imap(_generate_star, jobs), **progress))
    elapsed = time.perf_counter() - start

    splits = split_ids(
        [e["id"] for e in entries], config.split_fractions, np.random.default_rng(children[-1])
    )
    nodes = np.array([e["nodes"] for e in entries])
    metrics = {
        "cases": config.cases,
        "seconds": elapsed,
        "cases_per_second": config.cases / elapsed,
        "solve_seconds_mean": float(np.mean([e["solve_seconds"] for e in entries])),
        # CPU time per case: the speed on an unloaded core, whatever else ran beside us.
        "solve_cpu_seconds_mean": float(np.mean([e["solve_cpu_seconds"] for e in entries])),
        "nodes_min": int(nodes.min()),
        "nodes_mean": float(nodes.mean()),
        "nodes_max": int(nodes.max()),
        "newton_steps_max": int(max(e["newton_steps"] for e in entries)),
        "divergence_ratio_max": float(max(e["divergence_ratio"] for e in entries)),
    }
    settings = dataclasses.asdict(config)
    index = {
        "format": "hybridda urban canopy v1",
        "fields": {"velocity": "(n, 2)", "pressure": "(n,)", "scalar": "(n,)"},
        "settings": settings,
        "splits": splits,
        "cases": entries,
    }
    (out / "index.json").write_text(json.dumps(index, indent=1))
    (out / "config.json").write_text(json.dumps(settings, indent=1))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))

    print(f"{'cases':>8} {'seconds':>8} {'cases/s':>8} {'nodes (min/mean/max)':>22}")
    print(
        f"{config.cases:>8d} {elapsed:>8.1f} {metrics['cases_per_second']:>8.2f} "
        f"{nodes.min():>8d}/{nodes.mean():.0f}/{nodes.max():d}"
    )
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])

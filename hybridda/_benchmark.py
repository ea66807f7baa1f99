"""What every benchmark script records about the machine, and how it writes its results.

Benchmarks (``experiments/benchmarks/``) print a table and write ``<name>.json``,
``metrics.json`` (the same record) and ``config.json``; absolute times on shared
machines are noise, so each record says where and under what load it was measured.
"""

import json
import os
import platform
from pathlib import Path

import jax


def machine() -> dict:
    """The device, CPU count, load average, platform and JAX version of this run."""
    return {
        "device": str(jax.devices()[0]),
        "device_count": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "jax": jax.__version__,
    }


def machine_line(record: dict) -> str:
    """One line for the top of a printed table, from a record holding `machine()`."""
    load = record.get("load_average")
    load_text = f", load {load[0]:.1f}" if load else ""
    return (
        f"device: {record['device']} x {record['device_count']} ({record['cpu_count']} CPUs"
        f"{load_text}), jax {record['jax']}"
    )


def write_results(out: Path, name: str, record: dict, config: dict) -> None:
    """``out/<name>.json`` and ``out/metrics.json`` (the record), ``out/config.json``."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2)
    (out / f"{name}.json").write_text(text)
    (out / "metrics.json").write_text(text)
    (out / "config.json").write_text(json.dumps(config, indent=2))

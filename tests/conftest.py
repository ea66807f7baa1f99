"""Test configuration: float64, strict rank promotion, runtime shape checks."""

import os

# LLVM optimisation level 1, without its expensive passes, for the modules that optimise
# (tests/paper, below); the others turn optimisation off altogether. XLA's default (level
# 3) spends its time compiling the quick runs' large programs (QG 4D-Var with a network
# in the control, diffusion training): measured on the farchi2023 + finn2024 quick tests,
# compilation 89.5 -> 56.5 s and the files 185 -> 143 s, with the same assertions met.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=1 "
    "--xla_llvm_disable_expensive_passes=true",
)
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Persistent XLA compilation cache shared by the pytest-xdist workers. About half of the
# suite's time is XLA compilation, and many test modules compile identical programs (the
# same filter on the same shapes); `jax.clear_caches()` below drops the in-memory copies,
# the disk cache keeps them. Keys hash the HLO, the compile options and the jax/jaxlib
# versions, so a hit is the same executable. A fresh clone starts cold (measured: the
# filter tests 189 s -> 171 s cold, 103 s warm); later local runs start warm. Programs
# with host callbacks (`eqx.error_if`) are never stored. JAX's size limit is left off:
# with it, every write re-reads the whole directory (one file per entry, thousands of
# entries), so instead the controller process empties a cache that outgrew 2 GiB. Set
# HYBRIDDA_TEST_JAX_CACHE="" to compile everything afresh.
_cache_dir = os.environ.get(
    "HYBRIDDA_TEST_JAX_CACHE",
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".jax_cache"),
)
if _cache_dir:
    if "PYTEST_XDIST_WORKER" not in os.environ and os.path.isdir(_cache_dir):
        _entries = list(os.scandir(_cache_dir))
        if sum(entry.stat().st_size for entry in _entries if entry.is_file()) > 2 * 1024**3:
            for entry in _entries:
                if entry.is_file():
                    os.unlink(entry.path)
    jax.config.update("jax_compilation_cache_dir", _cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


from jaxtyping import install_import_hook  # noqa: E402

# Every hybridda module imported from here on has its annotations checked by beartype.
with install_import_hook("hybridda", "beartype.beartype"):
    import hybridda  # noqa: F401


import gc  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# XLA's optimisation passes are off (`jax_disable_most_optimizations`: backend optimisation
# level 0, no expensive LLVM passes) in every test module except the paper reproductions
# under tests/paper/. Most modules run many small programs once each, so compiling is most
# of their time, and unoptimised programs compile faster. Measured on the whole suite
# (2 workers, no compilation cache), all off vs all on: most unit-test modules took 20-50 %
# less time (420 s of 2049 s worker time in all), while the paper scripts' quick runs,
# which cycle or train for thousands of steps, took 1.1-3x longer. Results agree with the
# optimised programs' to round-off. Two tests that compared single chaotic runs with
# margins thinner than the run-to-run spread were made robust (tests/test_cycle.py,
# tests/variational/test_parameter_control.py).
_TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def _xla_optimisation(request):
    optimise = request.path.resolve().relative_to(_TESTS).parts[0] == "paper"
    jax.config.update("jax_disable_most_optimizations", not optimise)
    yield


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module.

    Every XLA:CPU executable keeps memory mappings alive; one process running the whole
    suite accumulated tens of thousands and hit the kernel's limit (vm.max_map_count,
    65530 here), which crashed XLA's compiler late in the run (segfault / abort inside
    `backend_compile_and_load`). Modules rarely share programs, so little is recompiled.
    """
    yield
    jax.clear_caches()
    gc.collect()


# The slowest test files (a paper script's quick run, a benchmark or a compile-heavy
# module, 20-70 s each on two cores), heaviest first. `make test` hands whole files to
# two pytest-xdist workers in collection order (--no-loadscope-reorder); starting with
# these lets the many short files fill in behind them, so both workers finish together.
# xdist's default order (files with the most tests first) left these for the end: one
# worker ran them alone for the last ~2 minutes (fresh clone of 1486b93: pytest 873 s
# wall for 24.4 min of CPU on 2 cores).
# xdist gives worker A files 0 and 2 and worker B files 1 and 3 before the rest goes to
# whichever is free: the two QG paper tests (0 and 2) run one after the other on one
# worker, so the second finds the QG programs both compile (truth run, offline training,
# forecasts) in the compilation cache (measured 220 -> 191 s, under load).
HEAVY_FILES_FIRST = (
    "tests/paper/test_farchi2021_qg.py",
    "tests/paper/test_brajard2020.py",
    "tests/paper/test_farchi2023_qg_online.py",
    "tests/variational/test_window_methods.py",
    "tests/paper/test_bocquet2021.py",
    "tests/test_losses.py",
    "tests/paper/test_malartic2022.py",
    "tests/paper/test_finn2024.py",
    "tests/paper/test_farchi2021_jcs_online.py",
    "tests/paper/test_pasmans2025.py",
    "tests/paper/test_yu2025.py",
    "tests/test_cycle.py",
    "tests/dynamics/test_qg.py",
    "tests/variational/test_fourdvar.py",
    "tests/paper/test_bocquet2020_em.py",
    "tests/test_cli.py",
    "tests/paper/test_farchi2021_jcs.py",
    "tests/test_qg_fourdvar_benchmark.py",
    "tests/mesh/test_models.py",
    "tests/test_gradients_benchmark.py",
    "tests/paper/test_finn2025_gensim.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: index for index, path in enumerate(HEAVY_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable

"""Test configuration: float64, strict rank promotion, runtime shape checks."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from jaxtyping import install_import_hook  # noqa: E402

# Every hybridda module imported from here on has its annotations checked by beartype.
with install_import_hook("hybridda", "beartype.beartype"):
    import hybridda  # noqa: F401


import gc  # noqa: E402

import pytest  # noqa: E402


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


# The slowest test files (a paper script's quick run or a benchmark, 20-95 s each on two
# cores), heaviest first. `make test` hands whole files to two pytest-xdist workers in
# collection order (--no-loadscope-reorder); starting with these lets the many short files
# fill in behind them, so both workers finish together. xdist's default order (files with
# the most tests first) left these for the end: one worker ran them alone for the last
# ~2 minutes (fresh clone of 1486b93: pytest 873 s wall for 24.4 min of CPU on 2 cores).
HEAVY_FILES_FIRST = (
    "tests/paper/test_farchi2023_qg_online.py",
    "tests/paper/test_farchi2021_qg.py",
    "tests/paper/test_brajard2020.py",
    "tests/paper/test_bocquet2021.py",
    "tests/paper/test_pasmans2025.py",
    "tests/test_qg_fourdvar_benchmark.py",
    "tests/variational/test_window_methods.py",
    "tests/test_gradients_benchmark.py",
    "tests/paper/test_farchi2021_jcs_online.py",
    "tests/paper/test_farchi2021_jcs.py",
    "tests/paper/test_bocquet2020_em.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: index for index, path in enumerate(HEAVY_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable

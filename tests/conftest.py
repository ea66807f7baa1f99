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

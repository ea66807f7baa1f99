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

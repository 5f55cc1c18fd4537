"""Persistent XLA compilation cache shared by every training and evaluation process."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def setup_jax_cache() -> str:
    """Persistent XLA compilation cache: ``$E3_JAX_CACHE`` or ``<repo>/.jax_cache``."""
    import jax

    cache = os.environ.get("E3_JAX_CACHE") or str(REPO / ".jax_cache")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return cache

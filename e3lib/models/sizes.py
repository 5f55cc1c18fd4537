"""Model sizes and the blocks that hold MoE layers. A leaf module (no JAX, no config).

Notation: H hidden size, Q MLP width, L blocks, P patch size, n MoE blocks ("last-n").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from e3lib.errors import ConfigError

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

# Model sizes of the paper (Table 6 / reference code) plus small ones for CPU.
# patch: P; hidden: H; mlp: Q; layers: L; heads; moe_last_n: default n of the "last-n"
# placement. tiny and mini keep tests and the small sweep variants fast; their kernels are so
# small that a CPU step is bound by per-kernel overhead (~10% of the matmul rate). midi
# doubles mini's width, for studies of width on CPU (docs/small_regime.md). "demo", the
# embedded demo's size, has ViT-Ti's width (H=192, 3 heads of 64) in 4 blocks: large enough
# for a compute-bound CPU step (docs/flops.md, "Training-step performance").
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(patch=4, hidden=32, mlp=64, layers=4, heads=2, moe_last_n=2),
    "mini": dict(patch=4, hidden=64, mlp=128, layers=4, heads=4, moe_last_n=2),
    "midi": dict(patch=4, hidden=128, mlp=256, layers=4, heads=4, moe_last_n=2),
    "demo": dict(patch=4, hidden=192, mlp=768, layers=4, heads=3, moe_last_n=2),
    "S/32": dict(patch=32, hidden=512, mlp=2048, layers=8, heads=8, moe_last_n=2),
    "B/32": dict(patch=32, hidden=768, mlp=3072, layers=12, heads=12, moe_last_n=2),
    "L/32": dict(patch=32, hidden=1024, mlp=4096, layers=24, heads=16, moe_last_n=2),
    "B/16": dict(patch=16, hidden=768, mlp=3072, layers=12, heads=12, moe_last_n=2),
    "L/16": dict(patch=16, hidden=1024, mlp=4096, layers=24, heads=16, moe_last_n=2),
    "H/14": dict(patch=14, hidden=1280, mlp=5120, layers=32, heads=16, moe_last_n=5),
}


def moe_layers(num_layers: int, placement: str, n: int) -> tuple[int, ...]:
    """Indices of the blocks that hold MoE MLPs.

    "last": the last n odd blocks, e.g. 8 layers, n=2 -> (5, 7).
    "every": every n-th block, e.g. 12 layers, n=2 -> (1, 3, 5, 7, 9, 11).
    """
    if placement == "last":
        return tuple(range(1, num_layers, 2))[-n:] if n > 0 else ()
    if placement == "every":
        return tuple(range(n - 1, num_layers, n))
    raise ConfigError("model.moe_placement", placement, "allowed: ['last', 'every']")


def size_spec(cfg: RunConfig) -> dict:
    """The size table entry of the run, with the MoE block indices resolved (``moe_layers``)."""
    m = cfg.model
    if m.size not in MODEL_SIZES:
        raise ConfigError("model.size", m.size, f"allowed: {list(MODEL_SIZES)}")
    spec = dict(MODEL_SIZES[m.size])
    n = m.moe_n if m.moe_n is not None else spec["moe_last_n"]
    spec["moe_layers"] = moe_layers(spec["layers"], m.moe_placement, n)
    return spec

"""Analytic GFLOPs per image of a training step and parameter counts, from the registry.

Notation: B images per batch, P patch size, N patches per image, T = N + 1 tokens per image
(class token), H hidden size, Q MLP width, A attention heads, L blocks, V classes, E experts,
K selected experts per router, J selections per token (K, or K·M for Partitioning),
M copies per image after tiling, G routing groups, S tokens per group,
C capacity (buffer slots per expert per group), F rows per row after Multi-pred's last layer.

``analytic_gflops(cfg)`` is the paper's quantity (Tables 20-22, the x-axis of Figures 3-8),
counted as XLA's cost analysis counts the fine-tuning step (forward + backward):

- a matmul of (m×k)·(k×n) costs 2·m·k·n FLOPs (one multiply-add = 2);
- its backward costs twice its forward (gradients w.r.t. both operands), so a weight
  matmul costs 3× forward in training; the patch embedding costs 2× (no gradient w.r.t.
  the images);
- attention scores QKᵀ and the weighted sum of values: 2·T²·H each, per row;
- top-K experts run on full capacity buffers: E·C slots per group whatever the routing,
  with C = roundup4(ceil(S·J·C_f/E)) (``e3lib.models.layout.compute_capacity``);
- the router matmul over the experts each row's router(s) score (``MoeLayout.experts_scored``);
- dispatch/combine: free with index (gather/scatter) dispatch; with the one-hot einsum
  dispatch of the reference code, 2·E·C·H per token for dispatch and for combine, with
  5 such einsums per training step (dispatch: forward, input gradient; combine: forward,
  gradient w.r.t. expert outputs and w.r.t. combine weights);
- elementwise work (LayerNorm, biases, residuals, tanh-GELU, softmax), forward + backward,
  per token of each block: ``EW_PER_HIDDEN``·H + ``EW_PER_MLP``·Q per MLP row (dense or
  expert slot) + ``EW_PER_SCORE``·T·A. These coefficients are what XLA counts for those
  ops (``benchmarks/bench_flops.py --calibrate`` re-measures them).
- rows per block follow the method's ``Backbone`` (registry): tiling repeats the rows M
  times before the block holding the first MoE layer, so it and every later block (and the
  head) run on M rows. A method whose MoE blocks are not top-K (``Method.moe_flops``)
  prices them itself from a ``MoeBlock``.

The derivation and the comparison with every cell of Tables 20-22 are in docs/flops.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from e3lib.errors import ConfigError
from e3lib.models.layout import Backbone, MoeLayout, compute_capacity
from e3lib.models.registry import method_of, moe_layout
from e3lib.models.sizes import size_spec

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig

FLOPS_PER_MAC = 2
TRAIN_MATMUL_FACTOR = 3  # forward + gradients w.r.t. both operands
INPUT_LAYER_FACTOR = 2  # forward + weight gradient (images need no gradient)
EINSUM_DISPATCH_UNITS = 5  # one-hot dispatch/combine einsums per training step
# Elementwise FLOPs per token per block, forward + backward, as XLA counts them.
# Fitted to XLA's count of this toolkit's ViTs by ``benchmarks/bench_flops.py --calibrate``.
EW_PER_HIDDEN = 77  # 2 LayerNorms, attention biases, residual adds (per unit of H)
EW_PER_MLP = 25  # bias + tanh-GELU of one MLP row (per unit of Q)
EW_PER_SCORE = 10  # scale + softmax of one attention score (per key, per head)

DISPATCH_KINDS = ("indices", "einsum")


class MoeBlock(NamedTuple):
    """One MoE block as the cost model sees it, per image (passed to ``Method.moe_flops``)."""

    cfg: RunConfig
    spec: Mapping[str, Any]
    layout: MoeLayout
    rows: int  # rows per image entering the block
    tokens: int  # T
    group_rows: int  # rows per routing group
    last: bool  # the last MoE block of the model
    dispatch: str  # "indices" or "einsum"

    def train_matmul(self, m: float, k: int, n: int) -> float:
        """FLOPs of an (m×k)·(k×n) weight matmul in a training step (forward + backward)."""
        return TRAIN_MATMUL_FACTOR * FLOPS_PER_MAC * m * k * n

    def mlp_elementwise(self, rows: float) -> float:
        """Elementwise FLOPs of ``rows`` MLP rows (bias + GELU), forward + backward."""
        return rows * EW_PER_MLP * self.spec["mlp"]


def top_k_moe_flops(blk: MoeBlock) -> dict[str, float]:
    """Experts on full capacity buffers, the router, and (einsum) dispatch/combine."""
    m, H, Q = blk.cfg.model, blk.spec["hidden"], blk.spec["mlp"]
    E, K, r, T = m.num_experts, m.num_selected, blk.rows, blk.tokens
    C = compute_capacity(blk.group_rows * T, blk.layout.selections(K), E, m.capacity_factor)
    slots = E * C * r / blk.group_rows  # expert rows per image
    out = {
        "experts": blk.train_matmul(slots, H, 2 * Q),
        "elementwise": blk.mlp_elementwise(slots),
        "router": blk.train_matmul(r * T, H, blk.layout.experts_scored),
    }
    if blk.dispatch == "einsum":
        multipred_last = blk.layout.multipred_last and blk.last
        units = 2 if multipred_last else EINSUM_DISPATCH_UNITS  # Multi-pred: no combine
        out["dispatch"] = units * r * T * FLOPS_PER_MAC * E * C * H
    return out


def _rows_per_block(
    backbone: Backbone, spec: Mapping[str, Any], layout: MoeLayout | None, num_selected: int
) -> tuple[list[int], int]:
    """Rows per image entering each block, and rows reaching the head."""
    rows, per_block = backbone.input_rows, []
    for b in range(spec["layers"]):
        if b == backbone.tile_before:
            rows *= backbone.ensemble_size
        per_block.append(rows)
        if layout is not None and layout.multipred_last and b == spec["moe_layers"][-1]:
            rows *= num_selected  # F = K rows leave
    if backbone.tile_before is None:
        rows *= backbone.ensemble_size  # copies at the end
    return per_block, rows


def rows_per_block(cfg: RunConfig) -> tuple[list[int], int]:
    """Rows per image entering each block of the run's model, and rows reaching the head."""
    spec = size_spec(cfg)
    layout = moe_layout(cfg, spec)
    backbone = method_of(cfg).backbone(cfg, spec, layout)
    return _rows_per_block(backbone, spec, layout, cfg.model.num_selected)


def flops_breakdown(
    cfg: RunConfig, num_classes: int = 1000, dispatch: str = "indices"
) -> dict[str, float]:
    """FLOPs per image of one training step (forward + backward), by term.

    ``dispatch``: "indices" (gather/scatter, this toolkit's models and the paper's Table 20)
    or "einsum" (one-hot einsums, the paper's ablation implementation of Table 22).
    """
    if dispatch not in DISPATCH_KINDS:
        raise ConfigError("dispatch", dispatch, f"allowed: {list(DISPATCH_KINDS)}")
    method, m, spec = method_of(cfg), cfg.model, size_spec(cfg)
    P, H, Q, A = spec["patch"], spec["hidden"], spec["mlp"], spec["heads"]
    image = cfg.data.image_size
    if image < P:
        raise ConfigError("data.image_size", image, f"must be >= the patch size {P}")
    N = (image // P) ** 2
    T = N + 1
    mac = FLOPS_PER_MAC
    layout = moe_layout(cfg, spec)
    backbone = method.backbone(cfg, spec, layout)
    moe_blocks = spec["moe_layers"] if layout is not None else ()
    moe_cost = method.moe_flops or top_k_moe_flops
    out = dict.fromkeys(
        (
            "patch_embedding",
            "attention_projections",
            "attention_scores",
            "mlp",
            "experts",
            "router",
            "dispatch",
            "head",
            "elementwise",
        ),
        0.0,
    )
    out["patch_embedding"] = (
        INPUT_LAYER_FACTOR * mac * backbone.input_rows * N * P * P * backbone.input_channels * H
    )
    per_block, out_rows = _rows_per_block(backbone, spec, layout, m.num_selected)
    for b, r in enumerate(per_block):
        out["attention_projections"] += TRAIN_MATMUL_FACTOR * r * T * mac * 4 * H * H
        out["attention_scores"] += TRAIN_MATMUL_FACTOR * r * 2 * mac * T * T * H
        out["elementwise"] += r * T * (EW_PER_HIDDEN * H + EW_PER_SCORE * T * A)
        if b not in moe_blocks:
            out["mlp"] += TRAIN_MATMUL_FACTOR * r * T * mac * 2 * H * Q
            out["elementwise"] += r * T * EW_PER_MLP * Q
            continue
        group_rows = m.group_images * (1 if backbone.rows_are_inputs else r)
        blk = MoeBlock(cfg, spec, layout, r, T, group_rows, b == moe_blocks[-1], dispatch)
        for term, value in moe_cost(blk).items():
            out[term] += value
    rep = H * H if m.representation else 0
    out["head"] = (
        TRAIN_MATMUL_FACTOR * out_rows * mac * (rep + H * num_classes * backbone.head_outputs)
    )
    return out


def analytic_gflops(cfg: RunConfig, num_classes: int = 1000, dispatch: str = "indices") -> float:
    """GFLOPs per image of a training step (forward + backward), the quantity of Table 20."""
    return sum(flops_breakdown(cfg, num_classes, dispatch).values()) / 1e9


def top_k_moe_params(cfg: RunConfig, spec: Mapping[str, Any], layout: MoeLayout) -> int:
    """E expert MLPs (2HQ + Q + H each) and the router kernel (H, R, E_r)."""
    H, Q = spec["hidden"], spec["mlp"]
    R, E_r = len(layout.subsets), len(layout.subsets[0])
    return cfg.model.num_experts * (2 * H * Q + Q + H) + H * R * E_r


def analytic_params(cfg: RunConfig, num_classes: int) -> int:
    """Parameters of the run's model, counted from the formula (Table 23: JFT head V=18,291).

    Embedding P²·c·H + H (c input channels), class token H, position embeddings T·H; per
    block two LayerNorms (4H), attention 4H² + 4H, MLP 2HQ + Q + H; a MoE block instead has
    E expert MLPs and the router kernel (H, R, E_r), R·E_r = E, or M·((E−o)/M + o) under E³
    with o shared experts (``Method.moe_params`` for other MoE kinds); final LayerNorm 2H;
    representation H² + H; head H·V + V per head. Methods add their own terms
    (``Method.extra_params``: BatchEnsemble's fast weights). Equals the count from shapes
    (``e3lib.models.params.count_params``).
    """
    method, m, spec = method_of(cfg), cfg.model, size_spec(cfg)
    P, H, Q, L = spec["patch"], spec["hidden"], spec["mlp"], spec["layers"]
    T = (cfg.data.image_size // P) ** 2 + 1
    layout = moe_layout(cfg, spec)
    backbone = method.backbone(cfg, spec, layout)
    moe_blocks = set(spec["moe_layers"]) if layout is not None else set()
    moe_params = method.moe_params or top_k_moe_params
    total = P * P * backbone.input_channels * H + H + H + T * H
    for b in range(L):
        total += 4 * H + 4 * H * H + 4 * H
        total += moe_params(cfg, spec, layout) if b in moe_blocks else 2 * H * Q + Q + H
    total += 2 * H
    total += method.extra_params(cfg, spec)
    if m.representation:
        total += H * H + H
    total += backbone.head_outputs * (H * num_classes + num_classes)
    return int(total)

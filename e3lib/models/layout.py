"""How a MoE layer lays experts over routers: plain arithmetic, no JAX (read by the model
builders, the analytic FLOPs and the upstream conversion alike).

Notation: E experts, K selected per token by one router, M ensemble size (copies of each
image after tiling), o experts shared by every member (overlap), R routers per layer,
E_r experts one router sees, S tokens per group, J selections per token, C capacity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


class MoeLayout(NamedTuple):
    """Routers of a method's MoE layers and the rows they see (one per method and config)."""

    subsets: tuple[tuple[int, ...], ...]  # (R, E_r) expert ids of each router
    router_per_copy: bool  # copy m of each token goes to router m only (else
    #                                        every token visits every router: J = K·R)
    ensemble_size: int  # M copies of each image from the first MoE block on
    #                                        (1: the layout does not tile)
    multipred_last: bool = False  # the last MoE layer keeps its K outputs apart
    k_split: int = 1  # K is shared by this many routers: each picks
    #                                        K/k_split (Partitioning with partition_k=total)

    def router_k(self, num_selected: int) -> int:
        """Experts one router picks per token: K, or K/M when K counts all subsets."""
        return num_selected // self.k_split

    @property
    def experts_scored(self) -> int:
        """Router width per row: experts whose logits one row's router(s) compute."""
        per_router = len(self.subsets[0])
        return per_router if self.router_per_copy else per_router * len(self.subsets)

    def selections(self, num_selected: int) -> int:
        """J: expert selections per token (K per router; ·R when every token visits every
        router: K·M for Partitioning per subset, K for Partitioning with K in total)."""
        k = self.router_k(num_selected)
        return k if self.router_per_copy else k * len(self.subsets)


def expert_subsets(
    num_experts: int, ensemble_size: int, overlap: int = 0
) -> tuple[tuple[int, ...], ...]:
    """Expert ids seen by each member: (E−o)/M unique contiguous experts plus the o shared ones.

    Unique experts of member m: [m·u, (m+1)·u) with u = (E−o)/M; shared: the last o experts
    [E−o, E). o = 0 is the contiguous partition of E³; e.g. E=8, M=2, o=2 ->
    ((0, 1, 2, 6, 7), (3, 4, 5, 6, 7)).
    """
    E, M, o = num_experts, ensemble_size, overlap
    if not 0 <= o <= E:
        raise ValueError(f"overlap o={o} must be in [0, E={E}]")
    if (E - o) % M:
        raise ValueError(f"E - overlap = {E} - {o} = {E - o} must be divisible by M={M}")
    unique = (E - o) // M
    shared = tuple(range(E - o, E))
    return tuple(tuple(range(m * unique, (m + 1) * unique)) + shared for m in range(M))


def router_noise_std(noise_mult: float, num_experts: int, experts_seen: int, scaling: str) -> float:
    """σ of the router noise: "code" divides by the experts the router sees, "paper" by E."""
    if scaling == "code":
        return noise_mult / experts_seen
    if scaling == "paper":
        return noise_mult / num_experts
    raise ValueError(f"noise_scaling={scaling!r}; allowed: ['code', 'paper']")


def compute_capacity(
    num_tokens: int,
    num_selected: int,
    num_experts: int,
    capacity_factor: float,
    multiple_of: int = 4,
) -> int:
    """Buffer slots per expert per group: ceil(S·K·C_f / E) rounded up to ``multiple_of``.

    Example (reference S/32 pretraining): S=400, K=2, E=8, C_f=1.05 -> ceil(105.0) -> 108.
    """
    if num_tokens < 1 or num_selected < 1 or num_experts < 1 or capacity_factor <= 0:
        raise ValueError(
            f"capacity needs positive sizes, got S={num_tokens}, K={num_selected}, "
            f"E={num_experts}, capacity_factor={capacity_factor}"
        )
    capacity = int(math.ceil(num_tokens * num_selected * capacity_factor / num_experts))
    return -(-capacity // multiple_of) * multiple_of


class Backbone(NamedTuple):
    """How rows flow through a method's ViT backbone, per image (for the cost model)."""

    tile_before: int | None = None  # block before which rows are repeated (None: after
    #                                        the last block, if ensemble_size > 1)
    ensemble_size: int = 1  # M copies made there
    input_rows: int = 1  # rows per image through the patch embedding (MIMO: R)
    input_channels: int = 3  # channels of one row's input (MIMO: 3·M)
    head_outputs: int = 1  # heads of C classes per row (MIMO: M)
    rows_are_inputs: bool = False  # routing groups count rows, not images (MIMO)


def default_backbone(cfg: RunConfig, spec: Mapping[str, Any], layout: MoeLayout | None) -> Backbone:
    """Rows tiled ``layout.ensemble_size`` times before the first MoE block (none: dense)."""
    if layout is None:
        return Backbone()
    first = spec["moe_layers"][0] if spec["moe_layers"] else None
    return Backbone(tile_before=first, ensemble_size=layout.ensemble_size)

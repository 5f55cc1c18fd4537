"""Compute and parameter accounting: GFLOPs per image of a training step, parameter counts.

Notation: B images per batch, P patch size, N patches per image, T = N + 1 tokens per image
(class token), H hidden size, Q MLP width, A attention heads, L blocks, V classes, E experts,
K selected experts per router, J selections per token (K, or K·M for Partitioning),
M rows per image after tiling (ensemble members), G routing groups, S tokens per group,
C capacity (buffer slots per expert per group), F rows per row after Multi-pred's last layer.

Three quantities, all per image:

* ``analytic_gflops(cfg)``: the paper's quantity (Tables 20-22, the x-axis of Figures 3-8),
  counted as XLA's cost analysis counts the fine-tuning step (forward + backward):

  - a matmul of (m×k)·(k×n) costs 2·m·k·n FLOPs (one multiply-add = 2);
  - its backward costs twice its forward (gradients w.r.t. both operands), so a weight
    matmul costs 3× forward in training; the patch embedding costs 2× (no gradient w.r.t.
    the images);
  - attention scores QKᵀ and the weighted sum of values: 2·T²·H each, per row;
  - experts run on full capacity buffers: E·C slots per group whatever the routing, with
    C = roundup4(ceil(S·J·C_f/E)) (``e3lib.models.routing.compute_capacity``);
  - the router matmul over the experts each row's router sees (E, or E/M under E³);
  - dispatch/combine: free with index (gather/scatter) dispatch; with the one-hot einsum
    dispatch of the reference code, 2·E·C·H per token for dispatch and for combine, with
    5 such einsums per training step (dispatch: forward, input gradient; combine: forward,
    gradient w.r.t. expert outputs and w.r.t. combine weights);
  - elementwise work (LayerNorm, biases, residuals, tanh-GELU, softmax), forward + backward,
    per token of each block: ``EW_PER_HIDDEN``·H + ``EW_PER_MLP``·Q per MLP row (dense or
    expert slot) + ``EW_PER_SCORE``·T·A. These coefficients are what XLA counts for those
    ops (``benchmarks/bench_flops.py --calibrate`` re-measures them).
  - tiling repeats the rows M times before the block holding the first MoE layer, so that
    block and every later one (and the head) run on M rows.

  The derivation and the comparison with every cell of Tables 20-22 are in docs/flops.md.

* ``xla_gflops(cfg, num_classes)``: XLA's compiled cost analysis of the actual training
  computation (value and gradient of the loss of ``build_model``), lowered and compiled on
  abstract inputs at full size, never executed.

* ``count_params(cfg, num_classes)``: the parameter count from shapes (Table 23).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from e3lib.config import ConfigError, resolve, size_spec

FLOPS_PER_MAC = 2
TRAIN_MATMUL_FACTOR = 3        # forward + gradients w.r.t. both operands
INPUT_LAYER_FACTOR = 2         # forward + weight gradient (images need no gradient)
EINSUM_DISPATCH_UNITS = 5      # one-hot dispatch/combine einsums per training step
# Elementwise FLOPs per token per block, forward + backward, as XLA counts them.
# Fitted to XLA's count of this toolkit's ViTs by ``benchmarks/bench_flops.py --calibrate``.
EW_PER_HIDDEN = 77             # 2 LayerNorms, attention biases, residual adds (per unit of H)
EW_PER_MLP = 25                # bias + tanh-GELU of one MLP row (per unit of Q)
EW_PER_SCORE = 10              # scale + softmax of one attention score (per key, per head)

DISPATCH_KINDS = ("indices", "einsum")
ANALYTIC_METHODS = ("vit", "vmoe", "e3", "tiling", "partitioning", "multipred",
                    "batchensemble", "mc_dropout", "mimo")
REFERENCE_DIR = Path(__file__).parent / "report" / "reference"


@dataclass
class _Block:
    """How one block runs for one image: rows through it and the kind of its MLP."""

    rows: int                  # rows per image entering the block (M after tiling)
    moe: bool = False
    experts_seen: int = 0      # experts each row's router scores (router matmul width)
    selections: int = 0        # J
    fan_out: int = 1           # F rows leaving per row entering (Multi-pred's last layer)
    combine_einsum: bool = True


@dataclass
class Layout:
    """The per-block structure of a method, derived from its run config."""

    blocks: list[_Block] = field(default_factory=list)
    out_rows: int = 1          # rows per image reaching the head
    # MIMO (App. B.3): each row carries M images on the channel axis and M heads' outputs;
    # its R = batch repetition rows per image are routed as separate inputs.
    input_channels: int = 3
    input_rows: int = 1        # rows per image through the patch embedding
    head_outputs: int = 1      # × classes
    rows_are_inputs: bool = False


def layout(cfg: Mapping[str, Any]) -> Layout:
    """Rows per image and MoE routing of each block, for the methods of §4.2 and App. G.1."""
    method, m = cfg["method"], cfg["model"]
    spec = size_spec(cfg)
    L, moe_layers = spec["layers"], spec["moe_layers"]
    E, K, M, o = m["num_experts"], m["num_selected"], m["ensemble_size"], m["overlap"]
    if method not in ANALYTIC_METHODS:
        raise ConfigError("method", method, f"no analytic FLOPs model; allowed: "
                                            f"{list(ANALYTIC_METHODS)} (use --xla for others)")
    if method in ("vit", "batchensemble") or not moe_layers:
        tile_at = moe_layers[0] if method == "batchensemble" and moe_layers else L
        tile = M if method == "batchensemble" else 1
        blocks = [_Block(rows=tile if b >= tile_at else 1) for b in range(L)]
        return Layout(blocks, out_rows=tile)
    # MC-Dropout: the M samples of evaluation, tiled like Tiling (the paper's Table 12 cost).
    tile = M if method in ("e3", "tiling", "mc_dropout") else 1
    if method == "e3" and o < E:
        experts_seen = (E - o) // M + o
    elif method == "partitioning":
        experts_seen = E          # M routers of E/M experts, every token visits all of them
    else:
        experts_seen = E
    selections = K * M if method == "partitioning" else K
    rows = m["mimo_batch_repetition"] if method == "mimo" else 1
    blocks = []
    for b in range(L):
        if b == moe_layers[0]:
            rows *= tile
        if b in moe_layers:
            last_multipred = method == "multipred" and b == moe_layers[-1]
            blk = _Block(rows=rows, moe=True, experts_seen=experts_seen, selections=selections,
                         fan_out=K if last_multipred else 1, combine_einsum=not last_multipred)
            blocks.append(blk)
            rows *= blk.fan_out
        else:
            blocks.append(_Block(rows=rows))
    if method == "mimo":
        return Layout(blocks, out_rows=rows, input_channels=3 * M, head_outputs=M,
                      rows_are_inputs=True, input_rows=m["mimo_batch_repetition"])
    return Layout(blocks, out_rows=rows)


def _capacity(group_tokens: int, selections: int, num_experts: int, factor: float) -> int:
    from e3lib.models.routing import compute_capacity
    return compute_capacity(group_tokens, selections, num_experts, factor)


def flops_breakdown(cfg: Mapping[str, Any], num_classes: int = 1000,
                    dispatch: str = "indices") -> dict[str, float]:
    """FLOPs per image of one training step (forward + backward), by term.

    ``dispatch``: "indices" (gather/scatter, this toolkit's models and the paper's Table 20)
    or "einsum" (one-hot einsums, the paper's ablation implementation of Table 22).
    """
    if dispatch not in DISPATCH_KINDS:
        raise ConfigError("dispatch", dispatch, f"allowed: {list(DISPATCH_KINDS)}")
    m = cfg["model"]
    spec = size_spec(cfg)
    P, H, Q, A = spec["patch"], spec["hidden"], spec["mlp"], spec["heads"]
    image = cfg["data"]["image_size"]
    if image < P:
        raise ConfigError("data.image_size", image, f"must be >= the patch size {P}")
    N = (image // P) ** 2
    T = N + 1
    E, gi, factor = m["num_experts"], m["group_images"], m["capacity_factor"]
    mac = FLOPS_PER_MAC
    out = dict.fromkeys(("patch_embedding", "attention_projections", "attention_scores",
                         "mlp", "experts", "router", "dispatch", "head", "elementwise"), 0.0)
    lay = layout(cfg)
    out["patch_embedding"] = (INPUT_LAYER_FACTOR * mac * lay.input_rows * N * P * P
                              * lay.input_channels * H)
    for blk in lay.blocks:
        r = blk.rows
        out["attention_projections"] += TRAIN_MATMUL_FACTOR * r * T * mac * 4 * H * H
        out["attention_scores"] += TRAIN_MATMUL_FACTOR * r * 2 * mac * T * T * H
        out["elementwise"] += r * T * (EW_PER_HIDDEN * H + EW_PER_SCORE * T * A)
        if not blk.moe:
            out["mlp"] += TRAIN_MATMUL_FACTOR * r * T * mac * 2 * H * Q
            out["elementwise"] += r * T * EW_PER_MLP * Q
            continue
        group_rows = gi if lay.rows_are_inputs else gi * r          # gi images × M rows
        group_tokens = group_rows * T                               # S
        C = _capacity(group_tokens, blk.selections, E, factor)
        slots = E * C * r / group_rows                              # expert rows per image
        out["experts"] += TRAIN_MATMUL_FACTOR * slots * mac * 2 * H * Q
        out["elementwise"] += slots * EW_PER_MLP * Q
        out["router"] += TRAIN_MATMUL_FACTOR * r * T * mac * H * blk.experts_seen
        if dispatch == "einsum":
            units = EINSUM_DISPATCH_UNITS if blk.combine_einsum else 2
            out["dispatch"] += units * r * T * mac * E * C * H
    rep = H * H if m["representation"] else 0
    out["head"] = TRAIN_MATMUL_FACTOR * lay.out_rows * mac * (
        rep + H * num_classes * lay.head_outputs)
    return out


def analytic_gflops(cfg: Mapping[str, Any], num_classes: int = 1000,
                    dispatch: str = "indices") -> float:
    """GFLOPs per image of a training step (forward + backward), the quantity of Table 20."""
    return sum(flops_breakdown(cfg, num_classes, dispatch).values()) / 1e9


def count_params(cfg: Mapping[str, Any], num_classes: int) -> int:
    """Parameters of the run's model, from shapes (Table 23 counts a JFT head, V=18,291).

    Embedding P²·3·H + H, class token H, position embeddings T·H; per block two LayerNorms
    (4H), attention 4H² + 4H, MLP 2HQ + Q + H (×E for MoE blocks, plus the router H·E, or
    H·M·((E−o)/M + o) under E³ with o shared experts);
    final LayerNorm 2H; representation H² + H; head H·V + V. E³, Tiling, Partitioning and
    Multi-pred have the parameters of V-MoE; BatchEnsemble adds 2·M·(H + Q) fast weights and
    (M − 1)·(H + Q) member biases per last-n MLP; MIMO has M·3 input channels and M heads.
    """
    m = cfg["model"]
    spec = size_spec(cfg)
    P, H, Q, L = spec["patch"], spec["hidden"], spec["mlp"], spec["layers"]
    T = (cfg["data"]["image_size"] // P) ** 2 + 1
    method = cfg["method"]
    uses_moe = method in ("vmoe", "e3", "tiling", "partitioning", "multipred", "mc_dropout",
                          "mimo")
    moe_layers = set(spec["moe_layers"]) if uses_moe else set()
    E, M, o = m["num_experts"], m["ensemble_size"], m["overlap"]
    # Router kernel (H, R, E_r): R routers of E_r experts each.
    router_width = E
    if method == "e3" and o < E:
        router_width = M * ((E - o) // M + o)     # overlap: the o shared experts per member
    mlp = 2 * H * Q + Q + H
    total = P * P * 3 * H + H + H + T * H
    for b in range(L):
        total += 4 * H + 4 * H * H + 4 * H
        total += E * mlp + H * router_width if b in moe_layers else mlp
    total += 2 * H
    if method == "batchensemble":
        # rank-1 factors r (input) and s (output) of both dense layers of each last-n MLP,
        # and per-member biases (M − 1 more copies of the Q + H biases)
        total += len(spec["moe_layers"]) * (3 * m["ensemble_size"] - 1) * (H + Q)
    heads = m["ensemble_size"] if method == "mimo" else 1   # MIMO: M·3 input channels, M heads
    total += (heads - 1) * P * P * 3 * H
    if m["representation"]:
        total += H * H + H
    total += heads * (H * num_classes + num_classes)
    return int(total)


# --------------------------------------------------------------------------------------
# XLA compiled cost of the actual model.

def _abstract_train_step(cfg: Mapping[str, Any], num_classes: int, batch: Optional[int]):
    """The jitted loss-and-gradient function and its abstract arguments (nothing allocated)."""
    import jax
    import jax.numpy as jnp

    from e3lib.models import build_model
    from e3lib.models.losses import ensemble_train_loss

    model = build_model(cfg, num_classes)
    B = batch or cfg["model"]["group_images"]
    size = cfg["data"]["image_size"]
    images = jax.ShapeDtypeStruct((B, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((B,), jnp.int32)
    key = jax.random.key(0)
    variables = jax.eval_shape(
        lambda x: model.init({"params": key, "dropout": key, "gating": key}, x, train=False),
        images)

    def loss_fn(params, x, y, rng):
        drop, gate = jax.random.split(rng)
        logits, aux = model.apply({"params": params}, x, train=True,
                                  rngs={"dropout": drop, "gating": gate})
        return ensemble_train_loss(logits, y) + aux["aux_loss"]

    step = jax.jit(jax.value_and_grad(loss_fn))
    return step, (variables["params"], images, labels, key), B


def compiled_train_step(cfg: Mapping[str, Any], num_classes: int, batch: Optional[int] = None):
    """Lower and compile the training step on abstract inputs: (compiled, batch size)."""
    step, args, B = _abstract_train_step(cfg, num_classes, batch)
    return step.lower(*args).compile(), B


def _cost_dict(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per device
        cost = cost[0]
    return dict(cost or {})


def xla_cost(cfg: Mapping[str, Any], num_classes: int = 1000,
             batch: Optional[int] = None) -> dict[str, float]:
    """XLA's compiled cost of the training step, per image, plus the compiled memory.

    Keys: ``gflops`` (per image), ``batch``, ``temp_bytes``, ``argument_bytes``,
    ``output_bytes``, ``peak_bytes`` (arguments + outputs + temporaries − aliased).
    """
    compiled, B = compiled_train_step(cfg, num_classes, batch)
    flops = _cost_dict(compiled).get("flops")
    if flops is None or flops <= 0:  # some backends report no or negative counts
        raise RuntimeError(f"XLA cost analysis returned no FLOP count ({flops!r}) on "
                           f"this backend")
    out = {"gflops": float(flops) / B / 1e9, "batch": B}
    mem = compiled.memory_analysis()
    if mem is not None:
        out.update(temp_bytes=mem.temp_size_in_bytes, argument_bytes=mem.argument_size_in_bytes,
                   output_bytes=mem.output_size_in_bytes,
                   peak_bytes=(mem.argument_size_in_bytes + mem.output_size_in_bytes
                               + mem.temp_size_in_bytes - mem.alias_size_in_bytes))
    return out


def xla_gflops(cfg: Mapping[str, Any], num_classes: int = 1000,
               batch: Optional[int] = None) -> float:
    """GFLOPs per image of the compiled training step (XLA cost analysis, never executed)."""
    return xla_cost(cfg, num_classes, batch)["gflops"]


# --------------------------------------------------------------------------------------
# Paper reference values (Tables 20 and 22) and the ``e3 flops`` command.

def _load_reference(table_id: str) -> dict:
    import yaml
    path = REFERENCE_DIR / f"{table_id}.yaml"
    with open(path) as f:
        return yaml.safe_load(f)


def _flat(cfg: Mapping[str, Any]) -> dict:
    out = {"method": cfg["method"]}
    for section, values in cfg.items():
        if isinstance(values, Mapping):
            out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


def paper_gflops(cfg: Mapping[str, Any], deep_ensemble: int = 1, dispatch: str = "indices",
                 ignore: tuple[str, ...] = ()) -> Optional[tuple[str, str, float, dict]]:
    """The paper's GFLOPs for this config, if a row of Table 20 (index dispatch) or Table 22
    (einsum dispatch) matches it: (table id, row label, value, differing fields) or None.

    A row matches when the table's ``setting_fields`` and the row's key fields all equal the
    config's; fields named in ``ignore`` may differ and are returned as
    {field: (paper value, config value)}.
    """
    flat = _flat(cfg)
    flat["deep_ensemble"] = deep_ensemble
    table_id = "table20" if dispatch == "indices" else "table22"
    table = _load_reference(table_id)
    for row in table["rows"]:
        wanted = dict(table.get("setting_fields", {}))
        wanted.update(row["key"])
        wanted.setdefault("deep_ensemble", 1)
        differing = {k: (v, flat.get(k)) for k, v in wanted.items() if flat.get(k) != v}
        if set(differing) <= set(ignore):
            return table_id, row["label"], row["values"]["gflops"][0], differing
    return None


def _nest(flat: Mapping[str, Any]) -> dict:
    """{"model.size": "B/32", "method": "e3"} -> {"model": {"size": "B/32"}, "method": "e3"}."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def row_config(table: Mapping[str, Any], row_key: Mapping[str, Any]) -> tuple[dict, int]:
    """The resolved run config of a Table 20/22 row, and its deep-ensemble size."""
    flat = dict(table.get("setting_fields", {}))
    flat.update({k: v for k, v in row_key.items() if k != "deep_ensemble"})
    source = str(REFERENCE_DIR / f"{table['id']}.yaml")
    return resolve(_nest(flat), source=source), int(row_key.get("deep_ensemble", 1))


def compare_with_paper(table_id: str, num_classes: int = 1000) -> list[dict]:
    """Our analytic GFLOPs beside every cell of Table 20 or 22 (Table 21: percentages).

    Each item: label, key, paper, ours, and ``rel`` = ours/paper − 1 (Tables 20, 22) or
    ``diff`` = ours − paper in percentage points (Table 21).
    """
    if table_id == "table21":
        return _compare_table21(num_classes)
    dispatch = {"table20": "indices", "table22": "einsum"}.get(table_id)
    if dispatch is None:
        raise ConfigError("table_id", table_id, "allowed: ['table20', 'table21', 'table22']")
    table = _load_reference(table_id)
    out = []
    for row in table["rows"]:
        cfg, n = row_config(table, row["key"])
        ours = n * analytic_gflops(cfg, num_classes, dispatch)
        paper = row["values"]["gflops"][0]
        out.append(dict(label=row["label"], key=row["key"], paper=paper, ours=ours,
                        rel=ours / paper - 1))
    return out


def _compare_table21(num_classes: int) -> list[dict]:
    out = []
    for row in _load_reference("table21")["rows"]:
        size = row["key"]["model.size"]
        base = {"data.image_size": 384, "model.num_experts": 32, "model.size": size,
                "model.num_selected": 1}
        e3 = analytic_gflops(resolve(_nest(dict(base, method="e3", **{"model.ensemble_size": 2}))),
                             num_classes)
        vmoe = analytic_gflops(resolve(_nest(dict(base, method="vmoe"))), num_classes)
        other = vmoe if row["key"]["comparison"] == "e3_vs_vmoe" else 2 * vmoe
        ours = 100 * (e3 - other) / other
        paper = row["values"]["delta_gflops"][0]
        out.append(dict(label=row["label"], key=row["key"], paper=paper, ours=ours,
                        diff=ours - paper))
    return out


def _parse_set(items: list[str]) -> dict:
    """``--set model.num_selected=2`` -> nested dict; values parsed as YAML scalars."""
    import yaml
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError("--set", item, "expected FIELD=VALUE, e.g. model.num_selected=2")
        dotted, raw = item.split("=", 1)
        node = out
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _merge(a: dict, b: Mapping) -> dict:
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v
    return a


def cli_flops(argv: list[str]) -> int:
    """``e3 flops``: price a config before launching it."""
    p = argparse.ArgumentParser(
        prog="e3 flops",
        description="GFLOPs per image of a training step (forward+backward, as in the paper's "
                    "Table 20) and the parameter count of a run config.")
    p.add_argument("--config", help="YAML file with run-config overrides")
    p.add_argument("--method", help="method name (see e3lib.models.registry)")
    p.add_argument("--size", help="model size, e.g. S/32, B/32, L/16, H/14")
    p.add_argument("--image-size", type=int, help="input resolution in pixels (paper: 384)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a config field, e.g. model.num_selected=2 (repeatable)")
    p.add_argument("--num-classes", type=int, default=1000,
                   help="classes of the head (default 1000, ImageNet; JFT: 18291)")
    p.add_argument("--deep-ensemble", type=int, default=1, metavar="N",
                   help="price a deep ensemble of N independent runs of this config")
    p.add_argument("--dispatch", choices=DISPATCH_KINDS, default="indices",
                   help="dispatch implementation to count: indices (default, Table 20) or "
                        "one-hot einsum (the paper's ablation code, Table 22)")
    p.add_argument("--xla", action="store_true",
                   help="also lower and compile the real training step (abstract inputs) and "
                        "print XLA's FLOP count and memory")
    p.add_argument("--batch", type=int, help="batch size for --xla (default: group_images)")
    p.add_argument("--breakdown", action="store_true", help="print the analytic terms")
    args = p.parse_args(argv)
    overrides: dict = {}
    try:
        if args.config:
            import yaml
            with open(args.config) as f:
                loaded = yaml.safe_load(f) or {}
            if not isinstance(loaded, dict):
                raise ConfigError("<root>", type(loaded).__name__, "must be a mapping",
                                  args.config)
            overrides = loaded
        quick: dict = {}
        if args.method:
            quick["method"] = args.method
        if args.size:
            quick.setdefault("model", {})["size"] = args.size
        if args.image_size:
            quick.setdefault("data", {})["image_size"] = args.image_size
        _merge(overrides, quick)
        _merge(overrides, _parse_set(args.set))
        cfg = resolve(overrides, source=args.config)
        if args.num_classes < 1:
            raise ConfigError("--num-classes", args.num_classes, "must be a positive integer")
        if args.deep_ensemble < 1:
            raise ConfigError("--deep-ensemble", args.deep_ensemble, "must be >= 1")
        n = args.deep_ensemble
        terms = flops_breakdown(cfg, args.num_classes, args.dispatch)
    except ConfigError as err:
        print(f"e3 flops: {err}", file=sys.stderr)
        return 2
    m = cfg["model"]
    what = (f"{cfg['method']} {m['size']} E={m['num_experts']} K={m['num_selected']} "
            f"M={m['ensemble_size']} overlap={m['overlap']} image={cfg['data']['image_size']} "
            f"classes={args.num_classes}" + (f" deep-ensemble={n}" if n > 1 else ""))
    print(what)
    analytic = n * sum(terms.values()) / 1e9
    print(f"analytic GFLOPs/image (train step, fwd+bwd, {args.dispatch} dispatch): "
          f"{analytic:.2f}")
    if args.breakdown:
        for name, value in terms.items():
            print(f"  {name:24s} {n * value / 1e9:10.3f}")
    if args.xla:
        cost = xla_cost(cfg, args.num_classes, args.batch)
        print(f"XLA GFLOPs/image (compiled train step, batch {cost['batch']}): "
              f"{n * cost['gflops']:.2f}  (analytic/XLA = {analytic / (n * cost['gflops']):.3f})")
        if "peak_bytes" in cost:
            print(f"XLA compiled memory (batch {cost['batch']}): peak {cost['peak_bytes'] / 2**30:.2f}"
                  f" GiB (temporaries {cost['temp_bytes'] / 2**30:.2f} GiB)")
    params = count_params(cfg, args.num_classes)
    print(f"parameters: {params:,} ({params / 1e6:.1f}M)" + (f" per member, {n} members"
                                                             if n > 1 else ""))
    ref = paper_gflops(cfg, n, args.dispatch, ignore=("model.num_experts",))
    if ref:
        table_id, label, value, differing = ref
        print(f"paper ({table_id}, {label}): {value:.2f} GFLOPs/image "
              f"(ours/paper = {analytic / value:.3f})")
        for name, (theirs, ours) in differing.items():
            print(f"  note: the paper's row has {name}={theirs}, this config {ours}")
    else:
        print("paper: no row of Table 20/22 has this config")
    return 0

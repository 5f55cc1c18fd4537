"""Reference parameter names -> e3lib parameter-tree names ('/'-joined paths).

ViT ``.npz`` (vision_transformer):

    embedding/{kernel,bias}, cls, Transformer/posembed_input/pos_embedding,
    Transformer/encoderblock_b/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
    MlpBlock_3/Dense_{0,1}}          (pre-Linen: one counter over all submodules)
    Transformer/encoderblock_b/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
    MlpBlock_0/Dense_{0,1}}          (Linen era: one counter per module type)
    Transformer/encoder_norm, pre_logits (if the release has one), head

V-MoE / E³ (vmoe):

    embedding, cls, Encoder/posembed_input/pos_embedding,
    Encoder/encoderblock_b/{LayerNorm_0, SelfAttention (older: MultiHeadDotProductAttention_k),
    LayerNorm_1, Mlp/Dense_{0,1} | Moe/Mlp/Dense_{0,1} (E, ...) + Moe/Router/dense/kernel},
    Encoder/encoder_norm, pre_logits, head

e3lib: ``Encoder/posembed_input`` (a bare parameter), ``.../MultiHeadDotProductAttention_0``,
dense MLPs under ``.../Mlp/MlpBlock/Dense_k``, experts ``.../Moe/Mlp/Dense_k`` and the router
kernel ``.../Moe/Router/kernel`` (H, R, E_r). Pre-Linen numbering is first renumbered per
module type, as Flax's ``convert_pre_linen`` does, so both eras map the same way.
Top-level state other than parameters (``opt/...``, ``opt_state``, ``step``) is set aside by
``parameter_names`` and reported, never silently used.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable

_NUMBERED = re.compile(r"^(.*)_(\d+)$")
PARAM_PREFIXES = ("params/", "opt/target/")


def parameter_names(names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """(parameter name -> stored name, names set aside as non-parameter state)."""
    names = list(names)
    for prefix in PARAM_PREFIXES:
        if any(n.startswith(prefix) for n in names):
            kept = {n[len(prefix) :]: n for n in names if n.startswith(prefix)}
            return kept, [n for n in names if not n.startswith(prefix)]
    return {n: n for n in names}, []


def linen_numbering(names: Iterable[str]) -> dict[str, str]:
    """Renumber ``Type_k`` siblings per type (pre-Linen -> Linen). old name -> new name."""
    names = list(names)
    children: dict[str, set[str]] = defaultdict(set)
    for n in names:
        parts = n.split("/")
        for i in range(len(parts) - 1):
            children["/".join(parts[:i])].add(parts[i])
    renames: dict[tuple[str, str], str] = {}
    for parent, kids in children.items():
        by_type: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for kid in kids:
            m = _NUMBERED.match(kid)
            if m:
                by_type[m.group(1)].append((int(m.group(2)), kid))
        for type_name, numbered in by_type.items():
            for new, (_, kid) in enumerate(sorted(numbered)):
                renames[(parent, kid)] = f"{type_name}_{new}"
    out = {}
    for n in names:
        parts = n.split("/")
        new_parts = [
            renames.get(("/".join(parts[:i]), p), p) if i < len(parts) - 1 else p
            for i, p in enumerate(parts)
        ]
        out[n] = "/".join(new_parts)
    return out


_VIT_RULES = [
    (r"^Transformer/posembed_input/pos_embedding$", "Encoder/posembed_input"),
    (r"^Transformer/(encoderblock_\d+)/MlpBlock_0/(Dense_\d+/.*)$", r"Encoder/\1/Mlp/MlpBlock/\2"),
    (r"^Transformer/", "Encoder/"),
]
_VMOE_RULES = [
    (r"^Encoder/posembed_input/pos_embedding$", "Encoder/posembed_input"),
    (r"^(Encoder/encoderblock_\d+)/SelfAttention/", r"\1/MultiHeadDotProductAttention_0/"),
    (r"^(Encoder/encoderblock_\d+)/Mlp/(Dense_\d+/.*)$", r"\1/Mlp/MlpBlock/\2"),
    (r"^(Encoder/encoderblock_\d+/Moe/Router)/dense/kernel$", r"\1/kernel"),
]


def _apply(rules, name: str) -> str:
    for pattern, replacement in rules:
        new, n = re.subn(pattern, replacement, name)
        if n:
            return new
    return name


def to_e3(names: Iterable[str], fmt: str) -> dict[str, str]:
    """stored parameter name -> e3lib name, for ``fmt`` "npz" (ViT) or "vmoe_sharded"."""
    names = list(names)
    renumbered = linen_numbering(names)  # idempotent on Linen-era names
    rules = _VIT_RULES if fmt == "npz" else _VMOE_RULES
    out = {n: _apply(rules, renumbered[n]) for n in names}
    clashes: dict[str, list[str]] = defaultdict(list)
    for src, dst in out.items():
        clashes[dst].append(src)
    dup = {d: s for d, s in clashes.items() if len(s) > 1}
    if dup:
        raise ValueError(f"several checkpoint leaves map to one e3lib leaf: {dup}")
    return out


def dense_equivalent(expert_name: str) -> str:
    """``.../Moe/Mlp/Dense_k/x`` -> the dense MLP leaf ``.../Mlp/MlpBlock/Dense_k/x``."""
    return expert_name.replace("/Moe/Mlp/", "/Mlp/MlpBlock/")

"""The baselines' rows in the Table 5/12 and Table 14 sweeps: they expand, resolve, build and
have FLOPs and parameter counts, in the small and the paper variants (shapes only, nothing
is compiled)."""

from __future__ import annotations

import collections
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from e3lib import flops, sweep
from e3lib.models import build_model
from e3lib.models.params import count_tree
from e3lib.models.registry import num_members

SWEEPS = Path(__file__).resolve().parent.parent / "sweeps"
BASELINES = ("batchensemble", "mc_dropout", "mimo")


def runs_by_method(name: str, variant: str) -> dict[str, list[dict]]:
    plan = sweep.expand_sweeps([SWEEPS / name], variant)
    out = collections.defaultdict(list)
    for cfg in plan.runs.values():
        out[cfg["method"]].append(cfg)
    return out


def test_table12_small_variant_builds_every_baseline_row():
    runs = runs_by_method("table12_efficient_ensembles.yaml", "small")
    # Small variant, 2 seeds: BE M=2; MIMO K=2 M=2 with BR 1, 2; MC-Dropout (K, M) = (1, 2),
    # (2, 2) with expert dropout 0.1.
    assert len(runs["batchensemble"]) == 2 and len(runs["mimo"]) == 4
    assert len(runs["mc_dropout"]) == 4
    assert {c["model"]["mimo_batch_repetition"] for c in runs["mimo"]} == {1, 2}
    assert {c["model"]["expert_dropout"] for c in runs["mc_dropout"]} == {0.1}
    for method in BASELINES:
        for cfg in runs[method][:2]:
            size = cfg["data"]["image_size"]
            net = build_model(cfg, 10)
            x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
            variables = jax.eval_shape(lambda x: net.init({"params": jax.random.key(0)}, x),
                                       x)
            logits, _ = jax.eval_shape(lambda v, x: net.apply(v, x, train=False),
                                       variables, x)
            assert logits.shape == (2, num_members(cfg), 10)
            assert flops.count_params(cfg, 10) == count_tree(variables["params"])
            assert flops.analytic_gflops(cfg, 10) > 0


@pytest.mark.parametrize("name,variant", [
    ("table12_efficient_ensembles.yaml", "paper"),
    ("table14_members.yaml", "small"),
    ("table14_members.yaml", "paper"),
])
def test_baseline_rows_in_other_variants(name, variant):
    runs = runs_by_method(name, variant)
    for method in BASELINES if name.startswith("table12") else ("batchensemble", "mimo"):
        assert runs[method], f"{name} ({variant}) has no {method} run"
    if name.startswith("table12") and variant == "paper":
        be = runs["batchensemble"]
        assert {c["model"]["be_init"] for c in be} == {"random_sign", "normal"}
        assert {c["model"]["be_lr_scale"] for c in be} == {0.5, 1.0, 2.0}
        assert {c["model"]["mimo_input_repetition"] for c in runs["mimo"]} == {0.5, 0.625,
                                                                               0.75}

"""The baselines' rows in the Table 5/12 and Table 14 sweeps: they expand, resolve, build and
have FLOPs and parameter counts, in the small and the paper variants (shapes only, nothing
is compiled)."""

from __future__ import annotations

import collections
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from e3lib import sweep
from e3lib.config import resolve
from e3lib.cost.analytic import analytic_gflops, analytic_params
from e3lib.models import build_model
from e3lib.models.params import count_tree
from e3lib.models.registry import predictions_per_image

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
    # Small variant, 3 seeds: BE M=2; MIMO K=2 M=2 with BR 1, 2; MC-Dropout (K, M) = (1, 2),
    # (2, 2) with expert dropout 0.1.
    assert len(runs["batchensemble"]) == 3 and len(runs["mimo"]) == 6
    assert len(runs["mc_dropout"]) == 6
    assert {c["model"]["mimo_batch_repetition"] for c in runs["mimo"]} == {1, 2}
    assert {c["model"]["expert_dropout"] for c in runs["mc_dropout"]} == {0.1}
    for method in BASELINES:
        for stored in runs[method][:2]:
            cfg = resolve(stored)  # the plan holds plain dicts; the builders take RunConfig
            assert cfg.to_dict() == stored
            size = cfg.data.image_size
            net = build_model(cfg, 10)
            x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
            variables = jax.eval_shape(
                lambda x, net=net: net.init({"params": jax.random.key(0)}, x), x
            )
            logits, _ = jax.eval_shape(
                lambda v, x, net=net: net.apply(v, x, train=False), variables, x
            )
            assert logits.shape == (2, predictions_per_image(cfg), 10)
            assert analytic_params(cfg, 10) == count_tree(variables["params"])
            assert analytic_gflops(cfg, 10) > 0


@pytest.mark.parametrize(
    "name,variant",
    [
        ("table12_efficient_ensembles.yaml", "paper"),
        ("table14_members.yaml", "small"),
        ("table14_members.yaml", "paper"),
    ],
)
def test_baseline_rows_in_other_variants(name, variant):
    runs = runs_by_method(name, variant)
    for method in BASELINES if name.startswith("table12") else ("batchensemble", "mimo"):
        assert runs[method], f"{name} ({variant}) has no {method} run"
    if name.startswith("table12") and variant == "paper":
        be = runs["batchensemble"]
        assert {c["model"]["be_init"] for c in be} == {"random_sign", "normal"}
        assert {c["model"]["be_lr_scale"] for c in be} == {0.5, 1.0, 2.0}
        assert {c["model"]["mimo_input_repetition"] for c in runs["mimo"]} == {0.5, 0.625, 0.75}


def test_baseline_gflops_by_hand_and_against_table12():
    def cfg(method, size="tiny", image=16, **model):
        return resolve(
            {"method": method, "model": dict(size=size, **model), "data": {"image_size": image}}
        )

    # Tiny, 16 px (N=16 patches), V=10 classes. MIMO (M=2, K=2) vs V-MoE (K=2): one more
    # image through the patch embedding, 2·2·N·P²·3·H = 2·2·16·48·32 = 98,304 FLOPs, and
    # one more head, 3·2·H·V = 6·32·10 = 1,920 FLOPs; the blocks are the same.
    diff = analytic_gflops(cfg("mimo", num_selected=2, ensemble_size=2), 10) - analytic_gflops(
        cfg("vmoe", num_selected=2), 10
    )
    assert diff * 1e9 == pytest.approx(98_304 + 1_920, abs=1e-3)
    # Batch repetition R=2 runs every row twice per image: twice the whole step.
    r2 = analytic_gflops(cfg("mimo", num_selected=2, ensemble_size=2, mimo_batch_repetition=2), 10)
    r1 = analytic_gflops(cfg("mimo", num_selected=2, ensemble_size=2), 10)
    assert r2 == pytest.approx(2 * r1, rel=0.02)  # equal up to capacity rounding
    # MC-Dropout counts its M evaluation samples as Tiling does.
    assert analytic_gflops(cfg("mc_dropout", ensemble_size=2), 10) == analytic_gflops(
        cfg("tiling", ensemble_size=2), 10
    )
    # B/32 at 384 px, E=32, 1000 classes against the paper's Table 12 GFLOPs (reference
    # values): MIMO K=2, M=2 / 4, BR=1: 96.3 / 99.0; BE M=2 / 4: 97.1 / 135.4.
    paper = [
        ("mimo", dict(num_selected=2, ensemble_size=2), 96.3),
        ("mimo", dict(num_selected=2, ensemble_size=4), 99.0),
        ("batchensemble", dict(ensemble_size=2), 97.1),
        ("batchensemble", dict(ensemble_size=4), 135.4),
    ]
    for method, model, reference in paper:
        ours = analytic_gflops(cfg(method, "B/32", 384, num_experts=32, **model), 1000)
        assert ours == pytest.approx(reference, abs=0.5), (method, model, ours)

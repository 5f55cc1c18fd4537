"""Partitioning's K (``model.partition_k``): K experts in each of the M subsets (the text of
§4.2.1, default) or K in total, K/M per subset (the cost Table 22 prints)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e3lib.config import ConfigError, resolve, run_id
from e3lib.cost.analytic import analytic_gflops, analytic_params
from e3lib.cost.xla import xla_cost
from e3lib.models import build_model
from e3lib.models.params import count_params
from e3lib.models.registry import moe_layout
from e3lib.models.routing import NoisyTopKRouter
from e3lib.models.sizes import size_spec
from e3lib.report.flops_reference import compare_with_paper, paper_gflops

IMAGES = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))


def _cfg(mode=None, K=2, M=2, E=8, **extra):
    model = dict(num_experts=E, num_selected=K, ensemble_size=M, **extra)
    if mode is not None:
        model["partition_k"] = mode
    return resolve({"method": "partitioning", "model": model})


def _layout(cfg):
    return moe_layout(cfg, size_spec(cfg))


def test_default_is_the_papers_text_per_subset():
    assert _cfg().model.partition_k == "per_subset"
    assert run_id(_cfg()) == run_id(_cfg("per_subset"))  # the default, spelled or not
    assert run_id(_cfg()) != run_id(_cfg("total"))


@pytest.mark.parametrize(
    "mode,K,M,router_k,J",
    [
        ("per_subset", 2, 2, 2, 4),  # K in each of M subsets: K·M = 4 selections per token
        ("per_subset", 1, 2, 1, 2),
        ("total", 2, 2, 1, 2),  # K = 2 in all: 1 per subset
        ("total", 4, 2, 2, 4),
        ("total", 4, 4, 1, 4),
    ],
)
def test_selections_per_subset_and_per_token(mode, K, M, router_k, J):
    layout = _layout(_cfg(mode, K=K, M=M))
    assert len(layout.subsets) == M and not layout.router_per_copy
    assert layout.router_k(K) == router_k and layout.selections(K) == J


def test_router_picks_hand_derived_experts_per_subset():
    # E=4, M=2: subsets {0,1}, {2,3}. The kernel (H=2, R=2, E_r=2) maps x=[a, b] to logits
    # [a, b] for router 0 and [b, a] for router 1. Token x = [ln 3, 0]: router 0 gates
    # [3/4, 1/4], router 1 gates [1/4, 3/4].
    kernel = jnp.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    x = jnp.array([[[np.log(3.0), 0.0]]])  # (G=1, S=1, H=2)

    def route(mode, K):
        layout = _layout(_cfg(mode, K=K, M=2, E=4))
        router = NoisyTopKRouter(
            subsets=layout.subsets,
            num_selected=layout.router_k(K),
            noise_std=0.0,
            aux_weight=0.0,
            router_per_copy=layout.router_per_copy,
        )
        r, _ = router.apply({"params": {"kernel": kernel}}, x)
        return np.asarray(r.expert_index[0, 0]), np.asarray(r.gates[0, 0])

    # total, K=2: one expert per subset, the larger gate of each: experts 0 and 3.
    idx, gates = route("total", 2)
    np.testing.assert_array_equal(idx, [0, 3])
    np.testing.assert_allclose(gates, [0.75, 0.75], rtol=1e-6)
    # per_subset, K=2: both experts of each subset, first choices before second (slot k·R+r).
    idx, gates = route("per_subset", 2)
    np.testing.assert_array_equal(idx, [0, 3, 1, 2])
    np.testing.assert_allclose(gates, [0.75, 0.75, 0.25, 0.25], rtol=1e-6)


@pytest.mark.parametrize("mode,J", [("per_subset", 4), ("total", 2)])
def test_model_routes_j_experts_per_token_split_over_subsets(mode, J):
    cfg = _cfg(mode, K=2, M=2, E=8)
    model = build_model(cfg, 5)
    variables = model.init({"params": jax.random.key(0)}, IMAGES, train=False)
    (logits, _), state = model.apply(variables, IMAGES, train=False, mutable=["intermediates"])
    assert logits.shape == (4, 1, 5)  # one prediction (no tiling)
    index = np.asarray(
        state["intermediates"]["Encoder"]["encoderblock_3"]["Moe"]["expert_index"][0]
    )
    assert index.shape[-1] == J
    for slot in range(J):  # slot k·M + r comes from subset r
        subset = set(range(4)) if slot % 2 == 0 else set(range(4, 8))
        assert set(np.unique(index[..., slot])) <= subset


@pytest.mark.parametrize("mode", ["per_subset", "total"])
def test_analytic_flops_match_xla_and_params_match_shapes(mode):
    # mini (H=64): the analytic count is within about 1% of XLA here, as for V-MoE; on
    # tiny (H=32) uncounted small terms are about 3% for every top-K method.
    cfg = _cfg(mode, K=2, M=2, E=8, size="mini")
    xla = xla_cost(cfg, 10)["gflops"]
    assert analytic_gflops(cfg, 10) == pytest.approx(xla, rel=0.03)
    assert analytic_params(cfg, 10) == count_params(cfg, 10)


def test_total_k_costs_as_vmoe_of_the_same_k_and_per_subset_as_k_times_m():
    # Same expert work per token: Partitioning total K=2 ~ V-MoE K=2; per_subset K=2 ~
    # V-MoE K=4 (capacity buffers of S·J·C/E slots); the router's width (E) is the same.
    def gflops(method, K, **model):
        return analytic_gflops(
            resolve(
                {
                    "method": method,
                    "data": {"image_size": 384},
                    "model": dict(size="B/32", num_experts=32, num_selected=K, **model),
                }
            )
        )

    assert gflops("partitioning", 2, ensemble_size=2, partition_k="total") == pytest.approx(
        gflops("vmoe", 2), rel=1e-9
    )
    assert gflops("partitioning", 2, ensemble_size=2) == pytest.approx(gflops("vmoe", 4), rel=1e-9)


def test_table22_partitioning_row_matches_both_readings():
    rows = [r for r in compare_with_paper("table22") if r["label"].startswith("Partitioning")]
    assert len(rows) == 2
    by_mode = {r["key"]["model.partition_k"]: r for r in rows}
    assert by_mode["per_subset"]["key"]["model.num_selected"] == 1
    assert by_mode["total"]["key"]["model.num_selected"] == 2
    for r in rows:
        assert r["paper"] == 97.885 and abs(r["rel"]) < 0.03, r
    # A run config finds the row under either reading; K=2 per subset is another model.
    setting = {"size": "B/32", "num_experts": 32, "group_images": 2}

    def lookup(mode, K):
        cfg = resolve(
            {
                "method": "partitioning",
                "data": {"image_size": 384},
                "model": dict(setting, num_selected=K, ensemble_size=2, partition_k=mode),
            }
        )
        return paper_gflops(cfg, dispatch="einsum")

    assert lookup("per_subset", 1)[2] == 97.885
    total = lookup("total", 2)
    assert total[2] == 97.885 and "total" in total[1]
    assert lookup("per_subset", 2) is None


@pytest.mark.parametrize(
    "model,field",
    [
        ({"partition_k": "both"}, "model.partition_k"),
        ({"partition_k": "total", "num_selected": 3}, "model.num_selected"),  # K % M != 0
        ({"partition_k": "per_subset", "num_selected": 5}, "model.num_selected"),  # 5 > E/M = 4
        ({"partition_k": "total", "num_selected": 10}, "model.num_selected"),  # 5 per subset > 4
    ],
)
def test_bad_partition_k_configs_name_the_field(model, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        resolve({"method": "partitioning", "model": {"ensemble_size": 2, **model}})


def test_other_methods_ignore_partition_k():
    # A sweep's base may set partition_k for all its methods; only Partitioning reads it,
    # so a V-MoE with it set is the V-MoE without (one id).
    a = resolve({"method": "vmoe", "model": {"partition_k": "total"}})
    b = resolve({"method": "vmoe"})
    assert a == b and run_id(a) == run_id(b)

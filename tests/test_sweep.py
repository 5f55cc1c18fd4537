"""Sweep expansion (e3lib.sweep): axes, seeds, ensembles, identity, validation errors, files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from e3lib import sweep as S
from e3lib.config import MODEL_SIZES, resolve, run_id, upstream_id

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "sweeps").glob("*.yaml"))


def expand(doc: dict, variant: str = "small", file: str = "t.yaml") -> S.Sweep:
    return S.expand_doc(doc, file, variant)


def runs_of(sw: S.Sweep) -> list[dict]:
    return [e for e in sw.entries if e["kind"] == "run"]


BASE = {"title": "t", "reproduces": ["demo"], "base": {"model": {"num_experts": 8}}}


# ----------------------------------------------------------------------------- axes


def test_product_zip_and_conditional_axes():
    doc = {
        **BASE,
        "axes": [
            {"cases": [{"method": "e3", "model.ensemble_size": 2}, {"method": "vmoe"}]},
            # conditional axis: only the e3 point gets overlap values
            {"name": "model.overlap", "values": [0, 2, 4], "when": {"method": "e3"}},
            # zipped pair applies to every point
            {"zip": {"finetune.lr": [0.1, 0.01], "finetune.steps": [20, 40]}},
        ],
        "seeds": 2,
    }
    sw = expand(doc)
    # points: e3 x 3 overlaps + vmoe x 1 = 4; x 2 zipped pairs = 8; x 2 seeds = 16 runs
    runs = runs_of(sw)
    assert len(runs) == 16
    assert sw.axes == [
        "method",
        "model.ensemble_size",
        "model.overlap",
        "finetune.lr",
        "finetune.steps",
    ]
    vmoe = [e for e in runs if e["axes"]["method"] == "vmoe"]
    # vmoe was not expanded over overlap: its axis value is the resolved default 0
    assert {e["axes"]["model.overlap"] for e in vmoe} == {0}
    assert len(vmoe) == 4
    # zip pairs values, never crosses them
    pairs = {(e["axes"]["finetune.lr"], e["axes"]["finetune.steps"]) for e in runs}
    assert pairs == {(0.1, 20), (0.01, 40)}
    assert {e["seed"] for e in runs} == {0, 1}
    for e in runs:
        assert e["config"]["seed"] == e["seed"]
        assert e["id"] == run_id(e["config"])
        assert e["result"] == f"results/runs/{e['id']}/results.json"


def test_seed_list_and_seed_is_the_run_config_seed():
    sw = expand({**BASE, "seeds": [3, 7]})
    assert sorted(e["config"]["seed"] for e in runs_of(sw)) == [3, 7]
    assert sw.seeds == [3, 7]


def test_variant_overlay_merges_base_and_adds_axes():
    doc = {
        **BASE,
        "base": {"method": "e3", "model": {"ensemble_size": 2, "num_experts": 8}},
        "axes": [{"name": "model.overlap", "values": [0, 2]}],
        "variants": {
            "small": {"base": {"finetune": {"steps": 17}}, "seeds": 1},
            "paper": {
                "base": {"model": {"num_experts": 32}},
                "add_axes": [{"name": "finetune.lr", "values": [0.1, 0.3]}],
                "seeds": 3,
            },
        },
    }
    small, paper = expand(doc, "small"), expand(doc, "paper")
    assert len(runs_of(small)) == 2 and len(runs_of(paper)) == 2 * 2 * 3
    assert {e["config"]["finetune"]["steps"] for e in runs_of(small)} == {17}
    # the overlay merges: ensemble_size from the top-level base survives
    assert {e["config"]["model"]["num_experts"] for e in runs_of(paper)} == {32}
    assert {e["config"]["model"]["ensemble_size"] for e in runs_of(paper)} == {2}
    assert paper.axes[-1] == "finetune.lr"


# ----------------------------------------------------------------------------- identity


def test_ids_are_stable_and_adding_a_seed_or_value_only_adds():
    doc = {**BASE, "axes": [{"name": "model.num_selected", "values": [1, 2]}], "seeds": 2}
    before = {e["id"] for e in expand(doc).entries}
    assert before == {e["id"] for e in expand(doc).entries}
    more_seeds = {e["id"] for e in expand({**doc, "seeds": 3}).entries}
    assert before < more_seeds and len(more_seeds - before) == 2  # 2 points x 1 new seed
    more_values = {**doc, "axes": [{"name": "model.num_selected", "values": [1, 2, 4]}]}
    assert before < {e["id"] for e in expand(more_values).entries}


def test_same_run_in_two_sweeps_is_one_run_and_upstream_is_shared(tmp_path):
    a = {
        **BASE,
        "name": "a",
        "base": {"method": "vmoe", "model": {"num_experts": 8}, "upstream": {"num_selected": 2}},
        "axes": [{"name": "model.num_selected", "values": [1, 2]}],
    }
    b = {
        **BASE,
        "name": "b",
        "base": {"method": "vmoe", "model": {"num_experts": 8}, "upstream": {"num_selected": 2}},
        "axes": [{"name": "model.num_selected", "values": [2, 4]}],
    }
    files = []
    for doc in (a, b):
        p = tmp_path / f"{doc['name']}.yaml"
        p.write_text(yaml.safe_dump(doc))
        files.append(p)
    plan = S.expand_sweeps(files)
    # K in {1,2} U {2,4}: 3 distinct runs (K=2 shared), all fine-tuned from one upstream
    assert len(plan.runs) == 3
    assert len(plan.upstreams) == 1
    shared = {e["id"] for e in plan.sweeps["a"].entries} & {
        e["id"] for e in plan.sweeps["b"].entries
    }
    assert len(shared) == 1


def test_upstream_key_ignores_finetune_fields():
    doc = {
        **BASE,
        "base": {
            "method": "e3",
            "model": {"num_experts": 8, "ensemble_size": 2},
            "upstream": {"num_selected": 2},
        },
        "axes": [
            {"name": "model.overlap", "values": [0, 2]},
            {"name": "finetune.lr", "values": [0.1, 0.01]},
        ],
        "seeds": 2,
    }
    sw = expand(doc)
    assert len({e["upstream_id"] for e in runs_of(sw)}) == 1
    assert len({e["id"] for e in runs_of(sw)}) == 8


# ----------------------------------------------------------------------------- ensembles


def test_downstream_ensembles_group_seeds_of_one_point():
    doc = {
        **BASE,
        "base": {"method": "vmoe", "model": {"num_experts": 8}},
        "axes": [{"name": "model.num_selected", "values": [1, 2]}],
        "seeds": 6,
        "ensembles": [
            {
                "label": "down_de",
                "kind": "downstream",
                "runs": [2, 4],
                "of": {"model.num_selected": 1},
            }
        ],
    }
    sw = expand(doc)
    ens = [e for e in sw.entries if e["kind"] == "ensemble"]
    # K=1 only: size 2 -> 6 // 2 = 3 disjoint replicates; size 4 -> 1 disjoint, and 2 more
    # (the report's minimum of 3) from the other offsets spread evenly: 0, 2, 4.
    assert sorted((e["axes"]["ensemble.runs"], e["replicate"]) for e in ens) == [
        (2, 0),
        (2, 1),
        (2, 2),
        (4, 0),
        (4, 1),
        (4, 2),
    ]
    by_seed = {e["seed"]: e["id"] for e in runs_of(sw) if e["axes"]["model.num_selected"] == 1}
    pairs = {e["replicate"]: e["members"] for e in ens if e["axes"]["ensemble.runs"] == 2}
    assert pairs == {r: [by_seed[2 * r], by_seed[2 * r + 1]] for r in range(3)}
    assert not any(e["overlapping"] for e in ens if e["axes"]["ensemble.runs"] == 2)
    fours = {e["replicate"]: e["members"] for e in ens if e["axes"]["ensemble.runs"] == 4}
    assert fours == {
        r: [by_seed[s] for s in seeds]
        for r, seeds in enumerate([(0, 1, 2, 3), (2, 3, 4, 5), (4, 5, 0, 1)])
    }
    assert all(e["overlapping"] for e in ens if e["axes"]["ensemble.runs"] == 4)
    for e in ens:
        assert e["axes"]["method"] == "down_de" and e["ensemble_kind"] == "downstream"
        assert e["id"] == S.ensemble_id("downstream", e["members"])
        assert e["result"] == f"results/ensembles/{e['id']}/results.json"
        assert e["done"] == f"results/ensembles/{e['id']}/done.json"
    # the number of member runs has its own axis; ordinary runs are ensembles of one run
    assert sw.axes[-1] == "ensemble.runs" and "model.ensemble_size" not in sw.axes
    assert {e["axes"]["ensemble.runs"] for e in runs_of(sw)} == {1}
    assert all(e["done"] == f"results/runs/{e['id']}/done.json" for e in runs_of(sw))


def test_member_runs_and_m_of_e3_are_two_axes():
    """model.ensemble_size is M of one model; a deep ensemble's size is ensemble.runs."""
    sw = S.load_sweep(REPO / "sweeps" / "demo.yaml")
    assert sw.axes == ["method", "model.num_selected", "model.ensemble_size", "ensemble.runs"]
    rows = {
        (e["axes"]["method"], e["axes"]["model.ensemble_size"], e["axes"]["ensemble.runs"])
        for e in sw.entries
    }
    # E3 with M=2 is one run; the deep ensemble of two V-MoEs (M=1 each) has 2 runs
    assert rows == {("vit", 1, 1), ("vmoe", 1, 1), ("e3", 2, 1), ("down_de", 1, 2)}
    ens = [e for e in sw.entries if e["kind"] == "ensemble"]
    # 3 seeds: 3 replicates of 2 runs (seeds 0+1, 1+2, 2+0), overlapping and labelled so
    assert [e["replicate"] for e in ens] == [0, 1, 2]
    assert all(len(e["members"]) == 2 and e["overlapping"] for e in ens)


@pytest.mark.parametrize("where", ["top", "variant"])
def test_old_ensemble_field_sizes_is_refused_naming_runs(where):
    ens = [{"label": "de", "kind": "downstream", "sizes": [2]}]
    doc = (
        {**BASE, "seeds": 2, "ensembles": ens}
        if where == "top"
        else {**BASE, "seeds": 2, "variants": {"small": {"ensembles": ens}}}
    )
    with pytest.raises(S.SweepError) as info:
        expand(doc)
    field = "ensembles[0].sizes" if where == "top" else "variants.small.ensembles[0].sizes"
    assert info.value.field == field
    assert "renamed to `runs`" in str(info.value) and "model.ensemble_size" in str(info.value)


def test_upstream_ensembles_pretrain_one_upstream_per_member():
    doc = {
        **BASE,
        "base": {"method": "vmoe", "model": {"num_experts": 8}},
        "seeds": 3,
        "ensembles": [{"label": "up_de", "kind": "upstream", "runs": [2]}],
    }
    sw = expand(doc)
    ens = [e for e in sw.entries if e["kind"] == "ensemble"][0]  # replicate 0: seeds 0, 1
    members = [next(e for e in sw.entries if e["id"] == m) for m in ens["members"]]
    assert len({m["upstream_id"] for m in members}) == 2
    assert [m["config"]["upstream"]["seed"] for m in members] == [0, 1]
    # seed 0 with upstream seed 0 is the sweep's own run; seed 1 / upstream seed 1 is new
    assert members[0]["axes"]["method"] == "vmoe"
    assert members[1]["axes"]["method"] == "up_de_member"


def test_upstream_seeds_shared_or_one_upstream_per_fine_tuning_seed():
    doc = {**BASE, "base": {"method": "vmoe", "model": {"num_experts": 8}}, "seeds": 3}
    shared = runs_of(expand(doc))
    assert [e["config"]["upstream"]["seed"] for e in shared] == [0, 0, 0]
    assert len({e["upstream_id"] for e in shared}) == 1
    per_run = runs_of(expand({**doc, "upstream_seeds": "per_run"}))
    assert [e["config"]["upstream"]["seed"] for e in per_run] == [0, 1, 2]
    assert [e["seed"] for e in per_run] == [0, 1, 2]
    assert len({e["upstream_id"] for e in per_run}) == 3
    # seed 0 is the same run either way (upstream seed 0)
    assert per_run[0]["id"] == shared[0]["id"]
    assert {e["id"] for e in per_run[1:]}.isdisjoint(e["id"] for e in shared)
    # a variant sets it for itself only
    over = {**doc, "variants": {"small": {"upstream_seeds": "per_run"}, "paper": {}}}
    assert len({e["upstream_id"] for e in runs_of(expand(over))}) == 3
    assert len({e["upstream_id"] for e in runs_of(expand(over, "paper"))}) == 1


def test_per_run_upstream_seeds_make_upstream_ensemble_members_the_rows_themselves():
    doc = {
        **BASE,
        "base": {"method": "vmoe", "model": {"num_experts": 8}},
        "seeds": 4,
        "upstream_seeds": "per_run",
        "ensembles": [{"label": "up_de", "kind": "upstream", "runs": [2]}],
    }
    sw = expand(doc)
    rows = {e["id"] for e in runs_of(sw)}
    assert len(rows) == 4  # no up_de_member runs: member j is the row of seed j
    assert {e["axes"]["method"] for e in runs_of(sw)} == {"vmoe"}
    ens = [e for e in sw.entries if e["kind"] == "ensemble"]
    # 4 seeds, runs of 2: 2 disjoint replicates, raised to 3 (MIN_REPLICATES)
    assert len(ens) == 3 and all(set(e["members"]) <= rows for e in ens)


def test_per_run_upstream_seeds_with_a_published_checkpoint_is_refused():
    doc = {
        **BASE,
        "base": {
            "method": "vmoe",
            "model": {"size": "B/16", "num_experts": 8, "moe_placement": "every", "moe_n": 2},
            "upstream": {"checkpoint": "vmoe_b16_in21k"},
        },
        "seeds": 2,
        "upstream_seeds": "per_run",
    }
    assert (
        len({e["upstream_id"] for e in runs_of(expand({**doc, "upstream_seeds": "shared"}))}) == 1
    )
    with pytest.raises(S.SweepError) as info:
        expand(doc)
    assert info.value.field == "upstream_seeds" and info.value.file == "t.yaml"
    assert "upstream.checkpoint" in str(info.value) and "allowed: shared" in str(info.value)
    # set by a variant: the error names the variant's field
    in_variant = {k: v for k, v in doc.items() if k != "upstream_seeds"}
    in_variant["variants"] = {"small": {"upstream_seeds": "per_run"}, "paper": {}}
    with pytest.raises(S.SweepError) as info:
        expand(in_variant)
    assert info.value.field == "variants.small.upstream_seeds"
    # nor can an upstream ensemble draw distinct pretrainings from one checkpoint
    up_de = {"label": "up_de", "kind": "upstream", "runs": [2]}
    with pytest.raises(S.SweepError, match=r"distinct upstreams.*upstream.checkpoint"):
        expand({**doc, "upstream_seeds": "shared", "seeds": 5, "ensembles": [up_de]})
    # and members of a downstream ensemble must share their upstream
    down = {"label": "de", "kind": "downstream", "runs": [2]}
    per_run = {**BASE, "base": {"method": "vmoe"}, "seeds": 5, "upstream_seeds": "per_run"}
    with pytest.raises(S.SweepError, match=r"share one upstream.*per_run"):
        expand({**per_run, "ensembles": [down]})
    with pytest.raises(S.SweepError, match=r"upstream_seeds.*each") as info:
        expand({**doc, "upstream_seeds": "each"})
    assert "per_run" in str(info.value) and "shared" in str(info.value)


def test_the_same_point_from_two_cases_is_one_run():
    # identical cases are refused (tests/test_bad_input.py); cases that resolve alike are one run
    sw = expand({**BASE, "axes": [{"cases": [{"finetune.lr": 0.01}, {"model.overlap": 0}]}]})
    assert len(runs_of(sw)) == 1


def test_ensemble_ids_do_not_depend_on_member_order():
    assert S.ensemble_id("downstream", ["b", "a"]) == S.ensemble_id("downstream", ["a", "b"])
    assert S.ensemble_id("downstream", ["a", "b"]) != S.ensemble_id("upstream", ["a", "b"])


# ----------------------------------------------------------------------------- errors

MALFORMED = [
    # (what is wrong, document, the field the message must name, words the message must hold)
    # methods are checked against the registry by resolve (the schema lists none)
    (
        "unknown method",
        {**BASE, "base": {"method": "e4"}},
        "method in run (base, seed=0)",
        "'e4': allowed: ['batchensemble', 'e3'",
    ),
    (
        "unknown model size",
        {**BASE, "base": {"model": {"size": "XL/7"}}},
        "base.model.size",
        "'tiny'",
    ),
    ("unknown top-level key", {**BASE, "axis": []}, "(top level)", "allowed fields here"),
    ("missing title", {"reproduces": ["demo"]}, "title", "missing required field"),
    ("unknown table id", {**BASE, "reproduces": ["table99"]}, "reproduces[0]", "table3"),
    (
        "axis name not a config path",
        {**BASE, "axes": [{"name": "overlap", "values": [1]}]},
        "axes[0].name",
        "dotted run-config path",
    ),
    (
        "axis on unknown field",
        {**BASE, "axes": [{"name": "model.overlapp", "values": [1]}]},
        "axes[0]",
        "unknown run-config field",
    ),
    (
        "empty axis values",
        {**BASE, "axes": [{"name": "model.overlap", "values": []}]},
        "axes[0].values",
        "should be non-empty",
    ),
    (
        "zip of unequal lengths",
        {**BASE, "axes": [{"zip": {"model.num_selected": [1, 2], "finetune.lr": [0.1]}}]},
        "axes[0].zip",
        "equal length",
    ),
    (
        "K > E/M for E3",
        {
            **BASE,
            "base": {"method": "e3", "model": {"num_experts": 8, "ensemble_size": 2}},
            "axes": [{"name": "model.num_selected", "values": [1, 8]}],
        },
        "model.num_selected in run (model.num_selected=8, seed=0)",
        "experts per member",
    ),
    (
        "E - o not divisible by M",
        {
            **BASE,
            "base": {"method": "e3", "model": {"num_experts": 8, "ensemble_size": 2}},
            "axes": [{"name": "model.overlap", "values": [0, 3]}],
        },
        "model.ensemble_size in run (model.overlap=3, seed=0)",
        "divisible by M=2",
    ),
    (
        "overlap > E",
        {
            **BASE,
            "base": {"method": "e3", "model": {"num_experts": 8}},
            "axes": [{"name": "model.overlap", "values": [16]}],
        },
        "model.overlap in run (model.overlap=16, seed=0)",
        "<= num_experts",
    ),
    (
        "negative lambda",
        {**BASE, "axes": [{"name": "model.aux_weight", "values": [-0.1]}]},
        "model.aux_weight in run (model.aux_weight=-0.1, seed=0)",
        "non-negative",
    ),
    (
        "unknown field in base",
        {**BASE, "base": {"model": {"experts": 8}}},
        "base.model.experts",
        "unknown field",
    ),
    ("seeds zero", {**BASE, "seeds": 0}, "seeds", "minimum"),
    (
        "ensemble bigger than seeds",
        {**BASE, "seeds": 2, "ensembles": [{"label": "de", "kind": "downstream", "runs": [4]}]},
        "ensembles[0].runs",
        "needs at least 4 seeds",
    ),
    (
        "ensemble kind unknown",
        {**BASE, "seeds": 2, "ensembles": [{"label": "de", "kind": "sideways", "runs": [2]}]},
        "ensembles[0].kind",
        "downstream",
    ),
    (
        "two ensembles on one row",
        {
            **BASE,
            "seeds": 3,
            "axes": [{"cases": [{"method": "vit"}, {"method": "vmoe"}]}],
            "ensembles": [
                {
                    "label": "de",
                    "kind": "downstream",
                    "runs": [2],
                    "of": {"method": ["vit", "vmoe"]},
                }
            ],
        },
        "ensembles[0].label",
        "share one row",
    ),
    (
        "ensemble matches nothing",
        {
            **BASE,
            "seeds": 2,
            "ensembles": [
                {"label": "de", "kind": "downstream", "runs": [2], "of": {"method": "vit"}}
            ],
        },
        "ensembles[0].of",
        "matches no run",
    ),
    (
        "ensemble with fewer than 3 replicates",
        {**BASE, "seeds": 4, "ensembles": [{"label": "de", "kind": "downstream", "runs": [4]}]},
        "seeds",
        "get 1 replicate(s); the report compares a row only with at least 3",
    ),
    (
        "explicit replicates below the minimum",
        {
            **BASE,
            "seeds": 4,
            "ensembles": [{"label": "de", "kind": "downstream", "runs": [2], "replicates": 2}],
        },
        "ensembles[0].replicates",
        "at least 3 (min_seeds)",
    ),
    (
        "more replicates than distinct member sets",
        {
            **BASE,
            "seeds": 4,
            "ensembles": [{"label": "de", "kind": "downstream", "runs": [2], "replicates": 5}],
        },
        "ensembles[0].replicates",
        "at most 4 distinct replicates",
    ),
    (
        "seed as an axis",
        {**BASE, "axes": [{"name": "seed", "values": [1, 2]}]},
        "axes[0]",
        "seeds are declared",
    ),
    (
        "variant not defined",
        {**BASE, "variants": {"paper": {}}},
        "variants.small",
        "defines variants ['paper'] only",
    ),
    (
        "ensemble label is a method",
        {
            **BASE,
            "base": {"method": "vmoe"},
            "seeds": 2,
            "ensembles": [{"label": "vmoe", "kind": "downstream", "runs": [2]}],
        },
        "ensembles[0].label",
        "must differ from the sweep's method names",
    ),
]


@pytest.mark.parametrize("what,doc,field,words", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_sweeps_are_rejected_with_file_field_and_rule(what, doc, field, words):
    with pytest.raises(S.SweepError) as info:
        S.expand_doc(doc, "sweeps/bad.yaml", "small")
    err = info.value
    msg = str(err)
    assert msg.startswith("sweeps/bad.yaml: "), msg
    assert err.field == field, msg
    assert words in msg, msg


def test_yaml_syntax_error_names_the_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("title: [unclosed\n")
    with pytest.raises(S.SweepError, match="broken.yaml: .*not valid YAML"):
        S.load_sweep(p)


# ----------------------------------------------------------------------------- shipped


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_sweeps_expand_in_their_variants(path):
    doc = yaml.safe_load(path.read_text())
    variants = list((doc.get("variants") or {"small": {}}).keys())
    assert "small" in variants
    for v in variants:
        sw = S.load_sweep(path, v)
        assert runs_of(sw) and sw.reproduces
        assert sw.axes[0] == "method"
        if v == "paper":  # full-scale settings of the paper
            cfg = runs_of(sw)[0]["config"]
            assert cfg["data"]["image_size"] == 384
            expected = {"model_sizes_cifar10": "cifar10", "model_sizes_cifar100": "cifar100"}
            assert cfg["data"]["dataset"] == expected.get(path.stem, "imagenet2012")
            # the fine-tuning recipe of App. A.3 (e3lib.ppspec.RECIPES["paper"])
            assert cfg["data"]["pp_train"] == cfg["data"]["pp_eval"] == "paper"
            assert {"finetune.steps", "finetune.lr"} <= set(sw.axes)
            assert len(sw.seeds) >= 3
        elif v == "public":  # a published checkpoint, the shared paper recipe, no pretraining
            recipe = yaml.safe_load(
                (REPO / "sweeps" / doc["variants"]["public"]["recipe"]).read_text()
            )
            for e in runs_of(sw):
                cfg = e["config"]
                assert cfg["upstream"]["checkpoint"].startswith("gs://")
                assert cfg["finetune"]["grad_clip"] == recipe["finetune"]["grad_clip"]
                assert cfg["finetune"]["batch_size"] == recipe["finetune"]["batch_size"]
        else:
            cfg = runs_of(sw)[0]["config"]
            assert cfg["data"]["dataset"] == "demo"


def test_public_variant_recipe_is_merged_under_the_overlay_base(tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "r.yaml").write_text(
        "finetune: {batch_size: 32, momentum: 0.5}\nmodel: {expert_dropout: 0.1}\n"
    )
    doc = {
        **BASE,
        "variants": {
            "public": {"recipe": "recipes/r.yaml", "base": {"finetune": {"batch_size": 16}}}
        },
    }
    file = str(tmp_path / "s.yaml")
    cfg = runs_of(S.expand_doc(doc, file, "public"))[0]["config"]
    # the overlay's own base wins over the recipe; the recipe over the sweep's base
    assert cfg["finetune"]["batch_size"] == 16 and cfg["finetune"]["momentum"] == 0.5
    assert cfg["model"]["expert_dropout"] == 0.1 and cfg["model"]["num_experts"] == 8
    doc["variants"]["public"]["recipe"] = "recipes/missing.yaml"
    with pytest.raises(S.SweepError, match=r"variants\.public\.recipe.*no such file"):
        S.expand_doc(doc, file, "public")


def test_published_checkpoint_names_paths_and_pinned_checksums(tmp_path):
    import hashlib

    from published_writers import write_vmoe_sharded

    table3 = REPO / "sweeps" / "table3_overlap.yaml"
    public = runs_of(S.load_sweep(table3, "public"))
    assert {e["config"]["upstream"]["checkpoint"] for e in public} == {
        "gs://vmoe_checkpoints/vmoe_b16_imagenet21k_randaug_strong"
    }
    assert {e["config"]["upstream"]["checkpoint_sha256"] for e in public} == {None}
    # a local copy named on the command line: its index checksum is pinned into the config
    prefix = str(tmp_path / "vmoe_b16")
    write_vmoe_sharded(
        prefix, {"cls": __import__("numpy").zeros((1, 1, 4), "float32")}, shard_count=1
    )
    sha = hashlib.sha256((tmp_path / "vmoe_b16.index").read_bytes()).hexdigest()
    local = runs_of(
        S.expand_sweeps([table3], "public", checkpoints={"vmoe_b16_in21k": prefix}).sweeps[
            "table3_overlap"
        ]
    )
    assert {e["config"]["upstream"]["checkpoint"] for e in local} == {prefix}
    assert {e["config"]["upstream"]["checkpoint_sha256"] for e in local} == {sha}
    # different checkpoints (contents) never share a run or an upstream id
    assert not {e["id"] for e in local} & {e["id"] for e in public}
    assert len({e["upstream_id"] for e in local} | {e["upstream_id"] for e in public}) == 2
    with pytest.raises(S.SweepError, match=r"upstream_checkpoints.*vmoe_b16_21k.*known: "):
        S.expand_sweeps([table3], "public", checkpoints={"vmoe_b16_21k": prefix})


def test_ids_without_a_checkpoint_do_not_see_the_checkpoint_fields():
    cfg = resolve({"method": "e3", "model": {"ensemble_size": 2}})
    assert "checkpoint_sha256" not in __import__("e3lib.config").config.upstream_config(cfg)
    assert run_id(cfg) == run_id(
        resolve({"method": "e3", "model": {"ensemble_size": 2}, "upstream": {"fresh": ["head"]}})
    )


def test_every_paper_result_has_a_sweep():
    reproduced = set()
    for p in SHIPPED:
        reproduced |= set(S.read_reproduces(p))
    assert {
        "figure2",
        "table2",
        "table3",
        "table18",
        "table4",
        "table5",
        "table12",
        "table13",
        "table15",
        "table17",
        "table19",
        "figure10",
        "table20",
        "table23",
        "table25",
        "table26",
        "table27",
        "table28",
        "table29",
        "table30",
        "table31",
        "table32",
        "table33",
        "table34",
        "table35",
        "table36",
        "demo",
    } <= reproduced


def test_demo_sweep_is_small():
    sw = S.load_sweep(REPO / "sweeps" / "demo.yaml")
    runs = runs_of(sw)
    assert 6 <= len(runs) <= 10
    assert {e["config"]["model"]["size"] for e in runs} == {"tiny"}
    assert {e["config"]["finetune"]["steps"] for e in runs} == {300}  # recipes/small.yaml
    assert {e["config"]["data"]["image_size"] for e in runs} == {16}
    assert len({e["seed"] for e in runs}) >= 2
    assert any(e["kind"] == "ensemble" for e in sw.entries)


# ----------------------------------------------------------------------------- files


def test_write_plan_writes_configs_and_index_once(tmp_path):
    root = tmp_path / "results"
    plan = S.expand_sweeps([REPO / "sweeps" / "demo.yaml"])
    n = S.write_plan(plan, str(root))
    # 9 runs (3 methods x 3 seeds) + 2 upstreams + 3 ensembles + index.json + index.tsv
    assert n == 9 + 2 + 3 + 2
    index = json.loads((root / "sweeps" / "demo" / "index.json").read_text())
    assert index["format"] == S.INDEX_FORMAT == 2
    assert index["sweep"] == "demo" and index["variant"] == "small"
    assert index["file"].endswith("sweeps/demo.yaml") and len(index["file_sha256"]) == 64
    assert index["reproduces"] == ["demo"] and index["seeds"] == [0, 1, 2]
    assert len(index["entries"]) == 12
    for e in index["entries"]:
        assert set(e["axes"]) == set(index["axes"])
        if e["kind"] == "run":
            cfg = json.loads((root / "configs" / f"{e['id']}.json").read_text())
            assert cfg == e["config"] and run_id(resolve(cfg)) == e["id"]
            up = json.loads(
                (root / "configs" / "upstream" / f"{e['upstream_id']}.json").read_text()
            )
            assert upstream_id(up) == e["upstream_id"]
        else:
            spec = json.loads((root / "configs" / "ensembles" / f"{e['id']}.json").read_text())
            assert spec == {"kind": "downstream", "members": sorted(e["members"])}
    tsv = (root / "sweeps" / "demo" / "index.tsv").read_text().splitlines()
    assert tsv[0].split("\t")[:4] == ["id", "kind", "seed", "replicate"] and len(tsv) == 13
    ens_row = next(r.split("\t") for r in tsv if "\tensemble\t" in r)
    assert ens_row[2:4] == ["", "0"]  # an ensemble has a replicate, not a seed
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*.json")}
    assert S.write_plan(plan, str(root)) == 0  # nothing changed: nothing written
    assert mtimes == {p: p.stat().st_mtime_ns for p in root.rglob("*.json")}


def test_cli_expand(tmp_path, capsys):
    root = tmp_path / "r"
    rc = S.cli_expand([str(REPO / "sweeps" / "demo.yaml"), "--results-root", str(root)])
    assert rc == 0
    assert (root / "sweeps" / "demo" / "index.tsv").exists()
    assert "9 runs, 3 ensembles" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**BASE, "base": {"method": "e4"}}))
    assert S.cli_expand([str(bad), "--results-root", str(root)]) == 2
    assert "bad.yaml: method in run (base, seed=0)='e4': allowed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- resources


def test_job_resources_follow_size_and_scale_with_attempt():
    tiny = resolve({"model": {"size": "tiny"}})
    big = resolve({"model": {"size": "L/16"}, "finetune": {"steps": 20000}})
    r1, r2 = S.job_resources(big, "finetune", 1), S.job_resources(big, "finetune", 2)
    assert r1["tpu_type"] == S.SIZE_RESOURCES["L/16"]["tpu"][0]
    # L/16: 60 min per 1000 steps x 20 -> 1200 min; M=1 -> no member factor
    assert r1["runtime"] == 1200 and r2["runtime"] == 2400
    assert r2["mem_mb"] == 2 * r1["mem_mb"]
    assert S.job_resources(tiny, "finetune")["runtime"] == 10  # floor of 10 minutes
    assert S.job_resources(big, "upstream")["tpu_type"] == S.SIZE_RESOURCES["L/16"]["tpu"][1]
    assert set(S.SIZE_RESOURCES) == set(MODEL_SIZES)  # every size has resources
    with pytest.raises(ValueError, match="allowed"):
        S.job_resources(tiny, "report")


def paper_plans():
    for path in SHIPPED:
        if "paper" in (yaml.safe_load(path.read_text()).get("variants") or {}):
            yield path, S.load_sweep(path, "paper")


def test_every_paper_job_requests_devices_that_hold_its_step():
    """Every fine-tuning job of every shipped sweep's paper variant: its TPU slice holds the
    step (the TPU compiler's figure from the compile table where it has the step, else the
    analytic estimate; + 10% headroom) and so does its GPU count (analytic), so the
    workflow's fit check (``check_fits``) passes them all; and each size's slice is the
    smallest of its family that does (the next smaller one fails some job of that size)."""
    from e3lib.parallel.fitcheck import GIB, HEADROOM, TPU_SIZES, analytic_bytes, tpu_need
    from e3lib.run_config import RunConfig

    checked, by_size = set(), {}
    for path, sweep in paper_plans():
        S.check_fits(sweep_plan(sweep), "paper")
        for rid, cfg in sweep.runs.items():
            key = (
                cfg["method"],
                repr(cfg["model"]),
                cfg["data"]["image_size"],
                cfg["finetune"]["batch_size"],
            )
            if key in checked:
                continue
            checked.add(key)
            res = S.job_resources(cfg, "finetune")
            typed = RunConfig.from_dict(cfg)  # a sweep's run config, resolved at expansion
            need = tpu_need(typed, res["tpu_type"])
            assert need["fits"], (path.stem, rid, need)
            assert analytic_bytes(typed, res["gpus"]) * HEADROOM <= 80 * GIB, (path.stem, rid)
            by_size.setdefault(cfg["model"]["size"], []).append(typed)
    assert len(checked) > 20
    for size, jobs in by_size.items():
        family, n = S.SIZE_RESOURCES[size]["tpu"][0].rsplit("-", 1)
        smaller = [m for m in TPU_SIZES[family] if m < int(n)]
        if smaller:
            slice_ = f"{family}-{smaller[-1]}"
            assert not all(tpu_need(t, slice_)["fits"] for t in jobs), (
                f"{size}: every paper job fits {slice_}"
            )


def sweep_plan(sweep):
    plan = S.Plan()
    plan.add(sweep)
    return plan


def test_tpu_types_count_jax_devices():
    from e3lib.parallel.fitcheck import tpu_devices

    # v3: one device per core; v4/v5p: per chip (2 cores); v5e: the name counts chips
    assert tpu_devices("v3-8") == ("v3", 8) and tpu_devices("v4-32") == ("v4", 16)
    assert tpu_devices("v5p-128") == ("v5p", 64) and tpu_devices("v5litepod-16") == ("v5e", 16)
    with pytest.raises(ValueError, match="TPU type 'v9-8'"):
        tpu_devices("v9-8")


def test_paper_job_too_big_for_its_request_is_refused_with_the_smallest_fit(monkeypatch):
    doc = {
        "title": "fit",
        "reproduces": ["demo"],
        "base": {
            "method": "e3",
            "model": {"size": "B/32", "num_experts": 32, "ensemble_size": 2},
            "data": {"image_size": 384},
            "finetune": {"batch_size": 512},
        },
        "axes": [{"name": "model.num_selected", "values": [1]}],
        "seeds": 1,
    }
    sweep = S.expand_doc(doc, "fit.yaml", "small")
    (rid,) = sweep.runs
    S.check_fits(sweep_plan(sweep), "small")  # only the paper variant is checked
    S.check_fits(sweep_plan(sweep), "paper")  # its v3-8 and 4 GPUs hold it
    # without the compile table, on 8 v3 cores B/32 E³ (M=2) needs ~16.7 GiB per core by
    # the analytic estimate (docs/scale.md), 1 GPU ~110 GiB
    from e3lib.parallel import fittable

    monkeypatch.setattr(fittable, "load_table", lambda path=None: {})
    monkeypatch.setitem(
        S.SIZE_RESOURCES, "B/32", dict(S.SIZE_RESOURCES["B/32"], tpu=("v3-8", "v3-64"), gpus=(1, 8))
    )
    with pytest.raises(S.SweepError) as info:
        S.check_fits(sweep_plan(sweep), "paper")
    msg = str(info.value)
    assert f"fit.yaml: run {rid}" in msg and "B/32 e3" in msg
    assert "tpu_type v3-8 (8 devices of 16 GiB): about 16.7 GiB" in msg
    assert "(analytic estimate; +10% headroom)" in msg
    assert "smallest v3 slice that fits: v3-32" in msg
    assert "gpus 1 (80 GiB each)" in msg and "fewest that fit: 2" in msg


# ----------------------------------------------------------------------------- catalog


def test_catalog_finds_table_sweeps_without_writing_or_touching_the_configured_plan(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # any file written relative to the working dir would show
    try:
        cat = S.Catalog([str(REPO / "sweeps" / "demo.yaml")], "small", str(REPO / "sweeps"))
        assert cat.sweeps_for_table("demo") == ["demo"]
        assert cat.sweeps_for_table("table13") == ["table13_permutation"]
        assert list(cat.configured.sweeps) == ["demo"]  # not merged into the plan
        entry = next(e for e in cat.sweep("table13_permutation").entries if e["kind"] == "run")
        assert cat.run(entry["id"]) == entry["config"]
        assert cat.upstream_of(entry["id"]) == entry["upstream_id"]
        assert upstream_id(cat.upstream_config(entry["upstream_id"])) == entry["upstream_id"]
        demo_ens = next(e for e in cat.sweep("demo").entries if e["kind"] == "ensemble")
        assert cat.ensemble(demo_ens["id"])["members"] == sorted(demo_ens["members"])
        with pytest.raises(S.SweepError, match="not configured"):
            cat.sweep("nope")
        with pytest.raises(S.SweepError, match="no configured sweep"):
            cat.run("0" * 12)
        assert list(tmp_path.iterdir()) == []
    finally:
        os.chdir(cwd)


def test_fingerprint_changes_with_entries_not_with_comments(tmp_path):
    p = tmp_path / "s.yaml"
    doc = {**BASE, "seeds": 2}
    p.write_text(yaml.safe_dump(doc))
    fp = S.load_sweep(p).fingerprint()
    p.write_text("# a comment\n" + yaml.safe_dump(doc))
    assert S.load_sweep(p).fingerprint() == fp
    p.write_text(yaml.safe_dump({**doc, "seeds": 3}))
    assert S.load_sweep(p).fingerprint() != fp

"""One id per resolved run: derived defaults are concrete before hashing.

The canonical form below is written out here, independently of ``e3lib.config``: a field
documented as "None = X" is replaced by X, and the upstream fields a dense (ViT) upstream
never reads are dropped. Two runs with the same canonical form compute the same thing, so
they must share one id, across every shipped sweep and variant.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from e3lib.config import resolve, run_id, upstream_config, upstream_id
from e3lib.models.sizes import MODEL_SIZES
from e3lib.sweep import load_sweep
from e3lib.sweep.load import VARIANTS

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
# The fine-tune method -> the upstream it starts from (docs/models.md, "Methods").
UPSTREAM_OF = {"vit": "vit", "batchensemble": "vit"}


def canonical(cfg: dict) -> dict:
    """What a run computes, with every "None = derived" field spelled out."""
    c = copy.deepcopy(cfg)
    m, up = c["model"], c["upstream"]
    if m["moe_n"] is None:
        m["moe_n"] = MODEL_SIZES[m["size"]]["moe_last_n"]
    if m["eval_capacity_factor"] is None:
        m["eval_capacity_factor"] = m["capacity_factor"]
    if up["method"] is None:
        up["method"] = UPSTREAM_OF.get(c["method"], "vmoe")
    if up["dataset"] is None:
        up["dataset"] = c["data"]["dataset"]
    if up["method"] == "vmoe":
        up["num_experts"] = up["num_experts"] or m["num_experts"]
        up["num_selected"] = up["num_selected"] or m["num_selected"]
    else:
        up["num_experts"] = up["num_selected"] = None
    return c


def _key(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def _all_sweeps():
    """(sweep file, variant, expanded sweep) of every shipped sweep and variant."""
    out = []
    for path in SWEEPS:
        for variant in VARIANTS:
            try:
                sweep = load_sweep(path, variant)
            except Exception as err:  # a sweep without this variant
                if "defines variants" in str(err):
                    continue
                raise
            out.append((path.name, variant, sweep))
    return out


@pytest.fixture(scope="module")
def all_sweeps():
    return _all_sweeps()


@pytest.fixture(scope="module")
def all_runs(all_sweeps):
    """(sweep file, variant, run id, resolved config) of every shipped sweep's runs."""
    return [(f, v, rid, cfg) for f, v, sw in all_sweeps for rid, cfg in sw.runs.items()]


def test_no_two_ids_for_one_canonical_run(all_runs):
    ids_of: dict[str, set] = {}
    where: dict[str, list] = {}
    for file, variant, rid, cfg in all_runs:
        k = _key(canonical(cfg))
        ids_of.setdefault(k, set()).add(rid)
        where.setdefault(k, []).append(f"{file}:{variant}:{rid}")
    dup = {k: sorted(set(where[k])) for k, ids in ids_of.items() if len(ids) > 1}
    assert not dup, f"{len(dup)} canonical runs with several ids, e.g. {next(iter(dup.values()))}"
    assert len(ids_of) > 500  # the test saw the sweeps (small and paper variants)


def test_one_id_one_config(all_runs):
    # The converse: an id never stands for two different resolved configs.
    seen: dict[str, str] = {}
    for file, variant, rid, cfg in all_runs:
        k = _key(cfg)
        assert seen.setdefault(rid, k) == k, f"{file}:{variant}: id {rid} has two configs"


def test_no_two_upstream_ids_for_one_upstream(all_runs):
    ids_of: dict[str, set] = {}
    for _, _, _, cfg in all_runs:
        c = canonical(cfg)
        ids_of.setdefault(_key(upstream_config(c)), set()).add(upstream_id(cfg))
    assert all(len(ids) == 1 for ids in ids_of.values())


def test_resolved_configs_hold_no_derived_none(all_runs):
    for file, variant, rid, cfg in all_runs:
        assert canonical(cfg) == cfg, f"{file}:{variant}: run {rid} keeps a derived None"


def _vmoe(**up):
    return resolve(
        {"method": "vmoe", "model": {"num_experts": 8, "num_selected": 2}, "upstream": up}
    )


def test_upstream_k_unset_or_equal_is_one_run():
    # V-MoE K=2, E=8: upstream.num_selected unset means the fine-tune's K=2.
    assert run_id(_vmoe()) == run_id(_vmoe(num_selected=2))
    assert upstream_id(_vmoe()) == upstream_id(_vmoe(num_selected=2))
    assert _vmoe().upstream.num_selected == 2
    # ... but an upstream with K=4 is another run.
    assert run_id(_vmoe()) != run_id(_vmoe(num_selected=4))


@pytest.mark.parametrize(
    "implicit,explicit",
    [
        ({"upstream": {"num_experts": None}}, {"upstream": {"num_experts": 8}}),
        ({"upstream": {"method": None}}, {"upstream": {"method": "vmoe"}}),
        ({"upstream": {"dataset": None}}, {"upstream": {"dataset": "demo"}}),
        ({"model": {"moe_n": None}}, {"model": {"moe_n": 2}}),  # tiny: last 2 blocks
        ({"model": {"eval_capacity_factor": None}}, {"model": {"eval_capacity_factor": 1.5}}),
    ],
)
def test_each_derived_default_resolves_to_its_value(implicit, explicit):
    base = {"method": "e3", "model": {"ensemble_size": 2}}
    a = resolve({**base, **implicit, "model": {**base["model"], **implicit.get("model", {})}})
    b = resolve({**base, **explicit, "model": {**base["model"], **explicit.get("model", {})}})
    assert a == b and run_id(a) == run_id(b)


def test_dense_upstream_ignores_moe_upstream_fields():
    vit = resolve({"method": "vit"})
    assert vit.upstream.method == "vit"
    assert vit.upstream.num_experts is None and vit.upstream.num_selected is None
    assert run_id(vit) == run_id(resolve({"method": "vit", "upstream": {"num_selected": 4}}))


def test_upstream_renderings_key_the_upstream_only_when_not_one():
    plain = resolve({"method": "vit"})
    one = resolve({"method": "vit", "upstream": {"renderings": 1}})
    assert "renderings" not in upstream_config(plain)  # ids of the plain set unchanged
    assert upstream_id(plain) == upstream_id(one) and run_id(plain) == run_id(one)
    eight = resolve({"method": "vit", "upstream": {"renderings": 8}})
    assert upstream_config(eight)["renderings"] == 8
    assert upstream_id(eight) != upstream_id(plain) and run_id(eight) != run_id(plain)


def test_resolve_is_idempotent():
    cfg = resolve({"method": "e3", "model": {"ensemble_size": 2, "size": "H/14"}})
    assert cfg.model.moe_n == 5
    assert resolve(cfg) == cfg and run_id(resolve(cfg)) == run_id(cfg)


# --------------------------------------------------------------------------------------
# Enough replicates by construction: every compared cell of every shipped sweep has the
# report's minimum of seeds (runs) or replicates (deep-ensemble rows).


def test_min_replicates_is_the_reports_min_seeds():
    import yaml

    from e3lib.sweep import MIN_REPLICATES

    tables = yaml.safe_load((ROOT / "e3lib" / "report" / "tables.yaml").read_text())
    assert MIN_REPLICATES == tables.get("min_seeds", 3) == 3


def test_every_shipped_cell_has_enough_seeds_or_replicates(all_sweeps):
    from e3lib.sweep import MIN_REPLICATES

    for file, variant, sw in all_sweeps:
        cells: dict[str, set] = {}
        for e in sw.entries:
            cell = _key(e["axes"])
            cells.setdefault(cell, set()).add(e["seed"])  # ensembles: seed = replicate
        thin = {c: len(s) for c, s in cells.items() if len(s) < MIN_REPLICATES}
        assert not thin, f"{file}:{variant}: cells with fewer than 3 seeds: {thin}"


def test_overlapping_replicates_are_labelled(all_sweeps):
    for file, variant, sw in all_sweeps:
        rows: dict[str, list] = {}
        for e in sw.entries:
            if e["kind"] == "ensemble":
                rows.setdefault(_key(e["axes"]), []).append(e)
        for reps in rows.values():
            assert len({e["id"] for e in reps}) == len(reps)  # distinct replicates
            for e in reps:
                shared = any(set(e["members"]) & set(o["members"]) for o in reps if o is not e)
                assert e["overlapping"] == shared, (file, variant, e["id"])

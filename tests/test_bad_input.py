"""Bad input is refused before any job, in seconds, naming the file, the field and the value.

One case per class of bad input: hangs (alias bomb, a 10^7-point product, seeds: 1e9),
raw exceptions (NaN/inf, wrong scalar types, non-UTF-8, a directory, unusable output paths),
rules checked only when a job starts (warmup >= steps, negative seed, non-numeric optimizer
fields) and silently wrong input (negative end_lr, moe_n: -1, replicates above the seeds, an
axis listed twice, duplicate YAML keys, an image size the patch does not divide).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from e3lib import sweep as S
from e3lib.config import DEFAULTS, resolve
from e3lib.config_rules import FIELDS
from e3lib.errors import ConfigError
from e3lib.safeyaml import YamlInputError
from e3lib.train.stage import read_config
from e3lib.tree import flatten

REPO = Path(__file__).resolve().parents[1]
BASE = {"title": "t", "reproduces": ["demo"], "base": {"model": {"num_experts": 8}}}
FAST = 2.0  # seconds


def refused(fn, *args, error=(S.SweepError, ConfigError, YamlInputError), **kw):
    """The error ``fn`` raises, asserting it came within FAST seconds."""
    t = time.perf_counter()
    with pytest.raises(error) as info:
        fn(*args, **kw)
    assert time.perf_counter() - t < FAST, f"took {time.perf_counter() - t:.1f}s"
    return info.value


def sweep_error(doc, **kw) -> S.SweepError:
    return refused(S.expand_doc, doc, "sweeps/bad.yaml", "small", error=S.SweepError, **kw)


def write(tmp_path, text: str | bytes, name: str = "bad.yaml") -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


# ----------------------------------------------------------------------------- hangs


def test_alias_bomb(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    err = refused(S.load_sweep, write(tmp_path, "\n".join(lines) + "\ntitle: t\n"))
    assert "bad.yaml" in str(err) and "alias bomb" in str(err)


def test_product_of_ten_million_points():
    axes = [
        {"name": f, "values": list(range(1, 11))}
        for f in (
            "finetune.steps",
            "finetune.batch_size",
            "model.num_experts",
            "upstream.steps",
            "upstream.batch_size",
            "model.group_images",
            "eval.batch_size",
        )
    ]
    err = sweep_error({**BASE, "axes": axes})
    assert err.field == "axes" and "10000000 points" in str(err)
    assert "max_runs = 20000" in str(err)


def test_conditional_axes_are_counted_and_the_limit_is_overridable():
    doc = {
        **BASE,
        "axes": [
            {"name": "finetune.steps", "values": list(range(20, 120))},
            {"name": "model.aux_weight", "values": [0.0, 0.01], "when": {"method": "vmoe"}},
        ],
        "seeds": 3,
    }
    # bound 100 x 2 x 3 = 600 jobs; counted: 100 points (method is e3) x 3 = 300
    assert len(S.expand_doc(doc, "t.yaml", max_runs=300).entries) == 300
    err = sweep_error(doc, max_runs=299)
    assert "max_runs = 299" in str(err) and "at least 300 jobs" in str(err)
    assert len(S.expand_doc({**doc, "max_runs": 300}, "t.yaml").entries) == 300


@pytest.mark.parametrize(
    "seeds,words",
    [
        (10**9, "more seeds than max_runs"),
        (1e9, "allowed: a seed count"),
        (2.0, "allowed: a seed count"),
        (True, "integer"),
        ([0, 1.0], "a seed must be an integer"),
        ([2**40], "a seed must be an integer"),
    ],
)
def test_seeds_count_type_and_range(seeds, words):
    err = sweep_error({**BASE, "seeds": seeds})
    assert err.field.startswith("seeds") and words in str(err), str(err)


# ----------------------------------------------------------------------------- raw exceptions


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_name_their_field(value):
    err = sweep_error({**BASE, "axes": [{"name": "finetune.lr", "values": [0.1, value]}]})
    assert err.field == "axes[0].values[1]" and "finite" in str(err)
    err = sweep_error(
        {**BASE, "variants": {"small": {}, "paper": {"base": {"model": {"noise_mult": value}}}}}
    )
    assert err.field == "variants.paper.base.model.noise_mult"


def test_nan_in_a_yaml_file(tmp_path):
    err = refused(
        S.load_sweep,
        write(tmp_path, "title: t\nreproduces: [demo]\nbase: {finetune: {lr: .nan}}\n"),
    )
    assert err.field == "base.finetune.lr" and "finite" in str(err)


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("model.num_experts", True, "a positive integer"),
        ("model.num_experts", 8.0, "a positive integer"),
        ("finetune.lr", "0.1", "a non-negative finite number"),
        ("finetune.steps", [10, 20], "a positive integer"),
        ("model.batch_priority", "yes", "true or false"),
        ("model.size", ["tiny"], "is not one of ['tiny'"),  # the sweep schema's enum
        ("eval.fewshot_shots", [1, "5"], "a list of positive integers"),
        ("upstream.checkpoint", 3, "null or a string"),
    ],
)
def test_wrong_scalar_types_name_the_dotted_field(field, value, words):
    section, key = field.split(".")
    err = sweep_error({**BASE, "base": {section: {key: value}}})
    assert field in err.field and words in str(err), str(err)
    assert repr(value) in str(err)
    with pytest.raises(ConfigError) as info:  # e3 run / e3 upstream: the same check
        resolve({section: {key: value}})
    assert info.value.field == field


def test_every_config_field_has_a_type():
    assert set(flatten(DEFAULTS)) == set(FIELDS)


def test_non_utf8_file(tmp_path):
    err = refused(S.load_sweep, write(tmp_path, b"title: \xff\xfe\nreproduces: [demo]\n"))
    assert "bad.yaml" in str(err) and err.field == "byte 7" and "UTF-8" in str(err)


def test_directory_instead_of_file(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    err = refused(S.load_sweep, tmp_path / "dir.yaml")
    assert "dir.yaml" in str(err) and "is a directory" in str(err)
    err = refused(read_config, str(tmp_path / "dir.yaml"), error=ValueError)
    assert "is a directory" in str(err)


@pytest.mark.parametrize(
    "key,value,words",
    [
        ("results", "/", "filesystem root"),
        ("results", "/configs", "filesystem root"),
        ("logs", "/proc/x", "system directory"),
        ("reports", "FILE", "not a directory"),
        ("results", "FILE/sub", "is not a directory"),
        ("results", "", "non-empty"),
    ],
)
def test_unusable_output_paths(tmp_path, key, value, words):
    (tmp_path / "FILE").write_text("x")
    value = value.replace("FILE", str(tmp_path / "FILE"))
    err = refused(S.check_output_dirs, {key: value}, error=ConfigError)
    assert err.field == key and words in str(err), str(err)
    S.check_output_dirs({"results": str(tmp_path / "new" / "results")})  # created later
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_path(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    err = refused(S.check_output_dirs, {"results": str(ro / "results")}, error=ConfigError)
    assert err.field == "results" and "not writable" in str(err)


# ----------------------------------------------------------------------------- late rules


@pytest.mark.parametrize(
    "over,field,words",
    [
        ({"finetune": {"warmup": 100, "steps": 100}}, "finetune.warmup", "< finetune.steps = 100"),
        ({"upstream": {"warmup": 300}}, "upstream.warmup", "< upstream.steps = 300"),
        ({"seed": -1}, "seed", "an integer in [0, "),
        ({"finetune": {"lr": "fast"}}, "finetune.lr", "a non-negative finite number"),
        ({"finetune": {"grad_clip": -1.0}}, "finetune.grad_clip", "non-negative"),
        ({"upstream": {"weight_decay": -0.1}}, "upstream.weight_decay", "non-negative"),
        ({"finetune": {"end_lr": -0.01}}, "finetune.end_lr", "non-negative"),
        ({"finetune": {"end_lr": 0.1, "lr": 0.01}}, "finetune.end_lr", "<= finetune.lr = 0.01"),
        ({"model": {"moe_n": -1}}, "model.moe_n", "positive integer"),
        ({"model": {"moe_n": 3}}, "model.moe_n", "allows n in [1, 2]"),
        ({"model": {"capacity_factor": 0}}, "model.capacity_factor", "positive"),
        ({"model": {"group_images": 0}}, "model.group_images", "positive integer"),
        ({"eval": {"batch_size": 0}}, "eval.batch_size", "positive integer"),
        ({"finetune": {"momentum": 1.5}}, "finetune.momentum", "in [0, 1)"),
        ({"upstream": {"renderings": 0}}, "upstream.renderings", "positive integer"),
        (
            {"upstream": {"renderings": 4, "dataset": "imagenet21k"}},
            "upstream.renderings",
            "must be 1 with the upstream set 'imagenet21k'",
        ),
    ],
)
def test_run_time_rules_are_checked_at_expansion_and_by_e3_run(tmp_path, over, field, words):
    with pytest.raises(ConfigError) as info:
        resolve(over)
    assert info.value.field == field and words in str(info.value), str(info.value)
    if "seed" in over:  # a sweep declares seeds with `seeds:`
        err = sweep_error({**BASE, "seeds": [-1]})
        assert err.field == "seeds[0]" and "minimum of 0" in str(err)
    else:
        err = sweep_error({**BASE, "base": {**BASE["base"], **over}})
        assert err.field.startswith(field) and words in str(err), str(err)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(over))
    err = refused(read_config, str(path), error=ConfigError)
    assert err.field == field and str(path) in str(err)


def test_image_size_not_divisible_by_patch():
    err = sweep_error({**BASE, "base": {"data": {"image_size": 18}}})
    assert err.field.startswith("data.image_size") and "divisible by the patch size 4" in str(err)
    sw = S.expand_doc(
        {**BASE, "base": {"data": {"image_size": 18, "crop_to_patch": True}}}, "t.yaml"
    )
    assert sw.entries


# ----------------------------------------------------------------------------- silently wrong


def test_replicates_above_what_the_seeds_allow():
    ens = {"label": "de", "kind": "downstream", "runs": [2], "replicates": 5}
    err = sweep_error({**BASE, "seeds": 2, "ensembles": [ens]})
    assert err.field == "ensembles[0].replicates" and "with 2 seeds" in str(err)
    assert "at most 1 distinct replicates" in str(err)
    # 3 seeds: 3 distinct pairs {0,1} {2,0} {1,2}
    sw = S.expand_doc({**BASE, "seeds": 3, "ensembles": [{**ens, "replicates": 3}]}, "t.yaml")
    members = [tuple(e["members"]) for e in sw.entries if e["kind"] == "ensemble"]
    assert len(set(members)) == 3


def test_axis_listed_twice():
    err = sweep_error(
        {
            **BASE,
            "axes": [
                {"name": "finetune.lr", "values": [0.1, 0.2]},
                {"name": "finetune.lr", "values": [0.3]},
            ],
        }
    )
    assert err.field == "axes[1]" and "already an axis (axes[0])" in str(err)
    err = sweep_error({**BASE, "axes": [{"name": "finetune.lr", "values": [0.1, 0.2, 0.1]}]})
    assert err.field == "axes[0].values[2]" and "listed twice" in str(err)
    err = sweep_error({**BASE, "axes": [{"cases": [{"method": "vmoe"}, {"method": "vmoe"}]}]})
    assert err.field == "axes[0].cases[1]"
    # disjoint conditions: one field in two groups is fine
    S.expand_doc(
        {
            **BASE,
            "axes": [
                {"cases": [{"method": "vmoe"}, {"method": "e3"}]},
                {"name": "finetune.lr", "values": [0.1], "when": {"method": "vmoe"}},
                {"name": "finetune.lr", "values": [0.2], "when": {"method": "e3"}},
            ],
        },
        "t.yaml",
    )


def test_duplicate_yaml_keys(tmp_path):
    err = refused(
        S.load_sweep, write(tmp_path, "title: t\nreproduces: [demo]\nseeds: 2\nseeds: 3\n")
    )
    assert "bad.yaml" in str(err) and "line 4" in err.field and "duplicate key" in str(err)
    p = write(tmp_path, '{"seed": 1, "seed": 2}', "run.json")
    assert "duplicate key" in str(refused(read_config, str(p), error=ValueError))


def test_shipped_sweeps_fit_the_default_limit():
    for path in sorted((REPO / "sweeps").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for v in doc.get("variants") or {"small": {}}:
            assert len(S.load_sweep(path, v).entries) <= S.DEFAULT_MAX_RUNS


@pytest.mark.slow
def test_snakemake_dry_run_stops_at_parse_with_the_message(tmp_path):
    """A bad sweep (and an unusable results path) stop `snakemake -n` before any job."""
    import subprocess
    import sys

    from test_workflow import fresh_checkout

    cwd = fresh_checkout(tmp_path / "wf")
    bad = cwd / "bad.yaml"
    bad.write_text("title: t\nreproduces: [demo]\nseeds: 1000000000\n")
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    env.pop("SNAKEMAKE_PROFILE", None)

    def run(*conf):
        return subprocess.run(
            [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", *conf],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = run("sweeps=[bad.yaml]", "results=res_bad")
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "invalid sweep: bad.yaml: seeds=1000000000: more seeds than max_runs" in out
    r = run("results=/")
    assert r.returncode != 0 and "invalid config: --config: results='/'" in r.stdout + r.stderr
    assert not (cwd / "res_bad").exists()

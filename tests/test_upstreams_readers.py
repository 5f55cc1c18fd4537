"""Published checkpoint readers: files written to the published layouts by the tests
(tests/published_writers.py), read back and loaded into models (e3lib.upstreams)."""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from model_helpers import random_params
from published_writers import e3_to_vmoe, write_vit_npz, write_vmoe_sharded

from e3lib.config import resolve
from e3lib.models import build_model
from e3lib.upstreams.adapt import adapt_published
from e3lib.upstreams.source import open_published
from e3lib.upstreams.vmoe_sharded import read_index

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def _cfg(method, **model):
    return resolve({"method": method, "model": model, "upstream": {"fresh": []}})


def _flat(params):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}


def _model_and_params(cfg, seed):
    model = build_model(cfg, 5)
    return model, random_params(model, IMAGES, seed=seed)


def _logits(model, params):
    return np.asarray(model.apply({"params": params}, IMAGES)[0])


@pytest.mark.parametrize("era", ["pre_linen", "linen"])
def test_vit_npz_names_shapes_and_logits(tmp_path, era):
    cfg = _cfg("vit")
    model, params = _model_and_params(cfg, seed=1)
    path = str(tmp_path / "ViT.npz")
    written = write_vit_npz(path, _flat(params), era)
    # the published layout: flat names of the era, float32
    mlp = "MlpBlock_3" if era == "pre_linen" else "MlpBlock_0"
    assert f"Transformer/encoderblock_0/{mlp}/Dense_0/kernel" in written
    assert "Transformer/posembed_input/pos_embedding" in written
    ckpt = open_published(path)
    assert ckpt.format == "npz" and ckpt.stored["cls"] == ((1, 1, 32), "float32")
    _, other = _model_and_params(cfg, seed=2)  # a different init, fully overwritten
    loaded = adapt_published(ckpt, other, cfg)
    np.testing.assert_array_equal(_logits(model, loaded), _logits(model, params))
    assert np.abs(_logits(model, params) - _logits(model, other)).max() > 1e-3


@pytest.mark.parametrize("version", ["20220622", None])
def test_vmoe_sharded_multi_shard_chunks_and_logits(tmp_path, version):
    cfg = _cfg("vmoe", num_experts=4, num_selected=2)
    model, params = _model_and_params(cfg, seed=3)
    flat = _flat(params)
    stored = {
        e3_to_vmoe(k): (v.reshape(v.shape[0], -1) if "Router" in k else v) for k, v in flat.items()
    }
    prefix = str(tmp_path / "vmoe_tiny")
    layout = write_vmoe_sharded(
        prefix, stored, shard_count=3, rows_per_chunk=2, version=version, piece_size=7
    )
    experts = "Encoder/encoderblock_3/Moe/Mlp/Dense_0/kernel"
    assert len({shard for _, shard in layout[experts]}) == 2  # 4 rows -> 2 chunks, 2 shards
    index = read_index(prefix)
    assert index.version == version and index.shard_count == 3
    assert index.entries[experts].shape == (4, 32, 64)
    assert index.entries["Encoder/encoderblock_3/Moe/Router/dense/kernel"].shape == (32, 4)
    ckpt = open_published(prefix)
    placed = []
    arrays = ckpt.read(place=lambda name, a: placed.append(name) or a)
    assert sorted(placed) == sorted(flat)  # each leaf placed once
    for k in flat:
        np.testing.assert_array_equal(arrays[k].reshape(flat[k].shape), flat[k])
    _, other = _model_and_params(cfg, seed=4)
    loaded = adapt_published(ckpt, other, cfg)
    np.testing.assert_array_equal(_logits(model, loaded), _logits(model, params))


def test_missing_shard_is_named(tmp_path):
    cfg = _cfg("vmoe", num_experts=4)
    _, params = _model_and_params(cfg, seed=3)
    stored = {e3_to_vmoe(k): v for k, v in _flat(params).items()}
    prefix = str(tmp_path / "ck")
    write_vmoe_sharded(prefix, stored, shard_count=2)
    (tmp_path / "ck.data-00001-of-00002").unlink()
    with pytest.raises(FileNotFoundError, match="ck.data-00001-of-00002"):
        open_published(prefix).read()


def test_inspect_reports_format_model_and_dry_run_mapping(tmp_path, capsys):
    from e3lib.upstreams.inspect import cli_checkpoint

    cfg = _cfg("vmoe", num_experts=4)
    _, params = _model_and_params(cfg, seed=3)
    stored = {
        e3_to_vmoe(k): (v.reshape(v.shape[0], -1) if "Router" in k else v)
        for k, v in _flat(params).items()
    }
    prefix = str(tmp_path / "ck")
    write_vmoe_sharded(prefix, stored, shard_count=2)
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"method": "e3", "model": {"ensemble_size": 2, "num_experts": 4}}))
    assert cli_checkpoint(["inspect", prefix, "--for", str(run), "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "format       vmoe_sharded" in out and "version 20220622, 2 data shards" in out
    assert "num_experts=4" in out and "moe_layers=[1, 3]" in out and "size=tiny" in out
    assert (
        "Encoder/encoderblock_3/Moe/Router/kernel (32, 2, 2)  <- router <- "
        "Encoder/encoderblock_3/Moe/Router/dense/kernel (32, 4)"
    ) in out
    assert "head/kernel (32, 5)  <- fresh" in out
    assert "(dropped) head/kernel (32, 5)" in out

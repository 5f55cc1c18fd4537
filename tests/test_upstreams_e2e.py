"""End to end: ``e3 run`` fine-tunes an E³ model from a V-MoE checkpoint written by the test
in the reference's sharded format (upstream.checkpoint set, no upstream stage)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util
from model_helpers import random_params
from published_writers import e3_to_vmoe, write_vmoe_sharded

from e3lib.config import resolve
from e3lib.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def _write_checkpoint(prefix, extra=False):
    cfg = resolve({"method": "vmoe", "model": {"num_experts": 4, "num_selected": 2}})
    params = random_params(build_model(cfg, 3), jnp_images(), seed=1)
    flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(dict(params), sep="/").items()}
    stored = {
        e3_to_vmoe(k): (v.reshape(v.shape[0], -1) if "Router" in k else v) for k, v in flat.items()
    }
    if extra:
        stored["Encoder/encoderblock_1/Moe/unknown/kernel"] = np.zeros((2, 2), np.float32)
    write_vmoe_sharded(prefix, stored, shard_count=2)


def jnp_images():
    return jax.random.normal(jax.random.key(0), (2, 16, 16, 3))


def _run(tmp_path, prefix):
    cfg = {
        "method": "e3",
        "model": {"num_experts": 4, "ensemble_size": 2},
        "upstream": {"checkpoint": prefix},
        "finetune": {"steps": 2, "batch_size": 8, "warmup": 1, "checkpoint_every": 2},
        "eval": {"corrupted": False, "ood": False, "fewshot": False, "batch_size": 64},
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(resolve(cfg).to_dict()))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "e3lib.cli",
            "run",
            "--config",
            str(path),
            "--out",
            str(out),
            "--log-mode",
            "plain",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    ), out


def test_e3_run_from_reference_format_checkpoint(tmp_path):
    prefix = str(tmp_path / "vmoe_tiny")
    _write_checkpoint(prefix)
    proc, out = _run(tmp_path, prefix)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "ok"
    assert results["config"]["upstream"]["checkpoint"] == prefix
    # an unusable checkpoint stops the run with exit 2, naming the leaf: it was really read
    bad = str(tmp_path / "bad")
    _write_checkpoint(bad, extra=True)
    proc, _ = _run(tmp_path, bad)
    assert proc.returncode == 2
    assert "Encoder/encoderblock_1/Moe/unknown/kernel (2, 2)" in proc.stderr

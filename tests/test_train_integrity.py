"""A damaged checkpoint is never restored: the run falls back to the previous good step,
says so in its results, and ends bitwise equal to an undisturbed run."""

import json

import numpy as np
from test_train import upstream_dir, write_cfg  # noqa: F401  (module fixture reused)

from e3lib import train


def _flip_one_bit(step_dir):
    f = max((p for p in step_dir.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))


def test_flipped_bit_in_latest_checkpoint_falls_back_and_matches(
    tmp_path,
    upstream_dir,  # noqa: F811
    monkeypatch,
):
    cfg = write_cfg(tmp_path / "cfg.json")

    def run(name):
        return train.cli_run(
            [
                "--config",
                str(cfg),
                "--upstream",
                str(upstream_dir),
                "--out",
                str(tmp_path / name),
                "--checkpoints",
                str(tmp_path / f"ck_{name}"),
                "--log-mode",
                "plain",
            ]
        )

    assert run("a") == 0
    monkeypatch.setenv("E3_FAULT_AT_STEP", "term:6")  # checkpoints at 4 and 6
    assert run("b") == train.EXIT_PREEMPTED
    monkeypatch.delenv("E3_FAULT_AT_STEP")
    _flip_one_bit(tmp_path / "ck_b" / "6")
    assert run("b") == 0

    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert b["train"]["resumed_from_step"] == 4
    [fb] = b["train"]["checkpoint_fallbacks"]
    assert fb["step"] == 6 and "checksum differs" in fb["reason"]
    assert a["train"]["checkpoint_fallbacks"] == []
    assert a["records"] == b["records"]
    pa, pb = (
        np.load(tmp_path / "a" / "predictions.npz"),
        np.load(tmp_path / "b" / "predictions.npz"),
    )
    for k in pa.files:
        assert np.array_equal(pa[k], pb[k]), k

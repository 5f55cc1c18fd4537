"""Orbax training checkpoints and atomic writes."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from e3lib.checkpoint import TrainCheckpoints, atomic_save_npz, atomic_write_json


def state(step, value):
    return {
        "params": {"w": jnp.full((2, 3), value, jnp.float32)},
        "opt_state": (jnp.asarray([value, 2 * value]),),
        "step": jnp.asarray(step, jnp.int32),
        "rng": jnp.asarray([1, 2], jnp.uint32),
    }


def test_checkpoints_every_n_keep_latest_and_restore_exactly(tmp_path):
    ck = TrainCheckpoints(tmp_path / "ck", every=4, max_to_keep=2)
    saved = [s for s in range(1, 13) if ck.save(s, state(s, s / 3))]
    assert saved == [4, 8, 12]
    assert ck.latest_step() == 12
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.isdigit()) == ["12", "8"]
    assert ck.save(13, state(13, 1.0), force=True)  # preemption: off the grid
    restored = ck.restore(state(0, 0.0))
    assert int(restored["step"]) == 13
    assert np.array_equal(restored["params"]["w"], np.full((2, 3), 1.0, np.float32))
    older = ck.restore(state(0, 0.0), step=12)
    assert np.array_equal(older["opt_state"][0], np.asarray([4.0, 8.0], np.float32))
    ck.close()
    # a new manager (a restarted process) sees the same latest step
    assert TrainCheckpoints(tmp_path / "ck", every=4).latest_step() == 13


def test_atomic_json_and_npz_leave_no_temporaries(tmp_path):
    atomic_write_json(tmp_path / "r" / "results.json", {"a": 1})
    atomic_save_npz(tmp_path / "r" / "p.npz", probs=np.ones((1, 2, 3)))
    assert json.loads((tmp_path / "r" / "results.json").read_text()) == {"a": 1}
    assert np.load(tmp_path / "r" / "p.npz")["probs"].shape == (1, 2, 3)
    assert sorted(os.listdir(tmp_path / "r")) == ["p.npz", "results.json"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    atomic_write_json(target, {"old": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})  # not JSON-serialisable
    assert json.loads(target.read_text()) == {"old": True}
    assert os.listdir(tmp_path) == ["results.json"]


def _largest_file(step_dir):
    files = [p for p in step_dir.rglob("*") if p.is_file()]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["flip_bit", "truncate", "no_manifest"])
def test_damaged_latest_step_falls_back_to_previous_good_one(tmp_path, damage):
    ck = TrainCheckpoints(tmp_path / "ck", every=1, max_to_keep=3)
    for s in (1, 2, 3):
        ck.save(s, state(s, float(s)))
    assert all(ck.verify(s) is None for s in (1, 2, 3))
    step3 = tmp_path / "ck" / "3"
    if damage == "flip_bit":
        f = _largest_file(step3)
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x01  # one flipped bit
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f = _largest_file(step3)
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    else:
        (tmp_path / "ck" / "integrity" / "3.json").unlink()
    ck.close()
    ck = TrainCheckpoints(tmp_path / "ck", every=1, max_to_keep=3)
    restored, step = ck.restore_verified(state(0, 0.0))
    assert step == 2
    assert np.array_equal(restored["params"]["w"], np.full((2, 3), 2.0, np.float32))
    assert [f["step"] for f in ck.fallbacks] == [3]
    reason = ck.fallbacks[0]["reason"]
    assert (
        ("no integrity manifest" in reason)
        if damage == "no_manifest"
        else ("checksum differs" in reason)
    )
    # the refused step is set aside, so training can save step 3 again
    assert not step3.exists() and len(list((tmp_path / "ck" / "damaged").iterdir())) == 1
    assert ck.save(3, state(3, 3.0))
    assert ck.verify(3) is None


def test_no_good_step_restores_nothing(tmp_path):
    ck = TrainCheckpoints(tmp_path / "ck", every=1)
    ck.save(1, state(1, 1.0))
    (tmp_path / "ck" / "integrity" / "1.json").write_text("{not json")
    restored, step = ck.restore_verified(state(0, 0.0))
    assert (restored, step) == (None, None)
    assert "unreadable integrity manifest" in ck.fallbacks[0]["reason"]

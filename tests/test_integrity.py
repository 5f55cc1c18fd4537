"""Checksums recorded in done.json (e3lib.integrity): a damaged file is noticed."""

import json

from e3lib import integrity


def _entry(tmp_path):
    d = tmp_path / "runs" / "abc"
    d.mkdir(parents=True)
    (d / "results.json").write_text('{"a": 1}\n')
    (d / "predictions.npz").write_bytes(b"\x00" * 64)
    files = integrity.record([d / "results.json", d / "predictions.npz"], d)
    (d / "done.json").write_text(json.dumps({"status": "ok", "files": files}))
    return d


def test_record_holds_size_and_sha256(tmp_path):
    d = _entry(tmp_path)
    files = json.loads((d / "done.json").read_text())["files"]
    assert files["results.json"]["size"] == 9
    # sha256 of b'{"a": 1}\n', computed independently
    import hashlib

    assert files["results.json"]["sha256"] == hashlib.sha256(b'{"a": 1}\n').hexdigest()
    assert integrity.check(d / "done.json") is None
    assert integrity.check(d / "done.json", deep=True) is None


def test_truncated_deleted_flipped_and_unreadable(tmp_path):
    d = _entry(tmp_path)
    (d / "results.json").write_text('{"a": 1')  # truncated
    assert "7 bytes, 9 recorded" in integrity.check(d / "done.json")
    (d / "results.json").write_text('{"a": 2}\n')  # same size, other bytes
    assert integrity.check(d / "done.json") is None  # the fast check passes
    assert "checksum differs" in integrity.check(d / "done.json", deep=True)
    (d / "predictions.npz").unlink()
    assert "predictions.npz: missing" in integrity.check(d / "done.json")
    (d / "done.json").write_text("{tru")
    assert "unreadable" in integrity.check(d / "done.json")
    assert "missing" in integrity.check(d / "nope.json")


def test_set_aside_renames_done(tmp_path):
    d = _entry(tmp_path)
    dest = integrity.set_aside(d / "done.json", "results.json: checksum differs")
    assert not (d / "done.json").exists() and dest.name.startswith("done.json.damaged-")
    assert dest.read_text().endswith("# set aside: results.json: checksum differs\n")


def test_compare_digests():
    assert integrity.compare_digests({"a": "1"}, {"a": "1"}) is None
    got = integrity.compare_digests({"a": "1", "b": "2"}, {"a": "9", "c": "3"})
    assert got == "b: missing; a: checksum differs; c: unexpected file"

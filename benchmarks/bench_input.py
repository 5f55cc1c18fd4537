"""Input-pipeline throughput and memory, every ratio measured in one run on this machine.

Prints:
  1. images/s of the training pipeline (grain, ``e3lib.data.stream``) on one host core:
     JPEG records (500×375, ImageNet's typical size) →
     ``decode_jpeg_and_inception_crop(384)|flip_lr|randaug(2,15)|value_range(-1,1)``
     then batching (mixup runs inside the train step, on the accelerator);
  2. the training step's consumption at 384 px (images/s of a compiled S/32 E³ step on
     this machine's JAX backend) and the input cores it needs: (2) / (1);
  3. peak RSS of a fresh process running the training stream, and of one running a
     streaming evaluation (``e3lib.metrics_stream``, 1000 classes) over two generated
     array_record sets (high-detail 384×384 JPEGs, ~170 KB each, so that a few thousand
     make gigabytes), the larger several times the process's RSS: flat memory means the
     split is never materialised. The sets are written under $TMPDIR and deleted.

Peak RSS is the child's own high-water mark (``VmHWM`` of /proc/self/status).
``getrusage``'s ``ru_maxrss`` is not: Linux keeps it across ``exec``, so a child started
by a parent that had compiled the 384 px step reported the parent's peak (~2.4 GiB).

    .venv/bin/python benchmarks/bench_input.py          # (1) and (3), ~5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_input.py --step   # adds (2): compiles S/32 at 384 px
                                                        # (minutes on a CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRAIN_PP = "decode_jpeg_and_inception_crop(384)|flip_lr|randaug(2,15)|value_range(-1,1)"
EVAL_PP = "decode|value_range(-1,1)"


def jpeg_pool(
    n: int, h: int, w: int, seed: int = 0, block: int = 16, quality: int = 90
) -> list[bytes]:
    """``n`` distinct JPEGs of random images, smooth over ``block`` pixels (16: compress
    like photos; 1: pixel noise, the largest JPEGs)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (h // block, w // block, 3)).astype(np.uint8)
        image = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def write_set(path: Path, pool: list[bytes], n: int) -> int:
    from e3lib.data.sources import write_array_record

    write_array_record(path, ((pool[i % len(pool)], i % 1000) for i in range(n)))
    return path.stat().st_size


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM; see the module docstring)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB → MiB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(args: argparse.Namespace) -> None:
    """Run in a fresh process; prints one JSON line with images/s and peak RSS."""
    from e3lib.data.sources import RecordSource
    from e3lib.data.stream import Stream, eval_dataset, train_dataset

    src = RecordSource([args.path])
    t0 = time.perf_counter()
    seen = 0
    if args.child == "train":
        stream = Stream(train_dataset(src, TRAIN_PP, args.batch, 0, 0, 1), threads=1, prefetch=1)
        next(stream)  # first batch: start-up
        t0 = time.perf_counter()
        for _ in range(args.batches):
            seen += len(next(stream)["label"])
    else:
        from e3lib.metrics_stream import PredictionAccumulator

        acc = PredictionAccumulator(1)
        rng = np.random.default_rng(0)
        for batch in Stream(eval_dataset(src, EVAL_PP, args.batch, 0, 1), threads=1, prefetch=1):
            logits = rng.normal(size=(1, len(batch["label"]), 1000))
            probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
            acc.update(probs, batch["label"], batch["valid"])
            seen += int(batch["valid"].sum())
        assert acc.result()["ensemble"]["nll"] > 0
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "images": seen,
                "seconds": seconds,
                "images_per_s": seen / seconds,
                "peak_rss_mib": peak_rss_mib(),
            }
        )
    )


def run_child(mode: str, path: Path, batch: int, batches: int = 0) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--path",
        str(path),
        "--batch",
        str(batch),
        "--batches",
        str(batches),
    ]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def step_images_per_s(batch: int) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_step import Step  # the step ``e3 run`` uses, compiled once

    step = Step(
        {
            "method": "e3",
            "model": {"size": "S/32", "ensemble_size": 2},
            "data": {"image_size": 384},
        },
        batch,
    )
    return batch / step.seconds_per_step(3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", choices=["train", "eval"])
    ap.add_argument("--path")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--step", action="store_true", help="also time the 384 px train step")
    ap.add_argument("--small", type=int, default=3500, help="records of the small eval set")
    ap.add_argument("--factor", type=int, default=5, help="large set = factor × small")
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print("== 1. training pipeline, one core (threads=1, no worker processes)")
        train_path = tmp / "train.array_record"
        write_set(train_path, jpeg_pool(16, 375, 500), 256)
        train = run_child("train", train_path, args.batch, args.batches)
        print(
            f"  {TRAIN_PP}\n  {train['images_per_s']:.1f} images/s per core "
            f"({train['images']} images in {train['seconds']:.1f} s), "
            f"peak RSS {train['peak_rss_mib']:.0f} MiB"
        )
        if args.step:
            print("== 2. train step consumption at 384 px (S/32 E³, M=2, batch 8)")
            consume = step_images_per_s(8)
            print(
                f"  {consume:.1f} images/s; input cores needed to keep up: "
                f"{consume / train['images_per_s']:.2f}"
            )
        print(
            "== 3. peak RSS of a streaming evaluation vs dataset size "
            f"({EVAL_PP}, 384×384 high-detail JPEGs)"
        )
        pool = jpeg_pool(32, 384, 384, seed=1, block=1, quality=95)
        rows = []
        for n in (args.small, args.small * args.factor):
            path = tmp / f"eval_{n}.array_record"
            size = write_set(path, pool, n) / 2**20
            res = run_child("eval", path, 50)
            rows.append((n, size, res["peak_rss_mib"], res["images_per_s"]))
            path.unlink()
        for n, size, rss, ips in rows:
            print(
                f"  {n:6d} records  {size:7.0f} MiB on disk  peak RSS {rss:5.0f} MiB  "
                f"({size / rss:.1f}× RSS)  {ips:.0f} images/s"
            )
        print(
            f"  RSS ratio large/small: {rows[1][2] / rows[0][2]:.3f} for "
            f"{rows[1][0] / rows[0][0]:.0f}× the data"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

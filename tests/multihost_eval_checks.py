"""Streaming evaluation of one tiny E³ run by this process (run by
tests/test_multihost_eval.py, once alone and once as each of two processes joined with
``--coordinator HOST:PORT --num-processes 2 --process-id I``): every set of the embedded
suite read through the streaming pipeline (``data.pp_eval`` set), predicted (a) with no
mesh, each process on its own device, and (b) on a mesh over all devices; process 0 writes
``records.json`` (atomic), the other processes write nothing."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = {
    "method": "e3",
    "model": {"ensemble_size": 2, "num_experts": 4, "group_images": 2, "moe_n": 1},
    "data": {"pp_train": "plain", "pp_eval": "plain"},
    "finetune": {"batch_size": 8},
    # 64 images per batch: the 214 test examples are 4 batches, the last one padded
    "eval": {"corrupted": False, "ood": True, "fewshot": True, "batch_size": 64},
}


def main(argv: list[str]) -> None:
    from e3lib.parallel import distributed

    (out,) = distributed.start(argv)
    import jax
    import numpy as np

    from e3lib.checkpoint import atomic_write_json
    from e3lib.config import resolve
    from e3lib.data.stream_suite import open_stream_suite
    from e3lib.evaluate.streaming import run_predictor, stream_records
    from e3lib.models import build_model
    from e3lib.parallel.mesh import build_mesh
    from e3lib.parallel.placement import Placement
    from tests.model_helpers import random_params

    cfg = resolve(CONFIG)
    suite = open_stream_suite(cfg)
    model = build_model(cfg, suite.num_classes)
    params = random_params(model, np.zeros((1, 16, 16, 3), np.float32), seed=0, train=False)
    local, sizes = stream_records([run_predictor(model, params)], suite, cfg, threads=1)
    placement = Placement(build_mesh({"data": -1, "expert": 2}, cfg))
    placed = placement.put_state({"params": params})["params"]
    meshed, _ = stream_records(
        [run_predictor(model, placed, placement=placement)], suite, cfg, threads=1
    )
    if distributed.is_writer():
        atomic_write_json(
            Path(out) / "records.json",
            {
                "local": local,
                "mesh": meshed,
                "sizes": sizes,
                "processes": jax.process_count(),
                "devices": jax.device_count(),
            },
        )


if __name__ == "__main__":
    main(sys.argv[1:])

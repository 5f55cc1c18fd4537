"""Loading a published checkpoint onto a 4×2 mesh, in one subprocess with 8 virtual CPU
devices (tests/test_upstreams_mesh.py). Prints one JSON document. Not collected by pytest."""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import json  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402
from model_helpers import random_params  # noqa: E402
from published_writers import e3_to_vmoe, write_vmoe_sharded  # noqa: E402

from e3lib.config import resolve  # noqa: E402
from e3lib.models import build_model  # noqa: E402
from e3lib.parallel.placement import Placement  # noqa: E402
from e3lib.train.loop import init_params, initial_state  # noqa: E402
from e3lib.train.optim import finetune_optimizer  # noqa: E402
from e3lib.upstreams import vmoe_sharded  # noqa: E402
from e3lib.upstreams.load import load_checkpoint_for_run  # noqa: E402

E, CLASSES, PX = 8, 3, 16
prefix = str(Path(sys.argv[1]) / "vmoe")
up = resolve({"method": "vmoe", "model": {"num_experts": E, "num_selected": 2}})
images = jax.random.normal(jax.random.key(0), (2, PX, PX, 3))
flat = {
    k: np.asarray(v)
    for k, v in traverse_util.flatten_dict(
        dict(random_params(build_model(up, CLASSES), images, seed=1)), sep="/"
    ).items()
}
stored = {e3_to_vmoe(k): v.reshape(v.shape[0], -1) if "Router" in k else v for k, v in flat.items()}
write_vmoe_sharded(prefix, stored, shard_count=3)

over = {
    "method": "e3",
    "model": {"num_experts": E, "ensemble_size": 2, "group_images": 1},
    "upstream": {"checkpoint": prefix},
    "finetune": {"batch_size": 8},
    "data": {"image_size": PX},
}
cfg = resolve(over)
cfg_mesh = resolve(dict(over, mesh={"data": 4, "expert": 2}))
model = build_model(cfg, CLASSES)
fresh = init_params(model, cfg.seed, PX)

# Events in order: shard files read and converted leaves put on the mesh.
events = []
read_bytes = vmoe_sharded._read_bytes
vmoe_sharded._read_bytes = lambda path: events.append(("read", path)) or read_bytes(path)
placement = Placement.for_config(cfg_mesh)


def put(path, x):
    events.append(("put", path))
    return placement.put_param(path, x)


meshed = load_checkpoint_for_run(prefix, fresh, cfg_mesh, put=put)
vmoe_sharded._read_bytes = read_bytes
single = load_checkpoint_for_run(prefix, fresh, cfg)
state = placement.put_state(initial_state(finetune_optimizer(cfg_mesh.finetune), meshed, 0))

leaves = {}
flat_single = traverse_util.flatten_dict(single, sep="/")
flat_state = traverse_util.flatten_dict(state["params"], sep="/")
for path, x in traverse_util.flatten_dict(meshed, sep="/").items():
    host = np.asarray(single_leaf := flat_single[path])
    leaves[path] = {
        "shape": list(x.shape),
        "devices": len(x.sharding.device_set),
        "shards": sorted(
            [s.device.id, [i.start or 0 for i in s.index][:1], list(s.data.shape)]
            for s in x.addressable_shards
        ),
        "equal": bool(
            np.asarray(x).dtype == host.dtype and np.asarray(x).tobytes() == host.tobytes()
        ),
        "single_devices": len(single_leaf.devices()),
        "state_same_sharding": flat_state[path].sharding == x.sharding,
    }
print(json.dumps({"leaves": leaves, "events": events}))

"""Where a job's arrays live and how its step is compiled, on one device or a mesh.

Training (``e3lib.train.loop``) and evaluation (``e3lib.evaluate.inference``) call only
this (see docs/scale.md, "Hooks"): ``put_state``,
``jit_step``, ``put_batch``, ``predict_fn``, ``fetch`` and ``agree``. With ``mesh`` None
every method does exactly what the single-device code did before (state committed to
``jax.devices()[0]``, batches passed as NumPy arrays, plain ``jax.jit``).

Notation: B global batch, P processes, S packed seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from e3lib.parallel import sharding as shd

if TYPE_CHECKING:
    from e3lib.run_config import RunConfig


class Placement:
    def __init__(self, mesh=None, fsdp: bool = False):
        self.mesh = mesh
        self.fsdp = fsdp  # dense state split over the data axis too (sharding.py, FSDP)

    @classmethod
    def for_config(cls, cfg: RunConfig) -> Placement:
        """The run's placement; divisibility is checked here, before anything compiles."""
        from e3lib.parallel.mesh import build_mesh, fsdp_of

        return cls(build_mesh(cfg.mesh, cfg), fsdp_of(cfg.mesh))

    # -- state ---------------------------------------------------------------------------
    def state_shardings(self, state: Any, packed: bool = False) -> Any:
        """Shardings of a state-like tree (params, optimizer state, a whole train state,
        or their ``jax.eval_shape`` structs)."""
        return shd.tree_shardings(state, self.mesh, leading=int(packed), fsdp=self.fsdp)

    def put_state(self, state: Any, packed: bool = False) -> Any:
        """Commit every leaf: one device, or the mesh by the sharding rules (each process
        builds only its own shards from the host copy)."""
        import jax

        if self.mesh is None:
            return jax.device_put(state, jax.devices()[0])
        shardings = self.state_shardings(state, packed)

        def put(x, sharding):
            if isinstance(x, jax.Array) and x.sharding == sharding:
                return x  # already placed (e.g. restored into these shardings)
            host = np.asarray(x)
            return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

        return jax.tree_util.tree_map(put, state, shardings)

    def put_param(self, path: str, x: Any) -> Any:
        """Commit one parameter leaf (``/``-joined path) with its sharding by the rules; the
        host copy is not kept. Without a mesh: ``x`` unchanged (``put_state`` commits it)."""
        if self.mesh is None:
            return x
        import jax

        sharding = shd.param_sharding(self.mesh, path, np.shape(x), fsdp=self.fsdp)
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x  # already placed (a leaf kept from a sharded initialisation)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    # -- train step ----------------------------------------------------------------------
    def jit_step(self, step_fn: Callable, packed: bool = False) -> Callable:
        """jit of ``step_fn(state, images, labels) -> (state, metrics)`` with the state
        donated; on a mesh with in/out shardings from the rules (built at the first call,
        from the state's tree) and the MoE buffer constraint active while tracing."""
        import jax

        if self.mesh is None:
            return jax.jit(step_fn, donate_argnums=(0,))
        cache: dict = {}

        def call(state, images, labels):
            if "jit" not in cache:
                cache["jit"] = self.jitted_step(step_fn, state, packed)
            return cache["jit"](state, images, labels)

        return call

    def jitted_step(self, step_fn: Callable, state_like: Any, packed: bool = False):
        """The ``jax.jit`` object of the step (``.lower(...)`` works on it: e3 plan)."""
        import jax

        mesh = self.mesh

        def traced(state, images, labels):
            with shd.active(mesh):
                return step_fn(state, images, labels)

        states = self.state_shardings(state_like, packed)
        batch = shd.batch_sharding(mesh, leading=int(packed))
        return jax.jit(
            traced,
            in_shardings=(states, batch, batch),
            out_shardings=(states, shd.replicated(mesh)),
            donate_argnums=(0,),
        )

    # -- batches -------------------------------------------------------------------------
    def local_rows(self, batch: int, packed: bool = False) -> slice:
        """The rows of a global batch of ``batch`` images that this process's devices hold."""
        if self.mesh is None:
            return slice(None)
        shape = (1, batch) if packed else (batch,)
        index = shd.batch_sharding(self.mesh, int(packed)).addressable_devices_indices_map(shape)
        spans = sorted(
            {(s[int(packed)].start or 0, s[int(packed)].stop or batch) for s in index.values()}
        )
        lo, hi = spans[0][0], spans[-1][1]
        if sum(b - a for a, b in spans) != hi - lo:
            raise ValueError(f"this process's batch rows are not contiguous: {spans}")
        return slice(lo, hi)

    def put_batch(
        self, batch_fn: Callable[[slice], tuple], batch: int, packed: bool = False
    ) -> tuple:
        """``batch_fn(rows)`` loads only this process's rows; they become global arrays."""
        if self.mesh is None:
            return batch_fn(slice(None))
        import jax

        sharding = shd.batch_sharding(self.mesh, int(packed))
        out = []
        for local in batch_fn(self.local_rows(batch, packed)):
            shape = list(local.shape)
            shape[int(packed)] = batch
            out.append(jax.make_array_from_process_local_data(sharding, local, tuple(shape)))
        return tuple(out)

    # -- evaluation ----------------------------------------------------------------------
    def predict_fn(self, fn: Callable, local: bool = False) -> Callable:
        """jit of ``fn(params, images) -> outputs`` returning host NumPy arrays. On a mesh
        the batch is split over the devices when it divides evenly (else replicated).

        ``local``: ``images`` are this process's rows of the global batch (b = B/P, which
        D/P must divide) and the outputs (M, b, …) are its rows too — nothing is gathered
        (multi-host streaming evaluation, ``e3lib.evaluate.streaming``)."""
        import jax

        if self.mesh is None:
            return jax.jit(fn)
        mesh = self.mesh

        def traced(params, images):
            with shd.active(mesh):
                return fn(params, images)

        if local:
            rows = shd.batch_sharding(mesh)
            per_member = jax.jit(traced, out_shardings=shd.batch_sharding(mesh, leading=1))

            def call_local(params, images):
                images = np.asarray(images)
                shape = (len(images) * jax.process_count(), *images.shape[1:])
                x = jax.make_array_from_process_local_data(rows, images, shape)
                return jax.tree_util.tree_map(_local_rows_of, per_member(params, x))

            return call_local

        jitted = jax.jit(traced, out_shardings=shd.replicated(mesh))

        def call(params, images):
            images = np.asarray(images)
            sharding = (
                shd.batch_sharding(mesh) if len(images) % mesh.size == 0 else shd.replicated(mesh)
            )
            x = jax.make_array_from_callback(images.shape, sharding, lambda idx: images[idx])
            return jax.tree_util.tree_map(self.fetch, jitted(params, x))

        return call

    # -- host values ---------------------------------------------------------------------
    @staticmethod
    def fetch(x) -> np.ndarray:
        """Host copy of a replicated (or single-device) array, on any process."""
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(x)
        return np.asarray(x.addressable_data(0))

    @staticmethod
    def agree(flag: bool) -> bool:
        """True on every process if ``flag`` is true on any (e.g. a SIGTERM on one host)."""
        from e3lib.parallel.distributed import any_process

        return any_process(flag)

    def describe(self) -> dict:
        from e3lib.parallel.mesh import describe

        return describe(self.mesh)


def _local_rows_of(x) -> np.ndarray:
    """This process's rows (axis 1) of an (M, B, …) array split over the batch axis."""
    shards = {}
    for s in x.addressable_shards:
        shards.setdefault(s.index[1].start or 0, s)  # replicas of one block: keep one
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)], axis=1)

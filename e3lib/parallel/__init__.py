"""One job on many devices: a (data × expert) device mesh, sharding rules, multi-host
start-up and a fit check before launch (docs/scale.md).

- ``mesh``: the mesh of a run (``mesh:`` run-config field) and the divisibility checks;
- ``sharding``: parameter / optimizer-state / batch / MoE-buffer shardings, declared once;
- ``placement``: what training and evaluation call (state placement, jitted step with
  in/out shardings, per-host batches, agreed stop flags);
- ``distributed``: ``jax.distributed`` start-up, the single writer, agreed exit codes;
- ``fitcheck``: ``e3 plan``, AOT compile on virtual devices and per-device memory.

Importing this package does not import JAX.
"""

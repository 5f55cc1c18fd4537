"""Compute and parameter accounting of a run config, before it is launched (docs/flops.md).

``analytic``: the paper's GFLOPs per image of a training step and the parameter count, from
each method's registry entry; ``xla``: XLA's compiled cost of the real training step;
``cli``: the ``e3 flops`` command (``cli_flops``).
"""

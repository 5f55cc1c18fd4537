"""Upstream pretraining and downstream fine-tuning (the ``e3 upstream`` and ``e3 run``
commands), one module per concern:

    cache      persistent XLA compilation cache
    signals    Diverged, Preempted, the SIGTERM flag, fault injection for tests
    stage      exit codes, run_stage, read_config (the one place a run config is validated)
    optim      learning-rate schedules and the optimizers of both stages (Optax)
    loop       Job, train step, deterministic batches, the loop with checkpoints
    upstream   the pretraining stage and ``e3 upstream``
    finetune   the fine-tuning + evaluation stage and ``e3 run``

The names below are the package's public interface.
"""

from e3lib.train.cache import setup_jax_cache
from e3lib.train.finetune import (
    adapt_upstream,
    check_packable,
    cli_run,
    finetune_and_evaluate,
    finetune_job,
    load_upstream_params,
)
from e3lib.train.loop import (
    Job,
    batch_at,
    init_params,
    initial_state,
    make_train_step,
    stack_states,
    train,
    unstack_state,
)
from e3lib.train.optim import finetune_optimizer, lr_schedule, upstream_optimizer
from e3lib.train.signals import Diverged, Preempted, StopFlag
from e3lib.train.stage import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_OK,
    EXIT_PREEMPTED,
    read_config,
    run_stage,
)
from e3lib.train.upstream import cli_upstream, pretrain_upstream, upstream_model_config

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DIVERGED",
    "EXIT_OK",
    "EXIT_PREEMPTED",
    "Diverged",
    "Job",
    "Preempted",
    "StopFlag",
    "adapt_upstream",
    "batch_at",
    "check_packable",
    "cli_run",
    "cli_upstream",
    "finetune_and_evaluate",
    "finetune_job",
    "finetune_optimizer",
    "init_params",
    "initial_state",
    "load_upstream_params",
    "lr_schedule",
    "make_train_step",
    "pretrain_upstream",
    "read_config",
    "run_stage",
    "setup_jax_cache",
    "stack_states",
    "train",
    "unstack_state",
    "upstream_model_config",
    "upstream_optimizer",
]

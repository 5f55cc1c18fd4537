"""What the training commands share at their boundary: reading (and validating, once) a
run config, and mapping a stage's failures to exit codes.

Exit codes: 0 ok, 2 bad input (config, missing dataset), 3 diverged (a deterministic
outcome of the config), 4 preempted (SIGTERM; a retry resumes from the checkpoint).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from e3lib.config import resolve
from e3lib.data.loaders import DatasetNotFoundError
from e3lib.errors import ConfigError
from e3lib.safeyaml import YamlInputError, load_config_file
from e3lib.train.signals import Diverged, Preempted, StopFlag

EXIT_OK, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PREEMPTED = 0, 2, 3, 4


def read_config(path: str) -> dict:
    """The resolved run config of a JSON (or YAML) file, read strictly (e3lib.safeyaml):
    defaults filled in and validated once, with the rules of sweep expansion (``job=True``)."""
    try:
        raw = load_config_file(path)
    except YamlInputError as err:
        raise ValueError(f"run config {err}") from None
    return resolve(raw, source=path, job=True)


def run_stage(
    prog: str, job: Callable[[StopFlag], Any], on_diverged: Callable[[Diverged], None] | None = None
) -> tuple[int, Any]:
    """Run a training job with SIGTERM handling; map its failures to the stage exit codes.

    Returns (EXIT_OK, the job's result), or (EXIT_DIVERGED | EXIT_PREEMPTED |
    EXIT_BAD_INPUT, None) after printing the reason to stderr.
    """
    stop = StopFlag().install()
    try:
        return EXIT_OK, job(stop)
    except Diverged as err:
        if on_diverged is not None:
            on_diverged(err)
        code, reason = EXIT_DIVERGED, err
    except Preempted as err:
        code, reason = EXIT_PREEMPTED, err
    except (ConfigError, DatasetNotFoundError) as err:
        code, reason = EXIT_BAD_INPUT, err
    finally:
        stop.uninstall()
    print(f"{prog}: {reason}", file=sys.stderr)
    return code, None

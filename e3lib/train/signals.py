"""How a training loop stops early: SIGTERM (preemption), a non-finite loss (divergence)
and injected faults for tests."""

from __future__ import annotations

import os
import signal


class Diverged(RuntimeError):
    """A non-finite loss at ``step`` (of packed seed ``seed_index`` when seeds are packed)."""

    def __init__(self, step: int, loss: float, seed_index: int | None = None):
        self.step, self.loss, self.seed_index = step, loss, seed_index
        which = "" if seed_index is None else f" (packed seed #{seed_index})"
        super().__init__(f"training diverged at step {step}{which}: loss = {loss}")


class Preempted(RuntimeError):
    """SIGTERM arrived; a checkpoint at ``step`` was saved before raising."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"preempted (SIGTERM) at step {step}; checkpoint saved")


class StopFlag:
    """Set by SIGTERM; the loop checks it between steps."""

    def __init__(self):
        self.stop = False
        self.previous = None

    def install(self) -> StopFlag:
        self.previous = signal.signal(
            signal.SIGTERM, lambda signum, frame: setattr(self, "stop", True)
        )
        return self

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def fault_injection() -> tuple[str, int] | None:
    """``E3_FAULT_AT_STEP=kill:N`` (SIGKILL) or ``term:N`` (SIGTERM): the process sends
    itself that signal right after step N completes. For fault-injection tests."""
    spec = os.environ.get("E3_FAULT_AT_STEP")
    if not spec:
        return None
    kind, _, step = spec.partition(":")
    if kind not in ("kill", "term") or not step.isdigit():
        raise ValueError(f"E3_FAULT_AT_STEP={spec!r}: expected 'kill:N' or 'term:N'")
    return kind, int(step)


def inject_fault(fault: tuple[str, int] | None, step: int) -> None:
    """Send the injected signal if ``step`` is the one ``fault`` names."""
    if fault is not None and step == fault[1]:
        os.kill(os.getpid(), signal.SIGKILL if fault[0] == "kill" else signal.SIGTERM)

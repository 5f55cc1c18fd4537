"""Progress of long loops: a tqdm bar (interactive) or plain log lines (cluster jobs).

Both show the step, the latest loss, steps per second and the estimated time left.
``mode``: "bar" or "plain"; "auto" picks "bar" on a terminal and "plain" otherwise.
"""

from __future__ import annotations

import sys
import time

MODES = ("auto", "bar", "plain")


class Progress:
    def __init__(
        self,
        total: int,
        desc: str,
        mode: str = "auto",
        start: int = 0,
        every: int | None = None,
        stream=None,
    ):
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; allowed: {list(MODES)}")
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode, self.total, self.desc = mode, total, desc
        self.step = self.first = start
        self.every = every or max(1, total // 10)
        self.t0 = time.perf_counter()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=start,
                desc=desc,
                file=self.stream,
                unit="step",
                dynamic_ncols=True,
            )

    def rate(self) -> float:
        """Steps per second since this process started the loop."""
        dt = time.perf_counter() - self.t0
        return (self.step - self.first) / dt if dt > 0 else 0.0

    def update(self, step: int, loss: float) -> None:
        done, self.step = step - self.step, step
        if self.bar is not None:
            self.bar.update(done)
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        if step % self.every == 0 or step == self.total:
            rate = self.rate()
            eta = (self.total - step) / rate if rate > 0 else float("nan")
            print(
                f"{self.desc}: step {step}/{self.total} loss {loss:.4f} "
                f"{rate:.2f} steps/s eta {eta:.0f}s",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

"""Open the report in headless Chromium and check it: console errors, broken links, screenshot.

Talks the Chrome DevTools protocol over ``--remote-debugging-pipe`` (Chromium reads
NUL-terminated JSON commands on fd 3 and writes replies and events on fd 4), so no
network port is opened. Starting from one page it visits every linked local HTML page
and records:

  console   console.error/assert calls, uncaught exceptions, and browser log entries of
            level error (this includes "Failed to load resource" for a missing image)
  links     every <a href>, <img src>, <link href>, <script src> whose target is a local
            file that does not exist, or that points off the machine (http/https: the
            report must open offline)

    python -m e3lib.report.browser reports/index.html --screenshot shot.png
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-file-access-from-files",
]

_COLLECT_LINKS = """JSON.stringify(Array.from(document.querySelectorAll(
  'a[href], img[src], link[href], script[src]')).map(e => e.href || e.src))"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class CheckResult:
    pages: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.console_errors and not self.broken_links


class _Pipe:
    """A CDP connection over two pipes, with flattened target sessions."""

    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 30.0,
    ) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for reply in self._read(deadline):
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"CDP {method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return self.events.pop(i)
            self.events.extend(self._read(deadline))

    def _read(self, deadline: float) -> list[dict]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply from Chromium")
        ready, _, _ = select.select([self.read_fd], [], [], left)
        if not ready:
            raise TimeoutError("no reply from Chromium")
        chunk = os.read(self.read_fd, 1 << 20)
        if not chunk:
            raise RuntimeError("Chromium closed the DevTools pipe")
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]


def _high_fd(fd: int) -> int:
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


def _event_errors(events: list[dict], session: str) -> list[str]:
    out = []
    for ev in events:
        if ev.get("sessionId") != session:
            continue
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            out.append(f"console.{p['type']}: {text}")
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            out.append(f"exception: {d.get('exception', {}).get('description') or d.get('text')}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            out.append(f"log: {e.get('text')} {e.get('url', '')}".strip())
    return out


def check_site(
    start: str | Path,
    screenshot: str | Path | None = None,
    chromium: str | None = None,
    timeout: float = 60.0,
    max_pages: int = 200,
) -> CheckResult:
    """Visit ``start`` and every local HTML page it links to; see the module docstring."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium not found on PATH (Debian package: chromium)")
    start = Path(start).resolve()
    result = CheckResult()
    cmd_r, cmd_w = (_high_fd(fd) for fd in os.pipe())  # we write commands → fd 3
    evt_r, evt_w = (_high_fd(fd) for fd in os.pipe())  # fd 4 → we read replies

    def child_fds() -> None:
        os.dup2(cmd_r, 3)  # dup2 leaves the new descriptors inheritable
        os.dup2(evt_w, 4)

    with tempfile.TemporaryDirectory(prefix="e3-chromium-") as profile:
        proc = subprocess.Popen(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            preexec_fn=child_fds,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(evt_w)
        cdp = _Pipe(evt_r, cmd_w)
        try:
            target = cdp.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = cdp.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                cdp.send(f"{domain}.enable", session=session)
            cdp.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1280, "height": 1400, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            queue, seen = [start], {start}
            while queue and len(result.pages) < max_pages:
                page = queue.pop(0)
                cdp.events.clear()
                cdp.send("Page.navigate", {"url": page.as_uri()}, session=session)
                cdp.wait_event("Page.loadEventFired", session, timeout)
                cdp.send("Runtime.evaluate", {"expression": "1"}, session=session)  # flush
                result.pages.append(str(page))
                result.console_errors += [
                    f"{page.name}: {e}" for e in _event_errors(cdp.events, session)
                ]
                links = json.loads(
                    cdp.send(
                        "Runtime.evaluate",
                        {"expression": _COLLECT_LINKS, "returnByValue": True},
                        session=session,
                    )["result"]["value"]
                )
                for url in links:
                    parsed = urlparse(url)
                    if parsed.scheme in ("data", "mailto", "javascript", "about"):
                        continue
                    if parsed.scheme != "file":
                        result.broken_links.append(
                            f"{page.name}: off-line report links off the machine: {url}"
                        )
                        continue
                    target_path = Path(unquote(parsed.path))
                    if not target_path.exists():
                        result.broken_links.append(f"{page.name}: {url} does not exist")
                    elif target_path.suffix == ".html" and target_path not in seen:
                        seen.add(target_path)
                        queue.append(target_path)
                if page == start and screenshot:
                    shot = cdp.send(
                        "Page.captureScreenshot",
                        {"format": "png"},
                        session=session,
                        timeout=timeout,
                    )
                    import base64

                    Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
                    result.screenshot = Path(screenshot)
        finally:
            try:
                cdp.send("Browser.close", timeout=5)
            except Exception:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(evt_r)
            os.close(cmd_w)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("start", help="an HTML file, e.g. reports/index.html")
    parser.add_argument("--screenshot", help="PNG of the start page")
    args = parser.parse_args(argv)
    res = check_site(args.start, args.screenshot)
    for line in res.console_errors + res.broken_links:
        print(line)
    print(
        f"{len(res.pages)} pages, {len(res.console_errors)} console errors, "
        f"{len(res.broken_links)} broken links"
    )
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())

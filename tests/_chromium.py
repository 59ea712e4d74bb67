"""A minimal headless-Chromium driver for the tests: the DevTools protocol over ``--remote-debugging-pipe``.

No extra Python packages: Chromium reads JSON commands (each ending in a NUL byte) from file descriptor 3 and
writes responses and events to file descriptor 4. ``HeadlessChromium`` starts the browser with a fresh profile,
attaches to its page, records uncaught exceptions, console errors and browser log errors from the start of
every navigation, evaluates JavaScript, polls for conditions and takes screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

#: Names under which distributions install Chromium (Debian: ``chromium``).
EXECUTABLES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

#: Flags for a quiet, offline, root-safe headless browser (``--no-sandbox`` because CI runs as root).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--mute-audio",
    "--hide-scrollbars",
)


class ChromiumError(RuntimeError):
    """The browser died, answered a command with an error, or did not answer in time."""


def find_chromium() -> str | None:
    """Path of a Chromium executable: ``$CHROMIUM`` if set, else the first of ``EXECUTABLES`` on PATH."""
    override = os.environ.get("CHROMIUM")
    if override:
        return shutil.which(override) or None
    for name in EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageProblem:
    """One error the page reported: an uncaught exception, a ``console.error`` call or a browser log error."""

    kind: str
    text: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.text}"


@dataclass
class HeadlessChromium:
    """A running headless Chromium with one attached page; use as a context manager.

    ``problems`` collects every uncaught exception (``Runtime.exceptionThrown``), ``console.error`` /
    ``console.assert`` call and browser log entry of level error (failed loads, CSP violations) since start.
    ``console_messages`` keeps every console call as ``(type, text)`` for diagnostics.
    """

    executable: str
    width: int = 1400
    height: int = 900
    timeout: float = 30.0
    problems: list[PageProblem] = field(default_factory=list)
    console_messages: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._profile: str | None = None
        self._session: str | None = None
        self._next_id = 0
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._events: list[dict[str, Any]] = []
        self._write_fd = -1
        self._stderr_path: str | None = None

    # -- process ---------------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the browser on about:blank, attach to its page and enable the Runtime/Log/Page domains."""
        self._profile = tempfile.mkdtemp(prefix="kd-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def child_fds() -> None:
            # move both ends above 4 first so that the dup2 calls below cannot clobber each other
            r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(r, 3)
            os.dup2(w, 4)

        self._stderr_path = str(Path(self._profile) / "chromium-stderr.log")
        args = [
            self.executable,
            *FLAGS,
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        try:
            with open(self._stderr_path, "wb") as stderr:
                # preexec_fn only moves two descriptors; no thread of ours runs yet
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    preexec_fn=child_fds,
                    pass_fds=(3, 4),
                    start_new_session=True,
                )
        finally:
            os.close(to_chrome_r)
            os.close(from_chrome_w)
        self._write_fd = to_chrome_w
        threading.Thread(target=self._reader, args=(from_chrome_r,), daemon=True).start()

        page = self._wait_for_page()
        self._session = self.send("Target.attachToTarget", targetId=page, flatten=True, session=False)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _wait_for_page(self) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            pages = [t for t in self.send("Target.getTargets", session=False)["targetInfos"] if t["type"] == "page"]
            if pages:
                return pages[0]["targetId"]
            time.sleep(0.1)
        raise ChromiumError("Chromium opened no page")

    def close(self) -> None:
        """Ask the browser to quit, kill it (its process group) if it lingers, remove the profile."""
        if self._proc is not None:
            try:
                if self._proc.poll() is None:
                    self._post({"id": self._new_id(), "method": "Browser.close"})
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, 9)
                self._proc.wait(timeout=10)
            self._proc = None
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None
            self._stderr_path = None

    def stderr_tail(self, n: int = 3000) -> str:
        """The last ``n`` characters of the browser's stderr (for failure messages)."""
        if not self._stderr_path or not Path(self._stderr_path).is_file():
            return ""
        return Path(self._stderr_path).read_text(errors="replace")[-n:]

    # -- protocol --------------------------------------------------------------------------------------------
    def _reader(self, fd: int) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(1 << 16)
                if not chunk:
                    break
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for raw in messages:
                    self._messages.put(json.loads(raw))
        self._messages.put(None)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _post(self, message: dict[str, Any]) -> None:
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")

    def _take(self, timeout: float) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=timeout)
        except queue.Empty:
            raise ChromiumError(f"no answer from Chromium in {timeout:.0f} s\n{self.stderr_tail()}") from None
        if message is None:
            raise ChromiumError(
                f"Chromium closed its pipe (exit {self._proc.poll() if self._proc else None})\n{self.stderr_tail()}"
            )
        return message

    def send(self, method: str, *, session: bool = True, **params: Any) -> dict[str, Any]:
        """Send one command (to the attached page unless ``session=False``) and return its result."""
        message: dict[str, Any] = {"id": self._new_id(), "method": method, "params": params}
        if session and self._session:
            message["sessionId"] = self._session
        self._post(message)
        deadline = time.monotonic() + self.timeout
        while True:
            answer = self._take(max(0.1, deadline - time.monotonic()))
            if answer.get("id") == message["id"]:
                if "error" in answer:
                    raise ChromiumError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self._record(answer)

    def _record(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method is None:
            return
        self._events.append(event)
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.problems.append(PageProblem("uncaught exception", text))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console_messages.append((params.get("type", ""), text))
            if params.get("type") in ("error", "assert"):
                self.problems.append(PageProblem(f"console.{params['type']}", text))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.problems.append(
                    PageProblem(f"log ({entry.get('source')})", f"{entry.get('text')} {entry.get('url', '')}")
                )

    def drain(self) -> None:
        """Record the events that arrived since the last command."""
        while True:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                return
            if message is None:
                self._messages.put(None)
                return
            self._record(message)

    # -- page ------------------------------------------------------------------------------------------------
    def navigate(self, url: str) -> None:
        """Load ``url`` and wait for its load event (scripts included in the page have run by then)."""
        self._events.clear()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise ChromiumError(f"navigation to {url} failed: {result['errorText']}")
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self._events):
            self._record(self._take(max(0.1, deadline - time.monotonic())))

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (promises awaited); a thrown error -> ChromiumError."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(details.get("exception", {}).get("description") or details.get("text", "JS error"))
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value (ChromiumError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise ChromiumError(f"timed out after {timeout:.0f} s waiting for: {expression}")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        """Write a PNG screenshot of the viewport to ``path``."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

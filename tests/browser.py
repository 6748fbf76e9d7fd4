"""A page opened in headless Chromium (Debian's `chromium` package), driven over the DevTools protocol
on a pipe (`--remote-debugging-pipe`: JSON messages on file descriptors 3 and 4, no extra package):
what the page asked of the network, what it wrote to the console, the text it shows, a screenshot."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Without these, headless Chromium waits on connections the closed network never answers.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-pipe"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    requests: list[str] = field(default_factory=list)  # every URL the page requested, its own first
    console: list[dict[str, Any]] = field(default_factory=list)  # console calls, log entries and uncaught exceptions
    text: str = ""  # document.body.innerText
    stages: list[str] = field(default_factory=list)  # data-stage of the tree's nodes
    figures: int = 0  # <svg> elements drawn (the tree, the plots)


class _Pipe:
    def __init__(self, process: subprocess.Popen, write_fd: int, read_fd: int):
        self.process, self.write_fd, self.read = process, write_fd, os.fdopen(read_fd, "rb")
        self.next_id, self.events, self.buffer = 0, [], b""

    def _message(self, timeout: float) -> dict[str, Any]:
        deadline = time.time() + timeout
        while b"\0" not in self.buffer:
            if time.time() > deadline:
                raise TimeoutError("Chromium did not answer")
            chunk = os.read(self.read.fileno(), 65536)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 30) -> dict[str, Any]:
        self.next_id += 1
        request = {"id": self.next_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self.write_fd, json.dumps(request).encode() + b"\0")
        while True:
            message = self._message(timeout)
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)


def visit(url: str, screenshot: Path, width: int = 1400, height: int = 1600) -> PageVisit:
    """Load `url`, wait for its load event, and record what it did; a full-page PNG goes to `screenshot`."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")

    def fds() -> None:  # the protocol's pipe: Chromium reads fd 3 and writes fd 4 (copied above 4 first)
        reading, writing = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 5), fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 5)
        os.dup2(reading, 3)
        os.dup2(writing, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    process = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                "about:blank"], preexec_fn=fds, close_fds=False,  # fds 3 and 4 are made in the child
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(process, to_browser_w, from_browser_r)
    try:
        target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Network", "Runtime", "Log", "Page"):
            pipe.call(f"{domain}.enable", session=session)
        pipe.events.clear()
        pipe.call("Page.navigate", {"url": url}, session=session)
        deadline = time.time() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in pipe.events):
            if time.time() > deadline:
                raise TimeoutError("the page did not finish loading")
            pipe.events.append(pipe._message(30))
        page = PageVisit()
        page.text = pipe.call("Runtime.evaluate", {"expression": "document.body.innerText", "returnByValue": True},
                              session=session)["result"]["value"]
        page.stages = pipe.call("Runtime.evaluate", {"expression": "[...document.querySelectorAll('[data-stage]')]"
                                                                   ".map(e => e.dataset.stage)", "returnByValue": True},
                                session=session)["result"]["value"]
        page.figures = pipe.call("Runtime.evaluate", {"expression": "document.querySelectorAll('svg').length",
                                                      "returnByValue": True}, session=session)["result"]["value"]
        metrics = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        shot = pipe.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": metrics["width"], "height": metrics["height"], "scale": 1}}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        for event in pipe.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                page.requests.append(params["request"]["url"])
            elif method == "Runtime.consoleAPICalled":
                page.console.append({"type": params["type"], "args": [a.get("value") for a in params["args"]]})
            elif method == "Runtime.exceptionThrown":
                page.console.append({"type": "exception", "args": [params["exceptionDetails"].get("text")]})
            elif method == "Log.entryAdded":
                page.console.append({"type": params["entry"]["level"], "args": [params["entry"]["text"]]})
        return page
    finally:
        try:
            pipe.call("Browser.close", timeout=10)
        except Exception:  # already gone: nothing to close
            pass
        process.wait(timeout=30)
        os.close(to_browser_w)
        pipe.read.close()
        shutil.rmtree(profile, ignore_errors=True)

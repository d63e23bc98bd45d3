"""Open a page in headless Chromium and report what a reader would see.

Talks to Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``:
no port, no network, no extra package): loads the page, collects every
console error, uncaught exception and failed resource load, measures every
image (loaded and displayed: ``naturalWidth`` and its box), reads the
tables' cells, and can take a screenshot. Used by the page's browser test and
to take the screenshot in docs/::

    python -m clab.plotting.browser plots/index.html --screenshot docs/page.png
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

INSPECT = """(() => {
  const images = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {src: i.getAttribute('src'), complete: i.complete, naturalWidth: i.naturalWidth,
            width: r.width, height: r.height,
            visible: getComputedStyle(i).visibility !== 'hidden' && r.width > 0 && r.height > 0};
  });
  const tables = [...document.querySelectorAll('table')].map(t => ({
    cls: t.className, kind: t.dataset.kind || null, run: t.dataset.run || null,
    rows: [...t.querySelectorAll('tbody tr')].map(tr => ({
      run: tr.dataset.run || null, score: tr.dataset.score || null,
      task: tr.dataset.task || null, over: tr.dataset.over || null,
      cells: [...tr.children].map(td => ({key: td.dataset.key || null,
        value: td.dataset.value === undefined ? null : Number(td.dataset.value),
        low: td.dataset.low === undefined ? null : Number(td.dataset.low),
        high: td.dataset.high === undefined ? null : Number(td.dataset.high),
        text: td.innerText}))}))}));
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  return JSON.stringify({title: document.title, images, tables, ids,
    height: document.documentElement.scrollHeight, text: document.body.innerText});
})()"""


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH (CI installs Debian's ``chromium``)."""
    return next((p for c in CANDIDATES if (p := shutil.which(c))), None)


@dataclass
class PageReport:
    """What the browser saw."""

    title: str
    errors: list[str]
    images: list[dict[str, Any]]
    tables: list[dict[str, Any]]
    ids: list[str]
    text: str
    height: int
    screenshot: Path | None = None
    warnings: list[str] = field(default_factory=list)


class _Pipe:
    """DevTools messages: JSON, each ended by a NUL byte, over fds 3 (in) and 4 (out)."""

    def __init__(self, to_browser: int, from_browser: int):
        self.w, self.r = to_browser, from_browser
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(
        self,
        method: str,
        params: dict | None = None,
        session: str | None = None,
        timeout: float = 60,
    ) -> dict:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._read(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def drain(self, seconds: float) -> None:
        """Collect events for a little while (late console messages)."""
        import select

        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if b"\0" not in self.buf:
                ready, _, _ = select.select([self.r], [], [], left)
                if not ready:
                    return
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    return
                self.buf += chunk
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                self.events.append(json.loads(raw))

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)


def _errors(events: list[dict]) -> tuple[list[str], list[str]]:
    errors, warnings = [], []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append(
                f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
            )
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])
            )
            errors.append(f"console.{p['type']}: {args}")
        elif m == "Log.entryAdded":
            entry = p.get("entry", {})
            text = f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
            (errors if entry.get("level") == "error" else warnings).append(text)
        elif m == "Network.loadingFailed":
            errors.append(f"failed to load: {p.get('errorText')} ({p.get('requestId')})")
    return errors, warnings


def inspect_page(
    page: Path,
    screenshot: Path | None = None,
    width: int = 1400,
    height: int = 1000,
    shot_height: int | None = None,
    browser: str | None = None,
    timeout: float = 90,
) -> PageReport:
    """Load ``page`` (a file) headless, offline, and report errors, images, tables; with
    ``screenshot``, save a PNG of the top ``shot_height`` pixels (default: the page)."""
    exe = browser or find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium on PATH (" + ", ".join(CANDIDATES) + ")")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def wire() -> None:  # in the child: the browser reads fd 3 and writes fd 4
        os.dup2(to_r, 100)
        os.dup2(from_w, 101)
        os.dup2(100, 3)
        os.dup2(101, 4)

    with tempfile.TemporaryDirectory(prefix="clab-chromium-") as profile:
        proc = subprocess.Popen(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-quic",
                "--hide-scrollbars",
                "--mute-audio",
                "--allow-file-access-from-files",
                f"--user-data-dir={profile}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=wire,
            pass_fds=(3, 4),  # kept open: wire() put the pipe ends there
        )
        os.close(to_r)
        os.close(from_w)
        pipe = _Pipe(to_w, from_r)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            session = pipe.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            pipe.wait_event("Page.loadEventFired", timeout=timeout)
            pipe.drain(0.5)
            res = pipe.send(
                "Runtime.evaluate", {"expression": INSPECT, "returnByValue": True}, session=session
            )
            data = json.loads(res["result"]["value"])
            shot = None
            if screenshot is not None:
                h = min(int(data["height"]), shot_height or int(data["height"]))
                img = pipe.send(
                    "Page.captureScreenshot",
                    {
                        "format": "png",
                        "captureBeyondViewport": True,
                        "clip": {"x": 0, "y": 0, "width": width, "height": h, "scale": 1},
                    },
                    session=session,
                    timeout=timeout,
                )
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(img["data"]))
                shot = screenshot
            pipe.drain(0.2)
            errors, warnings = _errors(pipe.events)
            with contextlib.suppress(RuntimeError, TimeoutError):
                pipe.send("Browser.close", timeout=10)
        finally:
            os.close(to_w)
            os.close(from_r)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return PageReport(
        title=data["title"],
        errors=errors,
        images=data["images"],
        tables=data["tables"],
        ids=data["ids"],
        text=data["text"],
        height=int(data["height"]),
        screenshot=shot,
        warnings=warnings,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path)
    ap.add_argument("--screenshot", type=Path)
    ap.add_argument("--shot-height", type=int, default=None)
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args(argv)
    rep = inspect_page(args.page, args.screenshot, width=args.width, shot_height=args.shot_height)
    bad = [i["src"] for i in rep.images if not (i["naturalWidth"] > 0 and i["visible"])]
    print(f"{len(rep.images)} images, {len(bad)} not displayed; {len(rep.errors)} console errors")
    for e in rep.errors + [f"not displayed: {b}" for b in bad]:
        print("  " + e)
    return 1 if rep.errors or bad else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Debian's Firefox ESR driven over WebDriver BiDi, the protocol Firefox speaks itself (no geckodriver:
Debian does not package it, and nothing may be downloaded). Just what the dashboard's test needs:
navigate, evaluate, real pointer clicks and key presses, the viewport, screenshots, script errors.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import subprocess
import time
from pathlib import Path

import websocket  # websocket-client, which selenium depends on

from pvccore.demo.zookeeper import free_port

FIREFOX = "/usr/bin/firefox-esr"
START = 60.0  # seconds Firefox may take to start listening


class BidiError(RuntimeError):
    pass


class Firefox:
    def __init__(self, workdir: Path, width: int = 1280, height: int = 800):
        profile = workdir / "firefox-profile"
        profile.mkdir(parents=True)
        # no first-run pages, no update or telemetry traffic: the test sends nothing off this machine
        (profile / "user.js").write_text("".join(f'user_pref("{k}", {json.dumps(v)});\n' for k, v in {
            "browser.shell.checkDefaultBrowser": False, "datareporting.policy.dataSubmissionEnabled": False,
            "toolkit.telemetry.reportingpolicy.firstRun": False, "app.update.disabledForTesting": True,
            "browser.startup.homepage_override.mstone": "ignore", "network.connectivity-service.enabled": False,
            "network.captive-portal-service.enabled": False, "extensions.update.enabled": False,
            "browser.safebrowsing.update.enabled": False, "browser.startup.page": 0}.items()))
        self.log_path = workdir / "firefox.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
                                      "--remote-debugging-port", str(free_port()), "about:blank"],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "HOME": str(workdir), "MOZ_HEADLESS": "1"})
        log.close()
        deadline = time.monotonic() + START
        while not (m := re.search(r"WebDriver BiDi listening on (ws://\S+)", self.log_path.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise BidiError(f"Firefox did not start: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)  # another process starting: its log says when it listens
        # (no Origin header: Firefox refuses a WebDriver connection that claims a web page as its origin)
        self.ws = websocket.create_connection(m.group(1).rstrip("/") + "/session", timeout=START, suppress_origin=True)
        self._ids = itertools.count(1)
        self.errors: list[str] = []
        self.send("session.new", {"capabilities": {}})
        self.send("session.subscribe", {"events": ["log.entryAdded"]})
        self.context = self.send("browsingContext.getTree", {})["contexts"][0]["context"]
        self.viewport(width, height)

    def send(self, method: str, params: dict) -> dict:
        mine = next(self._ids)
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("type") == "event" or "method" in message:
                if message.get("method") == "log.entryAdded" and message["params"].get("level") == "error":
                    self.errors.append(message["params"].get("text", ""))
                continue
            if message.get("id") != mine:
                continue
            if message.get("type") == "error" or "error" in message:
                raise BidiError(f"{method}: {message.get('error')}: {message.get('message')}")
            return message["result"]

    def go(self, url: str) -> None:
        self.send("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def js(self, expression: str):
        """The value of ``expression`` in the page (through JSON: strings, numbers, lists, objects)."""
        result = self.send("script.evaluate", {"expression": f"JSON.stringify({expression})", "awaitPromise": True,
                                               "target": {"context": self.context}})
        if result.get("type") == "exception":
            raise BidiError(f"{expression}: {result['exceptionDetails'].get('text')}")
        value = result["result"]
        return None if value["type"] == "undefined" else json.loads(value["value"])

    def _element(self, selector: str) -> dict | None:
        result = self.send("script.evaluate", {"expression": f"document.querySelector({json.dumps(selector)})",
                                               "awaitPromise": False, "resultOwnership": "root",
                                               "target": {"context": self.context}})
        value = result.get("result", {})
        return {"sharedId": value["sharedId"]} if value.get("type") == "node" else None

    def click(self, selector: str) -> bool:
        """A real pointer click in the middle of the element; False when it is not there (or disabled)."""
        if not self.js(f"(e => !!e && !e.disabled)(document.querySelector({json.dumps(selector)}))"):
            return False
        element = self._element(selector)
        if element is None:
            return False
        self.send("input.performActions", {"context": self.context, "actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "x": 0, "y": 0, "origin": {"type": "element", "element": element}},
                {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})
        return True

    def type(self, text: str) -> None:
        """Key presses into the focused element."""
        keys = [a for ch in text for a in ({"type": "keyDown", "value": ch}, {"type": "keyUp", "value": ch})]
        self.send("input.performActions", {"context": self.context,
                                           "actions": [{"type": "key", "id": "keyboard", "actions": keys}]})

    def viewport(self, width: int, height: int) -> None:
        self.send("browsingContext.setViewport", {"context": self.context,
                                                  "viewport": {"width": width, "height": height}})

    def screenshot(self, path: Path) -> None:
        data = self.send("browsingContext.captureScreenshot", {"context": self.context})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                try:
                    self.send("session.end", {})
                except Exception:  # noqa: BLE001 - Firefox may be gone already; it is stopped below anyway
                    pass
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()

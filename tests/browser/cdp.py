"""A minimal Chrome DevTools Protocol client: start Debian's headless
Chromium, attach to its page over a WebSocket, send commands, collect events.
"""

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

from websockets.sync.client import connect


class CDPError(Exception):
    pass


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise CDPError("no chromium binary found (apt-get install -y chromium)")


class Browser:
    """A headless Chromium with one page target."""

    def __init__(self, width=1366, height=768, lang="en-US"):
        self.profile = tempfile.mkdtemp(prefix="medgemma-cdp-")
        args = [
            find_chromium(), "--headless=new", "--disable-gpu", "--remote-debugging-port=0",
            f"--user-data-dir={self.profile}", f"--window-size={width},{height}", f"--lang={lang}",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--disable-features=Translate,MediaRouter,OptimizationHints",
            "--mute-audio", "--hide-scrollbars", "--font-render-hinting=none", "about:blank",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root otherwise
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._wait_port()
        page_ws = None
        deadline = time.time() + 15
        while time.time() < deadline and page_ws is None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                for target in json.load(r):
                    if target.get("type") == "page":
                        page_ws = target["webSocketDebuggerUrl"]
                        break
            if page_ws is None:
                time.sleep(0.1)
        if page_ws is None:
            self.close()
            raise CDPError("chromium started but exposed no page target")
        self.page = Page(page_ws)

    def _wait_port(self):
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with {self.proc.returncode}")
            try:
                with open(path) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise CDPError("chromium did not open its DevTools port")

    def close(self):
        try:
            if getattr(self, "page", None):
                self.page.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One page session: commands, events, and a few conveniences."""

    def __init__(self, ws_url):
        self.ws = connect(ws_url, max_size=None, open_timeout=10)
        self.next_id = 0
        self.pending = {}
        self.cond = threading.Condition()
        self.events = []
        self.listeners = []
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        try:
            for raw in self.ws:
                msg = json.loads(raw)
                if "id" in msg:
                    with self.cond:
                        self.pending[msg["id"]] = msg
                        self.cond.notify_all()
                else:
                    for fn in list(self.listeners):
                        fn(msg["method"], msg.get("params", {}))
        except Exception:  # connection closed
            pass
        finally:
            with self.cond:
                self.closed = True
                self.cond.notify_all()

    def on(self, fn):
        self.listeners.append(fn)

    def send(self, method, params=None, timeout=15):
        with self.cond:
            self.next_id += 1
            mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params or {}}))
        deadline = time.time() + timeout
        with self.cond:
            while mid not in self.pending:
                left = deadline - time.time()
                if left <= 0 or self.closed:
                    raise CDPError(f"{method}: no reply in {timeout} s")
                self.cond.wait(left)
            msg = self.pending.pop(mid)
        if "error" in msg:
            raise CDPError(f"{method}: {msg['error'].get('message')}")
        return msg.get("result", {})

    def eval(self, expression, await_promise=False, timeout=15):
        res = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": await_promise,
        }, timeout=timeout)
        if "exceptionDetails" in res:
            details = res["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CDPError(f"evaluate failed: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, expression, timeout=10, what=None):
        deadline = time.time() + timeout
        while True:
            try:
                value = self.eval(expression)
            except CDPError:
                value = None  # e.g. the execution context changed during a navigation
            if value:
                return value
            if time.time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or expression}")
            time.sleep(0.05)

    def navigate(self, url, ready_expr=None, timeout=15):
        self.send("Page.navigate", {"url": url})
        if ready_expr:
            self.wait_for(ready_expr, timeout, what=f"page ready ({url})")

    def key(self, key, code, vk, text=None, modifiers=0):
        base = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk,
                "modifiers": modifiers}
        down = dict(base, type="keyDown")
        if text is not None:
            down["text"] = text
            down["unmodifiedText"] = text
        self.send("Input.dispatchKeyEvent", down)
        self.send("Input.dispatchKeyEvent", dict(base, type="keyUp"))

    def press_enter(self, shift=False):
        self.key("Enter", "Enter", 13, text="\r", modifiers=8 if shift else 0)

    def insert_text(self, text):
        self.send("Input.insertText", {"text": text})

    def click(self, selector):
        """A real mouse click at the centre of the element."""
        box = self.eval(f"""(() => {{
            const el = document.querySelector({json.dumps(selector)});
            if (!el) return null;
            el.scrollIntoView({{block: 'nearest'}});
            const r = el.getBoundingClientRect();
            return {{x: r.left + r.width / 2, y: r.top + r.height / 2, w: r.width, h: r.height}};
        }})()""")
        if not box or box["w"] == 0 or box["h"] == 0:
            raise AssertionError(f"cannot click {selector}: missing or invisible")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"],
                                                   "button": "left", "clickCount": 1})

    def screenshot(self, path):
        import base64
        data = self.send("Page.captureScreenshot", {"format": "png"}, timeout=20)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.ws.close()
        except Exception:
            pass

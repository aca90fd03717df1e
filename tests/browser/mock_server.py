#!/usr/bin/env python3
"""A stand-in for medgemmad's HTTP API, for the browser tests.

Serves the web UI from a directory with the daemon's Content-Security-Policy
and implements the API contract with scripted answers. The message text picks
the script:

  contains "xss"           answer with raw <script> and <img onerror> text
  contains "context full"  event: error, code context_full
  contains "busy"          503 queue_full with Retry-After: 7
  contains "slow"          a long, slow answer (for the Stop button)
  contains "unterminated"  reasoning only, done with thinking_unterminated
  contains "nearly full"   a short answer whose context_used is 85 % of the limit
  contains "chunky"        CRLF framing, comments, writes split mid-line and mid-UTF-8
  anything else            reasoning, then a Markdown answer with a table and lists

Test-only endpoints (not part of the daemon): GET /__mock/state returns what
the mock saw (cancels, deletes, disconnects); POST /__mock/status sets the
sandbox mode ("off", "on" or "missing") reported by /api/status.

Standard library only. Usage: mock_server.py --web DIR [--port 0] ; prints
"LISTENING <port>" on stdout once ready.
"""

import argparse
import json
import mimetypes
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
CONTEXT_LIMIT = 8192

REASONING = ("The user asks about first-line treatment of community-acquired pneumonia. "
             "I should consider severity (CURB-65), recent antibiotic use and local resistance, "
             "then summarise options in a table.")
ANSWER = """## Community-acquired pneumonia (outpatient)

Assess severity first with **CURB-65**; *low-risk* patients can usually be treated at home.

Typical first-line options:

- Amoxicillin, high dose
- Doxycycline if penicillin-allergic
  - check interactions
- A macrolide where local resistance is low

| Drug | Dose | Duration |
|------|:----:|---------:|
| Amoxicillin | 1 g three times daily | 5 days |
| Doxycycline | 200 mg then 100 mg daily | 5 days |

Follow-up steps:

1. Review at 48 hours
2. Escalate if `SpO2 < 92%`

```
CURB-65 = C + U + R + B + 65
```
"""
XSS_ANSWER = ("Here is raw HTML that must stay text: <script>window.__xss=1</script> and "
              "<img src=x onerror=\"window.__xss=2\"> and a [link](javascript:alert(1)).\n\n"
              "<b>not bold</b> **bold**")


class MockState:
    def __init__(self):
        self.lock = threading.Lock()
        self.sandbox = "off"
        self.cancels = []
        self.deletes = []
        self.disconnects = 0
        self.chats = 0
        self.context = {}  # conversation id -> tokens used
        self.origin_rejects = 0

    def snapshot(self):
        with self.lock:
            return {"sandbox": self.sandbox, "cancels": list(self.cancels), "deletes": list(self.deletes),
                    "disconnects": self.disconnects, "chats": self.chats,
                    "origin_rejects": self.origin_rejects}


STATE = MockState()


def status_body():
    sandbox = {
        "off": {"enforced": False, "insecure_no_sandbox": True, "landlock": "disabled", "seccomp": "disabled"},
        "on": {"enforced": True, "insecure_no_sandbox": False, "landlock": "fully_enforced",
               "seccomp": "filter", "no_new_privs": True},
    }.get(STATE.sandbox)
    body = {
        "model": {"label": "Gemma 3 270M (demo)", "demo": True, "format": "gguf", "parameters": 268098176},
        "backend": {"kind": "cpu", "device": None, "reason": "no CUDA support in this build", "gpu": None},
        "queue": {"length": 0, "capacity": 8, "active": 0, "max_concurrent": 1},
        "conversations": len(STATE.context),
        "context_limit": CONTEXT_LIMIT,
        "version": "0.1.0-mock",
    }
    if sandbox is not None:
        body["sandbox"] = sandbox
    return body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    web_root = "."

    def log_message(self, fmt, *args):  # keep the test output quiet
        pass

    # ---- helpers ----
    def common_headers(self):
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")

    def send_json(self, code, obj, extra=None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.common_headers()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def error(self, code, err, message, extra=None):
        self.send_json(code, {"error": {"code": err, "message": message}}, extra)

    def read_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return None

    def origin_ok(self):
        origin = self.headers.get("Origin")
        host = self.headers.get("Host")
        if origin is not None and origin != f"http://{host}":
            with STATE.lock:
                STATE.origin_rejects += 1
            self.error(403, "bad_origin", "Cross-origin requests are refused.")
            return False
        return True

    # ---- routes ----
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/status":
            return self.send_json(200, status_body())
        if path == "/__mock/state":
            return self.send_json(200, STATE.snapshot())
        if path == "/":
            path = "/index.html"
        name = os.path.normpath(path.lstrip("/"))
        full = os.path.join(self.web_root, name)
        if name.startswith("..") or os.sep in name or not os.path.isfile(full):
            return self.error(404, "not_found", "Not found.")
        with open(full, "rb") as f:
            data = f.read()
        ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        self.send_response(200)
        self.common_headers()
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_DELETE(self):
        if not self.origin_ok():
            return
        if self.path.startswith("/api/conversations/"):
            cid = self.path[len("/api/conversations/"):]
            with STATE.lock:
                STATE.deletes.append(cid)
                STATE.context.pop(cid, None)
            self.send_response(204)
            self.common_headers()
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.error(404, "not_found", "Not found.")

    def do_POST(self):
        if self.path == "/__mock/status":
            body = self.read_json() or {}
            with STATE.lock:
                STATE.sandbox = body.get("sandbox", "off")
            return self.send_json(200, {"ok": True})
        if not self.origin_ok():
            return
        if self.path == "/api/chat/cancel":
            body = self.read_json() or {}
            with STATE.lock:
                STATE.cancels.append(body.get("conversation_id"))
            return self.send_json(200, {"cancelled": True})
        if self.path == "/api/chat":
            return self.chat()
        self.error(404, "not_found", "Not found.")

    # ---- chat ----
    def chat(self):
        body = self.read_json()
        if not isinstance(body, dict) or not isinstance(body.get("message"), str):
            return self.error(400, "bad_request", "The request body is not valid.")
        msg = body["message"].lower()
        with STATE.lock:
            STATE.chats += 1
        if "busy" in msg:
            return self.error(503, "queue_full", "The model is busy.", {"Retry-After": "7"})
        cid = body.get("conversation_id") or uuid.uuid4().hex

        self.send_response(200)
        self.common_headers()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(name, data):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        def stream(name, text, piece=6, delay=0.004):
            for i in range(0, len(text), piece):
                event(name, {"delta": text[i:i + piece]})
                time.sleep(delay)

        try:
            event("conversation", {"conversation_id": cid})
            if "context full" in msg:
                event("error", {"code": "context_full",
                                "message": "This conversation has reached the model's context limit. "
                                           "Start a new conversation to continue."})
                return
            used_before = STATE.context.get(cid, 0)
            unterminated = False
            finish = "stop"
            if "xss" in msg:
                stream("answer", XSS_ANSWER)
                completion = 60
            elif "slow" in msg:
                stream("reasoning", "Thinking slowly about the question, step by step. " * 2, delay=0.06)
                for k in range(400):
                    event("answer", {"delta": f"word{k} "})
                    time.sleep(0.05)
                completion = 400
            elif "unterminated" in msg:
                stream("reasoning", REASONING + " And then I kept thinking without closing")
                unterminated = True
                finish = "length"
                completion = 120
            elif "chunky" in msg:
                raw = (": keep-alive\r\nretry: 1000\r\n\r\n"
                       f"event: reasoning\r\ndata: {json.dumps({'delta': '先想一想。'})}\r\n\r\n"
                       f"event: answer\r\ndata: {json.dumps({'delta': '分段测试：'}, ensure_ascii=False)}\r\n\r\n"
                       f"event: answer\ndata: {json.dumps({'delta': '中文 **粗体** ok'}, ensure_ascii=False)}\n\n"
                       ).encode()
                for i in range(0, len(raw), 5):
                    self.wfile.write(raw[i:i + 5])
                    self.wfile.flush()
                    time.sleep(0.002)
                completion = 12
            elif "nearly full" in msg:
                stream("answer", "Short answer.")
                used_before = int(CONTEXT_LIMIT * 0.85)
                completion = 4
            else:
                stream("reasoning", REASONING)
                stream("answer", ANSWER)
                completion = 180
            prompt = 40 + len(msg) // 4
            used = used_before + prompt + completion
            with STATE.lock:
                STATE.context[cid] = used
            event("done", {"prompt_tokens": prompt, "completion_tokens": completion, "tokens_per_s": 42.5,
                           "time_to_first_token_ms": 180, "context_used": used, "context_limit": CONTEXT_LIMIT,
                           "finish_reason": finish, "thinking_unterminated": unterminated})
        except (BrokenPipeError, ConnectionResetError):
            with STATE.lock:
                STATE.disconnects += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--web", required=True, help="directory holding the web UI")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    args = ap.parse_args()
    Handler.web_root = os.path.abspath(args.web)
    mimetypes.add_type("image/svg+xml", ".svg")
    mimetypes.add_type("text/javascript", ".js")
    srv = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    srv.daemon_threads = True
    print(f"LISTENING {srv.server_address[1]}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

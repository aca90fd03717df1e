#!/usr/bin/env python3
"""A stand-in for medgemmad's HTTP API, for the browser tests.

Serves the web UI from a directory with the daemon's Content-Security-Policy
and implements the UI's API contract with scripted answers:

  GET    /api/status                      state (loading|ready|failed), loading progress,
                                          styles, default_style, queue, auth, sandbox, ...
  POST   /api/login, /api/logout          accounts (off unless --accounts or /__mock/auth)
  POST   /api/chat                        SSE: conversation, reasoning, answer, done (with terms) | error;
                                          "images": data: URLs (PNG, JPEG, DICOM), checked as the daemon does
  POST   /api/chat/cancel
  GET    /api/conversations               this browser's (or user's) conversations, newest first
  GET    /api/conversations/{id}          its messages
  DELETE /api/conversations/{id}
  POST   /api/conversations/{id}/export   {"format": "markdown"|"print"} -> {"markdown"}; audited

Errors are {"error": {"code", "message"}} with the daemon's codes. With
accounts on, every API route but /api/status, /api/login and /api/logout
answers 401 login_required without a live session; sessions end after
idle_logout_s without an API request, and a user's conversations are
dropped when the session ends. Three wrong passwords in a row lock a user
name out (429 locked_out with retry_after_s, doubling each time).

The message text picks the script:

  contains "xss"           answer with raw <script> and <img onerror> text
  contains "context full"  event: error, code context_full
  contains "busy"          503 queue_full with Retry-After: 7
  contains "slow"          a long, slow answer (for Stop and Esc)
  contains "unterminated"  reasoning only, done with thinking_unterminated
  contains "nearly full"   a short answer whose context_used is 85 % of the limit
  contains "chunky"        CRLF framing, comments, writes split mid-line and mid-UTF-8
  contains "engine error"  some reasoning, then event: error, code engine_error
  contains "mystery"       500 with a code the UI has no sentence for (its message is shown)
  contains "heart attack"
        or "心梗"          a myocardial-infarction answer
  anything else            a pneumonia answer (reasoning, Markdown table, lists, code)

Images (issue 17): /api/status has model.images (true: the model reads
images; false or absent: the UI hides its attach button). A chat body may
carry "images": a list of data: URLs (image/png, image/jpeg,
application/dicom; base64), in the order attached, at most 4 (else 400
too_many_images), each at most 20 MiB decoded (else 400 image_too_large;
these limits and the 128 MiB body limit (413 body_too_large) can be
lowered through /__mock/status),
each a real file of its type (PNG signature, JPEG SOI, DICOM's "DICM" at
byte 128) and a DICOM of one frame (else 400 image_invalid, whose message
says which image and why). The text is still required. The mock keeps no
image: it records each one's type, size and SHA-256 in the chat body it
saw, and the answer starts with the kinds of image it read.

Answers follow the request: "thinking": false sends no reasoning; "language"
("en"/"zh") and "style" ("structured": definition, mechanism, differential
diagnosis, advice; "brief": a few lines) pick the text; a regenerated answer
ends with a line saying which attempt it is. Terms are found in the question
and the answer (longest match, Chinese and English) from a small fixture list.

Test-only endpoints (not part of the daemon):
  GET  /__mock/state   what the mock saw (cancels, deletes, exports, chat bodies, ...)
  POST /__mock/status  {"sandbox": "off"|"on"|"missing", "state", "stage", "progress", "default_style",
                        "images": true|false|null (null: no model.images), "max_images", "max_image_bytes",
                        "max_body_bytes"}
  POST /__mock/auth    {"enabled", "idle_logout_s", "clear_lockouts"}
  POST /__mock/reset   forgets every conversation and session

With --legacy it answers as the daemon did before this contract: /api/status
without state, styles, auth, loading or model.images (and queue.length for queue.waiting),
a chat body with unknown fields refused (invalid_json), and no conversation
list, export or login routes. The UI must still chat against it.

Standard library only. Usage: mock_server.py --web DIR [--port 0] [--accounts]
[--legacy] ; prints "LISTENING <port>" on stdout once ready.
"""

import argparse
import base64
import binascii
import hashlib
import json
import math
import mimetypes
import os
import re
import secrets
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
CONTEXT_LIMIT = 8192
MAX_NEW_TOKENS = 1024
RETRY_AFTER_S = 5
TITLE_CHARS = 60
LOCKOUT_AFTER = 3  # wrong passwords in a row
LOCKOUT_BASE_S = 30
CLIENT_COOKIE = "mgd_client"
SESSION_COOKIE = "mgd_session"
CHAT_FIELDS = {"conversation_id", "message", "thinking", "style", "language", "max_new_tokens",
               "temperature", "regenerate", "replace_last", "images"}
MAX_IMAGES = 4  # per message
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # per image, decoded
MAX_BODY_BYTES = 128 * 1024 * 1024  # a chat body: 4 images of 20 MiB in base64, and the text
IMAGE_MIMES = {"image/png": "PNG", "image/jpeg": "JPEG", "application/dicom": "DICOM"}
DATA_URL = re.compile(r"data:([a-z]+/[a-z0-9.+-]+);base64,([A-Za-z0-9+/=]*)")
STYLES = ["structured", "brief"]
LEGACY_CHAT_FIELDS = {"conversation_id", "message", "max_new_tokens", "temperature", "thinking"}

# Test accounts (the mock's only users; never a default anywhere else).
TEST_USERS = {"dr.li": "li-test-password", "dr.wang": "wang-test-password"}

REASONING = {
    "en": ("The user asks about first-line treatment of community-acquired pneumonia. "
           "I should consider severity (CURB-65), recent antibiotic use and local resistance, "
           "then summarise options in a table."),
    "zh": "用户询问社区获得性肺炎的一线治疗。需要先评估严重程度（CURB-65），再考虑近期抗生素使用和当地耐药情况。",
}
REASONING_MI = {
    "en": "Chest pain suggesting a heart attack: think of ECG, troponin, and the dangerous mimics first.",
    "zh": "胸痛提示心梗：先考虑心电图、肌钙蛋白，以及需要排除的危险疾病。",
}
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
ANSWERS = {
    ("pneumonia", "en", "structured"): ANSWER,
    ("pneumonia", "en", "brief"): ("Outpatient community-acquired pneumonia: **amoxicillin** 1 g three times daily "
                                   "for 5 days (doxycycline if penicillin-allergic); review at 48 hours."),
    ("pneumonia", "zh", "structured"): """## 定义
社区获得性肺炎是在医院外获得的肺实质感染性炎症。

## 机制
病原体（最常见为肺炎链球菌）经呼吸道进入肺泡，引起炎性渗出和气体交换障碍。

## 鉴别诊断
- 急性支气管炎
- 肺结核
- 肺栓塞

## 建议
1. 先用 **CURB-65** 评估严重程度
2. 门诊低危患者首选阿莫西林，青霉素过敏者可用多西环素
3. 48 小时后复查

| 药物 | 剂量 | 疗程 |
|------|------|------|
| 阿莫西林 | 1 g，每日三次 | 5 天 |
""",
    ("pneumonia", "zh", "brief"): "门诊社区获得性肺炎：首选**阿莫西林** 1 g，每日三次，疗程 5 天（青霉素过敏者用多西环素）；48 小时后复查。",
    ("mi", "en", "structured"): """## Definition
Acute myocardial infarction (a heart attack) is death of heart muscle from an acute loss of coronary blood flow.

## Mechanism
Rupture of an atherosclerotic plaque triggers a thrombus that occludes a coronary artery.

## Differential diagnosis
- Aortic dissection
- Pulmonary embolism
- Acute pericarditis

## Advice
1. Record a 12-lead ECG within 10 minutes
2. Measure high-sensitivity troponin
3. Escalate to the cardiology team at once if the ECG shows ST elevation
""",
    ("mi", "en", "brief"): ("Suspected heart attack: 12-lead ECG within 10 minutes, high-sensitivity troponin, "
                            "and immediate escalation if the ECG shows ST elevation."),
    ("mi", "zh", "structured"): """## 定义
急性心肌梗死（心梗）是冠状动脉血流急性中断导致的心肌坏死。

## 机制
动脉粥样硬化斑块破裂，形成血栓并阻塞冠状动脉。

## 鉴别诊断
- 主动脉夹层
- 肺栓塞
- 急性心包炎

## 建议
1. 10 分钟内完成 12 导联心电图
2. 检测高敏肌钙蛋白
3. 如心电图示 ST 段抬高，立即联系心内科
""",
    ("mi", "zh", "brief"): "疑似心梗：10 分钟内完成 12 导联心电图，检测高敏肌钙蛋白；如有 ST 段抬高，立即联系心内科。",
}
XSS_ANSWER = ("Here is raw HTML that must stay text: <script>window.__xss=1</script> and "
              "<img src=x onerror=\"window.__xss=2\"> and a [link](javascript:alert(1)).\n\n"
              "<b>not bold</b> **bold**")

# A fixture of colloquial and standard phrases (the daemon's comes from the
# hospital's terminology files): phrase, preferred term, code, system.
TERMS = [
    ("community-acquired pneumonia", "Pneumonia, unspecified organism", "J18.9", "ICD-10"),
    ("pneumonia", "Pneumonia, unspecified organism", "J18.9", "ICD-10"),
    ("社区获得性肺炎", "肺炎，未特指", "J18.9", "ICD-10"),
    ("肺炎", "肺炎，未特指", "J18.9", "ICD-10"),
    ("heart attack", "Acute myocardial infarction", "I21.9", "ICD-10"),
    ("acute myocardial infarction", "Acute myocardial infarction", "I21.9", "ICD-10"),
    ("心梗", "急性心肌梗死", "I21.9", "ICD-10"),
    ("急性心肌梗死", "急性心肌梗死", "I21.9", "ICD-10"),
    ("pulmonary embolism", "Pulmonary embolism without acute cor pulmonale", "I26.9", "ICD-10"),
    ("肺栓塞", "肺栓塞，未提及急性肺源性心脏病", "I26.9", "ICD-10"),
    ("aortic dissection", "Dissection of aorta", "I71.0", "ICD-10"),
    ("主动脉夹层", "主动脉夹层", "I71.0", "ICD-10"),
    ("amoxicillin", "Amoxicillin", "372687004", "SNOMED CT"),
    ("阿莫西林", "阿莫西林", "372687004", "SNOMED CT"),
]


def find_terms(text):
    """Longest-match terms in `text`, in order of first appearance, once each."""
    low = text.lower()
    found, seen, i = [], set(), 0
    by_len = sorted(TERMS, key=lambda t: -len(t[0]))
    while i < len(low):
        hit = None
        for phrase, preferred, code, system in by_len:
            if low.startswith(phrase, i):
                ascii_word = phrase.isascii()
                before = low[i - 1] if i else " "
                after = low[i + len(phrase)] if i + len(phrase) < len(low) else " "
                if ascii_word and (before.isalnum() or after.isalnum()):
                    continue
                hit = (text[i:i + len(phrase)], preferred, code, system)
                break
        if hit:
            if hit[0].lower() not in seen:
                seen.add(hit[0].lower())
                found.append({"phrase": hit[0], "preferred": hit[1], "code": hit[2], "system": hit[3]})
            i += len(hit[0])
        else:
            i += 1
    return found


class MockState:
    def __init__(self):
        self.lock = threading.Lock()
        self.sandbox = "off"
        self.model_state = "ready"
        self.stage = None
        self.progress = None
        self.default_style = "structured"
        self.images = True  # model.images in the status; None: absent
        self.max_images = MAX_IMAGES  # the daemon's limits (a test lowers them below the page's)
        self.max_image_bytes = MAX_IMAGE_BYTES
        self.max_body_bytes = MAX_BODY_BYTES
        self.accounts = False
        self.idle_logout_s = 900
        self.sessions = {}  # token -> {"user", "seen"}
        self.failures = {}  # user name -> wrong passwords in a row
        self.lockouts = {}  # user name -> {"until", "count"}
        self.logins = []  # (user, outcome) for the tests; never a password
        self.conversations = {}  # id -> {"owner", "style", "messages", "updated", "context", "busy", "cancel"}
        self.cancels = []
        self.deletes = []
        self.exports = []  # audit events: {"conversation", "format", "owner"}, no text
        self.chat_bodies = []
        self.disconnects = 0
        self.cancelled_turns = 0
        self.chats = 0
        self.served = 0
        self.rejected = 0
        self.origin_rejects = 0
        self.started = time.time()
        self.legacy = False

    def snapshot(self):
        with self.lock:
            return {"sandbox": self.sandbox, "cancels": list(self.cancels), "deletes": list(self.deletes),
                    "disconnects": self.disconnects, "cancelled_turns": self.cancelled_turns,
                    "chats": self.chats, "exports": list(self.exports),
                    "chat_bodies": list(self.chat_bodies[-20:]), "logins": list(self.logins),
                    "origin_rejects": self.origin_rejects, "sessions": len(self.sessions),
                    "conversations": {cid: {"owner": c["owner"], "turns": turns(c), "style": c["style"]}
                                      for cid, c in self.conversations.items()}}

    def end_session(self, token):
        """Ends a session; the user's conversations go with their last session (lock held)."""
        s = self.sessions.pop(token, None)
        if s and not any(o["user"] == s["user"] for o in self.sessions.values()):
            owner = "user:" + s["user"]
            for cid in [cid for cid, c in self.conversations.items() if c["owner"] == owner]:
                self.conversations[cid]["cancel"] = True
                del self.conversations[cid]


STATE = MockState()


def turns(conv):
    return sum(1 for m in conv["messages"] if m["role"] == "user")


def dicom_frames(data):
    """NumberOfFrames (0028,0008) of an explicit-VR little-endian DICOM file; 1 when absent."""
    i = data.find(b"\x28\x00\x08\x00IS", 132)
    if i < 0:
        return 1
    n = int.from_bytes(data[i + 6:i + 8], "little")
    try:
        return int(data[i + 8:i + 8 + n].strip(b" \x00") or b"1")
    except ValueError:
        return 1


def check_images(images, max_images=MAX_IMAGES, max_bytes=MAX_IMAGE_BYTES):
    """([{"mime", "bytes", "sha256"}, ...], None) or (None, (code, message)), as the daemon checks them."""
    if not isinstance(images, list):
        return None, ("image_invalid", "images must be a list of data: URLs.")
    if len(images) > max_images:
        return None, ("too_many_images", f"This message has {len(images)} images; the limit is {max_images}.")
    too_large = f"is larger than the limit of {max_bytes / 1048576:g} MiB per image."
    out = []
    for i, url in enumerate(images, 1):
        m = DATA_URL.fullmatch(url) if isinstance(url, str) else None
        if not m or m.group(1) not in IMAGE_MIMES:
            return None, ("image_invalid", f"Image {i} is not a PNG, JPEG or DICOM data: URL.")
        if len(m.group(2)) // 4 * 3 > max_bytes + 2:
            return None, ("image_too_large", f"Image {i} {too_large}")
        try:
            data = base64.b64decode(m.group(2), validate=True)
        except (ValueError, binascii.Error):
            return None, ("image_invalid", f"Image {i} is not valid base64.")
        if len(data) > max_bytes:
            return None, ("image_too_large", f"Image {i} {too_large}")
        kind = IMAGE_MIMES[m.group(1)]
        ok = {"PNG": data.startswith(b"\x89PNG\r\n\x1a\n"), "JPEG": data.startswith(b"\xff\xd8\xff"),
              "DICOM": data[128:132] == b"DICM"}[kind]
        if not ok:
            return None, ("image_invalid", f"Image {i} is not a {kind} file.")
        frames = dicom_frames(data) if kind == "DICOM" else 1
        if frames > 1:
            return None, ("image_invalid",
                          f"Image {i} is a DICOM file with {frames} frames; send a single frame (one slice).")
        out.append({"mime": m.group(1), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return out, None


def status_body(user):
    sandbox = {
        "off": {"enforced": False, "insecure_no_sandbox": True, "landlock": "disabled", "seccomp": "disabled"},
        "on": {"enforced": True, "insecure_no_sandbox": False, "landlock": "fully_enforced",
               "seccomp": "filter", "no_new_privs": True},
    }.get(STATE.sandbox)
    with STATE.lock:
        active = sum(1 for c in STATE.conversations.values() if c["busy"])
        body = {
            "version": "0.1.0-mock",
            "uptime_s": int(time.time() - STATE.started),
            "state": STATE.model_state,
            "model": {"label": "Gemma 3 270M (demo)", "demo": True, "format": "gguf", "parameters": 268098176},
            "queue": {"waiting": 0, "capacity": 8, "active": active, "max_concurrent": 1,
                      "served": STATE.served, "rejected": STATE.rejected},
            "conversations": {"count": len(STATE.conversations), "idle_timeout_s": 1800},
            "styles": list(STYLES),
            "default_style": STATE.default_style,
            "auth": {"required": STATE.accounts, "user": user, "idle_logout_s": STATE.idle_logout_s},
        }
        if STATE.images is not None:
            body["model"]["images"] = STATE.images
        if STATE.model_state == "loading":
            body["loading"] = {"stage": STATE.stage or "reading weights", "progress": STATE.progress or 0.0}
        else:
            # Known once the model is loaded.
            body["backend"] = {"kind": "cpu", "device": None, "reason": "no CUDA support in this build", "gpu": None}
            body["context_limit"] = CONTEXT_LIMIT
    if sandbox is not None:
        body["sandbox"] = sandbox
    if STATE.legacy:
        for key in ("state", "styles", "default_style", "auth", "loading"):
            body.pop(key, None)
        body["model"].pop("images", None)
        body["queue"]["length"] = body["queue"].pop("waiting")
    return body


def export_markdown(conv):
    lines = ["# MedGemma conversation", "",
             f"- Exported: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- Answer style: {conv['style'] or 'default'}",
             "- Not a medical device. MedGemma output supports and does not replace clinical judgement.", ""]
    n = 0
    for m in conv["messages"]:
        if m["role"] == "user":
            n += 1
            lines += [f"## Question {n}", "", m["content"], ""]
        else:
            lines += [f"## Answer {n}", "", m["content"], ""]
            if m.get("terms"):
                lines += ["Terms:", ""]
                lines += [f"- {t['phrase']} → {t['preferred']} ({t['code']}, {t['system']})" for t in m["terms"]]
                lines.append("")
    return "\n".join(lines)


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

    def send_empty(self, code=204, extra=None):
        self.send_response(code)
        self.common_headers()
        self.send_header("Content-Length", "0")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()

    def error(self, code, err, message, extra=None, more=None):
        body = {"code": err, "message": message}
        body.update(more or {})
        self.send_json(code, {"error": body}, extra)

    def read_json(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            return json.loads(raw or b"null")
        except ValueError:
            return None

    def cookies(self):
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie") or "")
        except Exception:  # noqa: BLE001 - a bad cookie header is no cookie
            return {}
        return {k: v.value for k, v in jar.items()}

    def origin_ok(self):
        origin = self.headers.get("Origin")
        host = self.headers.get("Host")
        if origin is not None and origin != f"http://{host}":
            with STATE.lock:
                STATE.origin_rejects += 1
            self.error(403, "origin_not_allowed", "Cross-origin requests are refused.")
            return False
        return True

    def session_user(self, touch):
        """The logged-in user, or None; an idle session ends here."""
        token = self.cookies().get(SESSION_COOKIE)
        with STATE.lock:
            s = STATE.sessions.get(token) if token else None
            if not s:
                return None
            if time.time() - s["seen"] > STATE.idle_logout_s:
                STATE.end_session(token)
                return None
            if touch:
                s["seen"] = time.time()
            return s["user"]

    def owner(self):
        """Who owns conversations for this request; sends 401 and returns None without a session."""
        if STATE.accounts:
            user = self.session_user(touch=True)
            if user is None:
                self.error(401, "login_required", "Log in to use MedGemma.")
                return None
            return "user:" + user
        return "client:" + self.cookies().get(CLIENT_COOKIE, "anonymous")

    def conversation(self, cid, owner):
        """The caller's conversation `cid` (lock held), or None."""
        ok = isinstance(cid, str) and re.fullmatch(r"[0-9a-f]{32}", cid)
        conv = STATE.conversations.get(cid) if ok else None
        return conv if conv and conv["owner"] == owner else None

    def not_found_conversation(self):
        self.error(404, "conversation_not_found",
                   "This conversation does not exist (it expired or was deleted); start a new one.")

    # ---- routes ----
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/api/status":
            return self.send_json(200, status_body(self.session_user(touch=False) if STATE.accounts else None))
        if path == "/__mock/state":
            return self.send_json(200, STATE.snapshot())
        if STATE.legacy and path.startswith("/api/conversations"):
            return self.error(404, "not_found", "Not found.")
        if path == "/api/conversations":
            owner = self.owner()
            if owner is None:
                return
            with STATE.lock:
                mine = [(cid, c) for cid, c in STATE.conversations.items() if c["owner"] == owner and c["messages"]]
                mine.sort(key=lambda x: -x[1]["updated"])
                items = [{"id": cid, "title": next(m["content"] for m in c["messages"] if m["role"] == "user")
                          [:TITLE_CHARS], "turns": turns(c), "updated_unix": int(c["updated"]), "style": c["style"]}
                         for cid, c in mine]
            return self.send_json(200, {"conversations": items})
        if path.startswith("/api/conversations/"):
            owner = self.owner()
            if owner is None:
                return
            with STATE.lock:
                conv = self.conversation(path[len("/api/conversations/"):], owner)
                if conv is None:
                    return self.not_found_conversation()
                doc = {"id": path[len("/api/conversations/"):], "style": conv["style"],
                       "messages": [dict(m) for m in conv["messages"]]}
            return self.send_json(200, doc)
        if path.startswith("/api/"):
            return self.error(404, "not_found", "Not found.")
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
        if name == "index.html" and CLIENT_COOKIE not in self.cookies():
            self.send_header("Set-Cookie", f"{CLIENT_COOKIE}={uuid.uuid4().hex}; Path=/; HttpOnly; SameSite=Strict")
        self.end_headers()
        self.wfile.write(data)

    def do_DELETE(self):
        if not self.origin_ok():
            return
        if self.path.startswith("/api/conversations/"):
            owner = self.owner()
            if owner is None:
                return
            cid = self.path[len("/api/conversations/"):]
            with STATE.lock:
                conv = self.conversation(cid, owner)
                if conv is not None:
                    conv["cancel"] = True
                    del STATE.conversations[cid]
                    STATE.deletes.append(cid)
            if conv is None:
                return self.not_found_conversation()
            return self.send_empty()
        self.error(404, "not_found", "Not found.")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path.startswith("/__mock/"):
            return self.mock_control(path)
        if not self.origin_ok():
            return
        if STATE.legacy and (path in ("/api/login", "/api/logout") or path.endswith("/export")):
            return self.error(404, "not_found", "Not found.")
        if path == "/api/login":
            return self.login()
        if path == "/api/logout":
            token = self.cookies().get(SESSION_COOKIE)
            with STATE.lock:
                if token:
                    STATE.end_session(token)
            return self.send_empty(204, {"Set-Cookie": f"{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict"})
        if path not in ("/api/chat", "/api/chat/cancel") and not (
                path.startswith("/api/conversations/") and path.endswith("/export")):
            return self.error(404, "not_found", "Not found.")
        owner = self.owner()
        if owner is None:
            return
        if path == "/api/chat/cancel":
            body = self.read_json() or {}
            cid = body.get("conversation_id") if isinstance(body, dict) else None
            with STATE.lock:
                STATE.cancels.append(cid)
                conv = self.conversation(cid, owner)
                if conv is not None:
                    running = conv["busy"]
                    conv["cancel"] = running
            if conv is None:
                return self.not_found_conversation()
            return self.send_json(200, {"cancelled": running})
        if path == "/api/chat":
            return self.chat(owner)
        return self.export(path[len("/api/conversations/"):-len("/export")], owner)

    def mock_control(self, path):
        body = self.read_json() or {}
        with STATE.lock:
            if path == "/__mock/status":
                STATE.sandbox = body.get("sandbox", STATE.sandbox)
                STATE.model_state = body.get("state", STATE.model_state)
                STATE.stage = body.get("stage", STATE.stage)
                STATE.progress = body.get("progress", STATE.progress)
                STATE.default_style = body.get("default_style", STATE.default_style)
                STATE.images = body.get("images", STATE.images)
                STATE.max_images = body.get("max_images", STATE.max_images)
                STATE.max_image_bytes = body.get("max_image_bytes", STATE.max_image_bytes)
                STATE.max_body_bytes = body.get("max_body_bytes", STATE.max_body_bytes)
            elif path == "/__mock/auth":
                STATE.accounts = body.get("enabled", STATE.accounts)
                STATE.idle_logout_s = body.get("idle_logout_s", STATE.idle_logout_s)
                if body.get("clear_lockouts"):
                    STATE.failures.clear()
                    STATE.lockouts.clear()
            elif path == "/__mock/reset":
                STATE.conversations.clear()
                STATE.sessions.clear()
            else:
                return self.error(404, "not_found", "Not found.")
        return self.send_json(200, {"ok": True})

    # ---- accounts ----
    def login(self):
        if not STATE.accounts:
            return self.error(404, "not_found", "Accounts are not enabled on this appliance.")
        body = self.read_json()
        if not isinstance(body, dict) or not isinstance(body.get("user"), str) \
                or not isinstance(body.get("password"), str):
            return self.error(400, "invalid_request", "Send a user name and a password.")
        user, password = body["user"].strip(), body["password"]
        now = time.time()
        with STATE.lock:
            lock = STATE.lockouts.get(user)
            if lock and lock["until"] > now:
                left = math.ceil(lock["until"] - now)
                STATE.logins.append((user, "locked_out"))
                return self.error(429, "locked_out", f"Too many failed logins; try again in {left} s.",
                                  {"Retry-After": str(left)}, {"retry_after_s": left})
            if TEST_USERS.get(user) != password:
                STATE.failures[user] = STATE.failures.get(user, 0) + 1
                if STATE.failures[user] >= LOCKOUT_AFTER:
                    count = (lock or {}).get("count", 0) + 1
                    wait = LOCKOUT_BASE_S * 2 ** (count - 1)
                    STATE.lockouts[user] = {"until": now + wait, "count": count}
                    STATE.failures[user] = 0
                    STATE.logins.append((user, "locked_out"))
                    return self.error(429, "locked_out", f"Too many failed logins; try again in {wait} s.",
                                      {"Retry-After": str(wait)}, {"retry_after_s": wait})
                STATE.logins.append((user, "failed"))
                return self.error(401, "login_failed", "The user name or the password is wrong.")
            STATE.failures.pop(user, None)
            token = secrets.token_hex(32)
            STATE.sessions[token] = {"user": user, "seen": now}
            STATE.logins.append((user, "ok"))
        cookie = f"{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
        return self.send_json(200, {"user": user}, {"Set-Cookie": cookie})

    # ---- export ----
    def export(self, cid, owner):
        body = self.read_json()
        if not isinstance(body, dict) or body.get("format") not in ("markdown", "print") or set(body) - {"format"}:
            return self.error(400, "invalid_request", 'format must be "markdown" or "print".')
        with STATE.lock:
            conv = self.conversation(cid, owner)
            if conv is None:
                return self.not_found_conversation()
            markdown = export_markdown(conv)
            STATE.exports.append({"conversation": cid, "format": body["format"], "owner": owner})
        return self.send_json(200, {"markdown": markdown})

    # ---- chat ----
    def chat_error(self, message):
        return self.error(400, "invalid_request", message)

    def chat(self, owner):
        n = int(self.headers.get("Content-Length") or 0)
        if n > STATE.max_body_bytes:
            self.rfile.read(n)  # the client finishes sending and gets the sentence, as from the daemon
            return self.error(413, "body_too_large",
                              f"The request body is larger than {STATE.max_body_bytes // 1024} KiB; "
                              "shorten the message or start a new conversation.")
        body = self.read_json()
        if not isinstance(body, dict):
            return self.error(400, "invalid_json", "The request body is not a JSON object.")
        unknown = set(body) - (LEGACY_CHAT_FIELDS if STATE.legacy else CHAT_FIELDS)
        if unknown and STATE.legacy:  # serde's deny_unknown_fields, as the daemon reports it
            return self.error(400, "invalid_json", f"unknown field `{sorted(unknown)[0]}`")
        if unknown:
            return self.chat_error(f"unknown field `{sorted(unknown)[0]}`")
        cid = body.get("conversation_id")
        message = body.get("message")
        thinking = body.get("thinking", False)
        style = body.get("style")
        language = body.get("language", "en")
        regenerate = body.get("regenerate", False)
        replace_last = body.get("replace_last", False)
        if cid is not None and not isinstance(cid, str) or not isinstance(message, str):
            return self.error(400, "invalid_json", "conversation_id must be a string or null and message a string.")
        if not isinstance(thinking, bool) or not isinstance(regenerate, bool) or not isinstance(replace_last, bool):
            return self.error(400, "invalid_json", "thinking, regenerate and replace_last must be true or false.")
        if style is not None and style not in STYLES:
            return self.chat_error(f"style must be one of {', '.join(STYLES)}.")
        if language not in ("en", "zh"):
            return self.chat_error('language must be "en" or "zh".')
        mnt = body.get("max_new_tokens")
        if mnt is not None and (not isinstance(mnt, int) or isinstance(mnt, bool) or not 1 <= mnt <= MAX_NEW_TOKENS):
            return self.chat_error(f"max_new_tokens must be between 1 and {MAX_NEW_TOKENS} on this appliance.")
        temp = body.get("temperature")
        if temp is not None and (not isinstance(temp, (int, float)) or isinstance(temp, bool) or not 0 <= temp <= 2):
            return self.chat_error("temperature must be between 0 and 2 (0 answers deterministically).")
        if regenerate and replace_last:
            return self.chat_error("regenerate and replace_last cannot be combined.")
        if (regenerate or replace_last) and cid is None:
            return self.chat_error("regenerate and replace_last need a conversation_id.")
        if not regenerate and not message.strip():
            return self.chat_error("The message is empty; type a question.")
        images = []
        if "images" in body:
            images, refusal = check_images(body["images"], STATE.max_images, STATE.max_image_bytes)
            if refusal is None and images and STATE.images is not True:
                refusal = ("image_invalid", "The model loaded does not read images; send the question without them.")
            if refusal is not None:
                return self.error(400, *refusal)
            body = dict(body, images=images)  # what was received, never the image itself
        with STATE.lock:
            STATE.chats += 1
            STATE.chat_bodies.append(body)
        if STATE.model_state == "loading":
            return self.error(503, "loading", "The model is still loading; try again in a few seconds.",
                              {"Retry-After": str(RETRY_AFTER_S)})
        if STATE.model_state == "failed":
            return self.error(503, "model_failed", "The model could not be loaded; tell the administrator.")
        msg = message.lower()
        if "busy" in msg:
            with STATE.lock:
                STATE.rejected += 1
            return self.error(503, "queue_full", "The model is busy.", {"Retry-After": "7"})
        if "mystery" in msg:
            return self.error(500, "mystery_failure", "A test-only failure the UI has no sentence for.")

        with STATE.lock:
            if cid is None:
                cid = uuid.uuid4().hex
                conv = {"owner": owner, "style": style or STATE.default_style, "messages": [],
                        "updated": time.time(), "context": 0, "busy": False, "cancel": False, "attempts": 0}
                STATE.conversations[cid] = conv
            else:
                conv = self.conversation(cid, owner)
                if conv is None:
                    return self.not_found_conversation()
            if conv["busy"]:
                return self.error(409, "conversation_busy", "This conversation is answering; wait or cancel.")
            msgs = conv["messages"]
            if regenerate:
                if not msgs or msgs[-1]["role"] != "assistant":
                    return self.chat_error("There is no answer to regenerate in this conversation.")
                msgs.pop()
                question = msgs[-1]["content"]
                conv["attempts"] += 1
            elif replace_last:
                if not any(m["role"] == "user" for m in msgs):
                    return self.chat_error("There is no question to replace in this conversation.")
                if msgs[-1]["role"] == "assistant":
                    msgs.pop()
                msgs.pop()
                msgs.append({"role": "user", "content": message})
                question = message
                conv["attempts"] = 0
            else:
                msgs.append({"role": "user", "content": message})
                question = message
                conv["attempts"] = 0
            if style is not None:
                conv["style"] = style
            conv["busy"] = True
            conv["cancel"] = False
            attempt = conv["attempts"]
        try:
            self.stream(cid, conv, question, thinking, conv["style"] or "structured", language, attempt, images)
        finally:
            with STATE.lock:
                conv["busy"] = False
                conv["updated"] = time.time()

    def stream(self, cid, conv, question, thinking, style, language, attempt, images=()):
        self.send_response(200)
        self.common_headers()
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        msg = question.lower()
        out = {"reasoning": "", "answer": "", "kept": None}

        def event(name, data):
            self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        def stream(name, text, piece=6, delay=0.004):
            for i in range(0, len(text), piece):
                if conv["cancel"]:
                    return False
                out[name] += text[i:i + piece]
                event(name, {"delta": text[i:i + piece]})
                time.sleep(delay)
            return True

        def keep(answer_done):
            """The turn reaches the history (a cancelled one too, as the daemon does)."""
            if out["kept"] is not None:
                return out["kept"]
            m = {"role": "assistant", "content": out["answer"]}
            if out["reasoning"]:
                m["reasoning"] = out["reasoning"]
            if answer_done:
                m["terms"] = find_terms(question + "\n" + out["answer"])
            with STATE.lock:
                conv["messages"].append(m)
                STATE.served += 1
                if not answer_done:
                    STATE.cancelled_turns += 1
            out["kept"] = m
            return m

        def drop_question():
            with STATE.lock:
                if conv["messages"] and conv["messages"][-1]["role"] == "user":
                    conv["messages"].pop()

        try:
            event("conversation", {"conversation_id": cid})
            if "context full" in msg:
                drop_question()
                event("error", {"code": "context_full",
                                "message": "This conversation has reached the model's context limit. "
                                           "Start a new conversation to continue."})
                return
            used_before = conv["context"]
            unterminated = False
            finish = "stop"
            topic = "mi" if ("heart attack" in msg or "心梗" in msg) else "pneumonia"
            if "xss" in msg:
                stream("answer", XSS_ANSWER)
                completion = 60
            elif "slow" in msg:
                if thinking:
                    stream("reasoning", "Thinking slowly about the question, step by step. " * 2, delay=0.06)
                for k in range(400):
                    if not stream("answer", f"word{k} ", piece=64):
                        break
                    time.sleep(0.05)
                completion = 400
                if conv["cancel"]:
                    finish = "cancelled"
            elif "unterminated" in msg:
                stream("reasoning", REASONING["en"] + " And then I kept thinking without closing")
                unterminated = True
                finish = "length"
                completion = 120
            elif "engine error" in msg:
                if thinking:
                    stream("reasoning", "Starting to think about it…")
                drop_question()
                event("error", {"code": "engine_error",
                                "message": "The engine failed while generating; send the message again."})
                return
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
                out["reasoning"], out["answer"] = "先想一想。", "分段测试：中文 **粗体** ok"
                completion = 12
            elif "nearly full" in msg:
                stream("answer", "Short answer.")
                used_before = int(CONTEXT_LIMIT * 0.85)
                completion = 4
            else:
                if thinking:
                    stream("reasoning", (REASONING_MI if topic == "mi" else REASONING)[language])
                answer = ANSWERS[(topic, language, style)]
                if images:
                    kinds = [IMAGE_MIMES[i["mime"]] for i in images]
                    answer = (f"Images read: {', '.join(kinds)}.\n\n" if language == "en"
                              else f"已读取图像：{'、'.join(kinds)}。\n\n") + answer
                if attempt:
                    answer += ("\n\n_Regenerated answer, attempt {0}._" if language == "en"
                               else "\n\n_重新生成的回答，第 {0} 次。_").format(attempt + 1)
                stream("answer", answer)
                completion = 180 if style == "structured" else 40
            done = finish != "cancelled"
            m = keep(done)
            prompt = 40 + len(msg) // 4
            used = used_before + prompt + completion
            conv["context"] = used
            event("done", {"prompt_tokens": prompt, "completion_tokens": completion, "tokens_per_s": 42.5,
                           "time_to_first_token_ms": 180, "context_used": used, "context_limit": CONTEXT_LIMIT,
                           "finish_reason": finish, "thinking_unterminated": unterminated,
                           "terms": m.get("terms", [])})
        except (BrokenPipeError, ConnectionResetError):
            with STATE.lock:
                STATE.disconnects += 1
            if out["answer"] or out["reasoning"]:
                keep(False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--web", required=True, help="directory holding the web UI")
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--accounts", action="store_true",
                    help=f"require a login (test users: {', '.join(TEST_USERS)})")
    ap.add_argument("--legacy", action="store_true",
                    help="answer as the daemon did before the conversation API")
    args = ap.parse_args()
    Handler.web_root = os.path.abspath(args.web)
    STATE.accounts = args.accounts
    STATE.legacy = args.legacy
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

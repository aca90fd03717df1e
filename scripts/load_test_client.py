#!/usr/bin/env python3
"""Load-test client for scripts/load-test.sh (standard library only).

Talks to medgemmad through the loopback forwarder (127.0.0.1 only) and
prints numbers; judges nothing (a load test, not a timed test):

1. held:  N concurrent conversations, each of T turns: how many requests
   were answered (200 + done) and the time to first token, p50 and p99.
2. limit: a burst of B simultaneous new chats against a queue of Q: how
   many got 200 and how many 503 (with Retry-After).
"""

import argparse
import http.client
import json
import sys
import threading
import time
from urllib.parse import urlparse


def chat(host, port, conversation_id, message, max_new_tokens, timeout):
    """One /api/chat turn. Returns (status, conversation_id, ttft_s, done|None, retry_after)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = json.dumps({"conversation_id": conversation_id, "message": message, "max_new_tokens": max_new_tokens})
    t0 = time.monotonic()
    conn.request("POST", "/api/chat", body=body, headers={
        "Content-Type": "application/json",
        "Origin": f"http://{host}:{port}",
    })
    resp = conn.getresponse()
    if resp.status != 200:
        resp.read()
        conn.close()
        return resp.status, conversation_id, None, None, resp.getheader("Retry-After")
    ttft = None
    done = None
    event = None
    for raw in resp:
        line = raw.decode("utf-8").rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            if event == "conversation":
                conversation_id = data["conversation_id"]
            elif event in ("reasoning", "answer") and ttft is None:
                ttft = time.monotonic() - t0
            elif event == "done":
                done = data
            elif event == "error":
                done = {"error": data}
    conn.close()
    return 200, conversation_id, ttft, done, None


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def run_parallel(n, target):
    results = [None] * n
    def worker(i):
        try:
            results[i] = target(i)
        except Exception as e:  # noqa: BLE001 - a load test reports failures, it does not stop
            results[i] = e
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--queue", type=int, required=True, help="the daemon's engine.queue_length")
    ap.add_argument("--conversations", type=int, default=0, help="N (default: queue + 1)")
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--burst", type=int, default=0, help="B (default: 3 x (queue + 1))")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=300.0, help="per request, seconds")
    args = ap.parse_args()
    u = urlparse(args.url)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("load test: loopback only")
    host, port = u.hostname, u.port
    n = args.conversations or args.queue + 1
    burst = args.burst or 3 * (args.queue + 1)

    print(f"load test: {args.url}, queue_length={args.queue}, max_new_tokens={args.max_new_tokens}")

    # 1. N concurrent conversations, T turns each.
    def conversation(i):
        cid, out = None, []
        for t in range(args.turns):
            status, cid, ttft, done, _ = chat(host, port, cid, f"Conversation {i}, question {t}: name a colour.",
                                              args.max_new_tokens, args.timeout)
            out.append((status, ttft, done))
            if status != 200:
                break
        return out
    t0 = time.monotonic()
    results = run_parallel(n, conversation)
    wall = time.monotonic() - t0
    turns = [r for conv in results if isinstance(conv, list) for r in conv]
    errors = [r for r in results if isinstance(r, Exception)]
    ok = [r for r in turns if r[0] == 200 and r[2] and "error" not in r[2]]
    ttfts = [r[1] for r in ok if r[1] is not None]
    tps = [r[2]["tokens_per_s"] for r in ok]
    print(f"held: {n} concurrent conversations x {args.turns} turns: {len(ok)}/{n * args.turns} requests answered "
          f"(statuses {sorted({r[0] for r in turns})}, client errors {len(errors)}) in {wall:.1f} s")
    print(f"held: time to first token p50 {percentile(ttfts, 50) * 1000:.0f} ms, p99 {percentile(ttfts, 99) * 1000:.0f} ms "
          f"(includes queueing behind {n - 1} others); decode {percentile(tps, 50):.1f} tokens/s p50")

    # 2. A burst past the queue limit.
    t0 = time.monotonic()
    results = run_parallel(burst, lambda i: chat(host, port, None, f"Burst {i}: say yes.", args.max_new_tokens, args.timeout))
    wall = time.monotonic() - t0
    statuses = [r[0] if not isinstance(r, Exception) else "error" for r in results]
    retry = sorted({r[4] for r in results if not isinstance(r, Exception) and r[0] == 503})
    counts = {s: statuses.count(s) for s in sorted(set(statuses), key=str)}
    print(f"limit: burst of {burst} against 1 running + {args.queue} queued: "
          + ", ".join(f"{k}: {v}" for k, v in counts.items())
          + f" (Retry-After {retry}) in {wall:.1f} s")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())

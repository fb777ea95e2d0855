#!/usr/bin/env python3
"""Bounded load test of a `glq serve` server on this machine (standard library only).

Each phase runs C concurrent clients (threads with one keep-alive connection each) that send R
requests in total to /v1/completions or /v1/chat/completions, then reports requests/s,
completion tokens/s, p50/p90/p99 latency (and time to first token when streaming), and the
count of failed and lost requests. A request is failed when the answer is not a 200 with a
well-formed body whose usage counts match, lost when no answer came at all (connection error or
timeout). Several phases (--clients 1,8,64) are run one after the other and compared with the
first one.

Only loopback addresses are accepted: this tool never sends traffic off the machine. Every
phase is bounded in requests and in time (--phase-timeout).

  python3 tools/loadtest.py --url http://127.0.0.1:8080 --clients 64 --requests 320 --max-tokens 16
  python3 tools/loadtest.py --clients 1,8 --requests-per-client 4 --max-tokens 64 --ignore-eos
"""

import argparse
import http.client
import ipaddress
import json
import socket
import sys
import threading
import time
import urllib.parse

SUBJECTS = [
    "the history of the printing press", "how bees make honey", "a walk along a river at dawn",
    "why the sky is blue", "the rules of chess", "a recipe for bread", "the planets of the solar system",
    "a small town in winter", "how a steam engine works", "the life of a lighthouse keeper",
    "the first flight across the Atlantic", "a market day in a busy city", "the migration of birds",
]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def loopback_only(host):
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def make_body(args, i):
    subject = SUBJECTS[i % len(SUBJECTS)]
    body = {"max_tokens": args.max_tokens, "temperature": args.temperature, "seed": i}
    if args.ignore_eos:
        body["ignore_eos"] = True
    if args.chat:
        body["messages"] = [{"role": "user", "content": f"Write a few sentences about {subject} (request {i})."}]
    else:
        body["prompt"] = f"Here are a few sentences about {subject} (note {i}):"
    if args.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def check_answer(args, status, raw, first_byte_s):
    """Returns (completion_tokens, error or None)."""
    if status != 200:
        return 0, f"HTTP {status}: {raw[:200]!r}"
    text = raw.decode("utf-8", errors="replace")
    if not args.stream:
        doc = json.loads(text)
        choice = doc["choices"][0]
        if choice.get("finish_reason") not in ("stop", "length"):
            return 0, f"finish_reason {choice.get('finish_reason')!r}"
        usage = doc["usage"]
        if usage["total_tokens"] != usage["prompt_tokens"] + usage["completion_tokens"]:
            return 0, "usage does not add up"
        return usage["completion_tokens"], None
    events = [line[6:] for line in text.split("\n") if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return 0, "stream not terminated by data: [DONE]"
    usage = None
    finish = None
    for e in events[:-1]:
        doc = json.loads(e)
        if "error" in doc:
            return 0, f"error event: {doc['error'].get('message')}"
        if doc.get("usage"):
            usage = doc["usage"]
        for c in doc.get("choices", []):
            if c.get("finish_reason"):
                finish = c["finish_reason"]
    if finish not in ("stop", "length"):
        return 0, f"stream finish_reason {finish!r}"
    if usage is None:
        return 0, "no usage chunk"
    return usage["completion_tokens"], None


class Phase:
    def __init__(self, args, clients, requests):
        self.args = args
        self.clients = clients
        self.requests = requests
        self.lock = threading.Lock()
        self.next = 0
        self.latencies = []
        self.ttft = []
        self.tokens = 0
        self.ok = 0
        self.failed = 0
        self.lost = 0
        self.errors = {}

    def take(self):
        with self.lock:
            if self.next >= self.requests:
                return None
            self.next += 1
            return self.next - 1

    def record_error(self, kind, message):
        with self.lock:
            if kind == "failed":
                self.failed += 1
            else:
                self.lost += 1
            self.errors[message] = self.errors.get(message, 0) + 1

    def worker(self, deadline):
        a = self.args
        conn = None
        headers = {"Content-Type": "application/json"}
        if a.api_key:
            headers["Authorization"] = f"Bearer {a.api_key}"
        path = a.base_path + ("/v1/chat/completions" if a.chat else "/v1/completions")
        while time.monotonic() < deadline:
            i = self.take()
            if i is None:
                break
            body = json.dumps(make_body(a, i))
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(a.host, a.port, timeout=a.request_timeout)
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                first = None
                chunks = []
                while True:
                    piece = resp.read1(65536) if a.stream else resp.read()
                    if not piece:
                        break
                    if first is None:
                        first = time.monotonic() - t0
                    chunks.append(piece)
                    if not a.stream:
                        break
                raw = b"".join(chunks)
                elapsed = time.monotonic() - t0
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                tokens, err = check_answer(a, resp.status, raw, first)
            except (OSError, http.client.HTTPException, socket.timeout) as e:
                if conn is not None:
                    conn.close()
                conn = None
                self.record_error("lost", f"{type(e).__name__}: {e}")
                continue
            except (ValueError, KeyError, IndexError, TypeError) as e:
                self.record_error("failed", f"malformed answer: {type(e).__name__}: {e}")
                continue
            if err:
                self.record_error("failed", err)
                continue
            with self.lock:
                self.ok += 1
                self.tokens += tokens
                self.latencies.append(elapsed)
                if a.stream and first is not None:
                    self.ttft.append(first)
        if conn is not None:
            conn.close()

    def run(self):
        deadline = time.monotonic() + self.args.phase_timeout
        threads = [threading.Thread(target=self.worker, args=(deadline,), daemon=True) for _ in range(self.clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()) + self.args.request_timeout + 5)
        wall = time.monotonic() - t0
        unsent = self.requests - self.next
        result = {
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "failed": self.failed,
            "lost": self.lost,
            "not_sent": unsent,  # the phase deadline came first
            "wall_s": round(wall, 3),
            "requests_per_s": round(self.ok / wall, 3) if wall > 0 else 0.0,
            "completion_tokens": self.tokens,
            "tokens_per_s": round(self.tokens / wall, 2) if wall > 0 else 0.0,
            "latency_ms": {
                "p50": round(1000 * percentile(self.latencies, 0.50), 1),
                "p90": round(1000 * percentile(self.latencies, 0.90), 1),
                "p99": round(1000 * percentile(self.latencies, 0.99), 1),
                "max": round(1000 * max(self.latencies), 1) if self.latencies else None,
            },
            "errors": self.errors,
        }
        if self.args.stream:
            result["ttft_ms"] = {"p50": round(1000 * percentile(self.ttft, 0.50), 1),
                                 "p99": round(1000 * percentile(self.ttft, 0.99), 1)}
        return result


def server_health(args):
    conn = http.client.HTTPConnection(args.host, args.port, timeout=10)
    try:
        conn.request("GET", args.base_path + "/health")
        resp = conn.getresponse()
        return json.loads(resp.read()) if resp.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server root (loopback only)")
    p.add_argument("--api-key", default="")
    p.add_argument("--clients", default="64", help="concurrent clients; a comma list runs one phase each")
    p.add_argument("--requests", type=int, default=0, help="requests per phase (default: 4 per client, at least 16)")
    p.add_argument("--requests-per-client", type=int, default=0, help="requests per phase = this x clients")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--ignore-eos", action="store_true", help="every answer has exactly max_tokens tokens")
    p.add_argument("--stream", action="store_true")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request")
    p.add_argument("--phase-timeout", type=float, default=900.0, help="seconds per phase at most")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = p.parse_args()

    u = urllib.parse.urlparse(args.url)
    if u.scheme != "http" or not u.hostname:
        p.error("--url must be http://HOST:PORT")
    if not loopback_only(u.hostname):
        p.error(f"--url host {u.hostname} is not a loopback address; this tool only talks to this machine")
    args.host = u.hostname
    args.port = u.port or 80
    args.base_path = u.path.rstrip("/")
    try:
        phases = [int(x) for x in args.clients.split(",") if x.strip()]
    except ValueError:
        p.error("--clients must be a number or a comma-separated list of numbers")
    if not phases or min(phases) < 1 or max(phases) > 1024:
        p.error("--clients must be from 1 to 1024")

    before = server_health(args)
    if before is None:
        log(f"loadtest: no server answering GET {args.url}/health")
        return 2
    log(f"loadtest: {args.url} serves {before.get('model')} ({before.get('slots_total')} slots, queue {before.get('queue_capacity')})")
    results = []
    for c in phases:
        n = args.requests or (args.requests_per_client * c if args.requests_per_client else max(16, 4 * c))
        log(f"loadtest: phase of {c} clients, {n} requests, max_tokens {args.max_tokens}"
            f"{', streamed' if args.stream else ''}{', chat' if args.chat else ''} ...")
        r = Phase(args, c, n).run()
        results.append(r)
        lat = r["latency_ms"]
        log(f"  {r['ok']}/{r['requests']} ok, {r['failed']} failed, {r['lost']} lost, {r['not_sent']} not sent "
            f"in {r['wall_s']:.2f} s: {r['requests_per_s']:.2f} requests/s, {r['tokens_per_s']:.1f} tokens/s, "
            f"latency p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms"
            + (f", first token p50 {r['ttft_ms']['p50']:.0f} ms" if args.stream else ""))
        for msg, count in sorted(r["errors"].items(), key=lambda kv: -kv[1])[:5]:
            log(f"    {count} x {msg}")
    base = results[0]["tokens_per_s"]
    for r in results[1:]:
        r["tokens_per_s_vs_first_phase"] = round(r["tokens_per_s"] / base, 2) if base > 0 else None
        log(f"loadtest: {r['clients']} clients: {r['tokens_per_s_vs_first_phase']} x the tokens/s of {results[0]['clients']}")
    after = server_health(args)
    out = {"url": args.url, "model": before.get("model"), "max_tokens": args.max_tokens, "stream": args.stream,
           "chat": args.chat, "ignore_eos": args.ignore_eos, "temperature": args.temperature, "phases": results,
           "server_before": before, "server_after": after}
    if after is not None:
        log(f"loadtest: server max batch {after.get('max_batch')}, refused {after.get('requests_refused')}, "
            f"cancelled {after.get('requests_cancelled')}, failed {after.get('requests_failed')}")
    if args.json:
        print(json.dumps(out))
    bad = sum(r["failed"] + r["lost"] + r["not_sent"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Load benchmark for an OpenAI-compatible server (kvlm serve, or llama-server).

N concurrent streaming clients send chat-free completions that share a system-prompt-like prefix;
measured: aggregate generated tokens/s, time to first token p50/p99, inter-token latency p50/p99
(between content events), and the prefix-cache hit rate reported in usage.cached_tokens.

    bench/serve_bench.py --url http://127.0.0.1:8080 --clients 1,4,16 --requests 2 --max-tokens 64

Standard library only. Not a test: numbers depend on the machine and its load.
"""
import argparse
import http.client
import json
import threading
import time
import urllib.parse

PREFIX = ("You are a helpful assistant who tells short stories about robots, the sea and the stars. "
          "Every story has a beginning, a middle and an end, and a small lesson. ") * 4


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def one_request(url, i, max_tokens, out):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({"prompt": PREFIX + "Story %d:" % i, "max_tokens": max_tokens, "temperature": 0.7,
                       "seed": i, "stream": True, "stream_options": {"include_usage": True},
                       "logit_bias": {"2": -100}})
    t0 = time.monotonic()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    buf = b""
    times = []
    usage = None
    while True:
        chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: "):
                continue
            data = ev[6:]
            if data == b"[DONE]":
                continue
            d = json.loads(data)
            if d.get("usage"):
                usage = d["usage"]
            for ch in d.get("choices", []):
                if ch.get("text"):
                    times.append(time.monotonic())
    conn.close()
    out.append({"t0": t0, "times": times, "usage": usage})


def run(url, clients, per_client, max_tokens):
    results = []
    lock = threading.Lock()

    def worker(c):
        local = []
        for k in range(per_client):
            one_request(url, c * 1000 + k, max_tokens, local)
        with lock:
            results.extend(local)

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.monotonic() - t0
    gen = sum(r["usage"]["completion_tokens"] for r in results if r["usage"])
    prompt = sum(r["usage"]["prompt_tokens"] for r in results if r["usage"])
    cached = sum((r["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                 for r in results if r["usage"])
    ttft = [r["times"][0] - r["t0"] for r in results if r["times"]]
    itl = [b - a for r in results for a, b in zip(r["times"], r["times"][1:])]
    return {"clients": clients, "requests": len(results), "tok_s": gen / wall, "ttft_p50_ms": pct(ttft, 50) * 1e3,
            "ttft_p99_ms": pct(ttft, 99) * 1e3, "itl_p50_ms": pct(itl, 50) * 1e3, "itl_p99_ms": pct(itl, 99) * 1e3,
            "hit_rate": cached / prompt if prompt else 0.0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()
    print("| clients | requests | gen tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | prefix hit rate |")
    print("|---|---|---|---|---|---|---|---|")
    for c in [int(x) for x in a.clients.split(",")]:
        r = run(a.url, c, a.requests, a.max_tokens)
        print("| %d | %d | %.0f | %.1f | %.1f | %.2f | %.2f | %.2f |" % (
            r["clients"], r["requests"], r["tok_s"], r["ttft_p50_ms"], r["ttft_p99_ms"], r["itl_p50_ms"],
            r["itl_p99_ms"], r["hit_rate"]))


if __name__ == "__main__":
    main()

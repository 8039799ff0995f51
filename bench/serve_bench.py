#!/usr/bin/python3
"""Load benchmark for OpenAI-compatible servers (kvlm serve, llama-server), side by side.

Load test: N concurrent streaming clients (each sends --requests requests one after another) whose
prompts share a system-prompt-like prefix; measured per N: aggregate generated tokens/s (all
completion tokens / wall time), time to first token p50/p99, inter-token latency p50/p99 (the gaps
between content events), and the prefix-cache hit rate (prompt tokens not computed / prompt
tokens: usage.prompt_tokens_details.cached_tokens for kvlm, usage.prompt_tokens - timings.prompt_n
for llama-server).

Prefix test (--prefix-ttft T): time to first token of a prompt of T random token ids + 8 more, cold
(a prefix never seen) and then cached (the same prefix, 8 other tokens after it), K times.

Either against a running server:

    bench/serve_bench.py --url http://127.0.0.1:8080 --clients 1,4,16 --requests 2 --max-tokens 64

or starting the servers itself, one at a time, interleaved (engine after engine for every N, for
--rounds rounds; medians over the rounds). {port} and {np} in a command are replaced by a free
port and the slot count N:

    bench/serve_bench.py --rounds 3 --clients 1,4,16,64 \\
      --launch "kvlm=build/bin/kvlm serve -m M.gguf -t 2 -c 1024 --parallel {np} --port {port}" \\
      --launch "llama=llama-server -m M.gguf -t 2 -c $((1024*{np})) -np {np} -cb --port {port}"

(the `-c` of llama-server is the total over its slots: write the product out, e.g. `-c {ctx_np}`
where {ctx_np} is --ctx-per-slot times N). Standard library only. Not a test: the numbers depend on
the machine and on what else runs on it.
"""
import argparse
import http.client
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.parse

PREFIX = ("You are a helpful assistant who tells short stories about robots, the sea and the stars. "
          "Every story has a beginning, a middle and an end, and a small lesson. ") * 4
# sampling that both servers honour; EOS banned (and llama-server's ignore_eos) so that every
# request generates max_tokens tokens
EXTRA = {"logit_bias": {"2": -100}, "ignore_eos": True, "cache_prompt": True}


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def stream_request(url, body):
    """One streaming /v1/completions request: arrival times of the content events and the usage."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=900)
    data = json.dumps(dict(body, stream=True, stream_options={"include_usage": True}, **EXTRA))
    t0 = time.monotonic()
    conn.request("POST", "/v1/completions", data, {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError("HTTP %d: %s" % (r.status, r.read()[:300]))
    buf = b""
    times = []
    usage = timings = None
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev[6:] == b"[DONE]":
                continue
            d = json.loads(ev[6:])
            if "error" in d:
                raise RuntimeError("error event: %s" % d["error"])
            usage = d.get("usage") or usage
            timings = d.get("timings") or timings
            if any(ch.get("text") for ch in d.get("choices", [])):
                times.append(time.monotonic())
    conn.close()
    return {"t0": t0, "times": times, "usage": usage, "timings": timings}


def cached_tokens(res):
    u = res["usage"] or {}
    det = u.get("prompt_tokens_details") or {}
    if "cached_tokens" in det:
        return det["cached_tokens"]
    if res["timings"] and "prompt_n" in res["timings"]:
        return u.get("prompt_tokens", 0) - res["timings"]["prompt_n"]
    return 0


def load_test(url, clients, per_client, max_tokens):
    results, errors = [], []
    lock = threading.Lock()

    def worker(c):
        local = []
        try:
            for k in range(per_client):
                i = c * 1000 + k
                local.append(stream_request(url, {"prompt": PREFIX + "Story %d:" % i, "max_tokens": max_tokens,
                                                  "temperature": 0.7, "seed": i}))
        except Exception as e:  # noqa: BLE001 - counted and reported
            with lock:
                errors.append(repr(e))
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
    cached = sum(cached_tokens(r) for r in results if r["usage"])
    ttft = [r["times"][0] - r["t0"] for r in results if r["times"]]
    itl = [b - a for r in results for a, b in zip(r["times"], r["times"][1:])]
    if errors:
        print("# %d errors, the first: %s" % (len(errors), errors[0]), flush=True)
    return {"requests": len(results), "errors": len(errors), "tok_s": gen / wall, "gen": gen,
            "ttft_p50": pct(ttft, 50) * 1e3, "ttft_p99": pct(ttft, 99) * 1e3, "itl_p50": pct(itl, 50) * 1e3,
            "itl_p99": pct(itl, 99) * 1e3, "hit": cached / prompt if prompt else 0.0}


def prefix_test(url, n_prefix, trials, vocab, seed):
    rng = random.Random(seed)
    cold, warm = [], []
    for _ in range(trials):
        prefix = [rng.randrange(1000, vocab - 1000) for _ in range(n_prefix)]
        for out in (cold, warm):
            tail = [rng.randrange(1000, vocab - 1000) for _ in range(8)]
            r = stream_request(url, {"prompt": prefix + tail, "max_tokens": 2, "temperature": 0})
            out.append((r["times"][0] - r["t0"]) * 1e3)
    return statistics.median(cold), statistics.median(warm)


# ------------------------------------------------------------ launching servers

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Launched:
    def __init__(self, cmd):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="serve-bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(shlex.split(cmd.replace("{port}", str(self.port))), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.url = "http://127.0.0.1:%d" % self.port
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited: %s\n%s" % (cmd, open(self.log.name, errors="replace").read()))
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    c.close()
                    break
                c.close()
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("server did not become healthy: " + cmd)
            time.sleep(0.1)

    def cpu_seconds(self):
        """User + system CPU time of the server process so far (all its threads)."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server (instead of --launch)")
    ap.add_argument("--launch", action="append", default=[], metavar="NAME=CMD",
                    help="a server command with {port}, {np} and {ctx_np} (repeatable)")
    ap.add_argument("--ctx-per-slot", type=int, default=1024, help="for {ctx_np} (default 1024)")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of every engine and N (medians)")
    ap.add_argument("--prefix-ttft", type=int, default=0, metavar="T",
                    help="also the cold / cached TTFT of a T-token prefix (1 slot servers)")
    ap.add_argument("--prefix-trials", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=32000, help="the model's vocabulary (random prefixes)")
    ap.add_argument("--skip-load", action="store_true", help="only the prefix test")
    a = ap.parse_args()
    engines = [tuple(x.split("=", 1)) for x in a.launch] or [("server", None)]
    if not a.launch and not a.url:
        ap.error("give --url or --launch")
    counts = [int(x) for x in a.clients.split(",")]

    def with_server(cmd, np, fn):
        if cmd is None:
            return fn(a.url)
        s = Launched(cmd.replace("{np}", str(np)).replace("{ctx_np}", str(a.ctx_per_slot * np)))
        try:
            stream_request(s.url, {"prompt": PREFIX + "warm-up", "max_tokens": 4, "temperature": 0})
            cpu0 = s.cpu_seconds()
            r = fn(s.url)
            if isinstance(r, dict):
                r["cpu_s"] = s.cpu_seconds() - cpu0
            return r
        finally:
            s.stop()

    keys = ("tok_s", "tok_cpu", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99", "hit")
    if not a.skip_load:
        rows = {}
        for rnd in range(a.rounds):
            for n in counts:
                for name, cmd in engines:
                    r = with_server(cmd, n, lambda url: load_test(url, n, a.requests, a.max_tokens))
                    # generated tokens per CPU-second of the server process: what the server costs,
                    # less sensitive than tokens/s to what else takes the cores
                    r["tok_cpu"] = r["gen"] / r["cpu_s"] if r.get("cpu_s") else float("nan")
                    rows.setdefault((n, name), []).append(r)
                    print("# round %d, %d clients, %s: %s" % (rnd + 1, n, name,
                          " ".join("%s=%.2f" % (k, r[k]) for k in keys + ("errors",))), flush=True)
        print("| clients | server | requests | errors | gen tok/s | tok per CPU-s | TTFT p50 ms | TTFT p99 ms | "
              "ITL p50 ms | ITL p99 ms | prefix hit rate |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for n in counts:
            for name, _ in engines:
                rs = rows[(n, name)]
                med = {k: statistics.median(r[k] for r in rs) for k in keys}
                print("| %d | %s | %d | %d | %.1f | %.1f | %.1f | %.1f | %.2f | %.2f | %.2f |" % (
                    n, name, sum(r["requests"] for r in rs), sum(r["errors"] for r in rs), med["tok_s"],
                    med["tok_cpu"], med["ttft_p50"], med["ttft_p99"], med["itl_p50"], med["itl_p99"], med["hit"]))
            if len(engines) == 2:
                # the A/B ratios of each round (both measured back to back), then their medians
                x, y = rows[(n, engines[0][0])], rows[(n, engines[1][0])]
                rt = [p["tok_s"] / q["tok_s"] for p, q in zip(x, y)]
                rc = [p["tok_cpu"] / q["tok_cpu"] for p, q in zip(x, y)]
                print("| %d | %s / %s | | | **%.2fx** (%s) | **%.2fx** (%s) | | | | | |" % (
                    n, engines[0][0], engines[1][0], statistics.median(rt), ", ".join("%.2f" % v for v in rt),
                    statistics.median(rc), ", ".join("%.2f" % v for v in rc)))
    if a.prefix_ttft:
        print()
        print("| server | prefix tokens | trials | cold TTFT ms | cached TTFT ms | cold / cached |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, cmd in engines:
            cold, warm = [], []
            for rnd in range(a.rounds):
                c, w = with_server(cmd, 1, lambda url: prefix_test(url, a.prefix_ttft, a.prefix_trials, a.vocab,
                                                                    1000 + rnd))
                cold.append(c)
                warm.append(w)
            c, w = statistics.median(cold), statistics.median(warm)
            print("| %s | %d | %d x %d | %.1f | %.1f | **%.1fx** |" % (name, a.prefix_ttft, a.rounds,
                                                                      a.prefix_trials, c, w, c / w), flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Speculative decoding benchmark: decode tokens/s of `kvlm run` without drafts, with prompt lookup
(--draft-ngram) and with a draft model (-md), interleaved over --rounds rounds (medians), checking
that every drafted run printed exactly the text of the plain run; optionally llama.cpp's
llama-speculative on the same pair of files as another row.

    bench/spec_bench.py --kvlm build/bin/kvlm -m TARGET.gguf [-md DRAFT.gguf] [--ngram 3]
        [--draft-max 8] [-n 128] [-t 1] [-c CTX] [--rounds 5] [--prompt TEXT | --repetitive]
        [--llama-speculative PATH]

--repetitive uses a prompt that quotes a passage and asks for it again (what prompt lookup is for).
Standard library only. Not a test: the numbers depend on the machine and what else runs on it.
"""
import argparse
import re
import statistics
import subprocess
import sys

REPETITIVE = ("Copy the text exactly. Text: The old lighthouse keeper climbed the stairs every evening, "
              "counted the steps, lit the lamp and wrote the weather in his book. Copy: The old lighthouse "
              "keeper climbed the stairs every evening, counted the steps, lit the lamp and wrote the weather "
              "in his book. Copy: The old lighthouse keeper")


def kvlm_run(a, extra):
    cmd = [a.kvlm, "run", "-m", a.model, "-p", a.prompt, "-n", str(a.n), "-t", str(a.threads), "--ignore-eos",
           "--no-escape"] + (["-c", str(a.ctx)] if a.ctx else []) + extra
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        sys.exit("kvlm failed: %s\n%s" % (" ".join(cmd), p.stderr))
    m = re.search(r"generation: (\d+) tokens in ([\d.]+) ms \(([\d.]+) tokens/s\)", p.stderr)
    d = re.search(r"draft: (\d+) tokens drafted, (\d+) accepted .*; (\d+) forward passes for (\d+) tokens", p.stderr)
    acc = int(d.group(2)) / max(1, int(d.group(1))) if d else None
    per_pass = int(d.group(4)) / max(1, int(d.group(3))) if d else 1.0
    return float(m.group(3)), p.stdout, acc, per_pass


def llama_spec(a):
    cmd = [a.llama_speculative, "-m", a.model, "-md", a.draft, "-p", a.prompt, "-n", str(a.n), "-t", str(a.threads),
           "--draft-max", str(a.draft_max), "--temp", "0", "--ignore-eos", "-c", str(a.ctx or 2048)]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    out = p.stdout + p.stderr
    m = re.search(r"decoded\s+(\d+) tokens in\s+([\d.]+) seconds, speed:\s+([\d.]+) t/s", out)
    acc = re.search(r"accept\s*=\s*([\d.]+)%", out)
    if not m:
        sys.exit("llama-speculative: no speed line:\n" + out[-3000:])
    return float(m.group(3)), float(acc.group(1)) / 100 if acc else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kvlm", default="build/bin/kvlm")
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-md", "--draft")
    ap.add_argument("--ngram", type=int, default=3)
    ap.add_argument("--draft-max", type=int, default=8)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-c", "--ctx", type=int, default=0, help="context (default: the model's)")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--repetitive", action="store_true")
    ap.add_argument("--llama-speculative")
    a = ap.parse_args()
    if a.repetitive:
        a.prompt = REPETITIVE
    configs = [("plain", []),
               ("lookup n=%d k=%d" % (a.ngram, a.draft_max),
                ["--draft-ngram", str(a.ngram), "--draft-max", str(a.draft_max)])]
    if a.draft:
        configs.append(("draft model k=%d" % a.draft_max, ["-md", a.draft, "--draft-max", str(a.draft_max)]))
    rates = {name: [] for name, _ in configs}
    info = {}
    ref_text = None
    llama = []
    for _ in range(a.rounds):
        for name, extra in configs:
            rate, text, acc, per_pass = kvlm_run(a, extra)
            if ref_text is None:
                ref_text = text
            elif text != ref_text:
                sys.exit("%s printed a different text than plain decoding" % name)
            rates[name].append(rate)
            info[name] = (acc, per_pass)
        if a.llama_speculative and a.draft:
            llama.append(llama_spec(a))
    base = statistics.median(rates["plain"])
    print("| engine | mode | tokens/s (median of %d) | vs plain | draft acceptance | tokens per pass | same text |"
          % a.rounds)
    print("|---|---|---:|---:|---:|---:|---|")
    for name, _ in configs:
        r = statistics.median(rates[name])
        acc, per_pass = info[name]
        print("| kvlm | %s | %.1f | %.2fx | %s | %.2f | yes |"
              % (name, r, r / base, "" if acc is None else "%.0f%%" % (100 * acc), per_pass))
    if llama:
        r = statistics.median(x for x, _ in llama)
        acc = llama[-1][1]
        print("| llama-speculative | draft model k=%d | %.1f | | %s | | not checked |"
              % (a.draft_max, r, "" if acc is None else "%.0f%%" % (100 * acc)))


if __name__ == "__main__":
    main()

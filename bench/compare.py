#!/usr/bin/env python3
"""Side-by-side prompt (pp) and generation (tg) speed: kvlm bench vs a llama-bench binary built
elsewhere (this script builds nothing), same file, same thread count, interleaved in one run.

usage: bench/compare.py --llama-bench PATH [-p 128] [-n 64] [-r 3] [-t 1,2] MODEL[=LLAMA_MODEL] ...
A MODEL=LLAMA_MODEL pair benchmarks kvlm on MODEL and llama.cpp on LLAMA_MODEL (for formats
llama.cpp cannot read). Prints a markdown table with the ratio kvlm/llama.cpp."""
import argparse, json, os, subprocess, sys

def run_json(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    start = out.index("[")
    return json.loads(out[start:])

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--kvlm", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin", "kvlm"))
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", default="1,2")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    print("| model | threads | test | kvlm t/s | llama.cpp t/s | kvlm/llama.cpp |")
    print("|---|---:|---|---:|---:|---:|")
    for spec in a.models:
        ours, theirs = (spec.split("=", 1) + [spec])[:2]
        for t in [int(x) for x in a.t.split(",")]:
            k = run_json([a.kvlm, "bench", "-m", ours, "-p", str(a.p), "-n", str(a.n), "-r", str(a.r), "-t", str(t), "-o", "json"])
            l = run_json([a.llama_bench, "-m", theirs, "-p", str(a.p), "-n", str(a.n), "-r", str(a.r), "-t", str(t), "-o", "json"])
            for test in ("pp", "tg"):
                kk = [x for x in k if (x["n_prompt"] > 0) == (test == "pp")][0]
                ll = [x for x in l if (x["n_prompt"] > 0) == (test == "pp")][0]
                name = os.path.basename(ours) + ("" if theirs == ours else " (llama.cpp: " + os.path.basename(theirs) + ")")
                n = a.p if test == "pp" else a.n
                print(f"| {name} | {t} | {test}{n} | {kk['avg_ts']:.1f} ± {kk['stddev_ts']:.1f} | "
                      f"{ll['avg_ts']:.1f} ± {ll['stddev_ts']:.1f} | {kk['avg_ts'] / ll['avg_ts']:.2f} |", flush=True)

if __name__ == "__main__":
    sys.exit(main())

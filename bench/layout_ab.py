#!/usr/bin/env python3
"""Decode speed of kvlm with its weights in different layouts, A/B in one run (this script builds
nothing): for each model, `kvlm bench -p 0 -n N -r 3 -t T` once per variant, the variants in turn,
ROUNDS times; prints the median t/s of each variant and the median of the per-round ratios to the
first variant (a ratio within a round compares runs made seconds apart).

usage: bench/layout_ab.py [--rounds 3] [-t 1] [-n 64] [--cpu-time] [--variants SPEC] MODEL ...

Default variants (the environment switches of src/model/model.h):
  file      KVLM_INTERLEAVE=0                     the weights in the file's mapping and row order
  copy-4k   KVLM_INTERLEAVE=copy KVLM_HUGEPAGES=0 an anonymous copy in file order, small pages
  copy-thp  KVLM_INTERLEAVE=copy                  the same copy with transparent huge pages
  il-4k     KVLM_HUGEPAGES=0                      interleaved, small pages
  il-thp    (nothing)                             interleaved, huge pages: the default
SPEC: "name:VAR=V,VAR=V;name:..." to choose others. --cpu-time passes kvlm bench --cpu-time (t/s
over the process's CPU time: for 1 thread on a machine shared with other work)."""
import argparse, json, os, statistics, subprocess, sys

DEFAULT = ("file:KVLM_INTERLEAVE=0;copy-4k:KVLM_INTERLEAVE=copy,KVLM_HUGEPAGES=0;copy-thp:KVLM_INTERLEAVE=copy;"
           "il-4k:KVLM_HUGEPAGES=0;il-thp:")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kvlm", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin", "kvlm"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-t", default="1")
    ap.add_argument("-n", default="64")
    ap.add_argument("--cpu-time", action="store_true")
    ap.add_argument("--variants", default=DEFAULT)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    variants = []
    for v in a.variants.split(";"):
        name, _, envs = v.partition(":")
        variants.append((name, dict(e.split("=", 1) for e in envs.split(",") if e)))
    res = {}
    for r in range(a.rounds):
        for m in a.models:
            for name, env in variants:
                cmd = [a.kvlm, "bench", "-m", m, "-p", "0", "-n", a.n, "-r", "3", "-t", a.t, "-o", "json"]
                cmd += ["--cpu-time"] if a.cpu_time else []
                p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **env))
                if p.returncode:
                    sys.exit(f"{' '.join(cmd)}: {p.stderr[-1000:]}")
                rec = [x for x in json.loads(p.stdout[p.stdout.index("["):]) if x["n_gen"] > 0][0]
                res.setdefault((m, name), []).append(rec["avg_ts"])
        print(f"round {r + 1} of {a.rounds} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    names = [v[0] for v in variants]
    base = names[0]
    print("| model | threads | " + " | ".join(f"{n} t/s" for n in names) + " | " +
          " | ".join(f"{n}/{base}" for n in names[1:]) + " |")
    print("|---|---:|" + "---:|" * (2 * len(names) - 1))
    for m in a.models:
        meds = [statistics.median(res[(m, n)]) for n in names]
        rats = [statistics.median([x / y for x, y in zip(res[(m, n)], res[(m, base)])]) for n in names[1:]]
        print(f"| {os.path.basename(m)} | {a.t} | " + " | ".join(f"{x:.2f}" for x in meds) + " | " +
              " | ".join(f"{x:.2f}" for x in rats) + " |", flush=True)
        print("  runs: " + "; ".join(f"{n} " + " ".join(f"{x:.2f}" for x in res[(m, n)]) for n in names),
              file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side prompt (pp) and generation (tg) speed: kvlm bench vs llama.cpp's llama-bench (and,
optionally, ik_llama.cpp's llama-bench as a third column), binaries built elsewhere (this script
builds nothing), same file, same thread count, the engines in turn model by model.

usage: bench/compare.py --llama-bench PATH [--ik-llama-bench PATH] [--llama-batched-bench PATH]
                        [--kvlm-env VAR=VALUE] [--rounds N]
                        [-p 128] [-n 64] [-r 3] [-t 1,2] [-d 512,2048] MODEL[=LLAMA_MODEL] ...

A MODEL=LLAMA_MODEL pair benchmarks kvlm on MODEL and the llama engines on LLAMA_MODEL (for
formats they cannot read). -d D,...: instead of pp/tg, decode n tokens after D tokens of context
(`kvlm bench -p 0 -n N -d D`; llama.cpp: `llama-batched-bench -npp D -ntg N -npl 1` when
--llama-batched-bench is given, else `llama-bench -d D` of newer llama.cpp; ik_llama.cpp:
`llama-bench -gp D,N`). Prints a markdown table with the ratios kvlm/llama.cpp (and kvlm/ik).
--kvlm-env VAR=VALUE: kvlm once more with that environment (e.g. KVLM_INTERLEAVE=0, the weights in
the file's layout), as a column "kvlm VAR=VALUE" and the ratio kvlm / it (an A/B in the same run).
--rounds N: every engine runs N times in turn for each model and thread count (kvlm, kvlm with the
environment, llama.cpp, ik_llama.cpp, then again), and each cell is the median of the N runs' t/s
(± half the range of the N); N = 1 prints what the tools print (mean ± stddev of their -r reps).
--cpu-time (for a machine shared with other work; meaningful with -t 1): t/s from CPU time instead
of wall time, the same way for every engine: each is run twice, with -r 1 and with -r 1+R, and
t/s = R * tokens / (difference of the two processes' CPU seconds), so loading, warm-up and
the time slices other processes take cancel out. pp and tg are then separate runs."""
import statistics
import argparse, json, os, subprocess, sys


def run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr[-2000:]}")
    return p.stdout


def run_json(cmd, env=None):
    out = run(cmd, env)
    return json.loads(out[out.index("["):])


def cpu_seconds(cmd, env=None):
    """CPU seconds (user + system) of one run of cmd"""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)}: status {status}\n{err[-2000:]}")
    return ru.ru_utime + ru.ru_stime


def cpu_rate(cmd, reps, tokens, env=None):
    """t/s over CPU time: cmd run with -r 1 and with -r 1+reps (cmd ends with its -r argument's slot)"""
    a = cpu_seconds(cmd + ["-r", "1"], env)
    b = cpu_seconds(cmd + ["-r", str(1 + reps)], env)
    return (reps * tokens / (b - a), 0.0) if b > a else None


def jsonl_records(text):
    recs = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def pick(records, test):
    """The pp or tg record of a llama-bench style JSON list."""
    for x in records:
        if (x["n_prompt"] > 0) == (test == "pp") and (x["n_gen"] > 0) == (test == "tg"):
            return x["avg_ts"], x.get("stddev_ts", 0.0)
    raise RuntimeError(f"no {test} record")


def fmt(v):
    return "" if v is None else f"{v[0]:.1f} ± {v[1]:.1f}"


def ratio(a, b):
    return "" if a is None or b is None or b[0] <= 0 else f"{a[0] / b[0]:.2f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-bench", required=True)
    ap.add_argument("--ik-llama-bench", help="ik_llama.cpp's llama-bench: a third column")
    ap.add_argument("--llama-batched-bench", help="llama.cpp's llama-batched-bench, for -d")
    ap.add_argument("--kvlm", default=os.path.join(os.path.dirname(__file__), "..", "build", "bin", "kvlm"))
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=3)
    ap.add_argument("-t", default="1,2")
    ap.add_argument("-d", default="", help="depths (comma-separated): tg -n after that many tokens")
    ap.add_argument("--kvlm-env", help="VAR=VALUE: a second kvlm column run with that environment")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cpu-time", action="store_true", help="t/s from CPU time (see above)")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    depths = [int(x) for x in a.d.split(",") if x]
    ik = a.ik_llama_bench
    kenv = None
    if a.kvlm_env:
        var, _, val = a.kvlm_env.partition("=")
        kenv = dict(os.environ, **{var: val})
    head = "| model | threads | test | kvlm t/s |" + (f" kvlm {a.kvlm_env} t/s |" if kenv else "")
    head += " llama.cpp t/s |" + (" ik_llama.cpp t/s |" if ik else "")
    head += (f" kvlm/({a.kvlm_env}) |" if kenv else "") + " kvlm/llama.cpp |"
    head += " kvlm/ik |" if ik else ""
    print(head)
    print("|---|---:|---|---:|" + ("---:|" if kenv else "") + "---:|" + ("---:|" if ik else "") +
          ("---:|" if kenv else "") + "---:|" + ("---:|" if ik else ""))

    def row(name, t, test, k, l, i, kb=None):
        s = f"| {name} | {t} | {test} | {fmt(k)} |" + (f" {fmt(kb)} |" if kenv else "")
        s += f" {fmt(l)} |" + (f" {fmt(i)} |" if ik else "")
        s += (f" {ratio(k, kb)} |" if kenv else "") + f" {ratio(k, l)} |" + (f" {ratio(k, i)} |" if ik else "")
        print(s, flush=True)

    def med(vals):
        """the median of several runs' (t/s, spread) and half their range"""
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        if len(vals) == 1:
            return vals[0]
        xs = [v[0] for v in vals]
        return (statistics.median(xs), (max(xs) - min(xs)) / 2)

    tests = [x for x, k in (("pp", a.p), ("tg", a.n)) if k > 0]  # -p 0 or -n 0: that test is not run
    for spec in a.models:
        ours, theirs = (spec.split("=", 1) + [spec])[:2]
        name = os.path.basename(ours) + ("" if theirs == ours else " (llama: " + os.path.basename(theirs) + ")")
        for t in [int(x) for x in a.t.split(",")]:
            common = ["-r", str(a.r), "-t", str(t)]
            if not depths and a.cpu_time:
                engines = [("k", a.kvlm, ["bench"], None), ("kb", a.kvlm, ["bench"], kenv),
                           ("l", a.llama_bench, [], None), ("i", ik, [], None)]
                runs = {key: {"pp": [], "tg": []} for key, *_ in engines}
                for _ in range(a.rounds):
                    for key, exe, sub, env in engines:
                        if not exe or (key == "kb" and not kenv):
                            continue
                        base = [exe, *sub, "-m", ours if key in ("k", "kb") else theirs, "-t", str(t)]
                        if a.p > 0:
                            runs[key]["pp"].append(cpu_rate(base + ["-p", str(a.p), "-n", "0"], a.r, a.p, env))
                        if a.n > 0:
                            runs[key]["tg"].append(cpu_rate(base + ["-p", "0", "-n", str(a.n)], a.r, a.n, env))
                for test in tests:
                    n = a.p if test == "pp" else a.n
                    cell = {key: med(v[test]) for key, v in runs.items()}
                    row(name, t, f"{test}{n}", cell["k"], cell["l"], cell["i"] if ik else None, cell["kb"])
                continue
            if not depths:
                runs = {"k": [], "kb": [], "l": [], "i": []}
                kcmd = [a.kvlm, "bench", "-m", ours, "-p", str(a.p), "-n", str(a.n), *common, "-o", "json"]
                for _ in range(a.rounds):
                    runs["k"].append(run_json(kcmd))
                    if kenv:
                        runs["kb"].append(run_json(kcmd, kenv))
                    runs["l"].append(run_json([a.llama_bench, "-m", theirs, "-p", str(a.p), "-n", str(a.n), *common,
                                               "-o", "json"]))
                    if ik:
                        runs["i"].append(run_json([ik, "-m", theirs, "-p", str(a.p), "-n", str(a.n), *common,
                                                   "-o", "json"]))
                for test in tests:
                    n = a.p if test == "pp" else a.n
                    cell = {key: med([pick(r, test) for r in v]) for key, v in runs.items()}
                    row(name, t, f"{test}{n}", cell["k"], cell["l"], cell["i"] if ik else None, cell["kb"])
                continue
            for d in depths:
                k = pick(run_json([a.kvlm, "bench", "-m", ours, "-p", "0", "-n", str(a.n), "-d", str(d),
                                   *common, "-o", "json"]), "tg")
                if a.llama_batched_bench:
                    speeds = []
                    for _ in range(a.r):
                        out = run([a.llama_batched_bench, "-m", theirs, "-c", str(d + a.n + 16), "-npp", str(d),
                                   "-ntg", str(a.n), "-npl", "1", "-t", str(t), "--output-format", "jsonl"])
                        speeds += [x["speed_tg"] for x in jsonl_records(out) if "speed_tg" in x]
                    mean = sum(speeds) / len(speeds)
                    sd = (sum((s - mean) ** 2 for s in speeds) / (len(speeds) - 1)) ** 0.5 if len(speeds) > 1 else 0.0
                    l = (mean, sd)
                else:
                    l = pick(run_json([a.llama_bench, "-m", theirs, "-p", "0", "-n", str(a.n), "-d", str(d),
                                       *common, "-o", "json"]), "tg")
                i = None
                if ik:
                    recs = run_json([ik, "-m", theirs, "-p", "0", "-n", "0", "-gp", f"{d},{a.n}", *common, "-o", "json"])
                    g = [x for x in recs if x["n_prompt"] == d and x["n_gen"] == a.n]
                    i = (g[0]["avg_ts"], g[0].get("stddev_ts", 0.0)) if g else None
                row(name, t, f"tg{a.n} @ d{d}", k, l, i)


if __name__ == "__main__":
    sys.exit(main())

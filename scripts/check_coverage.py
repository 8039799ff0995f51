#!/usr/bin/env python3
"""The coverage gate of `make coverage` (docs/TESTING.md).

Reads gcovr's JSON summary and a gate file (scripts/coverage_gate.txt) whose lines are
    total  PERCENT            the library (every file of src/) as a whole, lines
    file   PATH  PERCENT      one file, lines
    isa    PATH  FLAG         PATH holds kernels for an ISA: counted (in the total and the table)
                              only when /proc/cpuinfo lists FLAG (a CPU without it never runs them)
and fails (exit 1) naming each file or total below its threshold. --table OUT writes the
per-module table of lines and branches (a module is a folder of src/) that docs/TESTING.md holds.
"""
import json
import sys


def pct(covered, total):
    return 100.0 if total == 0 else 100.0 * covered / total


def main(argv):
    if len(argv) < 3:
        print("usage: check_coverage.py SUMMARY.json GATE.txt [--table OUT.md]", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        summary = json.load(f)
    with open(argv[2]) as f:
        gate = [(n, raw, raw.split("#", 1)[0].split()) for n, raw in enumerate(f, 1)]
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), []))
    except OSError:
        flags = set()
    skipped = [l[1] for _, _, l in gate if len(l) == 3 and l[0] == "isa" and l[2] not in flags]
    if skipped:
        kept = [e for e in summary["files"] if e["filename"] not in skipped]
        gone = [e for e in summary["files"] if e["filename"] in skipped]
        for key in ("line_covered", "line_total", "branch_covered", "branch_total"):
            summary[key] -= sum(e[key] for e in gone)
        summary["files"] = kept
        print("coverage: not counted (this CPU lacks their ISA): " + ", ".join(skipped))
    files = {e["filename"]: e for e in summary["files"]}
    failures = []
    checked = 0
    if True:
        for n, raw, line in gate:
            if not line or line[0] == "isa":
                continue
            if line[0] == "total" and len(line) == 2:
                want = float(line[1])
                got = pct(summary["line_covered"], summary["line_total"])
                name = "src/ (all files)"
            elif line[0] == "file" and len(line) == 3:
                want = float(line[2])
                e = files.get(line[1])
                if e is None:
                    failures.append(f"{line[1]}: no coverage data (file gone or never compiled?)")
                    continue
                got = pct(e["line_covered"], e["line_total"])
                name = line[1]
            else:
                print(f"{argv[2]}:{n}: cannot parse '{raw.strip()}'", file=sys.stderr)
                return 2
            checked += 1
            if got + 1e-9 < want:
                failures.append(f"{name}: {got:.2f}% of lines, below the gate's {want:g}%")
    if "--table" in argv:
        write_table(summary, argv[argv.index("--table") + 1])
    total = pct(summary["line_covered"], summary["line_total"])
    btotal = pct(summary["branch_covered"], summary["branch_total"])
    print(f"coverage: src/ lines {summary['line_covered']}/{summary['line_total']} ({total:.1f}%), "
          f"branches {summary['branch_covered']}/{summary['branch_total']} ({btotal:.1f}%); "
          f"{checked} gate lines, {len(failures)} below")
    for msg in failures:
        print("coverage gate: " + msg, file=sys.stderr)
    return 1 if failures else 0


def write_table(summary, out):
    mods = {}
    for e in summary["files"]:
        parts = e["filename"].split("/")
        mod = parts[1] if len(parts) > 2 else parts[0]
        m = mods.setdefault(mod, [0, 0, 0, 0])
        m[0] += e["line_covered"]; m[1] += e["line_total"]
        m[2] += e["branch_covered"]; m[3] += e["branch_total"]
    rows = ["| module | lines | % | branches | % |", "|---|---|---|---|---|"]
    for mod in sorted(mods):
        lc, lt, bc, bt = mods[mod]
        rows.append(f"| {mod} | {lc}/{lt} | {pct(lc, lt):.1f} | {bc}/{bt} | {pct(bc, bt):.1f} |")
    rows.append(f"| **src/** | {summary['line_covered']}/{summary['line_total']} | "
                f"{pct(summary['line_covered'], summary['line_total']):.1f} | "
                f"{summary['branch_covered']}/{summary['branch_total']} | "
                f"{pct(summary['branch_covered'], summary['branch_total']):.1f} |")
    rows.append("")
    rows.append("| file | lines | % | branches | % |")
    rows.append("|---|---|---|---|---|")
    for e in sorted(summary["files"], key=lambda e: e["filename"]):
        rows.append(f"| {e['filename']} | {e['line_covered']}/{e['line_total']} | "
                    f"{pct(e['line_covered'], e['line_total']):.1f} | {e['branch_covered']}/{e['branch_total']} | "
                    f"{pct(e['branch_covered'], e['branch_total']):.1f} |")
    with open(out, "w") as f:
        f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv))

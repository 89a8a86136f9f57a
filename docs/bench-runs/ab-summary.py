"""Summarises ab-pairs.sh's output: per side the median p50 ratio to the floor in turns and the
median read and framing stages; per pair whether B's ratio was lower, and B - A of the stages."""
import re, sys, statistics as st
runs = []  # one dict per run: pair, side (A or B), p50 and its ratio, read and framing stages
cur = None
for line in open(sys.argv[1]):
    m = re.match(r"== pair (\d+) (\w+)", line)
    if m:
        cur = {"pair": int(m[1]), "w": m[2]}; runs.append(cur); continue
    if cur is None: continue
    m = re.search(r"byte in -> durable p50 (\d+) µs \(([\d.]+)x floor in turns", line)
    if m: cur.update(p50=int(m[1]), r50=float(m[2]))
    m = re.search(r"PTY \+ read wake-up\s+p50\s+(\d+)", line)
    if m: cur["read"] = int(m[1])
    m = re.search(r"frame -> encode -> writer\s+p50\s+(\d+)", line)
    if m: cur["frame"] = int(m[1])
by = {}
for r in runs:
    if "r50" in r: by.setdefault(r["w"], []).append(r)
for w, rs in sorted(by.items()):
    print(w, "n", len(rs), "median r50", st.median(x["r50"] for x in rs),
          "read", st.median(x.get("read", 0) for x in rs), "frame", st.median(x.get("frame", 0) for x in rs),
          "r50s", [x["r50"] for x in rs])
pairs = {}
for r in runs:
    if "r50" in r: pairs.setdefault(r["pair"], {})[r["w"]] = r
lower = sum(1 for p in pairs.values() if "A" in p and "B" in p and p["B"]["r50"] < p["A"]["r50"])
eq = sum(1 for p in pairs.values() if "A" in p and "B" in p and p["B"]["r50"] == p["A"]["r50"])
print("pairs", len(pairs), "B lower r50 in", lower, "equal", eq)
for k in ("read", "frame"):
    d = [p["B"].get(k, 0) - p["A"].get(k, 0) for p in pairs.values() if "A" in p and "B" in p]
    print(k, "B-A diffs", d, "median", st.median(d) if d else None)

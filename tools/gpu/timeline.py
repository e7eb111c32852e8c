#!/usr/bin/env python3
"""Where a decode step's time goes, from a FALSIFIER_CUDA_TIMELINE file.

    FALSIFIER_CUDA_TIMELINE=/tmp/tl.csv falsifier bench ... --decode 16
    python3 tools/gpu/timeline.py /tmp/tl.csv

Takes the last forward of the file that replayed a recorded decode step, and of its replays
all but the first (warm-up). For each launch of a step: `adds`, from its first block's release
(past pdl_wait) to the next launch's first release, is what the launch adds to the step's
critical path (the step is the sum of them); `spread`, from its first to its last block's
release (more than one wave, or blocks held back); `early`, how long before its release its
first block was already waiting (the overlap PDL bought). Only the first and last 32 blocks of
a launch note (timeline.rs), which are the ones the scheduler starts first and last. Summed per kernel and stage (layers
folded), microseconds per step. The timer is %globaltimer (its resolution is the card's:
averaged over layers and replays).
"""
import collections
import csv
import re
import sys


def main(path):
    rows = list(csv.DictReader(open(path)))
    if not rows:
        sys.exit(f"{path}: no launches")
    forwards = [int(r["forward"]) for r in rows if int(r["replay"]) > 0]
    if not forwards:
        sys.exit(f"{path}: no forward replayed a recorded decode step")
    fw = max(forwards)
    rows = [r for r in rows if int(r["forward"]) == fw]
    unmatched = [r for r in rows if r["kernel"] == "?" or int(r["blocks_noting"]) != int(r["blocks_noted"])]
    if unmatched:
        print(f"warning: {len(unmatched)} of {len(rows)} launches unmatched or with notes missing "
              f"(first: seq {unmatched[0]['seq']} {unmatched[0]['kernel']})")
    for r in rows:
        for k in ("entered_min_ns", "released_min_ns", "released_max_ns"):
            r[k] = int(r[k])
    replays = sorted({int(r["replay"]) for r in rows if int(r["replay"]) > 0})
    use = replays[1:] or replays
    by = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    steps = []
    for rep in use:
        seq = [r for r in rows if int(r["replay"]) == rep]
        nxt = [r for r in rows if int(r["replay"]) == rep + 1]
        if not nxt:
            continue  # the last replay: nothing after it to end its last launch
        seq.append(nxt[0])
        steps.append((seq[-1]["released_min_ns"] - seq[0]["released_min_ns"]) / 1e3)
        for a, b in zip(seq, seq[1:]):
            stage = re.sub(r"layer\.\d+\.", "layer.*.", a["stage"])
            e = by[(a["kernel"], stage)]
            e[0] += 1
            e[1] += (b["released_min_ns"] - a["released_min_ns"]) / 1e3
            e[2] += (a["released_max_ns"] - a["released_min_ns"]) / 1e3
            e[3] += (a["released_min_ns"] - a["entered_min_ns"]) / 1e3
    if not steps:
        sys.exit(f"{path}: fewer than two replays in forward {fw}")
    n = len(steps)
    print(f"forward {fw}: {n} steps, {sum(steps) / n:.1f} us a step (min {min(steps):.1f}, max {max(steps):.1f})")
    print(f"{'kernel':32} {'stage':28} {'calls':>6} {'adds us':>9} {'per call':>9} {'spread':>8} {'early':>8}")
    for (k, st), (c, adds, spread, early) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        print(f"{k:32} {st:28} {c / n:6.0f} {adds / n:9.1f} {adds / c:9.2f} {spread / c:8.2f} {early / c:8.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])

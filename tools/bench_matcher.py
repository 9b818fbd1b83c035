"""
Benchmark: ATSS assignment time and peak memory, our sparse matcher vs a dense A x G one.

The dense matcher is the usual vectorised form (as in the authors' code and mmdetection): full
IoU and centre-distance matrices, per-level top-k, a -inf-filled A x G matrix for conflicts.
Each (method, #GT) pair runs in a fresh subprocess; peak memory is the growth of the process's
maximum resident set size during the first call, time is the median of the repeats after it.
"same" compares the two assignments (positive count and a checksum of matched indices).

    .venv/bin/python tools/bench_matcher.py [--gts 10 100 1000 5000] [--repeats 5]
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, resource, statistics, time
import torch
from atss import atss_match
from detectron2.structures import Boxes, pairwise_iou
from atss.utils.testing import grid_anchors, random_boxes

def dense_match(anchors_per_level, gt, topk=9):
    anchors = torch.cat(anchors_per_level)
    ious = pairwise_iou(Boxes(anchors), Boxes(gt))  # (A, G)
    ac = (anchors[:, :2] + anchors[:, 2:]) / 2
    gc = (gt[:, :2] + gt[:, 2:]) / 2
    dist = (ac[:, None, :] - gc[None, :, :]).pow(2).sum(-1).sqrt()  # (A, G)
    cand, start = [], 0
    for a in anchors_per_level:
        k = min(topk, len(a))
        cand.append(dist[start:start + len(a)].topk(k, dim=0, largest=False).indices + start)
        start += len(a)
    cand = torch.cat(cand)  # (K, G)
    c_iou = ious[cand, torch.arange(len(gt))]
    thr = c_iou.mean(0) + c_iou.std(0)
    is_pos = c_iou >= thr[None]
    c = ac[cand]  # (K, G, 2)
    ltrb = torch.cat([c - gt[None, :, :2], gt[None, :, 2:] - c], dim=-1)
    is_pos &= ltrb.amin(-1) > 0.01
    full = torch.full_like(ious, -float("inf"))
    g_idx = torch.arange(len(gt))[None].expand_as(cand)
    full[cand[is_pos], g_idx[is_pos]] = ious[cand[is_pos], g_idx[is_pos]]
    val, idx = full.max(1)
    return torch.where(val > -float("inf"), idx, torch.full_like(idx, -1))

torch.set_num_threads({threads})
anchors, sizes, _ = grid_anchors(800, 1344)  # an 800x1333 image padded to /32
gt = random_boxes({num_gt}, 800, 1333, torch.Generator().manual_seed(0), min_size=8, max_size=400)
if {method!r} == "sparse":
    fn = lambda: atss_match(anchors, gt, grid_sizes=sizes)
else:
    fn = lambda: dense_match(anchors, gt)
# Peak memory: growth of the maximum resident set size over the first call.
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = fn()
extra_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
times = []
for _ in range({repeats}):
    t = time.perf_counter(); out = fn(); times.append(time.perf_counter() - t)
print(json.dumps(dict(ms=1000 * statistics.median(times), extra_mb=extra_mb,
                      anchors=sum(len(a) for a in anchors), positives=int((out >= 0).sum()),
                      checksum=int(out.sum()))))
"""


def measure(method, num_gt, repeats, threads):
    code = CHILD.format(method=method, num_gt=num_gt, repeats=repeats, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gts", type=int, nargs="+", default=[10, 100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"ATSS assignment on an 800x1333 input (22400 anchors), CPU, {args.threads} threads")
    header = (
        f"{'GTs':>6} | {'sparse ms':>9} | {'sparse MB':>9} | {'dense ms':>9} | "
        f"{'dense MB':>9} | {'speed-up':>8} | same"
    )
    print(header)
    print("-" * len(header))
    for g in args.gts:
        s = measure("sparse", g, args.repeats, args.threads)
        d = measure("dense", g, max(1, args.repeats // 2), args.threads)
        same = (s["positives"], s["checksum"]) == (d["positives"], d["checksum"])
        print(
            f"{g:>6} | {s['ms']:>9.1f} | {s['extra_mb']:>9.1f} | {d['ms']:>9.1f} | "
            f"{d['extra_mb']:>9.1f} | "
            f"{d['ms'] / s['ms']:>7.1f}x | {'yes' if same else 'NO'} ({s['positives']} positives)"
        )


if __name__ == "__main__":
    main()

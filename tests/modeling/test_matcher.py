"""
Tests of :func:`atss.atss_match` against a slow dense implementation of the paper's Algorithm 1,
and of the matcher's invariants and edge cases (the rule as projects/ATSS/README.md states it).
"""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou
from hypothesis import given, settings
from hypothesis import strategies as st

from atss import atss_match
from atss.modeling.matcher import candidate_anchors
from tests.atss_testing import dense_atss, grid_anchors, random_boxes, random_matcher_case


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(4))
def test_matches_dense_algorithm_on_random_tie_free_cases(chunk):
    """
    Sparse matcher == dense Algorithm 1 on all 200 random cases (50 per chunk): four anchor
    variants (#A = 1, 9, 2 with offset 0, and three levels on small images, where levels have
    fewer than k·#A anchors) x 1, 5, 40 and 300 GTs; grid fast path always, the exact fallback
    on every fifth case. Fails on any departure from Algorithm 1 (candidate count, threshold,
    centre margin, conflicts) and on a fast path that drops a candidate on a small level.
    """
    checked_pos = checked = small_level_cases = 0
    for seed in range(chunk * 50, chunk * 50 + 50):
        anchors, sizes, n_a, gt = random_matcher_case(seed)
        expected = dense_atss(anchors, gt, 9, n_a)
        fast = atss_match(anchors, gt, 9, n_a, grid_sizes=sizes)
        assert torch.equal(fast, expected), f"seed {seed}"
        if seed % 5 == 0:
            fallback = atss_match(anchors, gt, 9, n_a, grid_sizes=[None] * len(anchors))
            assert torch.equal(fallback, expected), f"seed {seed} (fallback)"
        checked += 1
        small_level_cases += any(0 < len(a) < 9 * n_a for a in anchors)
        checked_pos += int((fast >= 0).sum())
    assert checked == 50 and small_level_cases >= 10, (checked, small_level_cases)
    assert checked_pos > 100  # the cases do produce positives


def test_hundreds_of_gts_match_dense():
    """300 GTs on a 512x640 image: fast path == dense oracle, element by element."""
    g = torch.Generator().manual_seed(123)
    anchors, sizes, _ = grid_anchors(512, 640)
    gt = random_boxes(300, 512, 640, g, min_size=4, max_size=160, border=True)
    assert torch.equal(atss_match(anchors, gt, grid_sizes=sizes), dense_atss(anchors, gt))


def test_non_grid_anchors_use_exact_fallback():
    """Shuffled and jittered (non-grid) anchors still give the dense result."""
    g = torch.Generator().manual_seed(5)
    anchors, _, _ = grid_anchors(320, 320)
    anchors = [a[torch.randperm(len(a), generator=g)] + torch.rand(1, generator=g) for a in anchors]
    gt = random_boxes(30, 320, 320, g, min_size=8)
    assert torch.equal(atss_match(anchors, gt), dense_atss(anchors, gt))
    # A wrong grid claim is detected and falls back rather than returning garbage.
    sizes = [(1, len(a)) for a in anchors]
    assert torch.equal(atss_match(anchors, gt, grid_sizes=sizes), dense_atss(anchors, gt))


def test_inferred_grid_equals_given_grid():
    """Without grid_sizes the grid is inferred; results are identical."""
    g = torch.Generator().manual_seed(9)
    anchors, sizes, _ = grid_anchors(300, 452)
    gt = random_boxes(50, 300, 452, g)
    assert torch.equal(atss_match(anchors, gt), atss_match(anchors, gt, grid_sizes=sizes))


def _candidates_and_stats(anchors, gt, k=9, n_a=1):
    cand = candidate_anchors([a.float() for a in anchors], gt.float(), k * n_a, n_a)
    flat = torch.cat(anchors)
    ious = torch.stack(
        [pairwise_iou(Boxes(flat[c]), Boxes(gt[i : i + 1]))[:, 0] for i, c in enumerate(cand)]
    )
    return cand, ious


def test_invariants_1_to_5_hold_on_random_images():
    """Invariants: centre inside, candidate-ness, threshold, highest-IoU rule, counts."""
    g = torch.Generator().manual_seed(2)
    anchors, sizes, _ = grid_anchors(480, 640)
    flat = torch.cat(anchors)
    level_of = torch.cat([torch.full((len(a),), i) for i, a in enumerate(anchors)])
    centers = (flat[:, :2] + flat[:, 2:]) / 2
    for _ in range(5):
        gt = random_boxes(25, 480, 640, g, min_size=6, max_size=300)
        matched = atss_match(anchors, gt, grid_sizes=sizes)
        cand, ious = _candidates_and_stats(anchors, gt)
        thr = ious.mean(1) + ious.std(1)
        passes = torch.zeros(len(flat), len(gt), dtype=torch.bool)
        all_iou = pairwise_iou(Boxes(flat), Boxes(gt))
        for gi in range(len(gt)):
            c = cand[gi]
            x1, y1, x2, y2 = gt[gi]
            cc = centers[c]
            inside = torch.stack([cc[:, 0] - x1, cc[:, 1] - y1, x2 - cc[:, 0], y2 - cc[:, 1]]).amin(
                0
            )
            passes[c, gi] = (ious[gi] >= thr[gi]) & (inside > 0.01)
        for a in torch.nonzero(matched >= 0).flatten().tolist():
            gi = int(matched[a])
            x1, y1, x2, y2 = gt[gi].tolist()
            cx, cy = centers[a].tolist()
            assert min(cx - x1, cy - y1, x2 - cx, y2 - cy) > 0.01  # 1
            assert a in cand[gi].tolist()  # 2
            assert all_iou[a, gi] >= thr[gi]  # 3
            competing = passes[a].nonzero().flatten()
            assert all_iou[a, gi] >= all_iou[a, competing].max()  # 4
        # 4 (converse): an anchor that passes for some GT is positive
        assert torch.equal(passes.any(1), matched >= 0)
        # 8: a GT owning an anchor that passes for it with no higher-IoU passing rival
        # gets at least one positive
        rival_iou = torch.where(passes, all_iou, torch.tensor(-1.0))
        for gi in range(len(gt)):
            others = torch.cat([rival_iou[:, :gi], rival_iou[:, gi + 1 :]], dim=1)
            best_other = others.amax(1) if others.shape[1] else torch.full((len(flat),), -1.0)
            if bool((passes[:, gi] & (all_iou[:, gi] > best_other)).any()):
                assert bool((matched == gi).any()), gi
        # 5: positives per GT <= candidates and <= k per level
        for gi in range(len(gt)):
            mine = matched == gi
            assert int(mine.sum()) <= cand.shape[1]
            for lvl in range(len(anchors)):
                assert int((mine & (level_of == lvl)).sum()) <= 9


def test_positives_per_gt_match_the_paper_statistics():
    """~0.2·k·L (about 9) positives per well-separated GT, mostly on 1-2 adjacent levels."""
    g = torch.Generator().manual_seed(11)
    anchors, sizes, _ = grid_anchors(800, 1344)
    level_of = torch.cat([torch.full((len(a),), i) for i, a in enumerate(anchors)])
    counts, compact = [], 0
    for _ in range(10):
        gt = random_boxes(10, 800, 1344, g, min_size=24, max_size=400)
        matched = atss_match(anchors, gt, grid_sizes=sizes)
        for gi in range(len(gt)):
            levels = level_of[matched == gi].unique()
            counts.append(len(levels) and int((matched == gi).sum()))
            compact += len(levels) <= 2 and (len(levels) < 2 or int(levels[1] - levels[0]) == 1)
    mean = sum(counts) / len(counts)
    assert 5 <= mean <= 14, mean
    assert compact / len(counts) >= 0.8, compact / len(counts)


def test_default_anchors_follow_the_paper():
    """H_l·W_l anchors per level, centres at ((j+0.5)s, (i+0.5)s), side 8s."""
    anchors, sizes, n_a = grid_anchors(96, 160)
    assert n_a == 1
    for a, (h, w), s in zip(anchors, sizes, [8, 16, 32, 64, 128]):
        assert len(a) == h * w
        torch.testing.assert_close(a[:, 2:] - a[:, :2], torch.full((len(a), 2), 8.0 * s))
        centres = ((a[:, :2] + a[:, 2:]) / 2).view(h, w, 2)
        torch.testing.assert_close(centres[0, 0], torch.tensor([0.5 * s, 0.5 * s]))
        if w > 1:
            torch.testing.assert_close(centres[0, 1] - centres[0, 0], torch.tensor([s, 0.0]))


def test_zero_gts_and_zero_anchor_levels():
    """G = 0 gives all background; empty levels are skipped."""
    anchors, sizes, _ = grid_anchors(128, 128)
    out = atss_match(anchors, torch.zeros(0, 4), grid_sizes=sizes)
    assert out.shape == (sum(len(a) for a in anchors),) and bool((out == -1).all())
    with_empty = [anchors[0], torch.zeros(0, 4), anchors[1]]
    gt = torch.tensor([[10.0, 10.0, 60.0, 70.0]])
    out = atss_match(with_empty, gt)
    assert torch.equal(out, dense_atss(with_empty, gt))
    assert atss_match([torch.zeros(0, 4)], gt).shape == (0,)


def test_tiny_gt_gets_no_positive_without_error():
    """a 1x1-px GT between anchor centres has no positive and raises nothing."""
    anchors, sizes, _ = grid_anchors(256, 256)
    gt = torch.tensor([[10.0, 10.0, 11.0, 11.0], [100.0, 100.0, 102.0, 102.0]])
    assert bool((atss_match(anchors, gt, grid_sizes=sizes) == -1).all())


def test_gt_larger_than_image():
    """A GT extending past the image is matched like the dense oracle, positives inside it."""
    anchors, sizes, _ = grid_anchors(200, 300)
    gt = torch.tensor([[-50.0, -40.0, 420.0, 260.0], [20.0, 30.0, 90.0, 110.0]])
    out = atss_match(anchors, gt, grid_sizes=sizes)
    assert torch.equal(out, dense_atss(anchors, gt))
    assert bool((out == 0).any())


def test_k_larger_than_level_uses_all_anchors():
    """with k >= anchors on every level the candidates are all anchors."""
    anchors, sizes, _ = grid_anchors(24, 24, strides=[8, 16])  # 9 and 4 anchors
    gt = torch.tensor([[2.0, 3.0, 20.0, 19.0]])
    cand = candidate_anchors(anchors, gt, 9)
    assert sorted(cand[0].tolist()) == list(range(13))
    out = atss_match(anchors, gt, grid_sizes=sizes)
    ious = pairwise_iou(Boxes(torch.cat(anchors)), Boxes(gt))[:, 0]
    thr = ious.mean() + ious.std()
    centers = (torch.cat(anchors)[:, :2] + torch.cat(anchors)[:, 2:]) / 2
    inside = (centers > gt[0, :2] + 0.01).all(1) & (centers < gt[0, 2:] - 0.01).all(1)
    assert torch.equal(out == 0, (ious >= thr) & inside)


def test_anchor_centre_on_gt_edge_is_not_inside():
    """an anchor centre exactly on the GT edge fails the strict > 0.01 centre test."""
    anchors = [torch.tensor([[-28.0, -28.0, 36.0, 36.0]])]  # centre (4, 4)
    gt_on_edge = torch.tensor([[4.0, -20.0, 40.0, 40.0]])
    gt_margin = torch.tensor([[4.0 - 0.02, -20.0, 40.0, 40.0]])
    assert atss_match(anchors, gt_on_edge).tolist() == [-1]
    assert atss_match(anchors, gt_margin).tolist() == [0]


def test_single_candidate_has_zero_std():
    """One candidate overall: std is taken as 0 (not NaN), so a centred GT gets a positive."""
    anchors = [torch.tensor([[0.0, 0.0, 64.0, 64.0]])]
    assert atss_match(anchors, torch.tensor([[10.0, 10.0, 50.0, 50.0]])).tolist() == [0]


def test_all_candidate_ious_equal_pass_the_threshold():
    """equal candidate IoUs (std 0): every candidate with its centre inside is positive."""
    # four anchors symmetric around the GT centre: equal distances and IoUs
    anchors = [torch.tensor([[0.0, 0, 8, 8], [8, 0, 16, 8], [0, 8, 8, 16], [8, 8, 16, 16]])]
    out = atss_match(anchors, torch.tensor([[2.0, 2.0, 14.0, 14.0]]), topk=4)
    assert out.tolist() == [0, 0, 0, 0]


def test_two_gts_competing_for_an_anchor_highest_iou_wins():
    """an anchor positive for two GTs goes to the higher-IoU one; equal IoU: lower index."""
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    big = torch.tensor([0.0, 0.0, 11.0, 11.0])
    small = torch.tensor([1.0, 1.0, 9.0, 9.0])
    assert atss_match(anchors, torch.stack([small, big])).tolist() == [1]
    assert atss_match(anchors, torch.stack([big, small])).tolist() == [0]
    twin = torch.stack([big, big])
    assert atss_match(anchors, twin).tolist() == [0]


def test_nearest_ties_prefer_lower_anchor_index():
    """Spec tie rule: among anchors at equal distance the lower index becomes the candidate."""
    anchors, sizes, _ = grid_anchors(64, 64, strides=[8])  # 8x8 grid, centres at 4 + 8i
    gt = torch.tensor([[16.0, 16.0, 32.0, 32.0]])  # centre (24, 24): 4 anchors tied nearest
    cand = candidate_anchors(anchors, gt, 1, grid_sizes=sizes)
    fallback = candidate_anchors(anchors, gt, 1, grid_sizes=[None])
    assert cand.tolist() == fallback.tolist() == [[2 * 8 + 2]]  # (row 2, col 2) = lowest index


def test_gt_permutation_permutes_matches():
    """permuting GTs permutes matched indices."""
    g = torch.Generator().manual_seed(4)
    anchors, sizes, _ = grid_anchors(320, 480)
    gt = random_boxes(30, 320, 480, g, min_size=8)
    perm = torch.randperm(30, generator=g)
    a = atss_match(anchors, gt, grid_sizes=sizes)
    b = atss_match(anchors, gt[perm], grid_sizes=sizes)
    assert torch.equal(torch.where(b >= 0, perm[b.clamp(min=0)], b), a)


def test_translation_by_largest_stride_shifts_positives():
    """translating GTs by 128 px shifts each level's positives by 128/stride cells."""
    g = torch.Generator().manual_seed(8)
    h, w = 640, 768
    anchors, sizes, _ = grid_anchors(h, w)
    gt = random_boxes(6, 300, 300, g, min_size=20, max_size=150) + 130.0
    a = atss_match(anchors, gt, grid_sizes=sizes)
    b = atss_match(anchors, gt + torch.tensor([128.0, 128.0, 128.0, 128.0]), grid_sizes=sizes)
    start = 0
    for (hl, wl), s in zip(sizes, [8, 16, 32, 64, 128]):
        la = a[start : start + hl * wl].view(hl, wl)
        lb = b[start : start + hl * wl].view(hl, wl)
        d = 128 // s
        assert torch.equal(lb[d:, d:], la[: hl - d, : wl - d]), f"stride {s}"
        start += hl * wl


def test_low_precision_inputs_give_identical_results():
    """AMP: fp16/bf16 inputs (exactly representable values) give the fp32 result."""
    anchors, sizes, _ = grid_anchors(256, 384)
    gt = torch.tensor([[10.0, 20.0, 90.0, 130.0], [200.0, 64.0, 380.0, 250.0]])
    ref = atss_match(anchors, gt, grid_sizes=sizes)
    for dt in (torch.float16, torch.bfloat16):
        low = atss_match([a.to(dt) for a in anchors], gt.to(dt), grid_sizes=sizes)
        assert torch.equal(low, ref), dt


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 400),
    w=st.integers(1, 400),
    n=st.integers(0, 60),
    seed=st.integers(0, 2**31 - 1),
    degenerate=st.booleans(),
)
def test_random_inputs_never_crash_or_return_invalid(h, w, n, seed, degenerate):
    """Randomised: any image size, GT count and degenerate boxes give valid indices."""
    g = torch.Generator().manual_seed(seed)
    anchors, sizes, _ = grid_anchors(h, w)
    gt = random_boxes(n, h, w, g, min_size=0.0, max_size=max(h, w) * 1.5)
    if degenerate and n:
        gt[::2, 2] = gt[::2, 0]  # zero width
        gt[1::3] = gt[1::3].flip(1)  # inverted
    out = atss_match(anchors, gt, grid_sizes=sizes)
    assert out.shape == (sum(len(a) for a in anchors),)
    assert bool(((out >= -1) & (out < max(n, 1))).all())


def test_non_finite_gt_gets_no_positive():
    """A NaN/inf GT box gets no positive and does not disturb the others."""
    anchors, sizes, _ = grid_anchors(256, 256)
    good = torch.tensor([[30.0, 40.0, 120.0, 150.0]])
    bad = torch.tensor([[float("nan"), 0.0, 50.0, 50.0], [0.0, 0.0, float("inf"), 40.0]])
    out = atss_match(anchors, torch.cat([bad, good]), grid_sizes=sizes)
    ref = atss_match(anchors, good, grid_sizes=sizes)
    assert torch.equal(out, torch.where(ref >= 0, ref + 2, ref))


@pytest.mark.slow  # a fresh process measures its peak memory
def test_peak_memory_does_not_grow_like_anchors_times_gts():
    """5000 GTs on an 800x1344 input: the extra peak RSS stays far below one dense A x G matrix."""
    code = textwrap.dedent("""
        import resource, torch
        from tests.atss_testing import dense_atss, grid_anchors, random_boxes, random_matcher_case
        from atss import atss_match
        torch.set_num_threads(1)
        anchors, sizes, _ = grid_anchors(800, 1344)
        gt = random_boxes(5000, 800, 1344, torch.Generator().manual_seed(0), min_size=4)
        atss_match(anchors, gt[:10], grid_sizes=sizes)  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        atss_match(anchors, gt, grid_sizes=sizes)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) / 1024)
        """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(["projects/ATSS", ".", *sys.path]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    extra_mb = float(out.stdout.strip().splitlines()[-1])
    dense_mb = 22400 * 5000 * 4 / 2**20  # one float32 A x G matrix: 427 MiB
    assert extra_mb < dense_mb / 4, extra_mb


# --- on CUDA (scripts/gpu_check.sh) ---------------------------------------------------------
@pytest.mark.cuda
def test_cuda_equals_cpu_on_the_random_cases(cuda_device):
    """The 200 random cases (a few when the `cuda` tests run against the CPU), grid path and
    exact fallback, on the device: the CPU's assignment anchor for anchor, returned on the
    device. Fails on a kernel whose ties or rounding differ on CUDA (topk, scatter_reduce)."""
    positives = 0
    for seed in range(200 if cuda_device.type == "cuda" else 8):
        anchors, sizes, n_a, gt = random_matcher_case(seed)
        on_cpu = atss_match(anchors, gt, 9, n_a, grid_sizes=sizes)
        moved = [a.to(cuda_device) for a in anchors]
        for grid in (sizes, [None] * len(anchors)):
            result = atss_match(moved, gt.to(cuda_device), 9, n_a, grid_sizes=grid)
            assert result.device == moved[0].device
            assert torch.equal(result.cpu(), on_cpu), f"seed {seed}, grid {grid is sizes}"
        positives += int((on_cpu >= 0).sum())
    assert positives > 0


@pytest.mark.cuda
@pytest.mark.parametrize("num_gt", [1000, 5000])
def test_cuda_equals_cpu_with_thousands_of_gts(cuda_device, num_gt, record_property):
    """Thousands of GTs on an 800x1333 input: the CPU's assignment; the device time and peak
    memory go to the report. Fails on a device-only error at sizes the random cases never
    reach (the chunked scatter, int32 index overflow)."""
    anchors, sizes, _ = grid_anchors(800, 1344)  # an 800x1333 image padded to /32
    gt = random_boxes(num_gt, 800, 1333, torch.Generator().manual_seed(0), min_size=8, max_size=400)
    on_cpu = atss_match(anchors, gt, grid_sizes=sizes)
    moved, gt = [a.to(cuda_device) for a in anchors], gt.to(cuda_device)
    atss_match(moved, gt, grid_sizes=sizes)  # warm-up: kernels, allocator
    on_cuda = cuda_device.type == "cuda"
    if on_cuda:
        torch.cuda.synchronize(cuda_device)
        torch.cuda.reset_peak_memory_stats(cuda_device)
        base = torch.cuda.memory_allocated(cuda_device)
    start = time.perf_counter()
    result = atss_match(moved, gt, grid_sizes=sizes)
    if on_cuda:
        torch.cuda.synchronize(cuda_device)
        extra = (torch.cuda.max_memory_allocated(cuda_device) - base) / 2**20
        ms = 1000 * (time.perf_counter() - start)
        record_property("detail", f"{ms:.1f} ms, peak +{extra:.0f} MiB allocated")
    assert torch.equal(result.cpu(), on_cpu)
    assert int((on_cpu >= 0).sum()) > num_gt

"""
Check the CUDA paths of this project on a GPU machine, in a few minutes (run via gpu_check.sh).

1. matcher: ``atss_match`` on CUDA equals the CPU result on the random cases of
   tests/modeling/test_matcher.py, and at 1,000 / 5,000 GTs on an 800x1333 input (time and
   ``torch.cuda.max_memory_allocated`` printed);
2. amp_training: a few steps of configs/COCO/atss_R_50_FPN_1x.py with ``train.amp.enabled=True``
   (Detectron2's AMPTrainer, as train_net.py uses it; random init, synthetic images): finite
   losses;
3. inference: a small ATSS model fitted for a few steps gives the same detections on CUDA as on
   the CPU;
4. export: TorchScript traced on CUDA equals eager CUDA; ONNX exported on CUDA, run in
   onnxruntime (its CUDA provider when installed, else the CPU), equals eager on that device;
5. nccl_2gpu: ``train_net.py --num-gpus 2`` with AMP on CUDA (NCCL) when 2 GPUs exist.

Prints a summary table; exit status 1 if any check failed. Without CUDA it says so and exits 0
having run nothing. ``--device cpu`` runs the same checks against the CPU (CUDA compared with
itself, no AMP, no NCCL): a smoke test of this script on a machine without a GPU.
"""

import argparse
import copy
import functools
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

# Run from a checkout (scripts/gpu_check.sh puts projects/ATSS on PYTHONPATH, for an
# interpreter without the editable install); the tiny fitted model is atss.utils.testing's.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

R50_CONFIG = os.path.join(ROOT, "configs/COCO/atss_R_50_FPN_1x.py")
TINY_CONFIG = "configs/Shapes/atss_tiny_shapes.py"


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- 1. matcher ----------------------------------------------------------------------------
def check_matcher_random_cases(device, num_cases):
    """CUDA == CPU on the random cases of the matcher tests (all four anchor layouts)."""
    from atss import atss_match
    from atss.utils.testing import random_matcher_case

    positives, mismatched = 0, []
    for seed in range(num_cases):
        anchors, sizes, n_a, gt = random_matcher_case(seed)
        on_cpu = atss_match(anchors, gt, 9, n_a, grid_sizes=sizes)
        moved = [a.to(device) for a in anchors]
        fast = atss_match(moved, gt.to(device), 9, n_a, grid_sizes=sizes)
        exact = atss_match(moved, gt.to(device), 9, n_a, grid_sizes=[None] * len(anchors))
        for path, result in (("grid", fast), ("fallback", exact)):
            expect(result.device.type == device.type, f"seed {seed}: result on {result.device}")
            if not torch.equal(result.cpu(), on_cpu):
                diff = int((result.cpu() != on_cpu).sum())
                mismatched.append(f"seed {seed} ({path}): {diff} anchors differ")
        positives += int((on_cpu >= 0).sum())
    expect(not mismatched, "; ".join(mismatched[:5]))
    expect(positives > 0, "no positives at all: the cases test nothing")
    return f"{num_cases} cases x (grid, fallback) equal to CPU; {positives} positives"


def check_matcher_crowded(device, num_gt, repeats=5):
    """CUDA == CPU at ``num_gt`` GTs on an 800x1333 input; CUDA time and peak memory."""
    from atss import atss_match
    from atss.utils.testing import grid_anchors, random_boxes

    anchors, sizes, _ = grid_anchors(800, 1344)  # an 800x1333 image padded to /32
    gen = torch.Generator().manual_seed(0)
    gt = random_boxes(num_gt, 800, 1333, gen, min_size=8, max_size=400)  # as bench_matcher.py
    t0 = time.perf_counter()
    on_cpu = atss_match(anchors, gt, grid_sizes=sizes)
    cpu_ms = 1000 * (time.perf_counter() - t0)

    anchors_dev, gt_dev = [a.to(device) for a in anchors], gt.to(device)
    atss_match(anchors_dev, gt_dev, grid_sizes=sizes)  # warm-up (kernels, allocator)
    _sync(device)
    peak_mb = float("nan")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    result = atss_match(anchors_dev, gt_dev, grid_sizes=sizes)
    _sync(device)
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        atss_match(anchors_dev, gt_dev, grid_sizes=sizes)
        _sync(device)
        times.append(time.perf_counter() - t0)
    differ = int((result.cpu() != on_cpu).sum())
    expect(differ == 0, f"{differ} of {len(on_cpu)} anchors differ from the CPU result")
    return (
        f"{num_gt} GTs: equal to CPU ({int((on_cpu >= 0).sum())} positives); "
        f"{device.type} {1000 * statistics.median(times):.1f} ms, peak +{peak_mb:.0f} MB "
        f"allocated (CUDA only); CPU {cpu_ms:.0f} ms"
    )


# --- 2. AMP training -------------------------------------------------------------------------
def _synthetic_batch(sizes, num_classes, seed=0):
    from atss.utils.testing import make_inputs, random_boxes

    gen = torch.Generator().manual_seed(seed)
    boxes = [random_boxes(8, h, w, gen, min_size=16, max_size=min(h, w) / 2) for h, w in sizes]
    return make_inputs(sizes, boxes, num_classes=num_classes, seed=seed)


def check_amp_training(device, steps):
    """``steps`` steps of the R-50 config with AMP (Detectron2's AMPTrainer) on CUDA."""
    from detectron2.config import instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer
    from detectron2.utils.events import EventStorage

    from atss.engine.config import NO_WEIGHTS, build_model, load_config

    cfg = load_config(R50_CONFIG, [f"train.amp.enabled={device.type == 'cuda'}"])
    torch.manual_seed(0)
    model = build_model(cfg, NO_WEIGHTS, str(device))  # random init: no ImageNet download
    model.train()
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    batch = _synthetic_batch([(608, 800), (640, 768)], cfg.model.num_classes)
    trainer_cls = AMPTrainer if cfg.train.amp.enabled else SimpleTrainer
    trainer = trainer_cls(model, itertools.repeat(batch), optimizer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with EventStorage(0) as storage:
        for i in range(steps):  # FloatingPointError from the trainer on a non-finite loss
            storage.iter = trainer.iter = i
            trainer.run_step()
        losses = [v for v, _ in storage.history("total_loss").values()]
    expect(len(losses) == steps and all(math.isfinite(x) for x in losses), f"losses {losses}")
    peak = ""
    if device.type == "cuda":
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB allocated"
    return (
        f"{trainer_cls.__name__}, {steps} steps, 2 images ~620x780: total_loss "
        f"{losses[0]:.3f} -> {losses[-1]:.3f}{peak}"
    )


# --- 3./4. inference and export --------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _fitted_tiny_model(device):
    """tests/test_export.py's small model, fitted for a few steps so that it has confident,
    well separated detections (random weights give near-ties that reorder across devices)."""
    from atss.utils.testing import FIT_BOXES, FIT_SIZE, fit_briefly, make_inputs, tiny_model

    model = tiny_model(**{"head.use_dcn": False}).to(device)
    return fit_briefly(model, make_inputs([FIT_SIZE, FIT_SIZE], [FIT_BOXES] * 2))


def _images(device, sizes=((200, 264), (152, 136)), seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.rand(3, h, w, generator=gen) * 255).to(device) for h, w in sizes]


def _eager(model, image):
    with torch.no_grad():
        inst = model([{"image": image}])[0]["instances"].to("cpu")
    return {
        "pred_boxes": inst.pred_boxes.tensor,
        "scores": inst.scores,
        "classes": inst.pred_classes,
    }


def _same_in_order(got, expected, atol, what):
    """Same detections in the same order (one device, same kernels: only rounding differs)."""
    boxes, classes, scores = (
        torch.as_tensor(got[k]).cpu() for k in ("pred_boxes", "pred_classes", "scores")
    )
    expect(
        len(boxes) == len(expected["pred_boxes"]) > 0,
        f"{what}: {len(boxes)} detections, " f"expected {len(expected['pred_boxes'])}",
    )
    expect(torch.equal(classes.long(), expected["classes"]), f"{what}: classes differ")
    box_err = (boxes - expected["pred_boxes"]).abs().max().item()
    score_err = (scores - expected["scores"]).abs().max().item()
    expect(
        box_err <= atol and score_err <= atol,
        f"{what}: box error {box_err:.2g}, score " f"error {score_err:.2g} > {atol}",
    )
    return max(box_err, score_err)


def check_inference(device):
    """Eager detections on ``device`` equal those on the CPU (confident ones, matched by IoU:
    kernels differ between devices, so the order of near-equal scores may too)."""
    from detectron2.structures import Boxes, pairwise_iou

    model = _fitted_tiny_model(device)
    cpu_model = copy.deepcopy(model).to("cpu")
    compared = 0
    for image in _images(device):
        on_dev, on_cpu = _eager(model, image), _eager(cpu_model, image.cpu())
        keep_dev, keep_cpu = on_dev["scores"] >= 0.3, on_cpu["scores"] >= 0.3
        expect(int(keep_cpu.sum()) > 0, "no confident CPU detection to compare")
        iou = pairwise_iou(Boxes(on_cpu["pred_boxes"][keep_cpu]), Boxes(on_dev["pred_boxes"]))
        # Class-wise NMS keeps one box once per class: match within the class.
        same_class = on_cpu["classes"][keep_cpu][:, None] == on_dev["classes"][None, :]
        best_iou, best = torch.where(same_class, iou, torch.full_like(iou, -1.0)).max(dim=1)
        cls_ok = torch.equal(on_cpu["classes"][keep_cpu], on_dev["classes"][best])
        score_err = (on_cpu["scores"][keep_cpu] - on_dev["scores"][best]).abs().max().item()
        expect(
            bool((best_iou > 0.99).all()) and cls_ok and score_err < 1e-3,
            f"CPU vs {device.type}: IoU {best_iou.min():.4f}, classes equal {cls_ok}, "
            f"score error {score_err:.2g}; confident on {device.type}: {int(keep_dev.sum())}",
        )
        compared += int(keep_cpu.sum())
    return f"{compared} confident detections on 2 images equal to CPU (IoU > 0.99, score 1e-3)"


def check_export(device, workdir):
    from atss.export import (
        export_onnx,
        export_torchscript,
        onnx_input_names,
        onnx_session,
        split_outputs,
    )

    model = _fitted_tiny_model(device)
    trace_image = _images(device, sizes=((136, 168),), seed=0)
    ts_path, onnx_path = os.path.join(workdir, "model.ts"), os.path.join(workdir, "model.onnx")
    export_torchscript(model, trace_image, ts_path)
    traced = torch.jit.load(ts_path, map_location=device)
    errors = []
    for image in _images(device):
        with torch.no_grad():
            out = split_outputs(traced(image))[0]
        errors.append(_same_in_order(out, _eager(model, image), 1e-4, "TorchScript"))
    detail = f"TorchScript on {device.type} = eager (max error {max(errors):.1g})"

    export_onnx(model, trace_image, onnx_path, opset=16)
    session = onnx_session(onnx_path, str(device))
    ort_on_cuda = session.get_providers()[0] == "CUDAExecutionProvider"
    reference = model if ort_on_cuda else copy.deepcopy(model).to("cpu")
    errors = []
    for image in _images(device):
        out = split_outputs(session.run(None, {onnx_input_names(1)[0]: image.cpu().numpy()}))[0]
        ref_image = image if ort_on_cuda else image.cpu()
        errors.append(_same_in_order(out, _eager(reference, ref_image), 1e-4, "ONNX"))
    where = "CUDA" if ort_on_cuda else "CPU (no onnxruntime CUDA provider)"
    onnx = f"ONNX exported on {device.type}, run on {where} = eager (max error {max(errors):.1g})"
    return f"{detail}; {onnx}"


# --- 5. NCCL ---------------------------------------------------------------------------------
def check_nccl_two_gpus(workdir, iters=6):
    """train_net.py --num-gpus 2 with AMP on CUDA: Detectron2's launch picks NCCL with CUDA."""
    out = os.path.join(workdir, "nccl")
    cmd = [
        sys.executable,
        os.path.join(ROOT, "train_net.py"),
        "--config-file",
        TINY_CONFIG,
        "--num-gpus",
        "2",
        "--dist-url",
        "auto",
        "--dist-timeout",
        "300",
        "train.device=cuda",
        "train.amp.enabled=True",
        f"train.max_iter={iters}",
        f"train.eval_period={iters}",
        "train.checkpointer.period=1000",
        "train.log_period=1",
        "dataloader.train.total_batch_size=4",
        "dataloader.train.num_workers=0",
        f"train.output_dir={out}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    expect(proc.returncode == 0, f"exit {proc.returncode}: {log[-1500:]}")
    expect("World size: 2" in log, "the log does not show a world of 2 processes")
    expect(os.path.exists(os.path.join(out, "model_final.pth")), "no model_final.pth")
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = [json.loads(x) for x in f if x.strip()]
    losses = [m["total_loss"] for m in metrics if "total_loss" in m]
    expect(len(losses) == iters and all(map(math.isfinite, losses)), f"losses {losses}")
    ap = [m["bbox/AP"] for m in metrics if "bbox/AP" in m]
    expect(len(ap) == 1, "no evaluation result")
    trend = f"total_loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    return f"2 processes (NCCL), AMP, {iters} iterations, {trend}"


# --- runner ----------------------------------------------------------------------------------
def run_checks(checks):
    """Run ``(name, fn)`` pairs; a check passes when ``fn()`` returns a detail string, is
    skipped when it returns ``("skipped", why)``, fails when it raises. Returns the rows."""
    rows = []
    for name, fn in checks:
        t0 = time.perf_counter()
        try:
            detail = fn()
            status = "ok"
            if isinstance(detail, tuple):
                status, detail = detail
        except Exception as e:  # report every failure, then go on with the next check
            status = "FAIL"
            detail = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        rows.append((name, status, time.perf_counter() - t0, detail))
        print(f"[{status}] {name} ({rows[-1][2]:.1f} s): {detail}", flush=True)
    return rows


def print_table(rows):
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':<{width}} | result  | seconds | detail")
    print("-" * (width + 30))
    for name, status, seconds, detail in rows:
        print(f"{name:<{width}} | {status:<7} | {seconds:>7.1f} | {detail}")


def cuda_absent_message():
    """None when CUDA can be used, else why not."""
    if torch.cuda.is_available():
        return None
    built = torch.version.cuda or "none (a CPU-only build)"
    return f"CUDA is not available here (torch {torch.__version__}, CUDA build: {built})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu: smoke test")
    parser.add_argument("--cases", type=int, default=200, help="random matcher cases")
    parser.add_argument("--gts", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--steps", type=int, default=5, help="AMP training steps")
    parser.add_argument("--skip", nargs="*", default=[], help="names of checks to skip")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        why = cuda_absent_message()
        if why:
            print(f"gpu_check: {why}: skipped every check, nothing was run.")
            return 0
        props = torch.cuda.get_device_properties(device)
        print(
            f"gpu_check on {torch.cuda.device_count()} x {props.name} "
            f"({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
            f"CUDA {torch.version.cuda}"
        )
    else:
        print(f"gpu_check: smoke run on {device} (CUDA paths compared with themselves)")

    workdir = tempfile.mkdtemp(prefix="atss_gpu_check_")
    two_gpus = device.type == "cuda" and torch.cuda.device_count() >= 2
    checks = [("matcher_random", lambda: check_matcher_random_cases(device, args.cases))]
    checks += [(f"matcher_{g}_gts", lambda g=g: check_matcher_crowded(device, g)) for g in args.gts]
    checks += [
        ("amp_training", lambda: check_amp_training(device, args.steps)),
        ("inference", lambda: check_inference(device)),
        ("export", lambda: check_export(device, workdir)),
        (
            "nccl_2gpu",
            lambda: (
                check_nccl_two_gpus(workdir)
                if two_gpus
                else ("skipped", f"needs 2 CUDA GPUs ({torch.cuda.device_count()} here)")
            ),
        ),
    ]
    checks = [
        (n, f) if n not in args.skip else (n, lambda: ("skipped", "--skip")) for n, f in checks
    ]
    rows = run_checks(checks)
    print_table(rows)
    failed = [r[0] for r in rows if r[1] == "FAIL"]
    print(
        f"\n{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} "
        f"(outputs in {workdir})"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""
Can ``torch.export`` capture an ATSS model? A measurement, not an export path: TorchScript
(``torch.jit.trace``, which Detectron2's ``TracingAdapter`` and ``atss.export`` use) is deprecated
from torch 2.9, and ``torch.export`` is its successor.

    python tools/probe_torch_export.py [--config-file configs/Shapes/atss_tiny_shapes.py]

Two captures, each with dynamic height and width, random weights (capture does not depend on
them):

* **network**: pixel normalisation, backbone + FPN, head: the per-level class logits, box
  deltas and centerness for a (1, 3, H, W) image whose sides are multiples of 32; the exported
  program is then run at other sizes and compared with eager.
* **with post-processing**: the whole ``model([{"image": img}])`` as Detectron2 runs it
  (score threshold, top-k, decoding, NMS), returning boxes, scores and classes.

Prints one line per capture and per size: OK with the largest difference from eager, or the
exception and the source line that stopped it.
"""

import argparse
import contextlib
import io
import re
import time

import torch
from torch import nn

from atss.engine.config import RANDOM, build_model, load_config

SAMPLE = (256, 320)  # every level >= 2 px: torch.export specialises sizes 0 and 1
CHECK_SIZES = [(256, 320), (640, 480), (288, 416), (192, 96)]


class Network(nn.Module):
    """Normalisation, backbone and head of an ATSS model: (1, 3, H, W) -> per level
    (logits (1, A*C, Hl, Wl), deltas (1, A*4, Hl, Wl), centerness (1, A, Hl, Wl)), flattened."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        m = self.model
        features = m.backbone((x - m.pixel_mean) / m.pixel_std)
        return tuple(
            t for level in m.head([features[f] for f in m.head_in_features]) for t in level
        )


class WithPostProcessing(nn.Module):
    """The model as Detectron2 runs it on one (3, H, W) image -> (boxes, scores, classes)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        instances = self.model([{"image": image}])[0]["instances"]
        return instances.pred_boxes.tensor, instances.scores, instances.pred_classes


def _stopped_by(error: Exception) -> str:
    """The first line of the error and the source location torch reports as its cause."""
    text = str(error)
    cause = re.search(r"Caused by: \(([^)]*)\)", text)
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    return f"{type(error).__name__}: {first}" + (f" [at {cause.group(1)}]" if cause else "")


def probe(name, module, example, dynamic_shapes, check_inputs):
    start = time.perf_counter()
    try:
        with torch.no_grad():
            program = torch.export.export(
                module, example, dynamic_shapes=dynamic_shapes, strict=False
            )
    except Exception as e:  # noqa: BLE001 - reporting what stops the capture is the point
        print(f"[{name}] capture FAILED ({time.perf_counter() - start:.1f} s): {_stopped_by(e)}")
        return
    print(f"[{name}] captured in {time.perf_counter() - start:.1f} s")
    for size, inputs in check_inputs:
        try:
            # a failed guard prints the whole exported graph: keep it out of the report
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
                eager, exported = module(*inputs), program.module()(*inputs)
            diff = max(float((a - b).abs().max()) for a, b in zip(eager, exported) if a.numel())
            print(f"  {size[0]}x{size[1]}: runs, max |exported - eager| = {diff:.3g}")
        except Exception as e:  # noqa: BLE001
            print(f"  {size[0]}x{size[1]}: run FAILED: {_stopped_by(e)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/Shapes/atss_tiny_shapes.py")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key=value config overrides")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(load_config(args.config_file, args.opts), RANDOM, "cpu", what="probe")
    print(f"torch {torch.__version__}, config {args.config_file}")
    images = {size: torch.rand(1, 3, *size) * 255 for size in [SAMPLE, *CHECK_SIZES]}
    Dim = torch.export.Dim
    side = {2: 32 * Dim("h32", min=2, max=128), 3: 32 * Dim("w32", min=2, max=128)}
    probe(
        "network",
        Network(model),
        (images[SAMPLE],),
        {"x": side},
        [(s, (images[s],)) for s in CHECK_SIZES],
    )
    probe(
        "with post-processing",
        WithPostProcessing(model),
        (images[SAMPLE][0],),
        {"image": {1: Dim("h", min=64, max=4096), 2: Dim("w", min=64, max=4096)}},
        [(s, (images[s][0],)) for s in CHECK_SIZES],
    )


if __name__ == "__main__":
    main()

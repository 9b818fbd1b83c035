"""
Draw which anchors ATSS selects as positives for each ground-truth box, beside the IoU assigner
(RetinaNet's 0.5 / 0.4 rule), and print the per-GT statistics (candidate IoU mean, std, the
threshold mean + std, positives per level).

    # boxes on the command line (XYXY pixels, ';' between boxes)
    python tools/visualize_positives.py --image street.jpg --boxes "10,20,200,300; 50,60,90,80"
    # boxes from a JSON file: [[x1, y1, x2, y2], ...] or {"boxes": [...]}
    python tools/visualize_positives.py --image street.jpg --boxes-json boxes.json
    # an image of a registered dataset (treecrowns_*, shapes_* are registered on demand)
    python tools/visualize_positives.py --dataset treecrowns_val --index 0 --max-gts 5

Anchors are those of the ATSS config (one 8·stride square per location on P3-P7, centres at
(i + 0.5)·stride) on the image padded to a multiple of 32, or those of ``--config-file``'s
``model.anchor_generator``. ``--short-edge`` resizes image and boxes first, as a test loader
would. The picture goes to ``--output`` (PNG).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch

from atss.modeling import atss_anchor_generator
from atss.utils import draw_positives, explain_assignment, format_table, pick_gts


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = parser.add_argument_group("input (an image with --boxes/--boxes-json, or --dataset)")
    src.add_argument("--image", help="image file")
    src.add_argument("--boxes", help="'x1,y1,x2,y2; x1,y1,x2,y2; ...' in pixels")
    src.add_argument("--boxes-json", help="JSON: [[x1,y1,x2,y2], ...] or {'boxes': [...]}")
    src.add_argument("--dataset", help="registered dataset name, e.g. treecrowns_val")
    src.add_argument("--index", type=int, default=0, help="image index in --dataset")
    parser.add_argument("--output", default="output/positives.png", help="PNG to write")
    parser.add_argument("--topk", type=int, default=9, help="ATSS k (candidates per level)")
    parser.add_argument("--max-gts", type=int, default=4, help="GT rows drawn (spread by size)")
    parser.add_argument("--gts", help="comma-separated GT indices to draw instead")
    parser.add_argument("--short-edge", type=int, help="resize so the shorter side is this")
    parser.add_argument("--config-file", help="take model.anchor_generator from this LazyConfig")
    return parser


def parse_boxes(text):
    """'x1,y1,x2,y2; ...' -> (G, 4) float tensor."""
    rows = [r for r in text.replace("\n", ";").split(";") if r.strip()]
    try:
        boxes = [[float(v) for v in r.split(",")] for r in rows]
    except ValueError as e:
        raise ValueError(f"--boxes: cannot parse {text!r} ({e})") from e
    if any(len(b) != 4 for b in boxes):
        raise ValueError(f"--boxes: every box needs 4 numbers x1,y1,x2,y2: {text!r}")
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def load_boxes_json(path):
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = data.get("boxes")
    try:
        boxes = torch.tensor(data, dtype=torch.float32).reshape(-1, 4)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: expected [[x1, y1, x2, y2], ...] or {{'boxes': [...]}}") from e
    return boxes


def load_from_dataset(name, index):
    """(image path, (G, 4) XYXY boxes) of image ``index`` of a registered dataset."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    if name not in DatasetCatalog.list():
        from atss.data.builtin import register_builtin_dataset

        register_builtin_dataset(name)  # the project's datasets: built on first read
    dicts = DatasetCatalog.get(name)
    if not 0 <= index < len(dicts):
        raise ValueError(f"--index {index}: dataset {name} has {len(dicts)} images")
    record = dicts[index]
    boxes = [
        BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
        for a in record.get("annotations", [])
    ]
    return record["file_name"], torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)


def make_anchors(height, width, config_file=None, size_divisibility=32):
    """Anchors per level for an input of (height, width), padded like the model pads it."""
    if config_file:
        from detectron2.config import instantiate

        from atss.engine.config import load_config

        generator = instantiate(load_config(config_file).model.anchor_generator)
    else:
        generator = atss_anchor_generator()
    pad_h = -(-height // size_divisibility) * size_divisibility
    pad_w = -(-width // size_divisibility) * size_divisibility
    # P3-P5 divide the padded size exactly; P6/P7 come from stride-2 convs (ceil).
    features = [torch.zeros(1, 1, -(-pad_h // s), -(-pad_w // s)) for s in generator.strides]
    return [b.tensor for b in generator(features)], int(generator.num_cell_anchors[0])


def visualize(
    image_path, boxes, output, topk=9, max_gts=4, gts=None, short_edge=None, config_file=None
):
    """
    Returns:
        (Explanation, drawn GT indices, table text); writes the PNG to ``output``.
    """
    from detectron2.data.detection_utils import read_image

    try:
        image = read_image(image_path, format="RGB")
    except Exception as e:
        raise ValueError(f"{image_path}: cannot read image ({type(e).__name__}: {e})") from e
    if short_edge:
        from detectron2.data import transforms as T

        h, w = image.shape[:2]
        scale = short_edge / min(h, w)
        new_h, new_w = round(h * scale), round(w * scale)
        image = T.ResizeTransform(h, w, new_h, new_w).apply_image(image)
        boxes = boxes * torch.tensor([new_w / w, new_h / h] * 2)
    anchors, per_location = make_anchors(image.shape[0], image.shape[1], config_file)
    explanation = explain_assignment(anchors, boxes, topk, per_location)
    if gts is None:
        gts = pick_gts(explanation.gt_boxes, max_gts)
    bad = [g for g in gts if not 0 <= g < len(boxes)]
    if bad:
        raise ValueError(f"--gts {bad}: the image has {len(boxes)} boxes")
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    title = (
        f"{os.path.basename(image_path)} ({image.shape[1]}x{image.shape[0]}): ATSS k={topk} "
        f"(left) vs IoU assigner 0.5/0.4 (right)"
    )
    draw_positives(np.ascontiguousarray(image), explanation, gts, output, title=title)
    return explanation, gts, format_table(explanation, gts)


def main(argv=None):
    args = get_parser().parse_args(argv)
    try:
        if args.dataset:
            image_path, boxes = load_from_dataset(args.dataset, args.index)
        elif args.image and (args.boxes or args.boxes_json):
            image_path = args.image
            boxes = parse_boxes(args.boxes) if args.boxes else load_boxes_json(args.boxes_json)
        else:
            raise ValueError("give --image with --boxes or --boxes-json, or --dataset")
        if len(boxes) == 0:
            raise ValueError(f"{image_path}: no ground-truth box to explain")
        gts = [int(g) for g in args.gts.split(",")] if args.gts else None
        _, _, table = visualize(
            image_path,
            boxes,
            args.output,
            args.topk,
            args.max_gts,
            gts,
            args.short_edge,
            args.config_file,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

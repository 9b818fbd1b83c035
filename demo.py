r"""
Run an ATSS model on images or a video and write the detections drawn on them.

    python demo.py --config-file configs/COCO/converted/atss_R_50_FPN_1x_authors.py \
        --input photos/ "more/*.jpg" one.png --output output/demo \
        train.init_checkpoint=output/converted/ATSS_R_50_FPN_1x.pth

* ``--input``: image files, folders (their images) and glob patterns; ``--video-input``: a video
  file, written back as an ``.mp4`` with the detections drawn.
* Config overrides (``key=value``) come last, after the flags, as in ``train_net.py``; the
  weights are ``train.init_checkpoint`` (a whole trained model of the config;
  ``--random-weights`` runs an untrained one). An override of a key the config does not have
  is refused.
* ``--run RUN`` (a training run's folder) stands for ``--config-file RUN/config.yaml
  train.init_checkpoint=RUN/model_final.pth``: the folder alone, without the training data.
* Runs on ``train.device`` when it is available, else on the CPU; ``train.amp.enabled=True``
  runs the network in mixed precision (bf16 on a CPU that has it, fp16 on CUDA:
  :func:`atss.engine.device.autocast_dtype`; ``--runtime onnxruntime`` stays fp32). Class names:
  :func:`atss.engine.predictor.model_classes` (the run's ``classes.json``, else the config's
  datasets).
* Large images: ``--tile-size`` runs the model on tiles; a ``.npy`` input (an (H, W, 3) uint8
  RGB array, ``np.save``) is then read a tile at a time from the file, so no copy of the whole
  image is held. An image of more than ``--max-draw-pixels`` pixels is not drawn: its detections
  go to ``<output>/<name>.csv`` and ``<name>.json`` instead. ``--output-detections FILE.csv
  FILE.json`` writes the detections of all images too (columns ``image, x0, y0, x1, y1, score,
  class_id, class_name``; COCO results JSON; class ids of the run's / dataset's categories).
* A file that cannot be read is reported by name and skipped; the exit status is then 1
  (2 when the config or the weights cannot be loaded).
"""

import argparse
import glob
import logging
import os
import sys
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from detectron2.data.catalog import Metadata
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.video_visualizer import VideoVisualizer
from detectron2.utils.visualizer import Visualizer
from tqdm import tqdm

from atss.engine.cli import (
    add_config_arguments,
    add_weights_arguments,
    config_and_overrides,
    parse_args,
)
from atss.engine.config import load_config
from atss.engine.predictor import ATSSPredictor, model_classes
from atss.inference.detection_files import detection_rows, write_detections
from atss.inference.lazy_image import ReversedChannels, read_for_tiling
from atss.inference.onnx_runtime import OnnxPredictor

logger = logging.getLogger("demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".npy")
MAX_DRAW_PIXELS = 4096 * 4096


def get_parser():
    parser = argparse.ArgumentParser(
        description="ATSS demo: draw detections on images/video",
        epilog="e.g. --config-file CFG --input photos/ --output out/demo "
        "train.init_checkpoint=RUN/model_final.pth",
    )
    add_config_arguments(parser)
    parser.add_argument("--input", nargs="+", default=[], help="images, folders or globs")
    parser.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", default="output/demo", help="folder for the results")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.5,
        help="minimum score of a drawn detection (ATSS scores are sqrt(p_class * p_centerness))",
    )
    parser.add_argument(
        "--tile-size",
        type=int,
        default=0,
        metavar="PIXELS",
        help="tiled inference: tile side in image pixels, about the training images' size; each "
        "tile then gets the config's test resize (0 = off)",
    )
    parser.add_argument(
        "--tile-overlap", type=int, default=0, metavar="PIXELS", help="tile overlap"
    )
    parser.add_argument(
        "--runtime",
        choices=["eager", "onnxruntime"],
        default="eager",
        help="onnxruntime: export once (cached next to the weights) and run the ONNX model",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="CPU threads of the model, torch's or ONNX Runtime's (0 = the runtime's default)",
    )
    parser.add_argument(
        "--max-draw-pixels",
        type=int,
        default=MAX_DRAW_PIXELS,
        metavar="N",
        help="images of more pixels are not drawn (drawing holds several full-size copies): "
        f"their detections go to <output>/<name>.csv and .json (default {MAX_DRAW_PIXELS})",
    )
    parser.add_argument(
        "--output-detections",
        nargs="+",
        default=[],
        metavar="FILE",
        help="also write all detections to these .csv / .json (COCO results) files",
    )
    add_weights_arguments(parser)
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="key=value config overrides, after the flags"
    )
    return parser


def expand_inputs(patterns: Sequence[str]) -> Tuple[List[str], List[str]]:
    """
    Args:
        patterns: files, folders (their image files, sorted) or glob patterns.

    Returns:
        (files, errors): the files in order; one message per pattern that names nothing.
    """
    files, errors = [], []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = sorted(
                os.path.join(pattern, f)
                for f in os.listdir(pattern)
                if f.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                errors.append(f"{pattern}: folder holds no image ({', '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        elif glob.has_magic(pattern):
            found = sorted(glob.glob(pattern))
            if not found:
                errors.append(f"{pattern}: no file matches this pattern")
            files.extend(found)
        else:  # a plain path: a missing or unreadable file is reported when it is read
            files.append(pattern)
    return files, errors


def _detect(predictor: ATSSPredictor, bgr, threshold: float):
    """Detections with score >= ``threshold`` (on the CPU) in a (H, W, 3) uint8 BGR image."""
    image = bgr[:, :, ::-1] if predictor.input_format == "RGB" else bgr
    instances = predictor(image).to("cpu")
    return instances[instances.scores >= threshold]


def read_input(path: str, lazy: bool):
    """An (H, W, 3) uint8 RGB image: read for tiling when ``lazy`` (a ``.npy`` file a window at
    a time, a picture decoded by OpenCV into one array, no pixel limit:
    :func:`atss.inference.lazy_image.read_for_tiling`), else the whole image in memory as
    Detectron2 reads it."""
    if lazy:
        return read_for_tiling(path, "RGB")
    if path.lower().endswith(".npy"):
        return np.asarray(read_for_tiling(path, "RGB"))
    return read_image(path, format="RGB")


def _detect_rgb(predictor: ATSSPredictor, rgb, threshold: float):
    """Detections with score >= ``threshold`` (on the CPU) in an (H, W, 3) uint8 RGB image or
    lazily read array-like."""
    if predictor.input_format != "RGB":
        rgb = rgb[:, :, ::-1] if isinstance(rgb, np.ndarray) else ReversedChannels(rgb)
    instances = predictor(rgb).to("cpu")
    return instances[instances.scores >= threshold]


def _unique_path(folder: str, stem: str, ext: str, used: set) -> str:
    name, i = f"{stem}{ext}", 1
    while name in used:
        name, i = f"{stem}_{i}{ext}", i + 1
    used.add(name)
    return os.path.join(folder, name)


def run_images(
    predictor,
    files,
    metadata,
    output,
    threshold,
    max_draw_pixels: int = MAX_DRAW_PIXELS,
    classes: Optional[List[Tuple[int, str]]] = None,
    all_rows: Optional[list] = None,
) -> List[str]:
    """Annotate each image into ``output/<name>.png``, or, above ``max_draw_pixels``, write its
    detections to ``output/<name>.csv`` and ``.json``; the detections' rows (``classes``: the
    ``(id, name)`` of each model class) are appended to ``all_rows``. Returns one message per
    failure."""
    failures, used = [], set()
    for path in tqdm(files, desc="images", unit="img"):
        try:
            rgb = read_input(path, lazy=getattr(predictor, "tiled", False))
        except Exception as e:  # missing file, not an image, truncated, ...
            failures.append(f"{path}: cannot read image ({type(e).__name__}: {e})")
            logger.error(failures[-1])
            continue
        instances = _detect_rgb(predictor, rgb, threshold)
        stem = os.path.splitext(os.path.basename(path))[0]
        rows = detection_rows(os.path.basename(path), instances, classes)
        if all_rows is not None:
            all_rows.extend(rows)
        height, width = rgb.shape[:2]
        if height * width > max_draw_pixels:  # drawing would hold several full-size copies
            out_path = _unique_path(output, stem, ".csv", used)
            try:
                write_detections(out_path, rows)
                write_detections(out_path[: -len(".csv")] + ".json", rows)
            except OSError as e:
                failures.append(f"{path}: cannot write {out_path} ({e})")
                logger.error(failures[-1])
                continue
            logger.info(
                f"{path}: {width}x{height} is over --max-draw-pixels {max_draw_pixels}, not "
                f"drawn: {len(instances)} detections -> {out_path} and .json"
            )
            continue
        drawn = Visualizer(np.asarray(rgb), metadata).draw_instance_predictions(instances)
        out_path = _unique_path(output, stem, ".png", used)
        if not cv2.imwrite(out_path, drawn.get_image()[:, :, ::-1]):
            failures.append(f"{path}: cannot write {out_path}")
            logger.error(failures[-1])
            continue
        logger.info(f"{path}: {len(instances)} detections -> {out_path}")
    return failures


def run_video(predictor, path, metadata, output, threshold) -> List[str]:
    """Annotate every frame of a video into ``output/<name>.mp4``."""
    video = cv2.VideoCapture(path)
    if not os.path.isfile(path) or not video.isOpened():
        return [f"{path}: cannot open video"]
    width, height = int(video.get(cv2.CAP_PROP_FRAME_WIDTH)), int(
        video.get(cv2.CAP_PROP_FRAME_HEIGHT)
    )
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    stem = os.path.splitext(os.path.basename(path))[0]
    out_path = os.path.join(output, stem + ".mp4")
    writer = cv2.VideoWriter(out_path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    visualizer = VideoVisualizer(metadata)
    frames = 0
    with tqdm(total=total, desc=os.path.basename(path), unit="frame") as bar:
        while True:
            ok, frame = video.read()
            if not ok:
                break
            instances = _detect(predictor, frame, threshold)
            drawn = visualizer.draw_instance_predictions(frame[:, :, ::-1], instances)
            writer.write(drawn.get_image()[:, :, ::-1])
            frames += 1
            bar.update(1)
    video.release()
    writer.release()
    if frames == 0:
        return [f"{path}: no frame could be decoded"]
    logger.info(f"{path}: {frames} frames -> {out_path}")
    return []


def _write_all_detections(paths: Sequence[str], rows: list) -> List[str]:
    """Write ``rows`` to each of ``paths`` (.csv / .json); one message per failure."""
    failures = []
    for path in paths:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            write_detections(path, rows)
            logger.info(f"{len(rows)} detections -> {path}")
        except OSError as e:
            failures.append(f"cannot write {path} ({e})")
            logger.error(failures[-1])
    return failures


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(get_parser(), argv)
    if not args.input and not args.video_input:
        logger.error("nothing to do: give --input and/or --video-input")
        return 2
    for path in args.output_detections:
        if not path.lower().endswith((".csv", ".json")):
            logger.error(f"--output-detections {path}: write .csv or .json files")
            return 2
    try:
        args.config_file, opts = config_and_overrides(args)
        cfg = load_config(args.config_file, opts)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        if args.runtime == "onnxruntime":  # exported once, cached next to the weights
            predictor = OnnxPredictor(
                cfg, threads=args.threads or None, random_weights=args.random_weights
            )
        else:
            predictor = ATSSPredictor(cfg, random_weights=args.random_weights)
    except Exception as e:  # a bad config, override or weights file: nothing can run
        logger.error(f"cannot set up the model from {args.config_file}: {type(e).__name__}: {e}")
        return 2
    classes = model_classes(cfg, args.config_file)
    if args.tile_size:  # large images: run the model on overlapping tiles
        try:
            predictor.tile(args.tile_size, args.tile_overlap)
        except ValueError as e:
            logger.error(f"--tile-size {args.tile_size} --tile-overlap {args.tile_overlap}: {e}")
            return 2
    names = [name for _, name in classes or []]
    metadata = Metadata(name="demo", thing_classes=names) if names else Metadata(name="demo")
    shown = f"{len(names)} ({', '.join(names[:3])}, ...)" if names else "unknown, indices shown"
    logger.info(f"model on {predictor.device}; class names: {shown}")
    os.makedirs(args.output, exist_ok=True)

    files, failures = expand_inputs(args.input)
    for message in failures:
        logger.error(message)
    rows: list = []
    failures += run_images(
        predictor,
        files,
        metadata,
        args.output,
        args.confidence_threshold,
        args.max_draw_pixels,
        classes,
        rows,
    )
    failures += _write_all_detections(args.output_detections, rows)
    if args.video_input:
        failures += run_video(
            predictor, args.video_input, metadata, args.output, args.confidence_threshold
        )
    if failures:
        logger.error(f"{len(failures)} input(s) failed:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    setup_logger(name="demo", abbrev_name="demo")
    setup_logger(name="fvcore")
    setup_logger()
    sys.exit(main())

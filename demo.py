r"""
Run an ATSS model on images or a video and write the detections drawn on them.

    python demo.py --config-file configs/COCO/converted/atss_R_50_FPN_1x_authors.py \
        --input photos/ "more/*.jpg" one.png --output output/demo \
        train.init_checkpoint=output/converted/ATSS_R_50_FPN_1x.pth

* ``--input``: image files, folders (their images) and glob patterns; ``--video-input``: a video
  file, written back as an ``.mp4`` with the detections drawn.
* Config overrides (``key=value``) come after ``--opts`` or anywhere on the command line, as
  in ``train_net.py``; the weights are ``train.init_checkpoint``.
* Runs on ``train.device`` when it is available, else on the CPU. Class names come from the
  metadata of the config's test dataset when they match the model's number of classes.
* A file that cannot be read is reported by name and skipped; the exit status is then 1
  (2 when the config or the weights cannot be loaded).
"""

import argparse
import glob
import logging
import os
import re
import sys
from typing import List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.abspath(__file__))
# Use this checkout's package even when another copy is installed.
sys.path.insert(0, os.path.join(ROOT, "projects", "ATSS"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.catalog import Metadata  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from detectron2.utils.video_visualizer import VideoVisualizer  # noqa: E402
from detectron2.utils.visualizer import Visualizer  # noqa: E402
from tqdm import tqdm  # noqa: E402

logger = logging.getLogger("demo")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Class names of this project's datasets, for when they are not registered in this process.
_PROJECT_CLASSES = {"shapes": ("rectangle", "ellipse", "triangle"), "treecrowns": ("tree",)}
_OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.\w+)+=")


def get_parser():
    parser = argparse.ArgumentParser(
        description="ATSS demo: draw detections on images/video",
        epilog="key=value config overrides may also stand anywhere on the command line, "
        "e.g. train.init_checkpoint=model.pth",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="LazyConfig file")
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
        "--runtime",
        choices=["eager", "onnxruntime"],
        default="eager",
        help="onnxruntime: export once (cached next to the weights) and run the ONNX model",
    )
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides key=value")
    return parser


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """
    Separate ``key.path=value`` overrides given anywhere on the command line (``--input``
    takes several values, so they cannot simply follow it) from the other arguments. A token
    naming an existing file is an input, never an override.
    """
    rest, overrides = [], []
    for token in argv:
        if _OVERRIDE.match(token) and not os.path.exists(token):
            overrides.append(token)
        else:
            rest.append(token)
    return rest, overrides


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


def thing_classes(cfg, num_classes: int) -> Optional[List[str]]:
    """Class names of the config's test dataset, if known and consistent with the model."""
    try:
        names = cfg.dataloader.test.dataset.names
    except Exception:  # configs without a test loader
        return None
    for name in [names] if isinstance(names, str) else list(names):
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is None:
            classes = next((c for p, c in _PROJECT_CLASSES.items() if name.startswith(p)), None)
        if classes is not None and len(classes) == num_classes:
            return list(classes)
    return None


class Predictor:
    """
    Detectron2's ``DefaultPredictor`` for a LazyConfig: build the model, load
    ``train.init_checkpoint``, resize like the test loader, feed the model's channel order.
    """

    def __init__(self, cfg, device: str):
        self.model = instantiate(cfg.model).to(device).eval()
        weights = cfg.train.get("init_checkpoint", "")
        if weights:
            DetectionCheckpointer(self.model).load(weights)
        else:
            logger.warning("train.init_checkpoint is empty: the model has random weights")
        try:
            augmentations = instantiate(cfg.dataloader.test.mapper.augmentations)
        except Exception:  # no test loader in the config: no resizing
            augmentations = []
        self.augmentations = T.AugmentationList(list(augmentations))
        self.input_format = getattr(self.model, "input_format", "BGR") or "BGR"

    @torch.no_grad()
    def __call__(self, bgr: np.ndarray):
        """
        Args:
            bgr: (H, W, 3) uint8 image in BGR order.

        Returns:
            Instances in the coordinates of ``bgr``.
        """
        image = bgr[:, :, ::-1] if self.input_format == "RGB" else bgr
        height, width = image.shape[:2]
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]["instances"]


def _keep_confident(instances, threshold: float):
    instances = instances.to("cpu")
    return instances[instances.scores >= threshold]


def _unique_path(folder: str, stem: str, ext: str, used: set) -> str:
    name, i = f"{stem}{ext}", 1
    while name in used:
        name, i = f"{stem}_{i}{ext}", i + 1
    used.add(name)
    return os.path.join(folder, name)


def run_images(predictor, files, metadata, output, threshold) -> List[str]:
    """Annotate each image into ``output/<name>.png``; returns one message per failure."""
    failures, used = [], set()
    for path in tqdm(files, desc="images", unit="img"):
        try:
            bgr = read_image(path, format="BGR")
        except Exception as e:  # missing file, not an image, truncated, ...
            failures.append(f"{path}: cannot read image ({type(e).__name__}: {e})")
            logger.error(failures[-1])
            continue
        instances = _keep_confident(predictor(bgr), threshold)
        drawn = Visualizer(bgr[:, :, ::-1], metadata).draw_instance_predictions(instances)
        stem = os.path.splitext(os.path.basename(path))[0]
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
            instances = _keep_confident(predictor(frame), threshold)
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, trailing = split_overrides(argv)
    args = get_parser().parse_args(rest)
    if not args.input and not args.video_input:
        logger.error("nothing to do: give --input and/or --video-input")
        return 2
    try:
        cfg = LazyConfig.apply_overrides(LazyConfig.load(args.config_file), args.opts + trailing)
        device = str(cfg.train.get("device", "cpu"))
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        if args.runtime == "onnxruntime":
            from atss.engine.onnx_runtime import OnnxPredictor

            predictor = OnnxPredictor(cfg, device)
        else:
            predictor = Predictor(cfg, device)
    except Exception as e:  # a bad config, override or weights file: nothing can run
        logger.error(f"cannot set up the model from {args.config_file}: {type(e).__name__}: {e}")
        return 2
    classes = thing_classes(cfg, predictor.model.num_classes)
    metadata = Metadata(name="demo", thing_classes=classes) if classes else Metadata(name="demo")
    names = "unknown, indices shown"
    if classes:
        names = f"{len(classes)} from the test dataset ({', '.join(classes[:3])}, ...)"
    logger.info(f"model on {device}; class names: {names}")
    os.makedirs(args.output, exist_ok=True)

    files, failures = expand_inputs(args.input)
    for message in failures:
        logger.error(message)
    failures += run_images(predictor, files, metadata, args.output, args.confidence_threshold)
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

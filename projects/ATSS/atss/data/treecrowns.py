"""Tree-crown detection data shipped offline by the ``deepforest`` wheel, as Detectron2 datasets.

Source
    ``deepforest==2.1.0`` ships, in its ``data/`` folder, aerial RGB images of NEON sites with
    tree-crown boxes as Pascal VOC XML: two large YELL (Yellowstone) crops and two 400x400
    tiles, OSBS_029 (Ordway-Swisher, Florida) and SOAP_061 (Soaproot Saddle, California) —
    4 annotated images, 951 boxes. The package is located by path with
    ``importlib.util.find_spec`` and never imported (its dependencies are not installed).
    Labels ("Tree", and "Dead"/"Alive" in SOAP_061) are all folded into one class, ``"tree"``:
    the task is crown detection, and 37 boxes are too few to learn a health attribute. The
    original label is kept per annotation as ``"source_label"`` in the COCO JSON.

Box convention
    VOC corner values are used as-is as continuous ``XYXY_ABS`` pixel coordinates (as deepforest
    itself does); boxes reaching past the image are clipped.

Splits (registered names)
    ``treecrowns_train`` / ``treecrowns_val``: a *spatial* split, so that every site is in both
    sets and no pixel is in both. The right ``val_fraction`` (a quarter) of every annotated image
    is one validation crop; the rest is cut into ``tile_size`` tiles at ``stride`` (overlapping
    when stride < tile). Only whole tiles are cut (a strip narrower than a stride at the right /
    bottom end of the training region stays unused, unless ``cover_edges``); a region smaller
    than a tile gives one tile clipped to the region. A box belongs to a tile or crop when
    more than ``min_visible`` of its area lies inside, and is clipped to it. With the defaults
    (320 / 240 / 0.25 / 0.5): 65 training tiles with 730 boxes (boxes in tile overlaps count
    once per tile; 8 tiles have no box) and 4 validation crops with 293 boxes.

    ``treecrowns_xsite_train`` / ``treecrowns_xsite_val``: cross-site hold-out. Train on the YELL
    images (whole images, tiled the same way), validate on the whole OSBS_029 and SOAP_061
    images — different forests, never seen in training.

Evaluation
    Crops are dense (up to 208 trees in one validation crop), so evaluate with
    ``COCOEvaluator(..., max_dets_per_image=TREECROWNS_MAX_DETS_PER_IMAGE)`` (300) and let the
    model keep as many detections per image; COCO's default of 100 caps AP at ~63 even for
    perfect predictions.

Cache
    The COCO JSON files and the tile / crop PNGs are written at run time under
    ``<cache root>/treecrowns/<key>/`` (see :mod:`atss.data.cache`; default ``$ATSS_CACHE`` or
    ``~/.cache/atss``). ``key`` hashes the contents of the source XML and image files, the
    split parameters and a format version, so the cache is rebuilt whenever any of them
    changes. Building takes about a second; later calls only hash the sources.

Usage::

    # in a LazyConfig (the checked loader registers the name and builds the cache on first use):
    dataloader.train.dataset.names = "treecrowns_train"
    # or explicitly:
    from atss.data import register_all_treecrowns
    register_all_treecrowns()          # idempotent; builds the cache if needed
"""

import hashlib
import importlib.util
import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from detectron2.data.datasets import load_coco_json
from PIL import Image

from .cache import (
    build_dir_atomically,
    hash_file,
    is_complete,
    resolve_root,
    write_json_atomically,
)
from .crops import boxes_in_window, region_tiles
from .registration import register_dataset
from .validation import repair_xyxy_boxes
from .voc import parse_voc_xml

__all__ = [
    "TREECROWNS_CLASSES",
    "TREECROWNS_SPLITS",
    "TREECROWNS_MAX_DETS_PER_IMAGE",
    "TreeCrownSplitParams",
    "SourceImage",
    "deepforest_data_dir",
    "find_annotated_images",
    "plan_treecrown_splits",
    "treecrowns_cache_dir",
    "build_treecrowns_cache",
    "register_all_treecrowns",
    "tree_crown_mosaic",
]

logger = logging.getLogger(__name__)

TREECROWNS_CLASSES = ["tree"]
TREECROWNS_SPLITS = (
    "treecrowns_train",
    "treecrowns_val",
    "treecrowns_xsite_train",
    "treecrowns_xsite_val",
)
# The densest validation crop (YELL, right quarter) has 208 trees: evaluation must keep more
# than COCO's default 100 detections per image (COCOEvaluator(max_dets_per_image=...)), and the
# model's test-time detections_per_image must be at least as large, or AP is capped (~63 AP for
# a perfect detector at 100).
TREECROWNS_MAX_DETS_PER_IMAGE = 300
# Bump when the conversion changes in a way that alters the output, to invalidate old caches.
_FORMAT_VERSION = 1
_FIX = "Install it with `pip install --no-deps deepforest==2.1.0` (or run `make venv`)."
# NEON image names: optional year prefix, then the 4-letter site code, e.g. "2019_YELL_2_...".
_SITE_RE = re.compile(r"^(?:\d{4}_)?([A-Z]{4})_")


@dataclass(frozen=True)
class TreeCrownSplitParams:
    """How annotated images are cut into training tiles and validation crops.

    Attributes:
        tile_size: side of the square training tiles, in pixels.
        stride: step between tile origins (< tile_size gives overlapping tiles).
        val_fraction: width fraction of each image, on the right, used for validation.
        min_visible: a box is kept in a tile/crop when more than this fraction of its area is
            inside (it is then clipped to the tile).
        cover_edges: also cut a last tile flush with the right/bottom edge of each region, so
            no training pixel is left out (off by default: the reference numbers use whole
            strides only).
        xsite_train_sites: site codes trained on in the cross-site split.
        xsite_val_images: image names (file stems) validated on in the cross-site split.
    """

    tile_size: int = 320
    stride: int = 240
    val_fraction: float = 0.25
    min_visible: float = 0.5
    cover_edges: bool = False
    xsite_train_sites: Tuple[str, ...] = ("YELL",)
    xsite_val_images: Tuple[str, ...] = ("OSBS_029", "SOAP_061")

    def __post_init__(self):
        if not (self.tile_size > 0 and 0 < self.stride):
            raise ValueError(f"tile_size and stride must be positive, got {self}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.min_visible < 1.0:
            raise ValueError(f"min_visible must be in [0, 1), got {self.min_visible}")
        # Tuples (not lists) so the dataclass stays hashable and its asdict() stable.
        object.__setattr__(self, "xsite_train_sites", tuple(self.xsite_train_sites))
        object.__setattr__(self, "xsite_val_images", tuple(self.xsite_val_images))


@dataclass
class SourceImage:
    """One annotated source image.

    Attributes:
        name: file stem of the XML, e.g. "OSBS_029".
        site: 4-letter NEON site code parsed from the name ("" when the name has none).
        xml_path, image_path: source files.
        width, height: image size in pixels.
        boxes: float64 array (N, 4), XYXY_ABS, finite, clipped to the image, positive size.
        labels: N original class names ("Tree", "Dead", ...).
    """

    name: str
    site: str
    xml_path: Path
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: List[str] = field(default_factory=list)


def deepforest_data_dir() -> Path:
    """Return the ``data/`` folder of the installed ``deepforest`` package, without importing it.

    Raises:
        ModuleNotFoundError: deepforest is not installed (the message names the fix).
    """
    spec = importlib.util.find_spec("deepforest")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        data = Path(loc) / "data"
        if data.is_dir():
            return data
    raise ModuleNotFoundError(
        f"The tree-crown datasets read the images shipped by the `deepforest` package, which "
        f"is not installed (or has no data/ folder; searched {locations}). {_FIX}"
    )


def _site_of(name: str) -> str:
    m = _SITE_RE.match(name)
    return m.group(1) if m else ""


def find_annotated_images(source_dir=None) -> List[SourceImage]:
    """Read every ``*.xml`` in ``source_dir`` (default: deepforest's data folder) with its image.

    The image is the XML's ``<filename>`` in the same folder. Image sizes are read from the
    image headers (no pixels decoded) and must match the XML ``<size>``.

    Returns:
        list[SourceImage] sorted by name.

    Raises:
        FileNotFoundError: an XML names an image that does not exist.
        ValueError: malformed XML, size mismatch, non-finite box.
    """
    source_dir = Path(source_dir) if source_dir is not None else deepforest_data_dir()
    xml_paths = sorted(source_dir.glob("*.xml"))
    if not xml_paths:
        raise FileNotFoundError(f"No Pascal VOC *.xml annotation files in {source_dir}")
    images = []
    for xml_path in xml_paths:
        ann = parse_voc_xml(xml_path)
        if not ann["filename"]:
            raise ValueError(f"{xml_path}: missing <filename> (the annotated image)")
        image_path = source_dir / ann["filename"]
        if not image_path.is_file():
            raise FileNotFoundError(f"{xml_path}: annotated image {image_path} does not exist")
        try:
            with Image.open(image_path) as im:
                width, height = im.size
        except OSError as e:
            raise ValueError(f"{image_path}: cannot read image ({e})") from None
        if ann["width"] is not None and (ann["width"], ann["height"]) != (width, height):
            raise ValueError(
                f"{xml_path}: <size> says {ann['width']}x{ann['height']} but {image_path.name} "
                f"is {width}x{height}"
            )
        boxes = ann["boxes"]
        keep = repair_xyxy_boxes(boxes, width, height, source=str(xml_path))
        images.append(
            SourceImage(
                name=xml_path.stem,
                site=_site_of(xml_path.stem),
                xml_path=xml_path,
                image_path=image_path,
                width=width,
                height=height,
                boxes=boxes[keep],
                labels=[lb for lb, k in zip(ann["labels"], keep) if k],
            )
        )
    return images


def _tiles(region, params: TreeCrownSplitParams) -> List[Tuple[int, int, int, int]]:
    return region_tiles(region, params.tile_size, params.stride, params.cover_edges)


def plan_treecrown_splits(
    images: Sequence[SourceImage], params: TreeCrownSplitParams = TreeCrownSplitParams()
) -> Dict[str, List[Tuple[int, Tuple[int, int, int, int]]]]:
    """Decide which windows of which source images form each split (no pixels are read).

    Returns:
        dict split name -> list of (index into ``images``, (x0, y0, x1, y1) window).
    """
    plan = {name: [] for name in TREECROWNS_SPLITS}
    for i, img in enumerate(images):
        # Round so the validation crop is at least val_fraction wide; train gets the rest.
        split_x = img.width - int(math.ceil(img.width * params.val_fraction))
        train_region = (0, 0, split_x, img.height)
        plan["treecrowns_train"] += [(i, t) for t in _tiles(train_region, params)]
        plan["treecrowns_val"].append((i, (split_x, 0, img.width, img.height)))
        whole = (0, 0, img.width, img.height)
        if img.site in params.xsite_train_sites:
            plan["treecrowns_xsite_train"] += [(i, t) for t in _tiles(whole, params)]
        if img.name in params.xsite_val_images:
            plan["treecrowns_xsite_val"].append((i, whole))
    names = {img.name for img in images}
    missing = [n for n in params.xsite_val_images if n not in names]
    if missing:
        logger.warning(f"Cross-site validation images not found among the sources: {missing}")
    return plan


def _cache_key(images: Sequence[SourceImage], params: TreeCrownSplitParams) -> str:
    desc = {
        "format": _FORMAT_VERSION,
        "params": asdict(params),
        "sources": [
            [
                img.xml_path.name,
                hash_file(img.xml_path),
                img.image_path.name,
                hash_file(img.image_path),
            ]
            for img in images
        ],
    }
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]


def treecrowns_cache_dir(
    root=None, source_dir=None, params: TreeCrownSplitParams = TreeCrownSplitParams()
) -> Path:
    """The cache folder for these sources and parameters (it may not exist yet).

    Args:
        root: folder holding tree-crown cache folders; default ``<cache root>/treecrowns``.
        source_dir: folder with the VOC XMLs and images; default deepforest's data folder.
    """
    images = find_annotated_images(source_dir)
    return resolve_root(root, "treecrowns") / _cache_key(images, params)


def _window_name(img: SourceImage, window) -> str:
    x0, y0, x1, y1 = window
    # Named by source and window, so a tile shared by two splits is written once.
    return f"{img.name}_x{x0}_y{y0}_w{x1 - x0}_h{y1 - y0}.png"


def _write_split(plan, images, params, image_dir: Path, pixels: dict) -> dict:
    """Write the PNGs of one split's windows (if not written yet) and return its COCO dict."""
    coco_images, coco_anns = [], []
    for image_id, (i, window) in enumerate(plan, start=1):
        img = images[i]
        file_name = _window_name(img, window)
        if not (image_dir / file_name).exists():
            if img.name not in pixels:
                with Image.open(img.image_path) as im:
                    pixels[img.name] = np.asarray(im.convert("RGB"))
            x0, y0, x1, y1 = window
            # compress_level=1: ~5x faster than the default at ~10% larger files.
            Image.fromarray(pixels[img.name][y0:y1, x0:x1]).save(
                image_dir / file_name, compress_level=1
            )
        coco_images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": int(window[2] - window[0]),
                "height": int(window[3] - window[1]),
                "source_image": img.image_path.name,
                "site": img.site,
                "window_xyxy": [int(v) for v in window],
            }
        )
        boxes, idx = boxes_in_window(img.boxes, window, params.min_visible)
        for box, j in zip(boxes.tolist(), idx.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            coco_anns.append(
                {
                    "id": len(coco_anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [box[0], box[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                    "source_label": img.labels[j],
                }
            )
    return {
        "info": {"description": "deepforest tree crowns, converted by atss.data.treecrowns"},
        "images": coco_images,
        "annotations": coco_anns,
        "categories": [{"id": 1, "name": "tree", "supercategory": "plant"}],
    }


def build_treecrowns_cache(
    root=None, source_dir=None, params: TreeCrownSplitParams = TreeCrownSplitParams()
) -> Path:
    """Convert the VOC sources into COCO JSON + PNG tiles for all four splits, unless the cache
    for these sources and parameters already exists.

    Layout of the returned folder: ``images/*.png`` (the image_root of every split) and
    ``<split>.json`` for each name in :data:`TREECROWNS_SPLITS`, plus ``manifest.json``
    (written last; per-split image/box counts).

    Returns:
        Path: the cache folder.
    """
    images = find_annotated_images(source_dir)
    final_dir = resolve_root(root, "treecrowns") / _cache_key(images, params)
    return _build_cache(images, final_dir, params)


def _build_cache(images: Sequence[SourceImage], final_dir: Path, params) -> Path:
    if is_complete(final_dir):
        return final_dir

    def build(tmp_dir: Path) -> dict:
        image_dir = tmp_dir / "images"
        image_dir.mkdir()
        plan = plan_treecrown_splits(images, params)
        pixels = {}  # decoded source images, shared by the splits
        manifest = {"params": asdict(params), "splits": {}}
        for split in TREECROWNS_SPLITS:
            coco = _write_split(plan[split], images, params, image_dir, pixels)
            write_json_atomically(coco, tmp_dir / f"{split}.json")
            manifest["splits"][split] = {
                "images": len(coco["images"]),
                "boxes": len(coco["annotations"]),
            }
        logger.info(f"Built tree-crown cache {final_dir}: {manifest['splits']}")
        return manifest

    return build_dir_atomically(final_dir, build)


def register_all_treecrowns(
    root=None,
    source_dir=None,
    params: TreeCrownSplitParams = TreeCrownSplitParams(),
    build: bool = True,
) -> List[str]:
    """Register the four tree-crown datasets (:data:`TREECROWNS_SPLITS`) with Detectron2.

    Safe to call more than once. Call it before building data loaders, e.g. at the top of a
    training script or config (``launch`` spawns workers, so register at import time of the
    main module or inside the function each worker runs).

    Args:
        root: folder for the cache folders; default ``<cache root>/treecrowns``
            (:func:`atss.data.default_cache_root`).
        source_dir: folder with VOC XMLs + images; default deepforest's ``data/``.
        params: split parameters (part of the cache key).
        build: build the cache now (~1 s the first time, ~0.1 s to verify later), so
            ``metadata.json_file`` exists whenever COCOEvaluator reads it. With False the
            cache is built by the first ``DatasetCatalog.get``; the evaluator must then be
            created after the dataset was loaded.

    Returns:
        list[str]: the registered names.
    """
    images = find_annotated_images(source_dir)
    cache_dir = resolve_root(root, "treecrowns") / _cache_key(images, params)
    if build:
        _build_cache(images, cache_dir, params)

    def make_loader(split):
        json_file = cache_dir / f"{split}.json"

        def load():
            # Rebuild if the cache was deleted since registration; the key must not change,
            # or the registered metadata (json_file) would point at stale data.
            if not is_complete(cache_dir):
                built = build_treecrowns_cache(root, source_dir, params)
                if built != cache_dir:
                    raise RuntimeError(
                        f"Tree-crown source files changed since {split} was registered "
                        f"(cache {cache_dir.name} -> {built.name}); call "
                        f"register_all_treecrowns() again."
                    )
            return load_coco_json(str(json_file), str(cache_dir / "images"), split)

        return load

    for split in TREECROWNS_SPLITS:
        register_dataset(
            split,
            make_loader(split),
            thing_classes=TREECROWNS_CLASSES,
            # Set here (load_coco_json sets the same later) so COCOEvaluator maps class 0 back
            # to category id 1 even when it is built before the dataset is first loaded.
            thing_dataset_id_to_contiguous_id={1: 0},
            json_file=str(cache_dir / f"{split}.json"),
            image_root=str(cache_dir / "images"),
        )
    return list(TREECROWNS_SPLITS)


def tree_crown_mosaic(size: int) -> np.ndarray:
    """A ``size`` x ``size`` RGB uint8 (H, W, 3) image: the largest tree-crown image repeated,
    for benchmarks of large images (an orthomosaic stand-in made from real pixels)."""
    source = max(find_annotated_images(), key=lambda im: im.width * im.height)
    with Image.open(source.image_path) as im:
        pixels = np.asarray(im.convert("RGB"))
    reps = (-(-size // pixels.shape[0]), -(-size // pixels.shape[1]), 1)
    return np.ascontiguousarray(np.tile(pixels, reps)[:size, :size])

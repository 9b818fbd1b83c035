"""Tree-crown detection data shipped offline by the ``deepforest`` wheel, as Detectron2 datasets.

The source is deepforest's ``data/`` folder (found with ``importlib.util.find_spec``, never
imported): aerial RGB images of NEON sites with tree-crown boxes as Pascal VOC XML. All labels
become one class, ``"tree"`` (the label stays in the JSON as ``source_label``). Two splits:

* ``treecrowns_train`` / ``treecrowns_val``, spatial: the right ``val_fraction`` of every image
  is its validation crop, the rest is cut into training tiles (:mod:`.crops`), so every site
  is in both sets and no pixel in both;
* ``treecrowns_xsite_train`` / ``treecrowns_xsite_val``, cross-site: train on the YELL images,
  validate on the whole OSBS_029 and SOAP_061 images, forests never seen in training.

Crops are dense: evaluate with ``max_dets_per_image=TREECROWNS_MAX_DETS_PER_IMAGE``. The COCO
JSON and PNG files are written into the cache (:mod:`.cache`) when first read.
"""

import hashlib
import importlib.util
import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from detectron2.data.datasets import load_coco_json

from .cache import build_dir_atomically, hash_file, is_complete, resolve_root, write_json_atomically
from .crops import crops_to_coco, region_tiles
from .registration import register_dataset
from .voc import AnnotatedImage, read_voc_folder

__all__ = [
    "TREECROWNS_CLASSES",
    "TREECROWNS_SPLITS",
    "TREECROWNS_MAX_DETS_PER_IMAGE",
    "TreeCrownSplitParams",
    "deepforest_data_dir",
    "plan_treecrown_splits",
    "build_treecrowns_cache",
    "register_all_treecrowns",
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
# than COCO's default 100 detections per image (COCOEvaluator(max_dets_per_image=...)), and so
# must the model (max_detections_per_image), or even a perfect detector's AP is capped.
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


def _read_sources(source_dir=None) -> List[AnnotatedImage]:
    """The annotated images of ``source_dir`` (default: deepforest's data folder), by name."""
    return read_voc_folder(source_dir if source_dir is not None else deepforest_data_dir())


def _tiles(region, params: TreeCrownSplitParams) -> List[Tuple[int, int, int, int]]:
    return region_tiles(region, params.tile_size, params.stride, params.cover_edges)


def plan_treecrown_splits(
    images: Sequence[AnnotatedImage], params: TreeCrownSplitParams = TreeCrownSplitParams()
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
        if _site_of(img.name) in params.xsite_train_sites:
            plan["treecrowns_xsite_train"] += [(i, t) for t in _tiles(whole, params)]
        if img.name in params.xsite_val_images:
            plan["treecrowns_xsite_val"].append((i, whole))
    names = {img.name for img in images}
    missing = [n for n in params.xsite_val_images if n not in names]
    if missing:
        logger.warning(f"Cross-site validation images not found among the sources: {missing}")
    return plan


def _cache_dir(root, images: Sequence[AnnotatedImage], params: TreeCrownSplitParams) -> Path:
    """``<root>/<key>``: the key hashes the source files, the parameters and the format."""
    sources = [
        [img.xml_path.name, hash_file(img.xml_path), img.image_path.name, hash_file(img.image_path)]
        for img in images
    ]
    desc = {"format": _FORMAT_VERSION, "params": asdict(params), "sources": sources}
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]
    return resolve_root(root, "treecrowns") / key


def build_treecrowns_cache(
    root=None, source_dir=None, params: TreeCrownSplitParams = TreeCrownSplitParams()
) -> Path:
    """Convert the VOC sources into COCO JSON + PNG tiles for all four splits, unless the cache
    for these sources and parameters already exists.

    Layout of the returned folder: ``images/*.png`` (the image_root of every split) and
    ``<split>.json`` for each name in :data:`TREECROWNS_SPLITS`, plus ``manifest.json``
    (written last; per-split image/box counts).

    Args:
        root: folder holding tree-crown cache folders; default ``<cache root>/treecrowns``.
        source_dir: folder with the VOC XMLs and images; default deepforest's data folder.
    """
    images = _read_sources(source_dir)
    return _build_cache(images, _cache_dir(root, images, params), params)


def _build_cache(images: Sequence[AnnotatedImage], final_dir: Path, params) -> Path:
    if is_complete(final_dir):
        return final_dir

    def build(tmp_dir: Path) -> dict:
        image_dir = tmp_dir / "images"
        image_dir.mkdir()
        plan = plan_treecrown_splits(images, params)
        pixels = {}  # decoded source images, shared by the splits
        manifest = {"params": asdict(params), "splits": {}}
        for split in TREECROWNS_SPLITS:
            crops = [(images[i], window) for i, window in plan[split]]
            coco_images, annotations = crops_to_coco(
                crops, image_dir, params.min_visible, pixels=pixels
            )
            for record, (img, _) in zip(coco_images, crops):
                record["site"] = _site_of(img.name)
            coco = {
                "info": {
                    "description": "deepforest tree crowns, converted by atss.data.treecrowns"
                },
                "images": coco_images,
                "annotations": annotations,
                "categories": [{"id": 1, "name": "tree", "supercategory": "plant"}],
            }
            write_json_atomically(coco, tmp_dir / f"{split}.json")
            manifest["splits"][split] = {"images": len(coco_images), "boxes": len(annotations)}
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

    Idempotent. The configs need not call it: the checked loader registers these names on first
    use (:mod:`.builtin`).

    Args:
        root, source_dir, params: as for :func:`build_treecrowns_cache`.
        build: build the cache now, so that ``metadata.json_file`` exists whenever
            COCOEvaluator reads it; with False it is built by the first ``DatasetCatalog.get``
            (Detectron2's tools build the evaluator after the test loader).

    Returns:
        list[str]: the registered names.
    """
    images = _read_sources(source_dir)
    cache_dir = _cache_dir(root, images, params)
    if build:
        _build_cache(images, cache_dir, params)

    def make_loader(split):
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
            return load_coco_json(
                str(cache_dir / f"{split}.json"), str(cache_dir / "images"), split
            )

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

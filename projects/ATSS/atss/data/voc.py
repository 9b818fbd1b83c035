"""Pascal VOC annotations (``<annotation>`` XML with ``<object>/<bndbox>``): one file, or a
folder of XML files beside their images, read with errors that name the file, the object and
the field. Boxes are the corner values as continuous ``XYXY_ABS`` pixel coordinates (as
deepforest reads them); :func:`read_voc_folder` clips them to the image and drops empty ones
with :func:`~.validation.repair_xyxy_boxes`."""

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

from .validation import repair_xyxy_boxes

__all__ = ["AnnotatedImage", "parse_voc_xml", "read_voc_folder"]


def _xml_number(node, tag: str, xml_path, where: str) -> float:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{xml_path}: {where} has no <{tag}> value")
    try:
        return float(child.text)
    except ValueError:
        raise ValueError(
            f"{xml_path}: {where} <{tag}> is not a number: {child.text.strip()!r}"
        ) from None


def parse_voc_xml(xml_path) -> dict:
    """Read a Pascal VOC annotation file.

    Returns:
        dict with "filename" (str or None), "width"/"height" (int or None when <size> is
        absent), "boxes" (float64 array (N, 4), XYXY as written, not validated) and "labels".

    Raises:
        ValueError: naming the file and the field, when the XML is malformed.
    """
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{xml_path}: not well-formed XML ({e})") from None
    if root.tag != "annotation":
        raise ValueError(f"{xml_path}: root element is <{root.tag}>, expected <annotation>")
    filename = root.findtext("filename")
    width = height = None
    size = root.find("size")
    if size is not None:
        width = int(_xml_number(size, "width", xml_path, "<size>"))
        height = int(_xml_number(size, "height", xml_path, "<size>"))
    boxes, labels = [], []
    for i, obj in enumerate(root.iter("object")):
        where = f"<object> #{i}"
        label = obj.findtext("name")
        if label is None or not label.strip():
            raise ValueError(f"{xml_path}: {where} has no <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{xml_path}: {where} ({label}) has no <bndbox>")
        boxes.append(
            [_xml_number(bnd, k, xml_path, where) for k in ("xmin", "ymin", "xmax", "ymax")]
        )
        labels.append(label.strip())
    return {
        "filename": filename.strip() if filename else None,
        "width": width,
        "height": height,
        "boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        "labels": labels,
    }


@dataclass
class AnnotatedImage:
    """One annotated image of a VOC folder.

    Attributes:
        name: file stem of the XML, e.g. "OSBS_029".
        xml_path, image_path: source files.
        width, height: image size in pixels.
        boxes: float64 array (N, 4), XYXY_ABS, finite, clipped to the image, positive size.
        labels: the N boxes' ``<name>`` ("Tree", "Dead", ...).
    """

    name: str
    xml_path: Path
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: List[str] = field(default_factory=list)


def read_voc_folder(folder) -> List[AnnotatedImage]:
    """Read every ``*.xml`` in ``folder`` with its image (the XML's ``<filename>``, in the same
    folder). Image sizes come from the image headers (no pixels decoded) and must match the
    XML's ``<size>``.

    Returns:
        the images, sorted by name.

    Raises:
        FileNotFoundError: no XML in the folder, or an XML names an image that does not exist.
        ValueError: malformed XML, size mismatch, non-finite box.
    """
    folder = Path(folder)
    xml_paths = sorted(folder.glob("*.xml"))
    if not xml_paths:
        raise FileNotFoundError(f"No Pascal VOC *.xml annotation files in {folder}")
    images = []
    for xml_path in xml_paths:
        ann = parse_voc_xml(xml_path)
        if not ann["filename"]:
            raise ValueError(f"{xml_path}: missing <filename> (the annotated image)")
        image_path = folder / ann["filename"]
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
        labels = [label for label, k in zip(ann["labels"], keep) if k]
        images.append(
            AnnotatedImage(xml_path.stem, xml_path, image_path, width, height, boxes[keep], labels)
        )
    return images

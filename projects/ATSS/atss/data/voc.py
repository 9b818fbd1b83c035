"""Pascal VOC annotation files (``<annotation>`` XML with ``<object>/<bndbox>``), read with
errors that name the file, the object and the field."""

import xml.etree.ElementTree as ET

import numpy as np

__all__ = ["parse_voc_xml"]


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

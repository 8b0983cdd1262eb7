"""Helpers that write small VOC / COCO fixtures into a temporary directory (tests only)."""
import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path, width=64, height=48, mode="RGB", fmt="JPEG", seed=0):
    """Write a random image of ``mode`` to ``path`` and return it as a uint8 array."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return img


def voc_xml(filename, width, height, objects):
    """VOC XML text; objects are ``(name, xmin, ymin, xmax, ymax[, difficult])`` (1-based)."""
    objs = ""
    for obj in objects:
        name, box = obj[0], obj[1:5]
        diff = obj[5] if len(obj) > 5 else 0
        objs += ("<object><name>%s</name><difficult>%d</difficult><bndbox><xmin>%s</xmin>"
                 "<ymin>%s</ymin><xmax>%s</xmax><ymax>%s</ymax></bndbox></object>"
                 % ((name, diff) + tuple(box)))
    return ("<annotation><filename>%s</filename><size><width>%d</width><height>%d</height>"
            "<depth>3</depth></size>%s</annotation>" % (filename, width, height, objs))


def make_voc(root, items, split="train", image_ext=".jpg"):
    """Write a single VOC folder. ``items``: ``{id: objects}`` (see :func:`voc_xml`); every image
    is 64x48 RGB JPEG unless ``objects`` is ``None`` (then only the XML is written with no image,
    objects empty). Returns the root Path."""
    root = Path(root)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for i, (img_id, objects) in enumerate(items.items()):
        if objects is not None:
            write_image(root / "JPEGImages" / (img_id + image_ext), seed=i,
                        fmt="PNG" if image_ext == ".png" else "JPEG")
        (root / "Annotations" / (img_id + ".xml")).write_text(
            voc_xml(img_id + image_ext, 64, 48, objects or []))
    (root / "ImageSets" / "Main" / (split + ".txt")).write_text("\n".join(items) + "\n")
    return root


def make_coco(root, images, annotations, categories=None):
    """Write ``root/ann.json`` and ``root/images/*.jpg`` (64x48). ``images``: list of
    ``(id, file_name, write_file)``; returns ``(json_path, image_dir)``."""
    root = Path(root)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (img_id, name, write) in enumerate(images):
        if write:
            write_image(img_dir / name, seed=i)
        entries.append({"id": img_id, "file_name": name, "width": 64, "height": 48})
    categories = categories or [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]
    for i, ann in enumerate(annotations):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3])
                       if isinstance(ann["bbox"], list) and len(ann["bbox"]) == 4
                       and all(isinstance(v, (int, float)) for v in ann["bbox"]) else 1.0)
    path = root / "ann.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations,
                                "categories": categories}))
    return path, img_dir

"""COCO-format detection dataset read through pycocotools."""
import contextlib
import io
import json
import os

import numpy as np

from gluon_ssd.data._base import AnnotatedImages
from gluon_ssd.data._validate import CheckedImages, DatasetError, SkipCounter, clean_boxes

__all__ = ["COCODetection", "load_coco_json"]


def load_coco_json(annotation_file):
    """Load and check a COCO instances JSON file, returning a ``pycocotools.coco.COCO``.

    Raises :class:`DatasetError` naming the file when it is missing, not JSON, or lacks the
    ``images`` / ``annotations`` / ``categories`` lists. pycocotools' console output is silenced.
    """
    from pycocotools.coco import COCO

    path = os.path.expanduser(str(annotation_file))
    if not os.path.isfile(path):
        raise DatasetError("%s: annotation file not found" % path)
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError("%s: malformed JSON (%s)" % (path, err)) from None
    if not isinstance(data, dict):
        raise DatasetError("%s: top level is %s, expected a JSON object"
                           % (path, type(data).__name__))
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError("%s: missing or non-list %r entry" % (path, key))
    for key, fields in (("images", ("id", "file_name", "width", "height")),
                        ("categories", ("id", "name")),
                        ("annotations", ("image_id", "category_id", "bbox"))):
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or any(f not in entry for f in fields):
                raise DatasetError("%s: %s[%d] lacks one of the fields %s"
                                   % (path, key, i, fields))
    for i, ann in enumerate(data["annotations"]):
        ann.setdefault("id", i + 1)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class COCODetection(CheckedImages, AnnotatedImages):
    """Detection dataset from a COCO instances JSON file and an image directory.

    Parameters
    ----------
    annotation_file : str or Path
        COCO JSON (``images``, ``annotations``, ``categories``; boxes ``[x, y, w, h]`` pixels).
    image_dir : str or Path
        Directory holding the ``file_name`` of every image.
    transform : callable, optional
        ``transform(image, label) -> anything``, applied in ``__getitem__``.
    skip_empty : bool, default True
        Images without any usable box: ``True`` skips them (as GluonCV, counted in
        ``stats['images without boxes skipped']`` without a warning); ``False`` keeps them with a
        ``(0, 6)`` label (e.g. for evaluation, where they can hold false positives).
    use_crowd : bool, default False
        ``False`` excludes ``iscrowd`` boxes from the labels (training targets); ``True`` keeps
        them with ``difficult = 1``.
    min_object_area : float, default 0
        Annotations whose ``area`` is below this value are not used (as GluonCV; counted without
        a warning: an expected filter).
    strict : bool, default False
        Every counted problem (not the expected events) raises :class:`DatasetError` naming the
        file instead (``train_ssd.py --strict-data``).

    Items
    -----
    ``(image (H, W, 3) uint8 RGB NDArray, label float32 (M, 6) = [xmin, ymin, xmax, ymax,
    class_id, difficult])`` in pixels, GluonCV's convention ``xmax = x + max(w - 1, 0)``, clipped
    to ``[0, width - 1]``. ``class_id`` is contiguous ``0..C-1`` in the order of ascending COCO
    category id; ``contiguous_id_to_json[class_id]`` maps back for evaluation.

    Bad input policy
    ----------------
    :class:`DatasetError` for a missing or malformed JSON; one warning line counting annotations
    of unknown image or category, malformed ``bbox``, boxes of zero (or negative) width or height
    or zero area, categories sharing a name (the later ones are renamed ``<name>_<id>`` so class
    names stay unique and every category keeps its own class), images whose file is missing
    (skipped), clipped and degenerate boxes. Images (:meth:`load`, ``__getitem__``): the policy
    of :mod:`gluon_ssd.data._validate` (damaged but decodable images and a size differing from
    the JSON with the same aspect ratio are repaired with a warning; otherwise
    :class:`ImageDecodeError` naming the file).
    """

    _annotation_name = "the JSON"

    def __init__(self, annotation_file, image_dir, transform=None, skip_empty=True,
                 use_crowd=False, min_object_area=0, strict=False):
        super().__init__()
        self._ann_file = os.path.expanduser(str(annotation_file))
        self._image_dir = os.path.expanduser(str(image_dir))
        if not os.path.isdir(self._image_dir):
            raise DatasetError("%s: image directory not found" % self._image_dir)
        self._transform = transform
        self.coco = load_coco_json(self._ann_file)
        counter = SkipCounter(strict=strict)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self._classes = self._class_names(cats, counter)
        self.contiguous_id_to_json = [c["id"] for c in cats]
        self.json_id_to_contiguous = {cid: i for i, cid in enumerate(self.contiguous_id_to_json)}
        known_images = {img["id"] for img in self.coco.dataset["images"]}
        for ann in self.coco.dataset["annotations"]:
            if ann["image_id"] not in known_images:
                counter.add("annotations of unknown image_id skipped", ann["image_id"])
        self._items, self._labels, self.image_ids = [], [], []
        for entry in sorted(self.coco.dataset["images"], key=lambda e: e["id"]):
            path = os.path.join(self._image_dir, str(entry["file_name"]))
            if not os.path.isfile(path):
                counter.add("images whose file is missing skipped", path)
                continue
            label = self._load_label(entry, path, counter, use_crowd, min_object_area)
            if label.shape[0] == 0 and skip_empty:
                counter.add("images without boxes skipped", path, quiet=True)
                continue
            self._items.append((path, int(entry["width"]), int(entry["height"])))
            self._labels.append(label)
            self.image_ids.append(entry["id"])
        self.stats = counter.as_dict()
        counter.warn("COCODetection(%s)" % self._ann_file)

    def _class_names(self, cats, counter):
        """Category names in ascending id order, made unique: a repeated name becomes
        ``<name>_<id>`` (counted)."""
        names, first_id = [], {}
        for cat in cats:
            name = str(cat["name"])
            if name in first_id:
                new = "%s_%s" % (name, cat["id"])
                while new in first_id:
                    new += "_"
                counter.add("categories with a duplicate name renamed <name>_<id>",
                            "%s: %r of ids %s and %s (now %r)"
                            % (self._ann_file, name, first_id[name], cat["id"], new))
                name = new
            first_id[name] = cat["id"]
            names.append(name)
        return tuple(names)

    def _load_label(self, entry, path, counter, use_crowd, min_object_area):
        rows = []
        for ann in self.coco.imgToAnns.get(entry["id"], []):
            crowd = int(ann.get("iscrowd", 0) or 0)
            if crowd and not use_crowd:
                counter.add("crowd boxes excluded", path, quiet=True)
                continue
            if ann.get("ignore", 0) == 1:
                continue
            cid = self.json_id_to_contiguous.get(ann["category_id"])
            if cid is None:
                counter.add("annotations of unknown category_id %s dropped" % ann["category_id"],
                            path)
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (TypeError, ValueError):
                counter.add("annotations with malformed bbox dropped", path)
                continue
            if not (w > 0 and h > 0):
                counter.add("boxes of zero width or height dropped", path)
                continue
            try:
                area = float(ann.get("area", w * h))
            except (TypeError, ValueError):
                area = w * h
            if not area > 0:
                counter.add("boxes with zero area dropped", path)
                continue
            if area < min_object_area:
                counter.add("boxes below min_object_area dropped", path, quiet=True)
                continue
            rows.append([x, y, x + max(w - 1, 0), y + max(h - 1, 0), cid, 1 if crowd else 0])
        return clean_boxes(np.array(rows, dtype=np.float32).reshape(-1, 6),
                           int(entry["width"]), int(entry["height"]), counter, path)

    def __repr__(self):
        return "COCODetection(%r, %d images, %d classes)" % (self._ann_file, len(self),
                                                             len(self._classes))

"""Pascal VOC format detection dataset: a VOCdevkit or a single VOC-format folder."""
import os
import xml.etree.ElementTree as ET

import numpy as np

from gluon_ssd.data._base import AnnotatedImages
from gluon_ssd.data._validate import (CheckedImages, DatasetError, ImageDecodeError, SkipCounter,
                                      clean_boxes, close_name, image_size, suspected_typos)

__all__ = ["VOC_CLASSES", "VOCDetection", "parse_voc_xml"]

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep",
               "sofa", "train", "tvmonitor")

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def _text(node, tag):
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def parse_voc_xml(path):
    """Parse one VOC annotation file without any class mapping.

    Parameters
    ----------
    path : str
        The ``Annotations/<id>.xml`` file.

    Returns
    -------
    dict
        ``{'filename': str or None, 'width': int or None, 'height': int or None,
        'objects': [{'name': str or None, 'difficult': int, 'box': (xmin, ymin, xmax, ymax) or
        None}]}``; box values are the raw XML numbers (VOC 1-based pixels), ``None`` when the
        ``bndbox`` is missing or not numeric.

    Raises
    ------
    DatasetError
        If the file is missing, empty or not well-formed XML with an ``<annotation>`` root.
    """
    if not os.path.isfile(path):
        raise DatasetError("%s: annotation file not found" % path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DatasetError("%s: malformed XML (%s)" % (path, err)) from None
    if root.tag != "annotation":
        raise DatasetError("%s: root element is <%s>, expected <annotation>" % (path, root.tag))

    def _int(node, tag):
        try:
            value = int(float(_text(node, tag)))
            return value if value > 0 else None
        except (TypeError, ValueError):
            return None

    size = root.find("size")
    width = _int(size, "width") if size is not None else None
    height = _int(size, "height") if size is not None else None
    objects = []
    for obj in root.iter("object"):
        name = _text(obj, "name")
        try:
            difficult = int(float(_text(obj, "difficult") or 0))
        except ValueError:
            difficult = 0
        bnd = obj.find("bndbox")
        box = None
        if bnd is not None:
            try:
                box = tuple(float(_text(bnd, k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                box = None
        objects.append({"name": name, "difficult": difficult, "box": box})
    return {"filename": _text(root, "filename"), "width": width, "height": height,
            "objects": objects}


class VOCDetection(CheckedImages, AnnotatedImages):
    """Detection dataset in Pascal VOC format.

    Parameters
    ----------
    root : str or Path
        Either a **VOCdevkit** directory (holding ``VOC2007/``, ``VOC2012/`` ...) or a **single VOC
        folder** holding ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/<split>.txt``.
    splits : list
        VOCdevkit: ``[(2007, 'trainval'), (2012, 'trainval')]``. Single folder: ``['train']``
        (a plain string is also accepted).
    classes : sequence of str, optional
        Class names; index = class id. Default: the 20 VOC classes for a VOCdevkit; for a single
        folder the lines of ``<root>/classes.txt`` if it exists, else every object name found in
        ``Annotations/*.xml`` sorted alphabetically (so train and test splits agree).
    transform : callable, optional
        ``transform(image, label) -> anything``, applied in ``__getitem__``.
    skip_empty : bool, default False
        Images without any (valid) object: ``False`` keeps them with a ``(0, 6)`` label;
        ``True`` skips them (counted in ``stats``).
    strict : bool, default False
        Every counted annotation problem raises :class:`DatasetError` naming the file instead
        (``train_ssd.py --strict-data``).

    Items
    -----
    ``(image, label)``: image ``(H, W, 3)`` uint8 RGB ``mx.nd.NDArray``; label float32
    ``np.ndarray (M, 6)`` = ``[xmin, ymin, xmax, ymax, class_id, difficult]`` in pixels, 0-based as
    GluonCV (XML value − 1, so ``xmax`` is the last pixel column of the object).

    Bad input policy
    ----------------
    Raises :class:`DatasetError` (naming the file) for a missing root, missing split file, empty
    split, malformed XML. Counts in ``stats`` and reports in one warning line: annotations without
    image, split ids without XML, objects of unknown class (with the likely intended class when
    one is spelled nearly alike), objects without name/box, boxes clipped to the image,
    degenerate boxes dropped, empty images skipped and, when the classes are read from the
    annotations, rare class names that look like a typo of another one (kept as classes: e.g.
    one ``racoon`` among many ``raccoon``; list the classes in ``classes.txt`` to drop them).
    Images (:meth:`load`, ``__getitem__``): the policy of :mod:`gluon_ssd.data._validate`:
    damaged but decodable images and an image whose size differs from the XML ``<size>`` with
    the same aspect ratio (boxes rescaled) are repaired with a warning naming the file; an
    undecodable, missing or differently shaped image raises :class:`ImageDecodeError`.
    """

    def __init__(self, root, splits, classes=None, transform=None, skip_empty=False,
                 strict=False):
        super().__init__()
        self._root = os.path.expanduser(str(root))
        if not os.path.isdir(self._root):
            raise DatasetError("%s: dataset root not found" % self._root)
        if isinstance(splits, str) or (isinstance(splits, tuple) and len(splits) == 2
                                       and not isinstance(splits[0], str)):
            splits = [splits]  # one split: 'train' or (2007, 'trainval')
        if not splits:
            raise DatasetError("%s: no split given" % self._root)
        self._splits = list(splits)
        self._transform = transform
        self._skip_empty = skip_empty
        self._single = os.path.isdir(os.path.join(self._root, "Annotations"))
        counter = SkipCounter(strict=strict)
        self._classes = self._resolve_classes(classes, counter)
        self._index_map = {name: i for i, name in enumerate(self._classes)}
        self._items = []  # (image path, width, height)
        self._labels = []
        for split in self._splits:
            folder, ids = self._read_split(split)
            for img_id in ids:
                self._add_item(folder, img_id, counter)
        self.stats = counter.as_dict()
        counter.warn("VOCDetection(%s, %s)" % (self._root, self._splits))

    # ----------------------------------------------------------------- construction helpers
    def _folder_of(self, split):
        if self._single:
            if not isinstance(split, str):
                raise DatasetError("%s: a single VOC folder takes split names like 'train', got %r"
                                   % (self._root, split))
            return self._root, split
        if isinstance(split, str) or len(split) != 2:
            raise DatasetError("%s: no Annotations/ here, so it is read as a VOCdevkit whose "
                               "splits are (year, name) pairs, got %r" % (self._root, split))
        year, name = split
        folder = os.path.join(self._root, "VOC%s" % year)
        if not os.path.isdir(folder):
            raise DatasetError("%s: VOC%s directory not found" % (folder, year))
        return folder, name

    def _read_split(self, split):
        folder, name = self._folder_of(split)
        path = os.path.join(folder, "ImageSets", "Main", name + ".txt")
        if not os.path.isfile(path):
            raise DatasetError("%s: split file not found" % path)
        with open(path) as f:
            ids = [line.split()[0] for line in f if line.strip()]
        if not ids:
            raise DatasetError("%s: split file lists no image" % path)
        return folder, ids

    def _resolve_classes(self, classes, counter):
        if classes is not None:
            classes = tuple(str(c) for c in classes)
        elif not self._single:
            classes = VOC_CLASSES
        else:
            listing = os.path.join(self._root, "classes.txt")
            if os.path.isfile(listing):
                with open(listing) as f:
                    classes = tuple(line.strip() for line in f if line.strip())
            else:
                ann_dir = os.path.join(self._root, "Annotations")
                names = {}
                for fname in sorted(os.listdir(ann_dir)):
                    if fname.endswith(".xml"):
                        for obj in parse_voc_xml(os.path.join(ann_dir, fname))["objects"]:
                            if obj["name"]:
                                names[obj["name"]] = names.get(obj["name"], 0) + 1
                for rare, common in suspected_typos(names):
                    counter.add("class names that look like a typo of another class (kept)",
                                "%r (%d objects) vs %r (%d objects) in %s"
                                % (rare, names[rare], common, names[common], ann_dir))
                classes = tuple(sorted(names))
        if not classes:
            raise DatasetError("%s: no class names given or found in the annotations" % self._root)
        if len(set(classes)) != len(classes):
            raise DatasetError("%s: duplicate class names in %s" % (self._root, classes))
        return classes

    def _find_image(self, folder, img_id, filename):
        img_dir = os.path.join(folder, "JPEGImages")
        candidates = [img_id + ".jpg"]
        if filename:
            candidates.append(os.path.basename(filename))
        candidates += [img_id + ext for ext in _IMAGE_EXTS[1:]]
        for cand in candidates:
            path = os.path.join(img_dir, cand)
            if os.path.isfile(path):
                return path
        return None

    def _add_item(self, folder, img_id, counter):
        xml_path = os.path.join(folder, "Annotations", img_id + ".xml")
        if not os.path.isfile(xml_path):
            counter.add("split ids without annotation file skipped", xml_path)
            return
        ann = parse_voc_xml(xml_path)
        img_path = self._find_image(folder, img_id, ann["filename"])
        if img_path is None:
            counter.add("annotations without image skipped", xml_path)
            return
        width, height = ann["width"], ann["height"]
        if width is None or height is None:
            try:
                width, height = image_size(img_path)
            except ImageDecodeError:
                counter.add("annotations without <size> whose image header is unreadable "
                            "skipped", img_path)
                return
        rows = []
        for obj in ann["objects"]:
            name = obj["name"]
            if name is None or obj["box"] is None:
                counter.add("objects without name or numeric bndbox dropped", xml_path)
                continue
            if name not in self._index_map:
                meant = close_name(name, self._classes)
                hint = " (a typo of '%s'?)" % meant if meant else ""
                counter.add("objects of unknown class '%s'%s dropped" % (name, hint), xml_path)
                continue
            xmin, ymin, xmax, ymax = (v - 1 for v in obj["box"])
            rows.append([xmin, ymin, xmax, ymax, self._index_map[name], obj["difficult"]])
        label = clean_boxes(np.array(rows, dtype=np.float32).reshape(-1, 6), width, height,
                            counter, xml_path)
        if label.shape[0] == 0 and self._skip_empty:
            counter.add("images without objects skipped", xml_path)
            return
        self._items.append((img_path, width, height))
        self._labels.append(label)

    def __repr__(self):
        return "VOCDetection(root=%r, splits=%r, %d images, %d classes)" % (
            self._root, self._splits, len(self), len(self._classes))

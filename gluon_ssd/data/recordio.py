"""RecordIO detection files (``.rec`` + ``.idx``) and a packer.

Command line: ``python -m gluon_ssd.data.recordio pack --format voc|coco|synthetic ... --out P``.

Record layout (MXNet ``ImageDetIter`` / ``ImageDetRecordIter`` / im2rec convention, also d2l's
Pikachu data): each record holds the encoded image and a float32 label vector
``[A, B, <A-2 extra header values>, obj_0 (B values), obj_1, ...]`` with ``A`` the header width
(>= 2) and ``B`` the per-object width (>= 5); each object is ``[class_id, xmin, ymin, xmax, ymax,
(difficult, ...)]`` with coordinates normalised to 0–1 by the image width/height. Rows with a
negative class id are padding. The packer writes ``A = 2, B = 6`` and a ``<prefix>.classes.txt``
sidecar listing the class names.
"""
import argparse
import io
import os
import sys
import threading

import mxnet as mx
import numpy as np
from mxnet import gluon
from PIL import Image

from gluon_ssd.data._validate import (DatasetError, ImageDecodeError, LoadedItems, SkipCounter,
                                      clean_boxes, decode_bytes, decode_image)

__all__ = ["RecordDetection", "pack_dataset", "encode_label", "decode_label", "main"]


def encode_label(label, width, height):
    """Pixel label → record label vector.

    Parameters
    ----------
    label : np.ndarray
        ``(M, 6)`` (or ``(M, 5)``) ``[xmin, ymin, xmax, ymax, class_id, (difficult)]`` pixels.
    width, height : int
        Image size in pixels.

    Returns
    -------
    np.ndarray
        float32 ``(2 + 6 M,)`` = ``[2, 6, cls, xmin/W, ymin/H, xmax/W, ymax/H, difficult, ...]``.
    """
    label = np.asarray(label, dtype=np.float64).reshape(-1, label.shape[-1] if label.size else 6)
    objs = np.zeros((label.shape[0], 6), dtype=np.float64)
    objs[:, 0] = label[:, 4]
    objs[:, (1, 3)] = label[:, (0, 2)] / width
    objs[:, (2, 4)] = label[:, (1, 3)] / height
    if label.shape[1] > 5:
        objs[:, 5] = label[:, 5]
    return np.concatenate([[2.0, 6.0], objs.ravel()]).astype(np.float32)


def decode_label(raw, width, height, where="<record>"):
    """Record label vector → pixel label.

    Parameters
    ----------
    raw : array-like
        ``[A, B, extra..., objs...]`` as described in the module docstring, coordinates 0–1.
    width, height : int
        Image size in pixels used to undo the normalisation.
    where : str
        Names the record in error messages.

    Returns
    -------
    np.ndarray
        float32 ``(M, 6)`` ``[xmin, ymin, xmax, ymax, class_id, difficult]`` pixels; padding rows
        (class id < 0) removed; ``difficult = 0`` when ``B == 5``.

    Raises
    ------
    DatasetError
        If the header is not ``A >= 2, B >= 5`` or the length does not fit ``A + k B``.
    """
    raw = np.asarray(raw, dtype=np.float32).ravel()
    if raw.size < 2:
        raise DatasetError("%s: label has %d values, needs at least the header [A, B]"
                           % (where, raw.size))
    head, objw = int(raw[0]), int(raw[1])
    if head < 2 or objw < 5 or raw[0] != head or raw[1] != objw:
        raise DatasetError("%s: label header [%g, %g] is not [A >= 2, B >= 5]"
                           % (where, raw[0], raw[1]))
    if raw.size < head or (raw.size - head) % objw:
        raise DatasetError("%s: label of %d values does not split into header %d + objects of %d"
                           % (where, raw.size, head, objw))
    objs = raw[head:].reshape(-1, objw)
    objs = objs[objs[:, 0] >= 0]
    out = np.zeros((objs.shape[0], 6), dtype=np.float32)
    out[:, (0, 2)] = objs[:, (1, 3)] * np.float32(width)
    out[:, (1, 3)] = objs[:, (2, 4)] * np.float32(height)
    out[:, 4] = objs[:, 0]
    if objw > 5:
        out[:, 5] = objs[:, 5]
    return out


def _classes_path(rec_path):
    return os.path.splitext(rec_path)[0] + ".classes.txt"


class RecordDetection(LoadedItems, gluon.data.Dataset):
    """Detection dataset read from a RecordIO pair ``<name>.rec`` + ``<name>.idx``.

    Parameters
    ----------
    filename : str or Path
        The ``.rec`` file; the ``.idx`` must sit beside it.
    classes : sequence of str, optional
        Class names. Default: ``<name>.classes.txt`` if present, else ``('class0', ...)`` up to the
        largest class id found.
    transform : callable, optional
        ``transform(image, label) -> anything``, applied in ``__getitem__``.
    coord_normalized : bool, default True
        Whether record coordinates are 0–1 (im2rec convention) or already pixels.
    strict : bool, default False
        Every counted problem raises :class:`DatasetError` naming the record instead
        (``train_ssd.py --strict-data``).

    Items
    -----
    ``(image (H, W, 3) uint8 RGB NDArray, label float32 (M, 6) = [xmin, ymin, xmax, ymax,
    class_id, difficult])`` pixels.

    Bad input policy: :class:`DatasetError` for missing ``.rec``/``.idx`` or an unreadable index;
    records with a malformed label, an unreadable image header or an unknown class id are skipped
    and counted (one warning line); boxes are clipped / degenerate ones dropped as for VOC;
    images follow the policy of :mod:`gluon_ssd.data._validate`: :meth:`load` / ``__getitem__``
    decode a damaged but decodable image with a warning (an event) and raise
    :class:`ImageDecodeError` naming the file and record id when nothing decodes it.
    """

    def __init__(self, filename, classes=None, transform=None, coord_normalized=True,
                 strict=False):
        super().__init__()
        self._rec = os.path.expanduser(str(filename))
        self._idx = os.path.splitext(self._rec)[0] + ".idx"
        for path in (self._rec, self._idx):
            if not os.path.isfile(path):
                raise DatasetError("%s: record file not found" % path)
        self._transform = transform
        self._normalized = coord_normalized
        try:
            self._reader = mx.recordio.MXIndexedRecordIO(self._idx, self._rec, "r")
            keys = list(self._reader.keys)
        except Exception as err:  # MXNetError, ValueError on a broken .idx
            raise DatasetError("%s: cannot open record index (%s)" % (self._idx, err)) from None
        if classes is None and os.path.isfile(_classes_path(self._rec)):
            with open(_classes_path(self._rec)) as f:
                classes = [line.strip() for line in f if line.strip()]
        counter = SkipCounter(strict=strict)
        self._keys, self._sizes, self._labels = [], [], []
        for key in keys:
            where = "%s record %s" % (self._rec, key)
            try:
                header, payload = mx.recordio.unpack(self._reader.read_idx(key))
                with Image.open(io.BytesIO(payload)) as img:
                    width, height = img.size
            except Exception:  # noqa: BLE001 - any failure here means an unusable record
                counter.add("records with unreadable image header skipped", where)
                continue
            try:
                label = decode_label(header.label, width if self._normalized else 1,
                                     height if self._normalized else 1, where)
            except DatasetError:
                counter.add("records with malformed label skipped", where)
                continue
            if classes is not None:
                bad = (label[:, 4] >= len(classes)) | (label[:, 4] != np.round(label[:, 4]))
                counter.add("objects with unknown class id dropped", where, int(bad.sum()))
                label = label[~bad]
            label = clean_boxes(label, width, height, counter, where)
            self._keys.append(key)
            self._sizes.append((width, height))
            self._labels.append(label)
        if classes is None:
            top = max((int(lb[:, 4].max()) for lb in self._labels if lb.size), default=-1)
            classes = ["class%d" % i for i in range(top + 1)]
        self._classes = tuple(classes)
        self._reader.close()
        self._reader = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self.stats = counter.as_dict()
        counter.warn("RecordDetection(%s)" % self._rec)

    def _record(self, key):
        # Re-open per process: a reader opened before a fork must not be shared with workers.
        # The reader's seek + read pair is one file position shared by all threads, so a thread
        # pool loader (``thread_pool=True``) must read under the lock; only the read is locked,
        # decoding runs in parallel. A fork copies the lock as it was, perhaps held by a thread
        # that does not exist in the child, so each process makes its own.
        if self._pid != os.getpid():
            self._lock = threading.Lock()
            self._reader = None
            self._pid = os.getpid()
        with self._lock:
            if self._reader is None:
                self._reader = mx.recordio.MXIndexedRecordIO(self._idx, self._rec, "r")
            payload = self._reader.read_idx(key)
        return mx.recordio.unpack(payload)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_reader"] = None
        state["_lock"] = None
        state["_pid"] = None
        return state

    @property
    def classes(self):
        """Class names, tuple of str; index = class id."""
        return self._classes

    def __len__(self):
        return len(self._keys)

    def image_size(self, idx):
        """``(width, height)`` of image ``idx`` in pixels."""
        return self._sizes[idx]

    def label(self, idx):
        """Label of image ``idx`` without decoding: float32 ``(M, 6)`` pixels (a copy)."""
        return self._labels[idx].copy()

    def load(self, idx):
        """Raw item ``idx`` and what was repaired: ``(image (H, W, 3) uint8 RGB NDArray, label
        float32 (M, 6) pixels, events)`` (``events``: tuple of ``('repaired', message)``).
        Raises :class:`ImageDecodeError` naming the file and record when it must be skipped."""
        key = self._keys[idx]
        name = "%s record %s" % (self._rec, key)
        try:
            _, payload = self._record(key)
        except Exception as err:  # noqa: BLE001 - MXNetError, OSError: file changed or removed
            raise ImageDecodeError("%s: cannot read record (%s)"
                                   % (name, str(err).split("\n")[0])) from None
        arr, events = decode_bytes(payload, name)
        return mx.nd.array(arr, dtype=np.uint8), self._labels[idx].copy(), events


def _payload(dataset, idx):
    """Encoded bytes for item ``idx``: the source file as is when it is an RGB/gray JPEG or PNG,
    otherwise (CMYK, RGBA, palette, other formats) the decoded RGB image re-encoded as PNG."""
    path = dataset.image_path(idx) if hasattr(dataset, "image_path") else None
    if path is not None:
        try:
            with Image.open(path) as img:
                fmt, mode = img.format, img.mode
        except Exception:  # noqa: BLE001 - decode_image below names the file
            fmt, mode = None, None
        if fmt in ("JPEG", "PNG") and mode in ("RGB", "L"):
            with open(path, "rb") as f:
                return f.read()
    img = decode_image(path) if path is not None else dataset[idx][0]
    buf = io.BytesIO()
    Image.fromarray(img.asnumpy()).save(buf, format="PNG")
    return buf.getvalue()


def pack_dataset(dataset, prefix, log_every=0):
    """Write ``dataset`` to ``<prefix>.rec``, ``<prefix>.idx`` and ``<prefix>.classes.txt``.

    Parameters
    ----------
    dataset : VOCDetection, COCODetection, RecordDetection or similar
        Needs ``len()``, ``classes``, ``label(idx)`` (``(M, 6)`` pixels) and either
        ``image_path(idx)`` + ``image_size(idx)`` or ``__getitem__`` returning the raw image.
    prefix : str or Path
        Output path without extension; parent directories are created. Files are written to
        temporary names and renamed at the end, so an interrupted run leaves no half pair.
    log_every : int
        Print progress every ``log_every`` images (0: silent).

    Returns
    -------
    str
        Path of the ``.rec`` file. Labels use header ``[2, 6]`` and 0–1 coordinates.
    """
    prefix = os.path.expanduser(str(prefix))
    if prefix.endswith(".rec"):
        prefix = prefix[:-4]
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    tmp = prefix + ".tmp%d" % os.getpid()
    writer = mx.recordio.MXIndexedRecordIO(tmp + ".idx", tmp + ".rec", "w")
    try:
        for i in range(len(dataset)):
            if hasattr(dataset, "image_size"):
                width, height = dataset.image_size(i)
                label = dataset.label(i)
            else:
                img, label = dataset[i]
                height, width = img.shape[:2]
            header = mx.recordio.IRHeader(0, encode_label(label, width, height), i, 0)
            writer.write_idx(i, mx.recordio.pack(header, _payload(dataset, i)))
            if log_every and (i + 1) % log_every == 0:
                print("packed %d/%d" % (i + 1, len(dataset)))
    except BaseException:
        writer.close()
        for ext in (".rec", ".idx"):
            if os.path.exists(tmp + ext):
                os.remove(tmp + ext)
        raise
    writer.close()
    with open(tmp + ".classes.txt", "w") as f:
        f.write("".join(name + "\n" for name in dataset.classes))
    for ext in (".idx", ".classes.txt", ".rec"):
        os.replace(tmp + ext, prefix + ext)
    return prefix + ".rec"


def _build_parser():
    parser = argparse.ArgumentParser(prog="python -m gluon_ssd.data.recordio",
                                     description="Pack a detection dataset into .rec/.idx files.")
    sub = parser.add_subparsers(dest="command", required=True)
    pack = sub.add_parser("pack", help="pack a VOC, COCO or synthetic dataset")
    pack.add_argument("--format", choices=("voc", "coco", "synthetic"), required=True)
    pack.add_argument("--root", help="voc: VOCdevkit or VOC folder; synthetic: cache root")
    pack.add_argument("--splits", nargs="+", default=["train"],
                      help="voc: 'train' (folder) or '2007:trainval' (devkit); "
                           "synthetic: train|val")
    pack.add_argument("--classes", nargs="+", help="voc: class names (default: see VOCDetection)")
    pack.add_argument("--annotations", help="coco: instances JSON file")
    pack.add_argument("--images", help="coco: image directory")
    pack.add_argument("--keep-empty", action="store_true", help="keep images without boxes")
    pack.add_argument("--out", required=True,
                      help="output prefix (writes .rec, .idx, .classes.txt)")
    return parser


def main(argv=None):
    """Command-line entry: ``pack --format voc|coco|synthetic ... --out PREFIX``; returns 0/1."""
    args = _build_parser().parse_args(argv)
    try:
        if args.format == "voc":
            from gluon_ssd.data.voc import VOCDetection
            if not args.root:
                raise DatasetError("--root is required for --format voc")
            splits = [tuple(s.split(":", 1)) if ":" in s else s for s in args.splits]
            dataset = VOCDetection(args.root, splits, classes=args.classes,
                                   skip_empty=not args.keep_empty)
        elif args.format == "coco":
            from gluon_ssd.data.coco import COCODetection
            if not (args.annotations and args.images):
                raise DatasetError("--annotations and --images are required for --format coco")
            dataset = COCODetection(args.annotations, args.images,
                                    skip_empty=not args.keep_empty)
        else:
            from gluon_ssd.data.synthetic import SyntheticDetection
            dataset = SyntheticDetection(args.splits[0], root=args.root)
        rec = pack_dataset(dataset, args.out, log_every=500)
    except (DatasetError, ImageDecodeError) as err:
        print("error: %s" % err, file=sys.stderr)
        return 1
    print("wrote %s (%d images, %d classes)" % (rec, len(dataset), len(dataset.classes)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

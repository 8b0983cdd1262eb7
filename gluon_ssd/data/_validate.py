"""Shared checks for the detection datasets: errors, image decoding, box cleaning, skip counting.

Policy used by every dataset in :mod:`gluon_ssd.data` (each dataset's docstring repeats its part):

* Problems that make the whole dataset unusable (missing root, missing split file, malformed XML or
  JSON, a record file that cannot be opened) raise :class:`DatasetError` naming the file.
* Problems in single annotations are repaired or skipped, counted in ``dataset.stats`` and reported
  by **one** :class:`DatasetWarning` line per dataset construction: boxes partly outside the image
  are clipped, boxes with ``xmin >= xmax`` or ``ymin >= ymax`` (also after clipping) or with
  missing / non-numeric coordinates are dropped, boxes entirely outside are dropped, objects of
  unknown classes are dropped, annotations whose image file is missing are skipped. Expected
  events (COCO crowd boxes, images without boxes) are counted in ``stats`` without a warning.
  With ``strict=True`` (``train_ssd.py --strict-data``) any counted problem that is not an
  expected event raises :class:`DatasetError` naming the file instead.
* Images are decoded when an item is loaded (``dataset.load(i)`` returns ``(image, label,
  events)``; ``dataset[i]`` warns about the events). What happens to an image:

  - **decoded**: by PIL; grayscale, palette, CMYK, RGBA (alpha dropped) and 16-bit images are
    converted to 8-bit RGB. 16-bit samples keep their high byte (``x >> 8``), which is what PIL
    itself does for 16-bit RGB PNGs and what OpenCV's ``IMREAD_COLOR`` gives, so gray and colour
    16-bit files agree. The EXIF orientation tag is **ignored**: images are the stored pixel grid,
    which is what VOC/COCO ``<size>``/``width, height`` and boxes describe (and what
    ``predict`` reports boxes in), with the one exception below.
  - **repaired** (an *event* ``('repaired', message naming the file)``): a truncated file
    (e.g. a JPEG missing its last bytes) decoded as far as its data goes with PIL's truncated
    loading (the missing part stays blank) or, failing that, by OpenCV, provided at least half
    of its rows hold decoded data (:data:`MIN_DECODED_FRACTION`); an image whose size
    differs from its annotation but has the same aspect ratio (within 5 %): boxes are rescaled to
    the real size; an image whose annotation gives its EXIF-rotated size (orientation 5-8, width
    and height swapped): the EXIF rotation is applied so pixels and boxes agree.
  - **skipped**: a missing (also: deleted after the dataset was opened), empty, corrupt or
    unrecognisable file, a damaged file of which less than half could be decoded, or a size
    differing from the annotation with another aspect ratio:
    :class:`ImageDecodeError` naming the file. The training loader replaces such an item by a
    deterministic other one and the evaluator leaves it out; both count it
    (:class:`gluon_ssd.data.build.LoadProblems`).
"""
import difflib
import io
import os
import re
import warnings
from collections import OrderedDict

import mxnet as mx
import numpy as np
from PIL import Image, ImageFile

from gluon_ssd.errors import UserError

__all__ = ["DatasetError", "ImageDecodeError", "DatasetWarning", "SkipCounter", "decode_image",
           "decode_bytes", "read_image_bytes", "fit_to_annotation", "CheckedImages", "load_item",
           "warn_events", "REPAIRED", "SKIPPED", "image_size", "clean_boxes", "empty_label",
           "suspected_typos", "close_name"]

#: Kinds of the per-item events of :meth:`CheckedImages.load` and the loaders.
REPAIRED, SKIPPED = "repaired", "skipped"
#: Largest relative aspect-ratio difference for which boxes are rescaled to the real image size.
ASPECT_TOLERANCE = 0.05
#: A damaged image is decoded (repaired) only if at least this fraction of its rows holds data.
MIN_DECODED_FRACTION = 0.5
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# EXIF orientation -> PIL transpose making the stored pixels upright (as ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                   4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                   6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                   8: Image.Transpose.ROTATE_90}


class DatasetError(UserError, ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


class ImageDecodeError(DatasetError):
    """An image file cannot be read or decoded (missing, empty, corrupt, wrong size)."""


class DatasetWarning(UserWarning):
    """Summary of annotations repaired or skipped while building a dataset (one line)."""


class SkipCounter:
    """Counts repaired/skipped annotations by kind and emits one summary warning.

    ``add(kind, where)`` counts one event and remembers the first file it happened in;
    ``as_dict()`` returns ``{kind: count}``; ``warn(name)`` emits a single :class:`DatasetWarning`
    line if anything was counted. ``strict=True``: ``add`` of an unexpected event raises
    :class:`DatasetError` naming ``where`` instead of counting it.
    """

    def __init__(self, strict=False):
        self.counts = OrderedDict()
        self.examples = OrderedDict()
        self.quiet = set()
        self.strict = strict

    def add(self, kind, where, n=1, quiet=False):
        """Count ``n`` events of ``kind``; ``where`` (a path or id) is kept for the first one.

        ``quiet=True`` marks an expected event (e.g. COCO images without boxes): it is counted in
        ``as_dict()`` but not reported by ``warn`` (and not an error when strict).
        """
        if n <= 0:
            return
        if self.strict and not quiet:
            raise DatasetError("%s: %s (--strict-data: data problems are errors)" % (where, kind))
        if quiet:
            self.quiet.add(kind)
        self.counts[kind] = self.counts.get(kind, 0) + n
        self.examples.setdefault(kind, str(where))

    def as_dict(self):
        """``{kind: count}`` of everything counted so far."""
        return dict(self.counts)

    def warn(self, name):
        """Emit one warning line summarising the counts (nothing if no event was counted)."""
        parts = ["%d %s (first: %s)" % (n, kind, self.examples[kind])
                 for kind, n in self.counts.items() if kind not in self.quiet]
        if not parts:
            return
        warnings.warn("%s: %s" % (name, "; ".join(parts)), DatasetWarning, stacklevel=3)


def empty_label(width=6):
    """An empty label array, float32 shape ``(0, width)``."""
    return np.zeros((0, width), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# image decoding
# ----------------------------------------------------------------------------------------------
def read_image_bytes(path, name=None):
    """The bytes of an image file; :class:`ImageDecodeError` naming it if it is missing (also
    when it was deleted after the dataset was opened), unreadable or empty."""
    name = name or path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageDecodeError("%s: image file not found" % name) from None
    except OSError as err:
        raise ImageDecodeError("%s: cannot read image file (%s)"
                               % (name, err.strerror or type(err).__name__)) from None
    if not data:
        raise ImageDecodeError("%s: empty image file (0 bytes)" % name)
    return data


def _to_rgb_array(img):
    """A loaded PIL image -> (H, W, 3) uint8 RGB; 16-bit samples keep their high byte."""
    if img.mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(img).astype(np.int64)
        gray = (np.clip(gray, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _pil_decode(data, lenient):
    # PIL raises on truncated data unless this global is True, and ``import gluoncv.data`` sets it
    # to True, so it is set on every call and restored to False (strict) afterwards.
    ImageFile.LOAD_TRUNCATED_IMAGES = bool(lenient)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _to_rgb_array(img)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _cv2_decode(data):
    import cv2
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None or arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        return None
    return np.ascontiguousarray(arr[:, :, ::-1])


def _decoded_fraction(arr):
    """Fraction of the rows above the blank tail a truncated decode leaves (bottom rows all of
    one colour, the colour of the last row)."""
    flat = (arr == arr[-1, :1]).all(axis=(1, 2))       # rows of the last row's first colour
    blank = int(np.argmin(flat[::-1])) if not flat.all() else arr.shape[0]
    return 1.0 - blank / float(arr.shape[0])


def _describe(err):
    if isinstance(err, getattr(Image, "UnidentifiedImageError", ())):
        return "not a recognised image format"
    text = str(err).split("\n")[0]
    return "%s: %s" % (type(err).__name__, text) if text else type(err).__name__


def decode_bytes(data, name):
    """Decode encoded image bytes by the policy of this module.

    Returns ``(array (H, W, 3) uint8 RGB, events)``; ``events`` is ``()`` for a clean decode or
    ``(('repaired', message naming the file),)`` when only PIL's truncated loading or OpenCV
    could decode it. Raises :class:`ImageDecodeError` naming the file when nothing decodes it.
    """
    if not data:
        raise ImageDecodeError("%s: empty image file (0 bytes)" % name)
    events = ()
    try:
        arr = _pil_decode(data, lenient=False)
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        first = _describe(err)
        arr = None
        try:
            arr = _pil_decode(data, lenient=True)
            how = "decoded with PIL's truncated loading, the missing part left blank"
        except Exception:  # noqa: BLE001 - try the next decoder
            arr = _cv2_decode(data)
            how = "decoded by OpenCV"
        if arr is None:
            raise ImageDecodeError("%s: cannot decode image (%s)" % (name, first)) from None
        part = _decoded_fraction(arr)
        if part < MIN_DECODED_FRACTION:
            raise ImageDecodeError("%s: damaged image (%s): only %d%% of its rows could be "
                                   "decoded" % (name, first, round(100 * part)))
        events = ((REPAIRED, "%s: damaged image (%s) %s (%d%% of its rows)"
                   % (name, first, how, round(100 * part))),)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError("%s: decoded to unexpected shape %s" % (name, arr.shape))
    return arr, events


def decode_image(path_or_bytes, name=None):
    """Decode an image file (or encoded bytes) to an RGB NDArray.

    Parameters
    ----------
    path_or_bytes : str or bytes
        Path of the image file, or its encoded bytes (JPEG, PNG, BMP, ...).
    name : str, optional
        How to name the image in messages (default: the path).

    Returns
    -------
    mx.nd.NDArray
        ``(H, W, 3)`` uint8, RGB, the stored pixel grid (EXIF orientation ignored).
        Grayscale/palette/CMYK/RGBA/16-bit inputs are converted (alpha dropped, 16-bit samples
        keep their high byte). A damaged file that PIL's truncated loading or OpenCV can still
        decode is returned with a :class:`DatasetWarning` naming it.

    Raises
    ------
    ImageDecodeError
        If the file is missing, empty or nothing can decode it; the message names the file.
    """
    if isinstance(path_or_bytes, (bytes, bytearray)):
        name, data = name or "<bytes>", bytes(path_or_bytes)
    else:
        path = os.fspath(path_or_bytes)
        name = name or path
        data = read_image_bytes(path, name)
    arr, events = decode_bytes(data, name)
    warn_events(events)
    return mx.nd.array(arr, dtype=np.uint8)


def exif_orientation(data):
    """The EXIF orientation tag (1-8) of encoded image bytes; 1 when absent or unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            value = int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - no usable EXIF: the stored orientation
        return 1
    return value if value in _EXIF_TRANSPOSE else 1


def fit_to_annotation(arr, label, width, height, data, name, source="its annotation"):
    """Reconcile a decoded image with the size its annotation gives (see the module policy).

    Parameters
    ----------
    arr : (H, W, 3) uint8 decoded image; label : (M, >=4) float32 boxes in annotation pixels;
    width, height : the annotation's image size; data : the encoded bytes (for the EXIF tag) or
    None; name : file name for messages; source : how to name the annotation.

    Returns ``(arr, label, events)``: unchanged with no event when the sizes agree; EXIF-rotated
    or with boxes rescaled to the real size with one ``'repaired'`` event otherwise. Raises
    :class:`ImageDecodeError` when the aspect ratios differ (the item is skipped).
    """
    h, w = arr.shape[:2]
    if (w, h) == (width, height):
        return arr, label, ()
    said = "%s: image is %dx%d but %s says %dx%d" % (name, w, h, source, width, height)
    orientation = exif_orientation(data) if data is not None else 1
    if orientation >= 5 and (h, w) == (width, height):
        arr = np.asarray(Image.fromarray(arr).transpose(_EXIF_TRANSPOSE[orientation]))
        return arr, label, ((REPAIRED, "%s, its EXIF-rotated size: EXIF orientation %d applied"
                             % (said, orientation)),)
    sx, sy = w / float(width), h / float(height)
    if abs(sx / sy - 1.0) > ASPECT_TOLERANCE:
        raise ImageDecodeError("%s (another aspect ratio): skipped" % said)
    label = np.array(label, dtype=np.float32, copy=True)
    if label.size:
        label[:, (0, 2)] = np.clip(label[:, (0, 2)] * sx, 0, w - 1)
        label[:, (1, 3)] = np.clip(label[:, (1, 3)] * sy, 0, h - 1)
        label = label[(label[:, 2] > label[:, 0]) & (label[:, 3] > label[:, 1])]
    return arr, label, ((REPAIRED, "%s: boxes rescaled to the image" % said),)


def warn_events(events):
    """One :class:`DatasetWarning` per event message (direct ``dataset[i]`` use)."""
    for _, message in events:
        warnings.warn(message, DatasetWarning, stacklevel=3)


class LoadedItems:
    """Mixin: ``dataset[i]`` is ``load(i)`` with its repairs warned about and the dataset's
    ``_transform`` applied (the class provides ``load`` and ``_transform``)."""

    def __getitem__(self, idx):
        img, label, events = self.load(idx)
        warn_events(events)
        if self._transform is not None:
            return self._transform(img, label)
        return img, label


class CheckedImages(LoadedItems):
    """Mixin for :class:`gluon_ssd.data._base.AnnotatedImages` datasets: item loading by the
    image policy of this module (list it before ``AnnotatedImages`` among the bases)."""

    def load(self, idx):
        """Raw item ``idx`` and what was repaired: ``(image (H, W, 3) uint8 RGB NDArray, label
        float32 (M, 6) pixels of that image, events)`` (``events``: tuple of ``('repaired',
        message)``). Raises :class:`ImageDecodeError` naming the file when it must be skipped."""
        path, width, height = self._items[idx]
        data = read_image_bytes(path)
        arr, events = decode_bytes(data, path)
        label = self._labels[idx].copy()
        if arr.shape[0] != height or arr.shape[1] != width:
            arr, label, more = fit_to_annotation(arr, label, width, height, data, path,
                                                 self._annotation_name)
            events = events + more
        return mx.nd.array(arr, dtype=np.uint8), label, events


def load_item(dataset, index):
    """``(image, label, events)`` of ``dataset``'s raw item ``index``: its ``load`` when it has
    one, else ``dataset[index]`` with no events. Raises :class:`ImageDecodeError` for a skip."""
    loader = getattr(dataset, "load", None)
    if loader is not None:
        return loader(index)
    img, label = dataset[index]
    return img, label, ()


def image_size(path):
    """``(width, height)`` in pixels read from the image header only (no decoding).

    Raises :class:`ImageDecodeError` naming the file if it is missing or not an image.
    """
    if not os.path.isfile(path):
        raise ImageDecodeError("%s: image file not found" % path)
    try:
        with Image.open(path) as img:
            return img.size
    except Exception as err:
        raise ImageDecodeError("%s: cannot read image header (%s)" % (path, _describe(err))) \
            from None


# ----------------------------------------------------------------------------------------------
# annotations
# ----------------------------------------------------------------------------------------------
def _norm_name(name):
    return re.sub(r"[\s_\-.]+", "", name.lower())


def suspected_typos(counts):
    """Class names that look like a misspelling of a more frequent one.

    ``counts``: ``{name: number of objects}``. A name is suspect when it equals a more frequent
    (or equally frequent, earlier sorted) name up to case, spaces, ``_``, ``-`` and ``.``, or when
    it is rare (at most 2 objects, or 10x fewer) and spelled nearly alike (difflib ratio >= 0.8,
    e.g. ``'racoon'`` / ``'raccoon'``). Returns ``[(suspect, likely_meant)]``.
    """
    names = sorted(counts, key=lambda n: (-counts[n], n))
    out = []
    for i, rare in enumerate(names):
        for common in names[:i]:
            same = _norm_name(rare) == _norm_name(common)
            few = counts[rare] < counts[common] and (counts[rare] <= 2
                                                     or counts[rare] * 10 <= counts[common])
            if same or (few and difflib.SequenceMatcher(None, rare.lower(),
                                                        common.lower()).ratio() >= 0.8):
                out.append((rare, common))
                break
    return out


def close_name(name, names):
    """The one name of ``names`` spelled nearly like ``name`` (a likely typo), else None."""
    lowered = {n.lower(): n for n in names}
    match = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.8)
    return lowered[match[0]] if match else None


def clean_boxes(label, width, height, counter, where):
    """Clip boxes to the image and drop degenerate ones, counting what was changed.

    Parameters
    ----------
    label : np.ndarray
        ``(M, K)`` float, ``K >= 4``, first four columns ``xmin, ymin, xmax, ymax`` in pixels
        (GluonCV's inclusive convention: the last pixel column/row is ``width - 1``/``height - 1``).
    width, height : int or None
        Image size in pixels; ``None`` skips clipping.
    counter : SkipCounter
        Receives ``'boxes clipped to the image'``, ``'boxes outside the image dropped'`` and
        ``'degenerate boxes dropped ...'`` events.
    where : str
        File name used in the counter.

    Returns
    -------
    np.ndarray
        ``(M', K)`` float32 with ``0 <= xmin < xmax <= width - 1`` (same for y), ``M' <= M``.
    """
    label = np.array(label, dtype=np.float32)
    if label.ndim != 2 or label.shape[0] == 0:
        return label.reshape(0, label.shape[-1] if label.ndim == 2 else 6)
    finite = np.isfinite(label[:, :4]).all(axis=1)
    counter.add("boxes with non-finite coordinates dropped", where, int((~finite).sum()))
    label = label[finite]
    boxes = label[:, :4].copy()
    valid_before = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if width is not None and height is not None:
        label[:, (0, 2)] = np.clip(boxes[:, (0, 2)], 0, width - 1)
        label[:, (1, 3)] = np.clip(boxes[:, (1, 3)], 0, height - 1)
    keep = (label[:, 2] > label[:, 0]) & (label[:, 3] > label[:, 1])
    changed = (label[:, :4] != boxes).any(axis=1)
    counter.add("boxes clipped to the image", where, int((changed & keep).sum()))
    counter.add("boxes outside the image dropped", where, int((valid_before & ~keep).sum()))
    counter.add("degenerate boxes dropped (xmin>=xmax or ymin>=ymax)", where,
                int((~valid_before).sum()))
    return label[keep]

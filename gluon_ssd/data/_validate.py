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
* Image decoding happens in ``__getitem__``; an unreadable, corrupt or truncated image raises
  :class:`ImageDecodeError` naming the file. Grayscale, palette, CMYK, RGBA and PNG images are
  converted to RGB (alpha is dropped).
"""
import io
import os
import warnings
from collections import OrderedDict

import mxnet as mx
import numpy as np
from PIL import Image, ImageFile

from gluon_ssd.errors import UserError

__all__ = ["DatasetError", "ImageDecodeError", "DatasetWarning", "SkipCounter", "decode_image",
           "image_size", "clean_boxes", "empty_label"]


class DatasetError(UserError, ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


class ImageDecodeError(DatasetError):
    """An image file cannot be read or decoded (missing, corrupt, truncated)."""


class DatasetWarning(UserWarning):
    """Summary of annotations repaired or skipped while building a dataset (one line)."""


class SkipCounter:
    """Counts repaired/skipped annotations by kind and emits one summary warning.

    ``add(kind, where)`` counts one event and remembers the first file it happened in;
    ``as_dict()`` returns ``{kind: count}``; ``warn(name)`` emits a single :class:`DatasetWarning`
    line if anything was counted.
    """

    def __init__(self):
        self.counts = OrderedDict()
        self.examples = OrderedDict()
        self.quiet = set()

    def add(self, kind, where, n=1, quiet=False):
        """Count ``n`` events of ``kind``; ``where`` (a path or id) is kept for the first one.

        ``quiet=True`` marks an expected event (e.g. COCO images without boxes): it is counted in
        ``as_dict()`` but not reported by ``warn``.
        """
        if n <= 0:
            return
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


def _open(path_or_bytes, name):
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return Image.open(io.BytesIO(path_or_bytes))
    if not os.path.isfile(path_or_bytes):
        raise ImageDecodeError("%s: image file not found" % name)
    return Image.open(path_or_bytes)


def decode_image(path_or_bytes, name=None):
    """Decode an image file (or encoded bytes) to an RGB NDArray.

    Parameters
    ----------
    path_or_bytes : str or bytes
        Path of the image file, or its encoded bytes (JPEG, PNG, BMP, ...).
    name : str, optional
        How to name the image in error messages (default: the path).

    Returns
    -------
    mx.nd.NDArray
        ``(H, W, 3)`` uint8, RGB. Grayscale/palette/CMYK/RGBA inputs are converted (alpha dropped).

    Raises
    ------
    ImageDecodeError
        If the file is missing, not an image, corrupt or truncated; the message names the file.
    """
    name = name or (path_or_bytes if isinstance(path_or_bytes, str) else "<bytes>")
    # Never decode half an image silently. PIL raises on truncated data unless this global is
    # True, and ``import gluoncv.data`` sets it to True, so it is re-asserted on every call.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with _open(path_or_bytes, name) as img:
            img.load()
            if img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise ImageDecodeError("%s: cannot decode image (%s: %s)"
                               % (name, type(err).__name__, err)) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError("%s: decoded to unexpected shape %s" % (name, arr.shape))
    return mx.nd.array(arr, dtype=np.uint8)


def image_size(path):
    """``(width, height)`` in pixels read from the image header only (no decoding).

    Raises :class:`ImageDecodeError` naming the file if it is missing or not an image.
    """
    try:
        with _open(path, path) as img:
            return img.size
    except ImageDecodeError:
        raise
    except Exception as err:
        raise ImageDecodeError("%s: cannot read image header (%s: %s)"
                               % (path, type(err).__name__, err)) from None


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

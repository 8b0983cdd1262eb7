"""Fast SSD augmentation steps, output-identical to GluonCV 0.10.5's functions.

Each geometric function here consumes the global random generators (Python ``random``, legacy
``numpy.random``) exactly as the GluonCV function named in its docstring does: the same draws, in
the same order, and the same number of them, so with equal generator states the results are
equal element for element and the generators end in the same states. Only the work done around
the draws is cheaper (vectorised IoU tests, fewer per-call overheads).

The colour distortion (:func:`photometric_matrix`) makes GluonCV's draws too but is the SSD
paper's, not GluonCV's: its hue angle is in degrees (GluonCV's turns the hue by any angle).

Conventions: boxes are ``(M, 4+)`` arrays ``[xmin, ymin, xmax, ymax, ...]`` in pixels (corner
format); extra columns (class id, difficult, ...) are carried along unchanged. Images are HWC
``mx.nd.NDArray`` (:func:`random_expand` and :func:`random_flip_x` also take numpy arrays).
"""
import functools
import math
import random

import cv2
import mxnet as mx
import numpy as np

__all__ = ["SSD_CROP_CONSTRAINTS", "random_crop_with_constraints", "crop_boxes", "random_expand",
           "photometric_matrix", "apply_photometric",
           "random_flip_x"]

#: IoU ranges ``(min_iou, max_iou)`` of the SSD paper's crop sampler (``None`` = unbounded).
SSD_CROP_CONSTRAINTS = ((0.1, None), (0.3, None), (0.5, None), (0.7, None), (0.9, None),
                        (None, 1))


def _sample_crop(width, height, min_scale, max_scale, max_aspect_ratio):
    """One crop proposal drawn from Python ``random`` with its public functions (``uniform``
    for scale and aspect ratio, then ``randrange`` for top and left).

    Returns ``(left, top, crop_w, crop_h)`` ints, pixels.
    """
    scale = random.uniform(min_scale, max_scale)
    scale2 = scale * scale
    aspect = random.uniform(max(1 / max_aspect_ratio, scale2), min(max_aspect_ratio, 1 / scale2))
    root = math.sqrt(aspect)  # correctly rounded, like numpy's sqrt
    crop_h = int(height * scale / root)
    crop_w = int(width * scale * root)
    top = random.randrange(height - crop_h)
    left = random.randrange(width - crop_w)
    return left, top, crop_w, crop_h


def _randbelow(n, bits):
    """``randrange(n)`` for ``n > 0`` as CPython draws it: ``n.bit_length()`` random bits,
    redrawn while ``>= n`` (``bits``: ``getrandbits`` of the generator in use)."""
    k = n.bit_length()
    value = bits(k)
    while value >= n:
        value = bits(k)
    return value


def _draw_proposals(count, width, height, min_scale, max_scale, max_aspect_ratio, rng=None):
    """``count`` proposals as :func:`_sample_crop` draws them, with CPython's ``uniform`` and
    ``randrange`` written out on ``random()`` / ``getrandbits()`` (``a + (b - a) * random()``;
    ``randrange(n)``: ``k = n.bit_length()`` bits, redrawn while ``>= n``) to save the Python
    call overhead. ``rng``: a ``random.Random`` (default: the global one). Width and height
    must be ints. Returns ``(proposals, error)``: the list of ``(left, top, w, h)`` and the
    ``ValueError`` that stopped the drawing early (``randrange`` of an empty range), or None.
    """
    rand = random.random if rng is None else rng.random
    bits = random.getrandbits if rng is None else rng.getrandbits
    inv_ratio = 1 / max_aspect_ratio
    scale_span = max_scale - min_scale
    out = []
    for _ in range(count):
        scale = min_scale + scale_span * rand()
        scale2 = scale * scale
        lo, hi = max(inv_ratio, scale2), min(max_aspect_ratio, 1 / scale2)
        root = math.sqrt(lo + (hi - lo) * rand())
        crop_h = int(height * scale / root)
        crop_w = int(width * scale * root)
        if height - crop_h <= 0:
            return out, ValueError("empty range for randrange()")
        top = _randbelow(height - crop_h, bits)
        if width - crop_w <= 0:
            return out, ValueError("empty range for randrange()")
        left = _randbelow(width - crop_w, bits)
        out.append((left, top, crop_w, crop_h))
    return out, None


_FAST_DRAWS_OK = None


def _fast_draws_ok():
    """Whether :func:`_draw_proposals` reproduces ``random.uniform`` / ``random.randrange`` on
    this Python (checked once on private generators: values and final states)."""
    global _FAST_DRAWS_OK  # pylint: disable=global-statement
    if _FAST_DRAWS_OK is None:
        ok = True
        for seed, size in ((0, (300, 300)), (1, (37, 500)), (2, (1000, 9))):
            fast, slow = random.Random(seed), random.Random(seed)
            got, _ = _draw_proposals(200, *size, 0.3, 1, 2, rng=fast)
            want = []
            for _ in range(200):
                scale = slow.uniform(0.3, 1)
                aspect = slow.uniform(max(1 / 2, scale * scale), min(2, 1 / (scale * scale)))
                crop_h = int(size[1] * scale / np.sqrt(aspect))
                crop_w = int(size[0] * scale * np.sqrt(aspect))
                top = slow.randrange(size[1] - crop_h)
                want.append((slow.randrange(size[0] - crop_w), top, crop_w, crop_h))
            ok = ok and got == want and fast.getstate() == slow.getstate()
        _FAST_DRAWS_OK = ok
    return _FAST_DRAWS_OK


def _proposals(count, width, height, min_scale, max_scale, max_aspect_ratio):
    """``count`` proposals from the global ``random`` (fast path when it is known exact)."""
    if type(width) is int and type(height) is int and _fast_draws_ok():  # noqa: E721
        return _draw_proposals(count, width, height, min_scale, max_scale, max_aspect_ratio)
    out = []
    for _ in range(count):
        try:
            out.append(_sample_crop(width, height, min_scale, max_scale, max_aspect_ratio))
        except ValueError as exc:
            return out, exc
    return out, None


FIRST_CHUNK = 8


def _chunks(total):
    first = min(FIRST_CHUNK, total)
    return (first, total - first) if total > first else (first,)


def _first_valid(bbox, area_a, proposals, min_iou, max_iou):
    """Index of the first proposal whose IoU with every box lies in ``[min_iou, max_iou]``
    (NaN IoUs fail), or -1. ``proposals``: list of ``(left, top, w, h)``; IoUs are computed with
    the same dtypes as ``gluoncv.utils.bbox_iou`` (boxes' dtype against int64 crops)."""
    corners = np.array([(x, y, x + w, y + h) for x, y, w, h in proposals])  # (T, 4) int64
    lt = np.maximum(bbox[:, None, :2], corners[None, :, :2])  # (N, T, 2)
    rb = np.minimum(bbox[:, None, 2:4], corners[None, :, 2:4])
    inter = np.prod(rb - lt, axis=2) * (lt < rb).all(axis=2)  # (N, T)
    area_b = np.prod(corners[:, 2:] - corners[:, :2], axis=1)  # (T,)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (area_a[:, None] + area_b - inter)
    ok = (min_iou <= iou.min(axis=0)) & (iou.max(axis=0) <= max_iou)
    hits = np.flatnonzero(ok)
    return int(hits[0]) if hits.size else -1


def random_crop_with_constraints(bbox, size, min_scale=0.3, max_scale=1, max_aspect_ratio=2,
                                 constraints=None, max_trial=50):
    """SSD's IoU-constrained random crop; same results and random draws as
    ``gluoncv.data.transforms.experimental.bbox.random_crop_with_constraints``.

    For every constraint ``(min_iou, max_iou)``, up to ``max_trial`` crops (area scale in
    ``[min_scale, max_scale]``, aspect ratio in ``[1/max_aspect_ratio, max_aspect_ratio]``) are
    proposed and the first whose IoU with every box is inside the range is kept; then one of
    the kept crops or the whole image is picked at random (``np.random.randint``) until the
    boxes clipped to it (:func:`crop_boxes`) are not all dropped.

    All proposals of a constraint are drawn at once and tested in one vectorised IoU
    computation; when one passes before the last, the ``random`` state is rewound and exactly
    the draws the one-at-a-time loop would have made are made again.

    Parameters
    ----------
    bbox : np.ndarray (M, 4+)
        Corner boxes, pixels; may be empty (then the first proposal is returned, boxes
        untouched).
    size : (width, height)
        Image size, pixels.
    constraints : iterable of (min_iou or None, max_iou or None), optional
        Default :data:`SSD_CROP_CONSTRAINTS`.

    Returns
    -------
    (np.ndarray (M', 4+), (x_offset, y_offset, crop_width, crop_height))
        Boxes in the crop's pixel coordinates (same dtype as ``bbox``; the input array itself
        when it is empty or no crop keeps a box) and the crop window in input pixels (ints).
    """
    if constraints is None:
        constraints = SSD_CROP_CONSTRAINTS
    width, height = size
    proposal_args = (width, height, min_scale, max_scale, max_aspect_ratio)
    kept = [(0, 0, width, height)]
    if len(bbox):
        if bbox.shape[1] < 4:
            raise IndexError("Bounding boxes axis 1 must have at least length 4")
        area_a = np.prod(bbox[:, 2:4] - bbox[:, :2], axis=1)
    for min_iou, max_iou in constraints:
        if max_trial <= 0:
            continue
        if not len(bbox):  # no box: the very first proposal is the answer
            return bbox, _sample_crop(*proposal_args)
        min_iou = -np.inf if min_iou is None else min_iou
        max_iou = np.inf if max_iou is None else max_iou
        start = random.getstate()
        proposals, error, found = [], None, -1
        for chunk in _chunks(max_trial):  # a short first chunk: easy constraints pass early
            more, error = _proposals(chunk, *proposal_args)
            if more:
                found = _first_valid(bbox, area_a, more, min_iou, max_iou)
                if found >= 0:
                    found += len(proposals)
            proposals += more
            if found >= 0 or error is not None:
                break
        if found < 0:
            if error is not None:
                raise error
            continue  # every trial was consumed, as in the one-at-a-time loop
        if found < len(proposals) - 1 or error is not None:
            random.setstate(start)  # replay exactly the draws up to the accepted proposal
            _proposals(found + 1, *proposal_args)
        kept.append(proposals[found])
    while kept:
        crop = kept.pop(np.random.randint(0, len(kept)))
        boxes = crop_boxes(bbox, crop)
        if boxes.size:
            return boxes, tuple(crop)
    return bbox, (0, 0, width, height)


def crop_boxes(bbox, crop):
    """Boxes seen through a crop window, dropping boxes whose centre is outside it; same
    result as ``gluoncv.data.transforms.bbox.crop(bbox, crop, allow_outside_center=False)``.

    Parameters
    ----------
    bbox : np.ndarray (M, 4+)
        Corner boxes, pixels.
    crop : (x_offset, y_offset, width, height)
        Window in pixels; a falsy offset means 0, a falsy width/height means unbounded.

    Returns
    -------
    np.ndarray (M', 4+), same dtype
        Boxes clipped to the window and shifted to its origin; boxes whose centre is not in
        ``[x0, x1) x [y0, y1)`` or that are empty after clipping are removed.
    """
    x0, y0, cw, ch = crop
    x0, y0 = (x0 or 0), (y0 or 0)
    window = np.array((x0, y0, x0 + (cw or np.inf), y0 + (ch or np.inf)))
    origin, far = window[:2], window[2:]
    centre = (bbox[:, :2] + bbox[:, 2:4]) / 2
    inside = ((origin <= centre) & (centre < far)).all(axis=1)
    out = bbox.copy()
    out[:, :2] = np.maximum(out[:, :2], origin)
    out[:, 2:4] = np.minimum(out[:, 2:4], far)
    out[:, :2] -= origin
    out[:, 2:4] -= origin
    inside &= (out[:, :2] < out[:, 2:4]).all(axis=1)
    return out[inside]


def random_expand(src, max_ratio=4, fill=0):
    """Zoom out: place the image at a random offset on a larger canvas of ``fill``; same result
    and ``random`` draws as ``gluoncv.data.transforms.image.random_expand(src, max_ratio, fill,
    keep_ratio=True)`` (the canvas is built by broadcasting instead of tiling).

    Parameters
    ----------
    src : mx.nd.NDArray or np.ndarray (H, W, C)
    max_ratio : float
        Largest side ratio canvas / image (same ratio for both sides).
    fill : number or length-C sequence
        Canvas value(s), cast to ``src.dtype``.

    Returns
    -------
    (array of src's type (H', W', C) and dtype, (x_offset, y_offset, W', H'))
        Offsets and sizes in pixels (ints).
    """
    h, w, c = src.shape
    if max_ratio <= 1:
        return src, (0, 0, w, h)
    ratio = random.uniform(1, max_ratio)
    oh, ow = int(h * ratio), int(w * ratio)
    off_y = random.randint(0, oh - h)
    off_x = random.randint(0, ow - w)
    if isinstance(src, np.ndarray):
        colour = np.broadcast_to(np.asarray(fill).astype(src.dtype), (c,))
        dst = cv2.copyMakeBorder(src, off_y, oh - h - off_y, off_x, ow - w - off_x,
                                 cv2.BORDER_CONSTANT, value=[float(v) for v in colour])
        return dst.reshape(oh, ow, c), (off_x, off_y, ow, oh)
    if isinstance(fill, (int, float, np.number)):
        dst = mx.nd.full(shape=(oh, ow, c), val=fill, dtype=src.dtype, ctx=src.context)
    else:
        colour = mx.nd.array(fill, dtype=src.dtype, ctx=src.context)
        if colour.size != c:
            raise ValueError("Channel and fill size mismatch, {} vs {}".format(c, colour.size))
        dst = mx.nd.broadcast_to(colour.reshape((1, 1, c)), shape=(oh, ow, c))
    dst[off_y:off_y + h, off_x:off_x + w, :] = src
    return dst, (off_x, off_y, ow, oh)


@functools.lru_cache(maxsize=16)
def _choice_threshold(p):
    # np.random.choice([False, True], p=[1 - p, p]) returns True iff u >= cumsum(p)[0] / sum(p),
    # with u = np.random.random_sample(): the same float64 operations as numpy's choice.
    first, total = np.cumsum(np.array([1 - p, p], dtype=np.float64))
    return float(first / total)


def random_flip_x(src, px=0.5):
    """Horizontal flip with probability ``px``; same result and ``numpy.random`` draws as
    ``gluoncv.data.transforms.image.random_flip(src, px=px, py=0)`` (which draws one uniform
    for the never-taken vertical flip, then one for the horizontal one), without the overhead
    of two ``np.random.choice`` calls.

    Parameters
    ----------
    src : mx.nd.NDArray or np.ndarray (H, W, C)

    Returns
    -------
    (array of src's type (H, W, C), bool)
        The image (flipped along W or ``src`` itself) and whether it was flipped.
    """
    if not 0 <= px <= 1:
        raise ValueError("probabilities are not non-negative")
    np.random.random_sample()  # the vertical-flip draw (py = 0: never flips)
    flip = bool(np.random.random_sample() >= _choice_threshold(px))
    if flip:
        src = src[:, ::-1] if isinstance(src, np.ndarray) else mx.nd.flip(src, axis=1)
    return src, flip


# YIQ <-> RGB (NTSC): hue is an angle in the I-Q chroma plane, Y the luma kept by the rotation.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.321],
                        [0.211, -0.523, 0.311]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)
_LUMA = _RGB_TO_YIQ[0]


def _hue_turn(degrees):
    """``(3, 3)`` RGB map turning the chroma (I, Q) by ``degrees`` about the luma axis."""
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ


def photometric_matrix(brightness_delta=32, contrast=(0.5, 1.5), saturation=(0.5, 1.5),
                       hue_degrees=18):
    """Draw the SSD paper's photometric distortion as one affine colour map ``rgb -> M @ rgb + b``
    (``M (3, 3)``, ``b (3,)`` float64, 0-255 pixel scale).

    The steps and their probabilities are the Caffe SSD's (and GluonCV's): with p=0.5 each,
    a brightness shift in ``[-brightness_delta, brightness_delta]``, then in a random one of two
    orders (contrast, saturation, hue) or (saturation, hue, contrast): contrast scales by a
    factor in ``contrast``, saturation blends with the luma by a factor in ``saturation``, hue
    rotates the chroma by an angle in ``[-hue_degrees, hue_degrees]`` degrees. GluonCV draws the
    same angle but multiplies it by pi, so its "18" turns the hue by any angle (a red object
    comes out green or blue in about half the images); here it is degrees, as in the paper.

    All steps are linear, so they compose into one map, applied once (:func:`apply_photometric`).
    The draws are GluonCV's, in its order: legacy ``numpy.random``, and Python ``random`` for the
    hue angle (the loader seeds both per item).
    """
    m, b = np.eye(3), np.zeros(3)

    def maybe(p=0.5):
        return np.random.uniform(0, 1) > p

    if maybe():
        b = b + np.random.uniform(-brightness_delta, brightness_delta)

    def contrast_step(m, b):
        if maybe():
            alpha = np.random.uniform(*contrast)
            return alpha * m, alpha * b
        return m, b

    def saturation_step(m, b):
        if maybe():
            alpha = np.random.uniform(*saturation)
            blend = alpha * np.eye(3) + (1 - alpha) * np.outer(np.ones(3), _LUMA)
            return blend @ m, blend @ b
        return m, b

    def hue_step(m, b):
        if maybe():
            turn = _hue_turn(random.uniform(-hue_degrees, hue_degrees))   # GluonCV draws it here
            return turn @ m, turn @ b
        return m, b

    steps = ((contrast_step, saturation_step, hue_step) if np.random.randint(0, 2)
             else (saturation_step, hue_step, contrast_step))
    for step in steps:
        m, b = step(m, b)
    return m, b


def apply_photometric(img, matrix, offset, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3):
    """``img (H, W, 3)`` uint8 or float numpy RGB -> float32 ``(H, W, 3)``: ``matrix @ rgb +
    offset`` clipped to ``[0, 255]`` (a camera's range: the paper's Caffe works on 8-bit images),
    then normalised ``(x / 255 - mean) / std`` (the defaults leave it on the 0-255 scale). One
    OpenCV pass for the colour map and the normalisation, one clip."""
    scale = 1.0 / (255.0 * np.asarray(std, np.float64))
    shift = 255.0 * np.asarray(mean, np.float64)
    affine = np.concatenate([scale[:, None] * matrix,
                             (scale * (np.asarray(offset, np.float64) - shift))[:, None]], axis=1)
    # float32 in: OpenCV keeps the input's depth (uint8 would saturate before the clip)
    out = cv2.transform(np.ascontiguousarray(img, dtype=np.float32), affine.astype(np.float32))
    low, high = (-shift * scale).astype(np.float32), ((255.0 - shift) * scale).astype(np.float32)
    np.maximum(out, low, out=out)
    return np.minimum(out, high, out=out)

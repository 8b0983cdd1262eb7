"""Anchor (prior) boxes of one SSD feature map.

Anchors are returned in GluonCV's convention: **center format** ``(cx, cy, w, h)`` in **pixels of
the network input**, shape ``(1, h*w*A, 4)`` float32. For every feature-map cell, row-major (row
``i``, then column ``j``), the ``A`` anchors are: every size with ``ratios[0]``, then ``sizes[0]``
with each of ``ratios[1:]``. A ratio ``r`` gives ``w = s*sqrt(r)``, ``h = s/sqrt(r)``.

The values are GluonCV's (``SSDAnchorGenerator`` builds them in float64 numpy and stores float32):
widths and heights are computed in Python float64 and enter the graph as float32 scalars, centres
``(j + offset) * step`` are computed in-graph in float32, which is exact for integer steps. So the
anchors of every GluonCV preset are bit-identical to GluonCV's (see :class:`AnchorGenerator`).
"""
import math
from numbers import Real

import numpy as np
from mxnet import gluon

__all__ = ['AnchorGenerator', 'ssd_sizes']


def ssd_sizes(min_max_sizes):
    """Turn the SSD paper's per-layer size list into per-layer ratio-1 anchor sizes.

    Parameters
    ----------
    min_max_sizes : sequence of float, length L+1
        Anchor scales ``s_0 .. s_L`` in pixels (e.g. ``[30, 60, 111, 162, 213, 264, 315]`` for
        SSD300); layer ``k`` uses ``s_k`` and ``s_{k+1}``.

    Returns
    -------
    list of L tuples ``(s_k, sqrt(s_k * s_{k+1}))`` in pixels: the two ratio-1 anchor sizes of
    layer ``k``, ready for :class:`AnchorGenerator`'s ``sizes``.
    """
    sizes = [float(s) for s in min_max_sizes]
    if len(sizes) < 2:
        raise ValueError(f"min_max_sizes needs at least 2 values (L+1 for L layers), got {sizes}")
    if any(s <= 0 for s in sizes):
        raise ValueError(f"min_max_sizes must be positive, got {sizes}")
    return [(small, math.sqrt(small * large)) for small, large in zip(sizes[:-1], sizes[1:])]


def _pair(value, name):
    """Return ``value`` as a (y, x) pair of positive floats; a scalar is used for both."""
    if isinstance(value, Real):
        value = (value, value)
    value = tuple(float(v) for v in value)
    if len(value) != 2 or any(v <= 0 for v in value):
        raise ValueError(f"{name} must be a positive number or a (y, x) pair of them, got {value}")
    return value


class AnchorGenerator(gluon.HybridBlock):
    """Anchor boxes of one feature map, identical to GluonCV's ``SSDAnchorGenerator``.

    Parameters
    ----------
    sizes : sequence of float
        Ratio-1 anchor sizes in pixels (each size is used with ``ratios[0]``; only ``sizes[0]`` is
        combined with ``ratios[1:]``, as MXNet's ``MultiBoxPrior``). For SSD use a pair from
        :func:`ssd_sizes`.
    ratios : sequence of float
        Aspect ratios ``w/h``; ``ratios[0]`` is normally 1.
    step : float or (step_y, step_x)
        Distance between neighbouring anchor centres in pixels.
    im_size : (H, W)
        Network input size in pixels; used by ``clip``.
    offsets : (offset_y, offset_x), default (0.5, 0.5)
        Centre of cell ``(i, j)`` is ``((j + offset_x) * step_x, (i + offset_y) * step_y)``.
    clip : bool, default False
        Like GluonCV's ``clip``: clamp the *center-format* values, ``cx`` and ``w`` to ``[0, W]``,
        ``cy`` and ``h`` to ``[0, H]`` (it does not clip the box corners to the image).

    Forward
    -------
    feat : (B, C, h, w) feature map; only its spatial shape is used (any size, known at run time).

    Returns ``(1, h*w*A, 4)`` float32 anchors, center format ``(cx, cy, w, h)``, pixels of the
    network input, where ``A = num_anchors``; the same for every batch size.

    Exactness: each anchor's ``w`` and ``h`` are computed in Python float64 (as GluonCV) and rounded
    to float32 once, so they always equal GluonCV's. Centres are computed in float32 as
    ``float32(j + offset) * float32(step)``, exact (hence equal to GluonCV's float64 values)
    whenever that product is representable in float32, e.g. integer steps with offsets 0.5 (every
    preset); a non-integer step can put a centre 1 float32 ulp off GluonCV's.
    """

    def __init__(self, sizes, ratios, step, im_size, offsets=(0.5, 0.5), clip=False, **kwargs):
        super().__init__(**kwargs)
        sizes = tuple(float(s) for s in sizes)
        ratios = tuple(float(r) for r in ratios)
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"sizes must be a non-empty list of positive pixel sizes, got {sizes}")
        if not ratios or any(r <= 0 for r in ratios):
            raise ValueError(f"ratios must be a non-empty list of positive aspect ratios, "
                             f"got {ratios}")
        im_size = tuple(im_size)
        if len(im_size) != 2 or any(v <= 0 for v in im_size):
            raise ValueError(f"im_size must be (H, W) in pixels, got {im_size}")
        offsets = tuple(float(o) for o in offsets)
        if len(offsets) != 2:
            raise ValueError(f"offsets must be (offset_y, offset_x), got {offsets}")
        self._sizes = sizes
        self._ratios = ratios
        self._step = _pair(step, 'step')
        self._im_size = (float(im_size[0]), float(im_size[1]))
        self._offsets = offsets
        self._clip = bool(clip)
        self._wh = self._widths_heights()

    @property
    def num_anchors(self):
        """Anchors per feature-map cell: ``len(sizes) + len(ratios) - 1``."""
        return len(self._sizes) + len(self._ratios) - 1

    def _widths_heights(self):
        """Per anchor of a cell ``(w, h)`` in pixels: float64 arithmetic, then float32 values
        (clipped like GluonCV's float32 anchors when ``clip``), as Python floats."""
        shapes = [(s, math.sqrt(self._ratios[0])) for s in self._sizes]
        shapes += [(self._sizes[0], math.sqrt(r)) for r in self._ratios[1:]]
        wh = np.array([(s * sr, s / sr) for s, sr in shapes], dtype=np.float64).astype(np.float32)
        if self._clip:
            height, width = self._im_size
            wh = np.clip(wh, np.float32(0), np.array([width, height], dtype=np.float32))
        return tuple((float(w), float(h)) for w, h in wh)

    def hybrid_forward(self, F, feat):  # pylint: disable=arguments-differ
        # Only the map's shape is used: one channel of it, outside the gradient (no zero
        # gradient joins the map's real ones). In a bfloat16 graph (gluon_ssd.precision)
        # slice_axis is a float32 operator, so the anchors are built in float32 from a float32
        # input; the cast before it copies the whole map (< 1 % of a step).
        feat = F.BlockGrad(F.slice_axis(feat, axis=1, begin=0, end=1))
        (off_y, off_x), (step_y, step_x) = self._offsets, self._step
        # centres (j + offset) * step: arange_like adds j to float32(offset) in float32, then one
        # float32 multiply; both exact for integer steps (see the class docstring)
        cy = F.contrib.arange_like(feat, start=off_y, step=1, axis=2) * step_y     # (h,)
        cx = F.contrib.arange_like(feat, start=off_x, step=1, axis=3) * step_x     # (w,)
        if self._clip:
            height, width = self._im_size
            cx, cy = F.clip(cx, 0, width), F.clip(cy, 0, height)
        cy = F.reshape(cy, (-1, 1, 1, 1))                                          # (h, 1, 1, 1)
        cx = F.reshape(cx, (1, -1, 1, 1))                                          # (1, w, 1, 1)
        # (w, h) of the A anchors as float32 scalars: 0 + float32 value is exact
        zero = F.zeros_like(F.slice_axis(cx, axis=1, begin=0, end=1))               # (1, 1, 1, 1)
        consts = {v: zero + v for pair in self._wh for v in pair}   # one op per distinct value
        wh = F.reshape(F.concat(*[consts[v] for pair in self._wh for v in pair], dim=3),
                       (1, 1, -1, 2))                                               # (1, 1, A, 2)
        # zeros (h, w, A, 1) to broadcast everything to the full grid (adding 0 is exact)
        grid = F.broadcast_axis(F.broadcast_add(F.zeros_like(cy), F.zeros_like(cx)),
                                axis=2, size=self.num_anchors)
        anchors = F.concat(F.broadcast_add(grid, cx), F.broadcast_add(grid, cy),
                           F.broadcast_add(grid, wh), dim=3)                        # (h, w, A, 4)
        return F.reshape(anchors, (1, -1, 4))

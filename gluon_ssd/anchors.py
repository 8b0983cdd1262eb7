"""Anchor (prior) boxes of one SSD feature map.

Anchors are returned in GluonCV's convention: **center format** ``(cx, cy, w, h)`` in **pixels of
the network input**, shape ``(1, h*w*A, 4)``. For every feature-map cell, row-major (row ``i``, then
column ``j``), the ``A`` anchors are: every size with ``ratios[0]``, then ``sizes[0]`` with each of
``ratios[1:]``. A ratio ``r`` gives ``w = s*sqrt(r)``, ``h = s/sqrt(r)``.

The boxes themselves come from MXNet's ``contrib.MultiBoxPrior`` (which works in 0-1 corner
coordinates); this module only feeds it normalised parameters and converts its output. Because
MultiBoxPrior computes float32 corners, values can differ from GluonCV's (float64-built, then
float32) anchors by up to 2 float32 ulps, i.e. 1.2e-4 px for anchors larger than 512 px.
"""
import math
from numbers import Real

from mxnet import gluon

from gluon_ssd.coder import corner_to_center

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
    """Anchor boxes of one feature map, built on ``F.contrib.MultiBoxPrior``.

    Parameters
    ----------
    sizes : sequence of float
        Ratio-1 anchor sizes in pixels (MultiBoxPrior semantics: each size is used with
        ``ratios[0]``; only ``sizes[0]`` is combined with ``ratios[1:]``). For SSD use a pair from
        :func:`ssd_sizes`.
    ratios : sequence of float
        Aspect ratios ``w/h``; ``ratios[0]`` is normally 1.
    step : float or (step_y, step_x)
        Distance between neighbouring anchor centres in pixels.
    im_size : (H, W)
        Network input size in pixels; used to normalise for MultiBoxPrior and for ``clip``.
    offsets : (offset_y, offset_x), default (0.5, 0.5)
        Centre of cell ``(i, j)`` is ``((j + offset_x) * step_x, (i + offset_y) * step_y)``.
    clip : bool, default False
        Like GluonCV's ``clip``: clamp the *center-format* values, ``cx`` and ``w`` to ``[0, W]``,
        ``cy`` and ``h`` to ``[0, H]`` (it does not clip the box corners to the image).

    Forward
    -------
    feat : (B, C, h, w) feature map; only its spatial shape is used.

    Returns ``(1, h*w*A, 4)`` anchors, center format ``(cx, cy, w, h)``, pixels, where
    ``A = num_anchors``.
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

    @property
    def num_anchors(self):
        """Anchors per feature-map cell: ``len(sizes) + len(ratios) - 1``."""
        return len(self._sizes) + len(self._ratios) - 1

    def hybrid_forward(self, F, feat):  # pylint: disable=arguments-differ
        height, width = self._im_size
        step_y, step_x = self._step
        # Only the map's shape is used: one channel of it, outside the gradient (no zero
        # gradient joins the map's real ones). In a bfloat16 graph (gluon_ssd.precision)
        # slice_axis is a float32 operator, so MultiBoxPrior (no bfloat16 kernel) gets float32;
        # the cast before it copies the whole map (< 1 % of a step).
        feat = F.BlockGrad(F.slice_axis(feat, axis=1, begin=0, end=1))
        # MultiBoxPrior works in 0-1 units: sizes relative to the image height, steps per axis.
        corners_rel = F.contrib.MultiBoxPrior(
            feat, sizes=[s / height for s in self._sizes], ratios=self._ratios,
            steps=(step_y / height, step_x / width), offsets=self._offsets, clip=False)
        cx, cy, w, h = F.split(corner_to_center(F, corners_rel), axis=-1, num_outputs=4)
        # MultiBoxPrior multiplies every width by (feature h / feature w) so that boxes stay
        # square on a non-square map; GluonCV's widths do not depend on the map, so undo it.
        feat_hw = F.cast(F.slice_axis(F.shape_array(feat), axis=0, begin=2, end=4), 'float32')
        fh, fw = F.split(feat_hw, axis=0, num_outputs=2)
        w = F.broadcast_mul(w, F.reshape(fw / fh, (1, 1, 1)))
        cx, w = cx * width, w * height
        cy, h = cy * height, h * height
        if self._clip:
            cx, w = F.clip(cx, 0, width), F.clip(w, 0, width)
            cy, h = F.clip(cy, 0, height), F.clip(h, 0, height)
        return F.concat(cx, cy, w, h, dim=-1)

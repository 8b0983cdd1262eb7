"""SSD training / validation presets and the batchify that pads labels with -1.

Built on GluonCV's transform functions (``gluoncv.data.transforms.{image,bbox,experimental}``),
called in the same order and with the same random draws as GluonCV's ``SSDDefaultTrainTransform``
/ ``SSDDefaultValTransform``, so with equal seeds (``random``, ``numpy.random``) the outputs are
identical. ``SSDTrainTransform(photometric='paper' | 'none')`` is the exception: the same
geometric steps, the SSD paper's colour distortion (or none), in numpy on the uint8 image.
"""
import cv2
import mxnet as mx
import numpy as np
from gluoncv.data import batchify as gcv_batchify
from gluoncv.data.transforms import bbox as tbbox
from gluoncv.data.transforms import experimental
from gluoncv.data.transforms import image as timage

from gluon_ssd.data import augment
from gluon_ssd.model.backbones import IMAGENET_MEAN, IMAGENET_STD  # the one definition

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SSDTrainTransform", "SSDValTransform", "PadLabels",
           "batchify_fn", "detection_batchify", "target_batchify_fn"]

#: ``SSDTrainTransform(photometric=...)``: ``'gluoncv'`` GluonCV's colour distortion (its hue
#: turns by any angle), ``'paper'`` the SSD paper's (hue within +-18 degrees;
#: :func:`gluon_ssd.data.augment.photometric_matrix`), ``'none'`` no colour change.
PHOTOMETRIC = ('gluoncv', 'paper', 'none')


def _as_label(label):
    label = np.asarray(label, dtype=np.float32)
    if label.ndim != 2 or label.shape[1] < 5:
        if label.size == 0:
            return np.zeros((0, 6), np.float32)
        raise ValueError("label must be (M, 5+) [xmin, ymin, xmax, ymax, class_id, ...], got "
                         "shape %s" % (label.shape,))
    return label


def _drop_degenerate(label, min_size):
    w = label[:, 2] - label[:, 0]
    h = label[:, 3] - label[:, 1]
    return label[(w > min_size) & (h > min_size)]


def _normalize(img, mean, std):
    img = mx.nd.image.to_tensor(img)
    return mx.nd.image.normalize(img, mean=mean, std=std)


class SSDTrainTransform:
    """SSD training augmentation (paper / GluonCV ``SSDDefaultTrainTransform``).

    Steps: photometric distortion (brightness, contrast, saturation, hue) → with p=0.5 random
    expand (zoom out) up to ``max_expand``× filled with the mean colour → IoU-constrained random
    crop (zoom in; boxes clipped to the crop, boxes whose centre leaves it dropped) → resize to
    ``(width, height)`` with a random interpolation → horizontal flip with p=0.5 →
    ``to_tensor`` + ImageNet normalisation → boxes of size ``<= min_box_size`` px dropped.

    Parameters
    ----------
    width, height : int
        Network input size in pixels.
    anchors : mx.nd.NDArray, optional
        ``(1, N, 4)`` center/pixels anchors. If given, ``__call__`` returns SSD targets from
        :class:`gluon_ssd.target.SSDTargetGenerator` instead of the label (as GluonCV does).
    mean, std : 3-tuples
        Normalisation on the 0–1 scale (``mean * 255`` is the expand fill colour).
    iou_thresh, box_norm :
        Target generator options (only used with ``anchors``).
    max_expand : float
        Largest zoom-out ratio (4 as the paper; 1 disables expansion).
    min_box_size : float
        Boxes whose width or height at network size is ``<= min_box_size`` px are dropped
        (default 0: only degenerate ones, identical to GluonCV).
    photometric : str
        One of :data:`PHOTOMETRIC`. ``'gluoncv'`` (default): GluonCV's steps, draws and pixels
        exactly. ``'paper'``: the SSD paper's colour distortion (hue within +-18 degrees,
        :func:`gluon_ssd.data.augment.photometric_matrix`) applied to the network-size image
        after the geometric steps, the whole chain in numpy/OpenCV on the uint8 image (the
        same geometric draws as ``'gluoncv'``); ``'none'``: the same without colour changes.

    Call
    ----
    ``(img (H, W, 3) uint8 NDArray, label (M, 5+) [xmin, ymin, xmax, ymax, class_id, ...] pixels)``
    → ``(img (3, height, width) float32 normalised, label (M', 5+) float32 pixels at network
    size)``; with ``anchors``: ``(img, cls_targets (N,) float32 (0 = background),
    box_targets (N, 4) float32 encoded)``.
    """

    def __init__(self, width, height, anchors=None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 iou_thresh=0.5, box_norm=(0.1, 0.1, 0.2, 0.2), max_expand=4, min_box_size=0.0,
                 photometric='gluoncv'):
        if photometric not in PHOTOMETRIC:
            raise ValueError(f"photometric={photometric!r}: expected one of {PHOTOMETRIC}")
        self._photometric = photometric
        self._width, self._height = int(width), int(height)
        self._anchors = anchors
        self._mean, self._std = tuple(mean), tuple(std)
        self._iou_thresh = iou_thresh
        self._box_norm = tuple(box_norm)
        self._max_expand = max_expand
        self._min_box_size = min_box_size
        self._target_generator = None

    def _targets(self, label):
        if self._target_generator is None:
            from gluon_ssd.target import SSDTargetGenerator  # lazy: only this path needs it
            self._target_generator = SSDTargetGenerator(
                iou_thresh=self._iou_thresh, stds=self._box_norm, negative_mining_ratio=-1)
        if label.shape[0] == 0:  # one padding row: "no object"
            label = -np.ones((1, label.shape[1]), np.float32)
        gt_boxes = mx.nd.array(label[np.newaxis, :, :4])
        gt_ids = mx.nd.array(label[np.newaxis, :, 4:5])
        # the generator reads only the shape of cls_preds: a (1, N, 1) placeholder is enough
        placeholder = mx.nd.zeros((1, self._anchors.shape[1], 1))
        cls_targets, box_targets, _ = self._target_generator(self._anchors, placeholder,
                                                             gt_boxes, gt_ids)
        return cls_targets[0], box_targets[0]

    def __call__(self, src, label):
        """Augment one sample; see the class docstring for shapes."""
        label = _as_label(label)
        if self._photometric == 'gluoncv':
            img, bbox = self._geometry(experimental.image.random_color_distort(src), label)
            return self._finish(_normalize(img, self._mean, self._std), bbox, label.shape[1])
        # the other modes: the same geometric steps and draws on the uint8 numpy image, then the
        # colour distortion of the network-size image (every colour step is linear per pixel, so
        # it commutes with the crop and the linear resize interpolations; GluonCV distorts the
        # full-size float image first)
        img = src.asnumpy() if isinstance(src, mx.nd.NDArray) else np.asarray(src)
        img, bbox = self._geometry(img, label)
        colour = augment.photometric_matrix() if self._photometric == 'paper' else \
            (np.eye(3), np.zeros(3))
        img = augment.apply_photometric(img, *colour, mean=self._mean, std=self._std)
        return self._finish(mx.nd.array(img.transpose(2, 0, 1)), bbox, label.shape[1])

    def _geometry(self, img, label):
        """Zoom out, crop, resize, flip: ``(img (H, W, 3), label) -> (img (height, width, 3),
        boxes)``, with GluonCV's functions on an NDArray or OpenCV on a numpy image (the same
        random draws either way)."""
        if np.random.uniform(0, 1) > 0.5 and self._max_expand > 1:
            img, expand = augment.random_expand(img, max_ratio=self._max_expand,
                                                fill=[m * 255 for m in self._mean])
            bbox = tbbox.translate(label, x_offset=expand[0], y_offset=expand[1])
        else:
            bbox = label
        h, w, _ = img.shape
        bbox, (x0, y0, cw, ch) = augment.random_crop_with_constraints(bbox, (w, h))
        # interpolation codes 0-4 are OpenCV's (nearest, linear, cubic, area, lanczos), as in
        # mx.image.imresize
        interp = np.random.randint(0, 5)
        if isinstance(img, np.ndarray):
            img = cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (self._width, self._height),
                             interpolation=int(interp))
        else:
            img = timage.imresize(mx.image.fixed_crop(img, x0, y0, cw, ch), self._width,
                                  self._height, interp=interp)
        bbox = tbbox.resize(bbox, (cw, ch), (self._width, self._height))
        img, flip_x = augment.random_flip_x(img, px=0.5)
        return img, tbbox.flip(bbox, (self._width, self._height), flip_x=flip_x)

    def _finish(self, img, bbox, columns):
        bbox = _drop_degenerate(np.asarray(bbox, np.float32).reshape(-1, columns),
                                self._min_box_size)
        if self._anchors is None:
            return img, bbox.astype(np.float32)
        cls_targets, box_targets = self._targets(bbox)
        return img, cls_targets, box_targets


class SSDValTransform:
    """Validation preset: resize to ``(width, height)`` (bicubic-area, GluonCV ``interp=9``) and
    normalise.

    Call: ``(img (H, W, 3) uint8 NDArray, label (M, 5+) pixels) -> (img (3, height, width)
    float32 normalised, label (M, 5+) float32 pixels at network size)``.
    """

    def __init__(self, width, height, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self._width, self._height = int(width), int(height)
        self._mean, self._std = tuple(mean), tuple(std)

    def __call__(self, src, label):
        """Resize + normalise one sample; see the class docstring for shapes."""
        label = _as_label(label)
        h, w, _ = src.shape
        img = timage.imresize(src, self._width, self._height, interp=9)
        bbox = tbbox.resize(label, in_size=(w, h), out_size=(self._width, self._height))
        return _normalize(img, self._mean, self._std), np.asarray(bbox, np.float32)


class PadLabels:
    """Batchify labels of different lengths: ``list of (M_i, K) -> NDArray (B, max(1, max M_i), K)``
    float32, rows past ``M_i`` filled with -1 (at least one row, so an all-empty batch still has
    the shape the target generator expects)."""

    def __call__(self, labels):
        labels = [np.asarray(lb.asnumpy() if isinstance(lb, mx.nd.NDArray) else lb, np.float32)
                  for lb in labels]
        width = max((lb.shape[1] for lb in labels if lb.ndim == 2 and lb.shape[1]), default=6)
        rows = max(1, max(lb.shape[0] if lb.size else 0 for lb in labels))
        out = -np.ones((len(labels), rows, width), np.float32)
        for i, lb in enumerate(labels):
            if lb.size:
                out[i, :lb.shape[0], :lb.shape[1]] = lb
        return mx.nd.array(out, dtype=np.float32)


def batchify_fn():
    """DataLoader ``batchify_fn`` for ``(img, label)`` samples: images stacked
    ``(B, 3, H, W)``, labels padded with -1 ``(B, M_max, K)``."""
    return gcv_batchify.Tuple(gcv_batchify.Stack(), PadLabels())


def target_batchify_fn():
    """``batchify_fn`` for ``(img, cls_targets, box_targets)`` samples (``SSDTrainTransform``
    with ``anchors``): ``(B, 3, H, W)``, ``(B, N)``, ``(B, N, 4)``."""
    return gcv_batchify.Tuple(gcv_batchify.Stack(), gcv_batchify.Stack(), gcv_batchify.Stack())


_DETECTION_BATCHIFY = gcv_batchify.Tuple(gcv_batchify.Stack(), PadLabels())


def detection_batchify(samples):
    """Ready-made ``batchify_fn`` (same as ``batchify_fn()``): ``[(img (3, H, W), label (M_i, K))]
    -> (images (B, 3, H, W), labels (B, max(1, max M_i), K) padded with -1)``."""
    return _DETECTION_BATCHIFY(samples)

"""Detection metrics: VOC07 11-point / VOC area mAP, COCO AP, and d2l's class error / bbox MAE.

Every detection evaluator has the same small interface, so the engine never needs to know which
one it holds::

    metric = make_metric('voc07', classes)          # or 'voc', 'coco'
    metric.update(pred_bboxes, pred_labels, pred_scores, gt_bboxes, gt_labels, gt_difficults)
    names, values = metric.get()                    # last entry is always the headline 'mAP'
    metric.summary()                                # JSON-ready dict, {'map': ..., 'ap': {...}}

Inputs of ``update`` (NDArray, numpy array, or a list of them, one per device):

- ``pred_bboxes`` (B, K, 4) corner ``(xmin, ymin, xmax, ymax)``, pixels of the network input;
- ``pred_labels`` (B, K) or (B, K, 1) class ids ``0..C-1``, ``-1`` = padding row (ignored);
- ``pred_scores`` (B, K) or (B, K, 1) confidences;
- ``gt_bboxes`` (B, M, 4) corner pixels, ``gt_labels`` (B, M[, 1]) with ``-1`` padding,
  ``gt_difficults`` (B, M[, 1]) 0/1 or ``None``.

VOC metrics are GluonCV's ``VOCMApMetric`` / ``VOC07MApMetric`` underneath (identical numbers);
this module only adds input checking and the uniform interface. COCO metrics run pycocotools'
``COCOeval`` through our own wrapper.
"""
import contextlib
import io
import math

import mxnet as mx
import numpy as np

__all__ = ['make_metric', 'VOCEvaluator', 'COCOEvaluator', 'cls_eval', 'bbox_eval',
           'D2LMetric', 'METRIC_KINDS', 'check_batch', 'corner_to_coco_xywh']

METRIC_KINDS = ('voc07', 'voc', 'coco')
COCO_STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')
#: The 12 numbers of ``COCOeval.summarize()``: AP@[.50:.95], AP@.50, AP@.75, AP small / medium /
#: large, AR with 1 / 10 / 100 detections per image, AR small / medium / large (100 detections).
COCO_STATS_12 = COCO_STAT_NAMES + ('AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _to_numpy(x, name):
    """NDArray / numpy / list of either (one per device, concatenated on axis 0) -> numpy."""
    if isinstance(x, (list, tuple)):
        if not x:
            raise ValueError(f"{name} is an empty list")
        return np.concatenate([_to_numpy(a, name) for a in x], axis=0)
    if isinstance(x, mx.nd.NDArray):
        return x.asnumpy()
    return np.asarray(x)


def _as_column(x, name, batch, rows):
    """(B, R) or (B, R, 1) -> (B, R) float64; checks B and R."""
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 2 or x.shape != (batch, rows):
        raise ValueError(f"{name} must have shape ({batch}, {rows}) or ({batch}, {rows}, 1) to "
                         f"match the boxes, got {x.shape}")
    return x.astype(np.float64)


def _as_boxes(x, name):
    """(B, R, 4) corner boxes -> float64 numpy, with a clear error otherwise."""
    if x.ndim != 3 or x.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (B, R, 4) corner boxes, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return x.astype(np.float64)


def check_batch(pred_bboxes, pred_labels, pred_scores, gt_bboxes=None, gt_labels=None,
                gt_difficults=None, require_gt=True):
    """Convert and validate one ``update`` batch.

    Returns numpy arrays ``(pred_bboxes (B,K,4), pred_labels (B,K), pred_scores (B,K),
    gt_bboxes (B,M,4) | None, gt_labels (B,M) | None, gt_difficults (B,M) | None)``, float64.
    Raises ``ValueError`` naming the offending argument for wrong shapes, mismatched batch sizes
    and NaN scores/coordinates (padding rows, label < 0, are exempt from the NaN check on scores).
    """
    pb = _as_boxes(_to_numpy(pred_bboxes, 'pred_bboxes'), 'pred_bboxes')
    batch, k = pb.shape[:2]
    pl = _as_column(_to_numpy(pred_labels, 'pred_labels'), 'pred_labels', batch, k)
    ps = _as_column(_to_numpy(pred_scores, 'pred_scores'), 'pred_scores', batch, k)
    if np.isnan(pl).any():
        raise ValueError("pred_labels contains NaN")
    if np.isnan(ps[pl >= 0]).any():
        raise ValueError("pred_scores contains NaN for non-padding detections")
    if gt_bboxes is None or gt_labels is None:
        if require_gt:
            raise ValueError("gt_bboxes and gt_labels are required by this metric")
        return pb, pl, ps, None, None, None
    gb = _as_boxes(_to_numpy(gt_bboxes, 'gt_bboxes'), 'gt_bboxes')
    if gb.shape[0] != batch:
        raise ValueError(f"batch size mismatch: pred_bboxes has {batch} images, "
                         f"gt_bboxes has {gb.shape[0]}")
    m = gb.shape[1]
    gl = _as_column(_to_numpy(gt_labels, 'gt_labels'), 'gt_labels', batch, m)
    if np.isnan(gl).any():
        raise ValueError("gt_labels contains NaN")
    gd = None
    if gt_difficults is not None:
        gd = _as_column(_to_numpy(gt_difficults, 'gt_difficults'), 'gt_difficults', batch, m)
    return pb, pl, ps, gb, gl, gd


def _check_label_range(labels, num_class, name):
    """Labels must be -1 (padding) or 0..num_class-1."""
    valid = labels[labels >= 0]
    if valid.size and (valid.max() >= num_class or np.any(valid != np.round(valid))):
        raise ValueError(f"{name} must be integers in [0, {num_class - 1}] or -1 for padding, "
                         f"got max {valid.max()}")
    bad = labels[(labels < 0) & (labels != -1)]
    if bad.size:
        raise ValueError(f"{name} has negative values other than -1 padding: {np.unique(bad)}")


def _nan_to_none(v):
    """float NaN -> None so the value is valid JSON."""
    v = float(v)
    return None if math.isnan(v) else v


def _check_classes(classes):
    if not isinstance(classes, (list, tuple)) or not classes:
        raise ValueError(f"classes must be a non-empty list of class names, got {classes!r}")
    for c in classes:
        if not isinstance(c, str):
            raise ValueError(f"class names must be str, got {c!r}")
    return list(classes)


# ----------------------------------------------------------------------------------------------
# VOC
# ----------------------------------------------------------------------------------------------
class VOCEvaluator:
    """Pascal VOC mAP at one IoU threshold (GluonCV's metric underneath, same numbers).

    Parameters
    ----------
    classes : list of str
        Foreground class names; class id ``i`` is ``classes[i]``.
    kind : {'voc07', 'voc'}
        ``'voc07'``: 11-point interpolated AP (``VOC07MApMetric``); ``'voc'``: area under the
        monotone precision envelope (VOC2010+, ``VOCMApMetric``).
    iou_thresh : float
        IoU for a true positive. Boxes are treated as integer pixel boxes (+1 on xmax/ymax),
        as VOC's devkit and GluonCV do. Detections matched to a *difficult* ground truth are
        ignored, and difficult boxes do not count as positives.
    """

    def __init__(self, classes, kind='voc07', iou_thresh=0.5):
        from gluoncv.utils.metrics.voc_detection import VOC07MApMetric, VOCMApMetric
        self.classes = _check_classes(classes)
        if kind not in ('voc07', 'voc'):
            raise ValueError(f"VOCEvaluator kind must be 'voc07' or 'voc', got {kind!r}")
        self.kind = kind
        cls = VOC07MApMetric if kind == 'voc07' else VOCMApMetric
        self._metric = cls(iou_thresh=iou_thresh, class_names=self.classes)
        self.num_images = 0

    def reset(self):
        """Forget all detections and ground truth seen so far."""
        self._metric.reset()
        self.num_images = 0

    def update(self, pred_bboxes, pred_labels, pred_scores, gt_bboxes=None, gt_labels=None,
               gt_difficults=None):
        """Add one batch. Shapes and formats: see the module docstring (gt is required)."""
        pb, pl, ps, gb, gl, gd = check_batch(pred_bboxes, pred_labels, pred_scores,
                                             gt_bboxes, gt_labels, gt_difficults)
        _check_label_range(pl, len(self.classes), 'pred_labels')
        _check_label_range(gl, len(self.classes), 'gt_labels')
        if gd is None:
            gd = np.zeros_like(gl)
        self._metric.update(pb, pl, ps, gb, gl, gd)
        self.num_images += pb.shape[0]

    def get(self):
        """``(names, values)``: one AP per class, then ``'mAP'`` (NaN-mean over classes), as
        GluonCV. A class without (non-difficult) ground truth has AP NaN and is left out of mAP;
        before any update every value is NaN."""
        if not self._metric._n_pos:   # nothing seen at all: GluonCV would crash on max()
            return self.classes + ['mAP'], [float('nan')] * (len(self.classes) + 1)
        names, values = self._metric.get()
        return list(names), [float(v) for v in values]

    def summary(self):
        """JSON-ready ``{'map': float|None, 'ap': {class: float|None}, 'kind', 'num_images'}``."""
        names, values = self.get()
        return {'kind': self.kind, 'num_images': self.num_images,
                'map': _nan_to_none(values[-1]),
                'ap': {n: _nan_to_none(v) for n, v in zip(names[:-1], values[:-1])}}


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------
def corner_to_coco_xywh(boxes, pixel_offset=1.0):
    """(N, 4) corner pixels -> (N, 4) COCO ``[x, y, w, h]`` with ``w = xmax - xmin + offset``.

    ``pixel_offset=1`` is GluonCV's convention (its COCO loader stores ``xmax = x + w - 1``),
    so a detection equal to a loaded ground-truth box maps back to the exact JSON box.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = boxes.copy()
    out[:, 2:4] = boxes[:, 2:4] - boxes[:, 0:2] + pixel_offset
    return out


class COCOEvaluator:
    """COCO bbox AP (IoU .50:.05:.95), AP50, AP75, APs/APm/APl via pycocotools ``COCOeval``.

    Two modes:

    - **in-memory** (``coco_gt=None``): the ground truth passed to ``update`` becomes a COCO
      dataset built in memory (one image per row of the batch, category id = class id + 1,
      ``area = w * h``, difficult boxes become ``iscrowd=1``, COCO's own ignore regions).
    - **real COCO** (``coco_gt`` = a ``pycocotools.coco.COCO``): ground truth comes from it;
      ``update`` consumes ``img_ids`` in order (default ``sorted(coco_gt.getImgIds())``, GluonCV's
      order) or takes ``img_ids=`` explicitly; ``data_shape=(H, W)`` rescales boxes from the
      network input to each image's original size. ``gt_*`` arguments of ``update`` are ignored.

    Parameters
    ----------
    classes : list of str
        Foreground class names (class id ``i`` -> ``classes[i]``).
    coco_gt : pycocotools.coco.COCO, optional
    img_ids : list of int, optional
    cat_ids : list of int, optional
        JSON category id of each class id; default ``sorted(coco_gt.getCatIds())`` (GluonCV's
        contiguous mapping) or ``1..C`` in memory.
    data_shape : (int, int), optional
        Network input (H, W) for rescaling to original image size (real-COCO mode only).
    score_thresh : float
        Detections scoring below this are dropped (GluonCV's ``COCODetectionMetric`` uses 0.05).
    pixel_offset : float
        ``w = xmax - xmin + pixel_offset`` when converting to COCO boxes (1 = GluonCV).
    """

    def __init__(self, classes, coco_gt=None, img_ids=None, cat_ids=None, data_shape=None,
                 score_thresh=0.05, pixel_offset=1.0):
        self.classes = _check_classes(classes)
        self.coco_gt = coco_gt
        self.score_thresh = float(score_thresh)
        self.pixel_offset = float(pixel_offset)
        if data_shape is not None:
            if coco_gt is None:
                raise ValueError("data_shape is only used with coco_gt (real COCO evaluation)")
            if len(data_shape) != 2:
                raise ValueError(f"data_shape must be (height, width), got {data_shape!r}")
        self.data_shape = data_shape
        if coco_gt is not None:
            self._img_ids = list(img_ids) if img_ids is not None else sorted(coco_gt.getImgIds())
            cat_ids = list(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
        else:
            if img_ids is not None:
                raise ValueError("img_ids needs coco_gt; in-memory mode numbers images itself")
            cat_ids = list(cat_ids) if cat_ids is not None else list(range(1, len(classes) + 1))
        if len(cat_ids) != len(self.classes):
            raise ValueError(f"cat_ids has {len(cat_ids)} entries for {len(self.classes)} classes")
        self.cat_ids = cat_ids
        self._coco_eval = None
        self.reset()

    def reset(self):
        """Forget all detections (and in-memory ground truth)."""
        self._dets = []
        self._gt_images = []
        self._gt_anns = []
        self._cursor = 0
        self._coco_eval = None
        self.summary_text = ''

    @property
    def num_images(self):
        """Number of images given to ``update`` so far."""
        return self._cursor

    # -- update ------------------------------------------------------------------------------
    def _next_img_ids(self, batch, img_ids):
        if self.coco_gt is None:
            ids = list(range(self._cursor + 1, self._cursor + batch + 1))
        elif img_ids is not None:
            ids = [int(i) for i in _to_numpy(img_ids, 'img_ids').reshape(-1)]
            if len(ids) != batch:
                raise ValueError(f"img_ids has {len(ids)} ids for a batch of {batch} images")
        else:
            if self._cursor + batch > len(self._img_ids):
                raise ValueError(f"more images given to update ({self._cursor + batch}) than "
                                 f"img_ids ({len(self._img_ids)})")
            ids = self._img_ids[self._cursor:self._cursor + batch]
        self._cursor += batch
        return ids

    def _scale(self, img_id):
        """(sx, sy) from network-input pixels to original pixels for one image."""
        if self.data_shape is None:
            return 1.0, 1.0
        entry = self.coco_gt.loadImgs(img_id)[0]
        return entry['width'] / self.data_shape[1], entry['height'] / self.data_shape[0]

    def _add_dets(self, img_id, boxes, labels, scores):
        keep = (labels >= 0) & (scores >= self.score_thresh)
        boxes, labels, scores = boxes[keep].copy(), labels[keep].astype(int), scores[keep]
        sx, sy = self._scale(img_id)
        boxes[:, [0, 2]] *= sx
        boxes[:, [1, 3]] *= sy
        for box, lab, sc in zip(corner_to_coco_xywh(boxes, self.pixel_offset), labels, scores):
            self._dets.append({'image_id': img_id, 'category_id': self.cat_ids[lab],
                               'bbox': [float(v) for v in box], 'score': float(sc)})

    def _add_gt(self, img_id, boxes, labels, difficults):
        self._gt_images.append({'id': img_id})
        keep = labels >= 0
        boxes, labels = boxes[keep], labels[keep].astype(int)
        diff = difficults[keep] if difficults is not None else np.zeros(len(labels))
        for box, lab, d in zip(corner_to_coco_xywh(boxes, self.pixel_offset), labels, diff):
            self._gt_anns.append({'id': len(self._gt_anns) + 1, 'image_id': img_id,
                                  'category_id': self.cat_ids[lab],
                                  'bbox': [float(v) for v in box],
                                  'area': float(box[2] * box[3]), 'iscrowd': int(d > 0)})

    def update(self, pred_bboxes, pred_labels, pred_scores, gt_bboxes=None, gt_labels=None,
               gt_difficults=None, img_ids=None):
        """Add one batch (shapes: module docstring). Ground truth is required in memory mode."""
        pb, pl, ps, gb, gl, gd = check_batch(pred_bboxes, pred_labels, pred_scores, gt_bboxes,
                                             gt_labels, gt_difficults,
                                             require_gt=self.coco_gt is None)
        _check_label_range(pl, len(self.classes), 'pred_labels')
        if self.coco_gt is None:
            _check_label_range(gl, len(self.classes), 'gt_labels')
        ids = self._next_img_ids(pb.shape[0], img_ids)
        for i, img_id in enumerate(ids):
            self._add_dets(img_id, pb[i], pl[i], ps[i])
            if self.coco_gt is None:
                self._add_gt(img_id, gb[i], gl[i], None if gd is None else gd[i])
        self._coco_eval = None

    # -- evaluation --------------------------------------------------------------------------
    def _gt_object(self):
        from pycocotools.coco import COCO
        if self.coco_gt is not None:
            return self.coco_gt
        gt = COCO()
        gt.dataset = {'images': list(self._gt_images), 'annotations': list(self._gt_anns),
                      'categories': [{'id': c, 'name': n}
                                     for c, n in zip(self.cat_ids, self.classes)]}
        with contextlib.redirect_stdout(io.StringIO()):
            gt.createIndex()
        return gt

    def _dets_object(self, gt):
        """Detections as a COCO results object (built directly, so no detections is fine)."""
        from pycocotools.coco import COCO
        res = COCO()
        anns = []
        for i, d in enumerate(self._dets):
            x, y, w, h = d['bbox']
            anns.append(dict(d, id=i + 1, area=w * h, iscrowd=0))
        res.dataset = {'images': list(gt.dataset['images']), 'annotations': anns,
                       'categories': list(gt.dataset['categories'])}
        with contextlib.redirect_stdout(io.StringIO()):
            res.createIndex()
        return res

    def evaluate(self):
        """Run ``COCOeval`` (bbox) over what was seen; returns the evaluated ``COCOeval``."""
        from pycocotools.cocoeval import COCOeval
        if self._cursor == 0:
            raise RuntimeError("COCOEvaluator.evaluate() called before any update()")
        gt = self._gt_object()
        dets = self._dets_object(gt)
        seen = [im['id'] for im in self._gt_images] if self.coco_gt is None else \
            self._seen_ids()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            ev = COCOeval(gt, dets, 'bbox')
            ev.params.imgIds = seen
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        self.summary_text = out.getvalue().strip()
        self._coco_eval = ev
        return ev

    def _seen_ids(self):
        """Image ids evaluated in real-COCO mode (the consumed prefix, plus explicit ids)."""
        ids = {d['image_id'] for d in self._dets}
        ids.update(self._img_ids[:self._cursor])
        return sorted(ids)

    def _per_class_ap(self, ev):
        """AP@[.50:.95], all areas, 100 dets, per class id (NaN if the class has no gt)."""
        prec = ev.eval['precision'][:, :, :, 0, -1]       # (T, R, K)
        order = list(ev.params.catIds)
        aps = []
        for cat in self.cat_ids:
            p = prec[:, :, order.index(cat)]
            p = p[p > -1]
            aps.append(float(np.mean(p)) if p.size else float('nan'))
        return aps

    def get(self):
        """``(names, values)``: AP, AP50, AP75, APs, APm, APl, one AP per class, then ``'mAP'``
        (= AP@[.50:.95]). Values are fractions in [0, 1]; NaN where COCO reports -1."""
        ev = self._coco_eval or self.evaluate()
        stats = [float('nan') if s < 0 else float(s) for s in ev.stats[:6]]
        names = list(COCO_STAT_NAMES) + self.classes + ['mAP']
        return names, stats + self._per_class_ap(ev) + [stats[0]]

    def summary(self):
        """JSON-ready dict: ``map`` (AP@[.50:.95]), the six AP stats at the top level, ``stats``
        (all 12 numbers COCOeval prints, :data:`COCO_STATS_12` order), ``ap`` per class."""
        names, values = self.get()
        out = {'kind': 'coco', 'num_images': self.num_images, 'map': _nan_to_none(values[-1])}
        out.update({n: _nan_to_none(v) for n, v in zip(names[:6], values[:6])})
        out['stats'] = {n: _nan_to_none(float('nan') if s < 0 else float(s))
                        for n, s in zip(COCO_STATS_12, self._coco_eval.stats)}
        out['ap'] = {n: _nan_to_none(v) for n, v in zip(names[6:-1], values[6:-1])}
        return out


def make_metric(kind, classes, **kwargs):
    """Build an evaluator: ``'voc07'`` / ``'voc'`` -> :class:`VOCEvaluator`, ``'coco'`` ->
    :class:`COCOEvaluator` (``kwargs`` forwarded, e.g. ``iou_thresh`` or ``coco_gt``)."""
    if kind in ('voc07', 'voc'):
        return VOCEvaluator(classes, kind=kind, **kwargs)
    if kind == 'coco':
        return COCOEvaluator(classes, **kwargs)
    raise ValueError(f"unknown metric kind {kind!r}; choose one of {METRIC_KINDS}")


# ----------------------------------------------------------------------------------------------
# d2l training metrics
# ----------------------------------------------------------------------------------------------
def cls_eval(cls_preds, cls_targets):
    """Number of anchors whose argmax class equals the target (d2l's ``cls_eval``).

    ``cls_preds`` (B, N, C+1) logits/probabilities (index 0 = background), ``cls_targets`` (B, N)
    class targets (0 = background). Returns a Python float count of **correct** predictions;
    class error = ``1 - correct / cls_targets.size``.
    """
    p, t = _to_numpy(cls_preds, 'cls_preds'), _to_numpy(cls_targets, 'cls_targets')
    if p.shape[:-1] != t.shape:
        raise ValueError(f"cls_preds {p.shape} must be cls_targets {t.shape} + (C+1,)")
    return float((p.argmax(axis=-1) == t).sum())


def bbox_eval(box_preds, box_targets, box_masks):
    """``sum(|(box_targets - box_preds) * box_masks|)`` as a Python float (d2l's ``bbox_eval``).

    All three have the same shape, e.g. (B, N*4) or (B, N, 4), encoded offsets. bbox MAE =
    this sum / ``box_targets.size``.
    """
    p = _to_numpy(box_preds, 'box_preds')
    t = _to_numpy(box_targets, 'box_targets')
    m = _to_numpy(box_masks, 'box_masks')
    if not p.shape == t.shape == m.shape:
        raise ValueError(f"box_preds {p.shape}, box_targets {t.shape} and box_masks {m.shape} "
                         "must have the same shape")
    return float(np.abs((t - p) * m).sum())


class D2LMetric:
    """Accumulates d2l's class error and bbox MAE over batches.

    ``update`` keeps NDArray sums on the device (no host sync); ``get`` syncs once and returns
    ``(['class_err', 'bbox_mae'], [1 - correct/total, abs_sum/num_elements])``.
    Shapes as :func:`cls_eval` / :func:`bbox_eval`.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        """Zero the sums."""
        self._correct, self._n_cls, self._abs, self._n_box = 0.0, 0, 0.0, 0

    def update(self, cls_preds, cls_targets, box_preds, box_targets, box_masks):
        """Add one batch (NDArrays or numpy arrays)."""
        if cls_preds.shape[:-1] != cls_targets.shape:
            raise ValueError(f"cls_preds {cls_preds.shape} must be cls_targets "
                             f"{cls_targets.shape} + (C+1,)")
        if not box_preds.shape == box_targets.shape == box_masks.shape:
            raise ValueError(f"box_preds {box_preds.shape}, box_targets {box_targets.shape} and "
                             f"box_masks {box_masks.shape} must have the same shape")
        if isinstance(cls_preds, mx.nd.NDArray):
            correct = (cls_preds.argmax(axis=-1) == cls_targets.astype('float32')).sum()
            abs_sum = mx.nd.abs((box_targets - box_preds) * box_masks).sum()
        else:
            correct = cls_eval(cls_preds, cls_targets)
            abs_sum = bbox_eval(box_preds, box_targets, box_masks)
        self._correct = self._correct + correct
        self._abs = self._abs + abs_sum
        self._n_cls += int(np.prod(cls_targets.shape))
        self._n_box += int(np.prod(box_targets.shape))

    def get(self):
        """``(['class_err', 'bbox_mae'], [float, float])``; NaN before any update."""
        if self._n_cls == 0:
            return ['class_err', 'bbox_mae'], [float('nan'), float('nan')]
        correct = float(_to_numpy(self._correct, 'correct').reshape(-1)[0])
        abs_sum = float(_to_numpy(self._abs, 'abs').reshape(-1)[0])
        return ['class_err', 'bbox_mae'], [1.0 - correct / self._n_cls, abs_sum / self._n_box]

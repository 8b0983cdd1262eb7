"""The one evaluation loop: a detector over a dataset split, VOC07 / VOC area / COCO metrics.

Used by train-time validation (:mod:`gluon_ssd.engine`), ``eval_ssd.py`` / ``gluon_ssd.eval``
and the ablation runner. How each metric sees the boxes:

* ``voc07`` / ``voc``: detections and ground truth in pixels of the network input (the input
  transform resizes both), as during GluonCV's training and evaluation;
* ``coco``: in **original image pixels**, unclipped. On a COCO dataset its annotation file is
  the ground truth (crowd regions included) and the metric maps the detections to each image's
  size in that file (``COCOEvaluator(data_shape=...)``; they were mapped twice before issue 13);
  on any other dataset a COCO ground truth is built from the labels (difficult boxes become
  ``iscrowd`` ignore regions) and the detections are mapped by
  :func:`~gluon_ssd.model.io.map_boxes_to_original`. The summary carries all 12 COCOeval
  numbers.

Detections with a NaN/inf box or score (a diverged model) are ignored by the one policy of
:func:`~gluon_ssd.model.io.finite_detections` and counted in ``non_finite_detections``.

Bad images (the policy of :mod:`gluon_ssd.data._validate`) never stop an evaluation: an image
that must be skipped is left out of every metric (its ground truth too, also the COCO
annotation file's), a damaged but decodable one is evaluated; every summary counts them in
``skipped_images`` / ``repaired_images`` and one :class:`~gluon_ssd.data.DatasetWarning` line
names the first file of each kind. ``strict=True`` (``--strict-data``) raises
:class:`~gluon_ssd.data.DatasetError` naming the file at the first one instead.
"""
import warnings

import numpy as np

from gluon_ssd.data._validate import SKIPPED, DatasetWarning, ImageDecodeError, load_item
from gluon_ssd.data.build import Item, LoadProblems, val_loader
from gluon_ssd.model.io import finite_detections, map_boxes_to_original

__all__ = ['EvalItems', 'Evaluator', 'evaluate']


class EvalItems:
    """Items ``(image (3,S,S) normalised, label (M,6) input pixels, label (M,6) original pixels,
    size [W, H] float32)`` of a raw dataset through the model's ``transform``, as
    :class:`~gluon_ssd.data.build.Item` s carrying what was repaired or skipped (``events``).

    An image that must be skipped gives a stand-in item (zeros ``(3, S, S)`` with ``data_shape``
    S, no boxes, size ``[0, 0]``) with a ``('skipped', message)`` event; without ``data_shape``
    the :class:`~gluon_ssd.data._validate.ImageDecodeError` is raised.
    """

    def __init__(self, dataset, transform, data_shape=None):
        self._dataset, self._transform, self._data_shape = dataset, transform, data_shape

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        try:
            image, label, events = load_item(self._dataset, index)
        except ImageDecodeError as err:
            if self._data_shape is None:
                raise
            import mxnet as mx
            empty = np.zeros((0, 6), np.float32)
            size = int(self._data_shape)
            return Item((mx.nd.zeros((3, size, size)), empty, empty,
                         np.zeros(2, np.float32)), ((SKIPPED, str(err)),))
        label = np.asarray(label, np.float32).reshape(-1, 6) if np.size(label) else \
            np.zeros((0, 6), np.float32)
        x, net_label = self._transform(image, label)
        size = np.array([image.shape[1], image.shape[0]], np.float32)
        return Item((x, np.asarray(net_label, np.float32).reshape(-1, label.shape[1]), label,
                     size), events)


def _uses_coco_file(kind, dataset):
    return kind == 'coco' and getattr(dataset, 'coco', None) is not None


def _make_metric(kind, dataset, classes, data_shape, img_ids=None):
    """The evaluator of ``kind``; COCO uses the annotation file on COCO datasets, evaluated on
    ``img_ids`` (the images evaluated, in order)."""
    from gluon_ssd.metrics import make_metric
    if _uses_coco_file(kind, dataset):
        return make_metric('coco', classes, coco_gt=dataset.coco, img_ids=list(img_ids),
                           cat_ids=list(dataset.contiguous_id_to_json),
                           data_shape=(data_shape, data_shape))
    return make_metric(kind, classes)


class Evaluator:
    """Evaluate detectors on one dataset split; the loader is built once and reused.

    Parameters
    ----------
    dataset : raw items ``(image (H,W,3) uint8, label (M,6) original pixels)``.
    transform : the model's input transform (:func:`gluon_ssd.model.io.input_transform`).
    data_shape : S, the square network input in pixels.
    classes : class names of the model (ids ``0..C-1``).
    kinds : subset of ``('voc07', 'voc', 'coco')``.

    strict : ``True`` (``--strict-data``): the first skipped or repaired image raises
        :class:`~gluon_ssd.data.DatasetError` naming it.

    Calling it with ``(net, ctx)`` (``net`` an SSD in inference mode taking ``(B, 3, S, S)``,
    ``ctx`` a list of contexts the batch is split over; ``strict`` overrides the constructor's)
    returns ``{kind: summary dict}`` (:meth:`gluon_ssd.metrics.VOCEvaluator.summary` /
    ``COCOEvaluator.summary``) with ``non_finite_detections``, ``skipped_images`` and
    ``repaired_images`` added. Skipped images are left out of every metric.
    """

    def __init__(self, dataset, transform, data_shape, classes, kinds=('voc07',), batch_size=8,
                 num_workers=0, strict=False):
        self.dataset, self.data_shape = dataset, int(data_shape)
        self.classes, self.kinds = list(classes), list(kinds)
        self.strict = strict
        self.loader = val_loader(EvalItems(dataset, transform, self.data_shape), batch_size,
                                 label_fields=(1, 2), num_workers=num_workers, width=4)

    def __call__(self, net, ctx, strict=None):
        import mxnet as mx
        from mxnet import gluon
        problems = LoadProblems(self.strict if strict is None else strict)
        # A metric fed from the COCO annotation file is told which images were evaluated, which
        # is known at the end: its batches are kept until then (detections only: small).
        metrics = {kind: _make_metric(kind, self.dataset, self.classes, self.data_shape)
                   for kind in self.kinds if not _uses_coco_file(kind, self.dataset)}
        deferred = {kind: [] for kind in self.kinds if _uses_coco_file(kind, self.dataset)}
        kept, start, dropped = [], 0, 0
        for batch in self.loader:
            data, net_label, orig_label, sizes = batch
            problems.add(batch)
            keep = ~batch.skipped if len(batch.events) == data.shape[0] else \
                np.ones(data.shape[0], bool)
            kept.extend(np.flatnonzero(keep) + start)
            start += data.shape[0]
            if not keep.any():
                continue
            net_label, orig_label, sizes = (a.asnumpy()[keep]
                                            for a in (net_label, orig_label, sizes))
            if not keep.all():
                data = data.take(mx.nd.array(np.flatnonzero(keep), dtype='int32'))
            parts = gluon.utils.split_and_load(data, ctx, even_split=False)
            outs = [net(x) for x in parts]
            ids, scores, bboxes = (np.concatenate([o[i].asnumpy() for o in outs], axis=0)
                                   for i in range(3))
            dropped += finite_detections(ids, scores, bboxes)
            for kind, metric in metrics.items():
                self._update(kind, metric.update, ids, scores, bboxes, net_label, orig_label,
                             sizes)
            for kind, stored in deferred.items():
                self._update(kind, lambda *a: stored.append(a), ids, scores, bboxes, net_label,
                             orig_label, sizes)
        if deferred and kept:
            img_ids = [self.dataset.image_ids[i] for i in kept]
            for kind, stored in deferred.items():
                metrics[kind] = _make_metric(kind, self.dataset, self.classes, self.data_shape,
                                             img_ids)
                for args in stored:
                    metrics[kind].update(*args)
        line = problems.summary('evaluation data')
        if line:
            warnings.warn(line, DatasetWarning, stacklevel=2)
        counts = problems.as_record()
        return {kind: dict(metrics[kind].summary() if kept else {'kind': kind, 'map': None,
                                                                  'num_images': 0},
                           non_finite_detections=dropped, **counts)
                for kind in self.kinds}

    def _update(self, kind, update, ids, scores, bboxes, net_label, orig_label, sizes):
        """Feed one batch to ``update`` (a metric's) in the coordinates ``kind`` uses: the
        metric reading the COCO annotation file takes input pixels and maps them to the file's
        image sizes itself (``data_shape``); the in-memory COCO metric takes original pixels."""
        if kind == 'coco' and _uses_coco_file(kind, self.dataset):
            boxes, label = bboxes, orig_label
        elif kind == 'coco':
            size = (self.data_shape, self.data_shape)
            boxes = np.stack([map_boxes_to_original(b, size, wh, clip=False)
                              for b, wh in zip(bboxes, sizes)]) if len(bboxes) else bboxes
            label = orig_label
        else:
            boxes, label = bboxes, net_label
        update(boxes, ids, scores, label[..., 0:4], label[..., 4], label[..., 5])


def evaluate(net, meta, dataset, kinds=('voc07',), batch_size=8, ctx=None, num_workers=0,
             strict=False):
    """One-shot :class:`Evaluator` of a loaded model (``net, meta`` from
    :func:`gluon_ssd.model.io.load_model`); returns ``{kind: summary dict}``."""
    import mxnet as mx
    from gluon_ssd.model.io import input_transform
    evaluator = Evaluator(dataset, input_transform(meta), meta['data_shape'], meta['classes'],
                          kinds, batch_size, num_workers, strict)
    return evaluator(net, ctx or [mx.cpu()])

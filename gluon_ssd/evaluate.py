"""The one evaluation loop: a detector over a dataset split, VOC07 / VOC area / COCO metrics.

Used by train-time validation (:mod:`gluon_ssd.engine`), ``eval_ssd.py`` / ``gluon_ssd.eval``
and the ablation runner. How each metric sees the boxes:

* ``voc07`` / ``voc``: detections and ground truth in pixels of the network input (the input
  transform resizes both), as during GluonCV's training and evaluation;
* ``coco``: in **original image pixels** (:func:`~gluon_ssd.model.io.map_boxes_to_original`,
  unclipped). On a COCO dataset its annotation file is the ground truth (crowd regions included);
  on any other dataset a COCO ground truth is built from the labels (difficult boxes become
  ``iscrowd`` ignore regions). The summary carries all 12 COCOeval numbers.

Detections with a NaN/inf box or score (a diverged model) are ignored by the one policy of
:func:`~gluon_ssd.model.io.finite_detections` and counted in ``non_finite_detections``.
"""
import numpy as np

from gluon_ssd.data.build import val_loader
from gluon_ssd.model.io import finite_detections, map_boxes_to_original

__all__ = ['EvalItems', 'Evaluator', 'evaluate']


class EvalItems:
    """Items ``(image (3,S,S) normalised, label (M,6) input pixels, label (M,6) original pixels,
    size [W, H] float32)`` of a raw dataset through the model's ``transform``."""

    def __init__(self, dataset, transform):
        self._dataset, self._transform = dataset, transform

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        image, label = self._dataset[index]
        label = np.asarray(label, np.float32).reshape(-1, 6) if np.size(label) else \
            np.zeros((0, 6), np.float32)
        x, net_label = self._transform(image, label)
        size = np.array([image.shape[1], image.shape[0]], np.float32)
        return x, np.asarray(net_label, np.float32).reshape(-1, label.shape[1]), label, size


def _make_metrics(kinds, dataset, classes, data_shape):
    """``{kind: evaluator}``; COCO uses the annotation file on COCO datasets."""
    from gluon_ssd.metrics import make_metric
    metrics = {}
    for kind in kinds:
        if kind == 'coco' and getattr(dataset, 'coco', None) is not None:
            metrics[kind] = make_metric('coco', classes, coco_gt=dataset.coco,
                                        img_ids=list(dataset.image_ids),
                                        cat_ids=list(dataset.contiguous_id_to_json),
                                        data_shape=(data_shape, data_shape))
        else:
            metrics[kind] = make_metric(kind, classes)
    return metrics


class Evaluator:
    """Evaluate detectors on one dataset split; the loader is built once and reused.

    Parameters
    ----------
    dataset : raw items ``(image (H,W,3) uint8, label (M,6) original pixels)``.
    transform : the model's input transform (:func:`gluon_ssd.model.io.input_transform`).
    data_shape : S, the square network input in pixels.
    classes : class names of the model (ids ``0..C-1``).
    kinds : subset of ``('voc07', 'voc', 'coco')``.

    Calling it with ``(net, ctx)`` (``net`` an SSD in inference mode taking ``(B, 3, S, S)``,
    ``ctx`` a list of contexts the batch is split over) returns ``{kind: summary dict}``
    (:meth:`gluon_ssd.metrics.VOCEvaluator.summary` / ``COCOEvaluator.summary``) with
    ``non_finite_detections`` added.
    """

    def __init__(self, dataset, transform, data_shape, classes, kinds=('voc07',), batch_size=8,
                 num_workers=0):
        self.dataset, self.data_shape = dataset, int(data_shape)
        self.classes, self.kinds = list(classes), list(kinds)
        self.loader = val_loader(EvalItems(dataset, transform), batch_size,
                                 label_fields=(1, 2), num_workers=num_workers)

    def __call__(self, net, ctx):
        from mxnet import gluon
        metrics = _make_metrics(self.kinds, self.dataset, self.classes, self.data_shape)
        dropped = 0
        for data, net_label, orig_label, sizes in self.loader:
            parts = gluon.utils.split_and_load(data, ctx, even_split=False)
            outs = [net(x) for x in parts]
            ids, scores, bboxes = (np.concatenate([o[i].asnumpy() for o in outs], axis=0)
                                   for i in range(3))
            dropped += finite_detections(ids, scores, bboxes)
            self._update(metrics, ids, scores, bboxes, net_label.asnumpy(),
                         orig_label.asnumpy(), sizes.asnumpy())
        return {kind: dict(m.summary(), non_finite_detections=dropped)
                for kind, m in metrics.items()}

    def _update(self, metrics, ids, scores, bboxes, net_label, orig_label, sizes):
        """Feed one batch to every metric in the coordinates it uses."""
        for kind, metric in metrics.items():
            if kind == 'coco':
                size = (self.data_shape, self.data_shape)
                boxes = np.stack([map_boxes_to_original(b, size, wh, clip=False)
                                  for b, wh in zip(bboxes, sizes)]) if len(bboxes) else bboxes
                label = orig_label
            else:
                boxes, label = bboxes, net_label
            metric.update(boxes, ids, scores, label[..., 0:4], label[..., 4], label[..., 5])


def evaluate(net, meta, dataset, kinds=('voc07',), batch_size=8, ctx=None, num_workers=0):
    """One-shot :class:`Evaluator` of a loaded model (``net, meta`` from
    :func:`gluon_ssd.model.io.load_model`); returns ``{kind: summary dict}``."""
    import mxnet as mx
    from gluon_ssd.model.io import input_transform
    evaluator = Evaluator(dataset, input_transform(meta), meta['data_shape'], meta['classes'],
                          kinds, batch_size, num_workers)
    return evaluator(net, ctx or [mx.cpu()])

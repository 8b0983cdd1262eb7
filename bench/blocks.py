"""Benchmarks of the SSD blocks on identical inputs: target generation, loss forward+backward,
decode + per-class NMS. Ours vs GluonCV 0.10.5 (and MXNet's fused ``MultiBoxTarget``)."""
import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from bench.common import ssd300_anchors, voc_like_labels
from bench.timing import interleaved, ratio, summary

__all__ = ['bench_target', 'bench_loss', 'bench_decode', 'GluonCVInferenceTail']

NUM_CLASSES = 20  # VOC


def _entry(name, title, unit, times, scale, ratios, target=None, target_vs=None, **params):
    return {'name': name, 'title': title, 'unit': unit, 'params': params,
            'times': {k: {s: (v * scale if s != 'n' else v) for s, v in summary(t).items()}
                      for k, t in times.items()},
            'ratios': ratios, 'target': target, 'target_vs': target_vs}


# ----------------------------------------------------------------------------------------------
# 1. target generation
# ----------------------------------------------------------------------------------------------
def bench_target(batch, repeat, warmup=2):
    """Targets of one SSD300 batch (8732 anchors, VOC-like labels padded to 20 boxes)."""
    from gluoncv.model_zoo.ssd.target import SSDTargetGenerator as GluonCVTargetGenerator

    from gluon_ssd.target import SSDTargetGenerator
    anchors = ssd300_anchors()
    gt_boxes, gt_ids = voc_like_labels(batch, seed=batch)
    cls_preds = mx.nd.random.normal(shape=(batch, anchors.shape[1], NUM_CLASSES + 1))
    ours = SSDTargetGenerator()
    ours.hybridize(static_alloc=True, static_shape=True)
    ref = GluonCVTargetGenerator(negative_mining_ratio=-1)  # a Block: GluonCV never hybridizes it
    # MultiBoxTarget: 0-1 corner anchors, labels [id, xmin, ymin, xmax, ymax] 0-1, (B, C+1, N)
    corner = mx.nd.concat(anchors.slice_axis(axis=-1, begin=0, end=2)
                          - anchors.slice_axis(axis=-1, begin=2, end=4) / 2,
                          anchors.slice_axis(axis=-1, begin=0, end=2)
                          + anchors.slice_axis(axis=-1, begin=2, end=4) / 2, dim=-1) / 300
    valid = gt_ids >= 0
    mb_label = mx.nd.where(mx.nd.broadcast_like(valid, mx.nd.concat(gt_ids, gt_boxes, dim=-1)),
                           mx.nd.concat(gt_ids, gt_boxes / 300, dim=-1),
                           -mx.nd.ones((batch, gt_ids.shape[1], 5)))
    mb_cls = cls_preds.transpose((0, 2, 1))
    fns = {
        'ours': lambda: ours(anchors, cls_preds, gt_boxes, gt_ids),
        'gluoncv': lambda: ref(anchors, cls_preds, gt_boxes, gt_ids),
        'mx_multibox_target': lambda: mx.nd.contrib.MultiBoxTarget(
            corner, mb_label, mb_cls, overlap_threshold=0.5, negative_mining_ratio=-1,
            variances=(0.1, 0.1, 0.2, 0.2)),
    }
    # check before timing: the outputs we time are GluonCV's (see tests/test_target.py)
    a, b = fns['ours'](), fns['gluoncv']()
    np.testing.assert_array_equal(a[0].asnumpy(), b[0].asnumpy())
    times = interleaved(fns, repeat=repeat, warmup=warmup)
    return _entry(f'target_b{batch}', f'Target generation, SSD300 (8732 anchors), batch {batch}',
                  'ms/batch', times, 1e3,
                  {'vs gluoncv': ratio(times['gluoncv'], times['ours']),
                   'vs mx_multibox_target': ratio(times['mx_multibox_target'], times['ours'])},
                  target=5.0, target_vs='vs gluoncv', batch=batch, anchors=8732,
                  boxes='1-20 per image, padded to 20')


# ----------------------------------------------------------------------------------------------
# 2. loss forward + backward
# ----------------------------------------------------------------------------------------------
def bench_loss(batch, repeat, warmup=2):
    """SSD multibox loss (hard negative mining 3:1, smooth L1) forward + backward."""
    from gluoncv.loss import SSDMultiBoxLoss as GluonCVLoss

    from gluon_ssd.loss import SSDMultiBoxLoss
    from gluon_ssd.target import SSDTargetGenerator
    anchors = ssd300_anchors()
    n = anchors.shape[1]
    gt_boxes, gt_ids = voc_like_labels(batch, seed=100 + batch)
    cls_pred = mx.nd.random.normal(shape=(batch, n, NUM_CLASSES + 1))
    box_pred = mx.nd.random.normal(shape=(batch, n, 4))
    cls_t, box_t, _ = SSDTargetGenerator()(anchors, cls_pred, gt_boxes, gt_ids)
    cls_pred.attach_grad()
    box_pred.attach_grad()
    ours = SSDMultiBoxLoss()
    ours.terms.hybridize(static_alloc=True, static_shape=True)
    ref = GluonCVLoss()

    def step(loss):
        def run():
            with autograd.record():
                sums = loss(cls_pred, box_pred, cls_t, box_t)[0]
            autograd.backward(sums)
            return [cls_pred.grad, box_pred.grad]
        return run
    a, b = step(ours)(), [g.copy() for g in step(ref)()]
    np.testing.assert_allclose(a[0].asnumpy(), b[0].asnumpy(), rtol=1e-4, atol=1e-6)
    times = interleaved({'ours': step(ours), 'gluoncv': step(ref)}, repeat=repeat, warmup=warmup)
    return _entry(f'loss_b{batch}', f'Loss forward + backward, SSD300, batch {batch}',
                  'ms/batch', times, 1e3, {'vs gluoncv': ratio(times['gluoncv'], times['ours'])},
                  batch=batch, anchors=n)


# ----------------------------------------------------------------------------------------------
# 3. decode + per-class NMS
# ----------------------------------------------------------------------------------------------
class GluonCVInferenceTail(gluon.HybridBlock):
    """The inference tail of GluonCV 0.10.5's ``SSD`` (its decoder blocks, one slice per class,
    ``box_nms``, first ``post_nms`` rows), reassembled here without the network so that it can
    be timed on the same ``(cls_preds, box_preds, anchors)`` as ours."""

    def __init__(self, num_classes, nms_thresh=0.45, nms_topk=400, post_nms=100, **kwargs):
        super().__init__(**kwargs)
        from gluoncv.nn.coder import MultiPerClassDecoder, NormalizedBoxCenterDecoder
        self._num_classes = num_classes
        self._nms = (nms_thresh, nms_topk, post_nms)
        with self.name_scope():
            self.bbox_decoder = NormalizedBoxCenterDecoder((0.1, 0.1, 0.2, 0.2))
            self.cls_decoder = MultiPerClassDecoder(num_classes + 1, thresh=0.01)

    def hybrid_forward(self, F, cls_preds, box_preds, anchors):  # pylint: disable=arguments-differ
        bboxes = self.bbox_decoder(box_preds, anchors)
        cls_ids, scores = self.cls_decoder(F.softmax(cls_preds, axis=-1))
        per_class = [F.concat(F.slice_axis(cls_ids, axis=-1, begin=c, end=c + 1),
                              F.slice_axis(scores, axis=-1, begin=c, end=c + 1), bboxes, dim=-1)
                     for c in range(self._num_classes)]
        thresh, topk, post = self._nms
        result = F.contrib.box_nms(F.concat(*per_class, dim=1), overlap_thresh=thresh,
                                   topk=topk, valid_thresh=0.01, id_index=0, score_index=1,
                                   coord_start=2, force_suppress=False)
        result = F.slice_axis(result, axis=1, begin=0, end=post)
        return (F.slice_axis(result, axis=2, begin=0, end=1),
                F.slice_axis(result, axis=2, begin=1, end=2),
                F.slice_axis(result, axis=2, begin=2, end=6))


def bench_decode(batch, repeat, warmup=2):
    """Softmax, box decoding, class decoding and NMS (0.45, top 400, keep 100) of SSD300
    outputs."""
    from gluon_ssd.coder import DetectionHead
    anchors = ssd300_anchors()
    n = anchors.shape[1]
    rng = np.random.RandomState(7)
    # logits of a half-trained net: mostly background, a few confident anchors
    logits = rng.normal(0, 1, (batch, n, NUM_CLASSES + 1)).astype(np.float32)
    logits[:, :, 0] += 3
    hot = rng.rand(batch, n) < 0.02
    logits[hot, rng.randint(1, NUM_CLASSES + 1, hot.sum())] += 6
    cls_preds = mx.nd.array(logits)
    box_preds = mx.nd.array(rng.normal(0, 0.5, (batch, n, 4)).astype(np.float32))
    heads = {'ours_per_class': DetectionHead(NUM_CLASSES, decoder='per_class'),
             'ours_argmax': DetectionHead(NUM_CLASSES, decoder='argmax'),
             'gluoncv': GluonCVInferenceTail(NUM_CLASSES)}
    for h in heads.values():
        h.hybridize(static_alloc=True, static_shape=True)
    fns = {k: (lambda h=h: h(cls_preds, box_preds, anchors)) for k, h in heads.items()}
    a, b = fns['ours_per_class'](), fns['gluoncv']()
    np.testing.assert_array_equal(a[0].asnumpy(), b[0].asnumpy())
    times = interleaved(fns, repeat=repeat, warmup=warmup)
    return _entry(f'decode_b{batch}', f'Decode + per-class NMS, SSD300, batch {batch}',
                  'ms/batch', times, 1e3,
                  {'per_class vs gluoncv': ratio(times['gluoncv'], times['ours_per_class']),
                   'argmax vs gluoncv': ratio(times['gluoncv'], times['ours_argmax'])},
                  batch=batch, anchors=n, classes=NUM_CLASSES)

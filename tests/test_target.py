"""SSDTargetGenerator against GluonCV's SSDTargetGenerator(negative_mining_ratio=-1)."""
import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo.ssd.anchor import SSDAnchorGenerator
from gluoncv.model_zoo.ssd.target import SSDTargetGenerator as GluonCVTargetGenerator

from gluon_ssd.target import SSDTargetGenerator

# GluonCV's ssd_300_vgg16_atrous_voc anchor settings (feature maps 38, 19, 10, 5, 3, 1).
SSD300_SIZES = [30, 60, 111, 162, 213, 264, 315]
SSD300_RATIOS = [[1, 2, 0.5]] + [[1, 2, 0.5, 3, 1.0 / 3]] * 3 + [[1, 2, 0.5]] * 2
SSD300_STEPS = [8, 16, 32, 64, 100, 300]
SSD300_FEATS = [38, 19, 10, 5, 3, 1]


def gluoncv_anchors(im_size, sizes, ratios, steps, feats):
    """(1, N, 4) center/pixel anchors from GluonCV's own per-layer generator."""
    layers = []
    for i, (size, ratio, step, feat) in enumerate(zip(zip(sizes[:-1], sizes[1:]), ratios,
                                                      steps, feats)):
        gen = SSDAnchorGenerator(i, im_size, size, ratio, step, (max(feat, 16),) * 2)
        gen.initialize()
        layers.append(gen(mx.nd.zeros((1, 1, feat, feat))))
    return mx.nd.concat(*layers, dim=1)


@pytest.fixture(scope='module')
def ssd300_anchors():
    anchors = gluoncv_anchors((300, 300), SSD300_SIZES, SSD300_RATIOS, SSD300_STEPS,
                              SSD300_FEATS)
    assert anchors.shape == (1, 8732, 4)
    return anchors


@pytest.fixture(scope='module')
def small_anchors():
    """Anchors on a 128 px grid with integer centers and sizes: lots of exactly equal IoUs."""
    return gluoncv_anchors((128, 128), [16, 32, 64, 128], [[1, 2, 0.5]] * 3, [8, 16, 32],
                           [16, 8, 4])


def tutorial_batch():
    """GluonCV SSD tutorial's dummy labels: 1 box vs 4 boxes, padded with -1."""
    pad = [-1] * 4
    gt_boxes = mx.nd.array([[[10, 20, 80, 90], pad, pad, pad],
                            [[10, 10, 30, 30], [40, 40, 60, 60], [50, 50, 90, 90],
                             [100, 110, 120, 140]]])
    gt_ids = mx.nd.array([[[1], [-1], [-1], [-1]], [[1], [3], [5], [7]]])
    return gt_boxes, gt_ids


def run_both(anchors, gt_boxes, gt_ids, num_classes=20, **kwargs):
    cls_preds = mx.nd.random.normal(shape=(gt_boxes.shape[0], anchors.shape[1], num_classes + 1))
    ours = SSDTargetGenerator(**kwargs)(anchors, cls_preds, gt_boxes, gt_ids)
    ref = GluonCVTargetGenerator(negative_mining_ratio=-1, **kwargs)(
        anchors, cls_preds, gt_boxes, gt_ids)
    return [x.asnumpy() for x in ours], [x.asnumpy() for x in ref]


def assert_same(ours, ref, rows=slice(None)):
    cls_t, box_t, box_m = ours
    ref_cls, ref_box, ref_mask = ref
    np.testing.assert_array_equal(cls_t[rows], ref_cls[rows])
    np.testing.assert_array_equal(box_m[rows], ref_mask[rows])
    assert np.abs(box_t[rows] - ref_box[rows]).max() <= 1e-6


def test_tutorial_batch_equals_gluoncv(ssd300_anchors):
    gt_boxes, gt_ids = tutorial_batch()
    ours, ref = run_both(ssd300_anchors, gt_boxes, gt_ids)
    assert_same(ours, ref)
    assert np.abs(ours[1] - ref[1]).max() == 0.0  # bit-identical on this batch
    cls_t, _, box_m = ours
    assert cls_t.shape == (2, 8732) and box_m.shape == (2, 8732, 4)
    # positives per image: 13 for the single box, 23 for the four boxes
    np.testing.assert_array_equal((cls_t > 0).sum(axis=1), [13, 23])
    np.testing.assert_array_equal(box_m[:, :, 0].sum(axis=1), [13, 23])
    assert set(np.unique(cls_t[0])) == {0, 2}
    assert set(np.unique(cls_t[1])) == {0, 2, 4, 6, 8}
    # no ignored anchors: every anchor is positive or background
    assert (cls_t >= 0).all()


def random_batch(rng, batch, max_boxes, im=128, grid=8):
    """Integer-aligned boxes (many IoU ties), duplicated boxes, padding, one empty image."""
    boxes = -np.ones((batch, max_boxes, 4), np.float32)
    ids = -np.ones((batch, max_boxes, 1), np.float32)
    for b in range(batch - 1):  # the last image stays all padding
        n = rng.randint(1, max_boxes + 1)
        xy = rng.randint(0, im // grid - 1, size=(n, 2)) * grid
        wh = rng.randint(1, im // grid // 2, size=(n, 2)) * grid
        boxes[b, :n, :2] = xy
        boxes[b, :n, 2:] = np.minimum(xy + wh, im)
        ids[b, :n, 0] = rng.randint(0, 20, size=n)
        if n >= 2:  # duplicate a box with another class: a tie bipartite matching must break
            boxes[b, n - 1] = boxes[b, 0]
            ids[b, n - 1, 0] = (ids[b, 0, 0] + 1) % 20
    return mx.nd.array(boxes), mx.nd.array(ids)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_random_batches_with_ties_equal_gluoncv(small_anchors, seed):
    gt_boxes, gt_ids = random_batch(np.random.RandomState(seed), batch=5, max_boxes=12)
    ours, ref = run_both(small_anchors, gt_boxes, gt_ids)
    assert_same(ours, ref, rows=slice(0, 4))
    # every real box owns at least one anchor
    cls_t = ours[0]
    for b in range(4):
        n = int((gt_ids[b, :, 0] >= 0).sum().asscalar())
        assert (cls_t[b] > 0).sum() >= min(n, 1)
    # all-padding image: only negatives, no box targets (GluonCV marks every anchor of such an
    # image as a class-0 "positive" with -inf targets; see gluon_ssd/target.py)
    assert (ours[0][4] == 0).all() and (ours[1][4] == 0).all() and (ours[2][4] == 0).all()
    assert np.isinf(ref[1][4]).any()


def test_padding_position_does_not_matter(small_anchors):
    gt_boxes, gt_ids = random_batch(np.random.RandomState(3), batch=2, max_boxes=6)
    n = int((gt_ids[0, :, 0] >= 0).sum().asscalar())
    order = list(range(n, 6)) + list(range(n))  # padding rows first, then the real boxes
    moved_boxes, moved_ids = gt_boxes[0:1, order], gt_ids[0:1, order]
    cls_preds = mx.nd.zeros((1, small_anchors.shape[1], 21))
    gen = SSDTargetGenerator()
    base = gen(small_anchors, cls_preds, gt_boxes[0:1], gt_ids[0:1])
    moved = gen(small_anchors, cls_preds, moved_boxes, moved_ids)
    # duplicated boxes make the class of a tied anchor order-dependent; compare positives/boxes
    np.testing.assert_array_equal(base[0].asnumpy() > 0, moved[0].asnumpy() > 0)
    np.testing.assert_array_equal(base[2].asnumpy(), moved[2].asnumpy())
    assert np.abs(base[1].asnumpy() - moved[1].asnumpy()).max() <= 1e-6


@pytest.mark.parametrize('kwargs', [dict(iou_thresh=0.3, neg_thresh=0.1),
                                    dict(iou_thresh=0.7, neg_thresh=0.9, stds=(1, 1, 1, 1))])
def test_options_equal_gluoncv(small_anchors, kwargs):
    # neg_thresh has no effect with negative_mining_ratio=-1, in GluonCV as here
    gt_boxes, gt_ids = random_batch(np.random.RandomState(4), batch=3, max_boxes=8)
    ours, ref = run_both(small_anchors, gt_boxes, gt_ids, **kwargs)
    assert_same(ours, ref, rows=slice(0, 2))
    default, _ = run_both(small_anchors, gt_boxes, gt_ids, iou_thresh=kwargs['iou_thresh'],
                          stds=kwargs.get('stds', (0.1, 0.1, 0.2, 0.2)))
    for a, b in zip(ours, default):
        np.testing.assert_array_equal(a, b)


def test_hybridized_equals_imperative(ssd300_anchors):
    gt_boxes, gt_ids = tutorial_batch()
    gt_boxes = mx.nd.concat(gt_boxes, -mx.nd.ones((1, 4, 4)), dim=0)
    gt_ids = mx.nd.concat(gt_ids, -mx.nd.ones((1, 4, 1)), dim=0)
    cls_preds = mx.nd.random.normal(shape=(3, 8732, 21))
    gen = SSDTargetGenerator()
    imperative = gen(ssd300_anchors, cls_preds, gt_boxes, gt_ids)
    gen.hybridize(static_alloc=True, static_shape=True)
    for _ in range(2):  # second call reuses the cached graph
        hybrid = gen(ssd300_anchors, cls_preds, gt_boxes, gt_ids)
        for a, b in zip(imperative, hybrid):
            np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_hard_negative_mining_ratio_rejected():
    with pytest.raises(ValueError, match='hard negative mining is done by the loss'):
        SSDTargetGenerator(negative_mining_ratio=3)
    with pytest.raises(ValueError, match='iou_thresh'):
        SSDTargetGenerator(iou_thresh=0)


def test_single_box_single_image_equals_gluoncv(small_anchors):
    """One image with one box: the smallest matching problem (one bipartite candidate)."""
    gt_boxes = mx.nd.array([[[20, 30, 70, 90]]])
    gt_ids = mx.nd.array([[[2]]])
    ours, ref = run_both(small_anchors, gt_boxes, gt_ids)
    assert_same(ours, ref)
    assert ours[0].max() == 3


def test_traced_with_max_objects_equals_direct_call(ssd300_anchors):
    """Inside a bigger hybridized graph the block cannot see M; `max_objects` tells it."""
    gt_boxes, gt_ids = tutorial_batch()
    cls_preds = mx.nd.zeros((2, ssd300_anchors.shape[1], 21))

    class Outer(mx.gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.target = SSDTargetGenerator(max_objects=gt_boxes.shape[1])

        def hybrid_forward(self, F, anchors, cls_preds, gt_boxes, gt_ids):
            return self.target(anchors, cls_preds, gt_boxes, gt_ids)

    outer = Outer()
    outer.hybridize(static_alloc=True, static_shape=True)
    traced = outer(ssd300_anchors, cls_preds, gt_boxes, gt_ids)
    direct = SSDTargetGenerator()(ssd300_anchors, cls_preds, gt_boxes, gt_ids)
    for a, b in zip(traced, direct):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


@pytest.mark.parametrize('max_boxes', [33, 50, 120, 300])
def test_many_objects_equal_gluoncv(small_anchors, max_boxes):
    """Crowded images (issue 13): M = 33..300 label rows, past the running-maximum threshold and
    on both sides of the reduced-bipartite one (M = 50 is reduced when traced, full when called
    directly), with integer-aligned boxes (IoU ties), duplicates, padding
    rows and one all-padding image; also traced with ``max_objects`` inside a bigger graph."""
    rng = np.random.RandomState(max_boxes)
    gt_boxes, gt_ids = random_batch(rng, batch=3, max_boxes=max_boxes)
    # more exact duplicates (ties between ground truths for the same anchors)
    boxes, ids = gt_boxes.asnumpy(), gt_ids.asnumpy()
    n = int((ids[0, :, 0] >= 0).sum())
    if n >= 4:
        boxes[0, 1:n // 2] = boxes[0, 0]
    gt_boxes, gt_ids = mx.nd.array(boxes), mx.nd.array(ids)
    ours, ref = run_both(small_anchors, gt_boxes, gt_ids)
    assert_same(ours, ref, rows=slice(0, 2))
    assert (ours[0][2] == 0).all() and (ours[2][2] == 0).all()

    class Outer(mx.gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.target = SSDTargetGenerator(max_objects=max_boxes)

        def hybrid_forward(self, F, anchors, cls_preds, gt_boxes, gt_ids):
            return self.target(anchors, cls_preds, gt_boxes, gt_ids)

    outer = Outer()
    outer.hybridize(static_alloc=True, static_shape=True)
    traced = outer(small_anchors, mx.nd.zeros((3, small_anchors.shape[1], 21)), gt_boxes, gt_ids)
    for a, b in zip(traced, ours):
        np.testing.assert_array_equal(a.asnumpy(), b)

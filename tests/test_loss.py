"""MultiBoxLossTerms / SSDMultiBoxLoss against GluonCV's SSDMultiBoxLoss and hand computations."""
import math

import mxnet as mx
import numpy as np
import pytest
from gluoncv.loss import SSDMultiBoxLoss as GluonCVLoss

from gluon_ssd.loss import MultiBoxLossTerms, SSDMultiBoxLoss

NUM_CLASSES = 6  # foreground classes; logits have NUM_CLASSES + 1 columns

VARIANTS = [dict(),
            dict(box_loss='l1'),
            dict(cls_loss='focal'),
            dict(cls_loss='focal', focal_alpha=None, focal_gamma=0.5, box_loss='l1'),
            dict(min_hard_negatives=20, rho=0.5)]


def random_inputs(seed, batch=4, anchors=300, pos_rate=0.1, ignore_rate=0.0):
    """(cls_pred, box_pred, cls_target, box_target) NDArrays with ~pos_rate positives."""
    rng = np.random.RandomState(seed)
    cls_pred = rng.randn(batch, anchors, NUM_CLASSES + 1) * 2
    box_pred = rng.randn(batch, anchors, 4)
    cls_target = np.where(rng.rand(batch, anchors) < pos_rate,
                          rng.randint(1, NUM_CLASSES + 1, (batch, anchors)), 0)
    cls_target[rng.rand(batch, anchors) < ignore_rate] = -1
    box_target = rng.randn(batch, anchors, 4)
    return [mx.nd.array(x) for x in (cls_pred, box_pred, cls_target, box_target)]


def np_cross_entropy(cls_pred, cls_target):
    """(B, N) -log softmax probability of the target class (class 0 for ignored anchors)."""
    logits = cls_pred - cls_pred.max(axis=-1, keepdims=True)
    log_prob = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
    target = np.maximum(cls_target, 0).astype(int)
    return -np.take_along_axis(log_prob, target[..., None], axis=-1)[..., 0]


def np_terms(cls_pred, box_pred, cls_target, box_target, ratio=3, min_neg=0, rho=1.0):
    """Reference softmax + smooth-L1 terms: top-k negatives by CE, stable order on ties."""
    ce = np_cross_entropy(cls_pred, cls_target)
    cls_terms, box_terms, num_pos = [], [], []
    for b in range(cls_pred.shape[0]):
        pos = cls_target[b] > 0
        neg_idx = np.flatnonzero(cls_target[b] == 0)
        order = neg_idx[np.argsort(-ce[b, neg_idx], kind='stable')]
        keep = order[:int(max(min_neg, ratio * pos.sum()))]
        cls_terms.append(ce[b, pos].sum() + ce[b, keep].sum())
        diff = np.abs(box_pred[b, pos] - box_target[b, pos])
        box_terms.append(np.where(diff > rho, diff - 0.5 * rho, 0.5 / rho * diff ** 2).sum())
        num_pos.append(pos.sum())
    return np.array(cls_terms), np.array(box_terms), np.array(num_pos)


def to_np(arrays):
    return [a.asnumpy() for a in arrays]


@pytest.mark.parametrize('min_hard_negatives', [0, 40])
def test_batch_mode_equals_gluoncv_single_array(min_hard_negatives):
    inputs = random_inputs(0)
    ours = SSDMultiBoxLoss(min_hard_negatives=min_hard_negatives)(*inputs)
    ref = GluonCVLoss(min_hard_negatives=min_hard_negatives)(*inputs)
    for a, b in zip(ours, ref):
        assert len(a) == 1 and a[0].shape == (4,)
        assert np.abs(a[0].asnumpy() - b[0].asnumpy()).max() < 1e-5


@pytest.mark.parametrize('min_hard_negatives', [0, 40])
def test_batch_mode_equals_gluoncv_two_devices(min_hard_negatives):
    ctxs = [mx.cpu(0), mx.cpu(1)]
    parts = [random_inputs(1, batch=2), random_inputs(2, batch=3, pos_rate=0.02)]
    inputs = [[part[i].as_in_context(ctx) for part, ctx in zip(parts, ctxs)] for i in range(4)]
    ours = SSDMultiBoxLoss(min_hard_negatives=min_hard_negatives, lambd=0.7)(*inputs)
    ref = GluonCVLoss(min_hard_negatives=min_hard_negatives, lambd=0.7)(*inputs)
    for a, b in zip(ours, ref):
        assert [x.context for x in a] == ctxs
        assert [x.shape for x in a] == [(2,), (3,)]
        for x, y in zip(a, b):
            assert np.abs(x.asnumpy() - y.asnumpy()).max() < 1e-5


def test_no_positives_gives_zero_loss_like_gluoncv():
    inputs = random_inputs(3, pos_rate=0.0)
    ours = SSDMultiBoxLoss()(*inputs)
    ref = GluonCVLoss()(*inputs)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a[0].asnumpy(), 0)
        np.testing.assert_array_equal(b[0].asnumpy(), 0)


@pytest.mark.parametrize('min_neg,rho', [(0, 1.0), (25, 0.5)])
def test_terms_match_hand_reference(min_neg, rho):
    inputs = random_inputs(4)
    cls_t, box_t, num_pos = to_np(MultiBoxLossTerms(min_hard_negatives=min_neg, rho=rho)(*inputs))
    ref = np_terms(*to_np(inputs), min_neg=min_neg, rho=rho)
    np.testing.assert_allclose(cls_t, ref[0], rtol=1e-5)
    np.testing.assert_allclose(box_t, ref[1], rtol=1e-5)
    np.testing.assert_array_equal(num_pos, ref[2])


def tutorial_targets():
    """Targets of GluonCV's tutorial dummy batch (1 box vs 4 boxes) on SSD300 anchors."""
    from test_target import SSD300_FEATS, SSD300_RATIOS, SSD300_SIZES, SSD300_STEPS, \
        gluoncv_anchors, tutorial_batch
    from gluon_ssd.target import SSDTargetGenerator
    anchors = gluoncv_anchors((300, 300), SSD300_SIZES, SSD300_RATIOS, SSD300_STEPS,
                              SSD300_FEATS)
    gt_boxes, gt_ids = tutorial_batch()
    cls_pred = mx.nd.zeros((2, anchors.shape[1], 21))
    cls_target, box_target, _ = SSDTargetGenerator()(anchors, cls_pred, gt_boxes, gt_ids)
    return cls_target, box_target


def test_tutorial_batch_positives_mining_and_normalisation():
    cls_target, box_target = tutorial_targets()
    batch, anchors = cls_target.shape
    # all-zero logits: every anchor has CE = log(21), so cls_loss / log(21) counts the anchors
    cls_pred = mx.nd.zeros((batch, anchors, 21))
    box_pred = mx.nd.random.normal(shape=(batch, anchors, 4))
    cls_terms, box_terms, num_pos = MultiBoxLossTerms()(cls_pred, box_pred, cls_target,
                                                         box_target)
    np.testing.assert_array_equal(num_pos.asnumpy(), [13, 23])
    selected = cls_terms.asnumpy() / math.log(21)
    np.testing.assert_allclose(selected - num_pos.asnumpy(), [3 * 13, 3 * 23], rtol=1e-5)

    inputs = (cls_pred, box_pred, cls_target, box_target)
    _, batch_cls, batch_box = SSDMultiBoxLoss(normalization='batch')(*inputs)
    _, sample_cls, sample_box = SSDMultiBoxLoss(normalization='sample')(*inputs)
    terms_c, terms_b = cls_terms.asnumpy(), box_terms.asnumpy()
    # batch: every image divided by 13 + 23 = 36; sample: by its own 13 and 23
    np.testing.assert_allclose(batch_cls[0].asnumpy(), terms_c / 36, rtol=1e-6)
    np.testing.assert_allclose(batch_box[0].asnumpy(), terms_b / 36, rtol=1e-6)
    np.testing.assert_allclose(sample_cls[0].asnumpy(), terms_c / [13, 23], rtol=1e-6)
    np.testing.assert_allclose(sample_box[0].asnumpy(), terms_b / [13, 23], rtol=1e-6)
    # the image with 1 box weighs 36/13 times more per positive under 'sample'
    ratio = sample_cls[0].asnumpy() / batch_cls[0].asnumpy()
    np.testing.assert_allclose(ratio, [36 / 13, 36 / 23], rtol=1e-6)


def test_normalize_sample_mode_with_empty_image():
    loss = SSDMultiBoxLoss(normalization='sample', lambd=2.0)
    cls_t, box_t, num_pos = mx.nd.array([3., 4.]), mx.nd.array([1., 2.]), mx.nd.array([0., 4.])
    sums, cls_l, box_l = loss.normalize([cls_t], [box_t], [num_pos])
    np.testing.assert_allclose(cls_l[0].asnumpy(), [3., 1.])
    np.testing.assert_allclose(box_l[0].asnumpy(), [1., 0.5])
    np.testing.assert_allclose(sums[0].asnumpy(), [5., 2.])


def test_l1_box_loss():
    inputs = random_inputs(5)
    _, box_t, _ = to_np(MultiBoxLossTerms(box_loss='l1')(*inputs))
    _, box_pred, cls_target, box_target = to_np(inputs)
    pos = (cls_target > 0)[..., None]
    expected = (np.abs(box_pred - box_target) * pos).sum(axis=(1, 2))
    np.testing.assert_allclose(box_t, expected, rtol=1e-5)


def test_focal_gamma0_is_cross_entropy_over_all_anchors():
    inputs = random_inputs(6, ignore_rate=0.1)
    focal = to_np(MultiBoxLossTerms(cls_loss='focal', focal_gamma=0.0, focal_alpha=None)(*inputs))
    # softmax CE with a mining ratio large enough to keep every negative
    plain = to_np(MultiBoxLossTerms(negative_mining_ratio=1e6)(*inputs))
    np.testing.assert_allclose(focal[0], plain[0], rtol=1e-6)
    np.testing.assert_array_equal(focal[1], plain[1])
    ce = np_cross_entropy(*to_np(inputs[0:3:2]))
    cls_target = inputs[2].asnumpy()
    np.testing.assert_allclose(focal[0], (ce * (cls_target >= 0)).sum(axis=1), rtol=1e-5)


def test_focal_matches_formula():
    inputs = random_inputs(7, ignore_rate=0.1)
    cls_t, _, _ = to_np(MultiBoxLossTerms(cls_loss='focal', focal_alpha=0.25,
                                          focal_gamma=2.0)(*inputs))
    cls_pred, _, cls_target, _ = to_np(inputs)
    ce = np_cross_entropy(cls_pred, cls_target)
    p_t = np.exp(-ce)
    alpha_t = np.where(cls_target > 0, 0.25, 0.75)
    expected = (alpha_t * (1 - p_t) ** 2 * ce * (cls_target >= 0)).sum(axis=1)
    np.testing.assert_allclose(cls_t, expected, rtol=1e-5)


@pytest.mark.parametrize('kwargs', VARIANTS[:3])
def test_ignored_anchors_contribute_nothing(kwargs):
    cls_pred, box_pred, cls_target, box_target = random_inputs(8, ignore_rate=0.3)
    keep = np.flatnonzero(cls_target.asnumpy()[0] >= 0)
    full = to_np(MultiBoxLossTerms(**kwargs)(cls_pred[0:1], box_pred[0:1], cls_target[0:1],
                                             box_target[0:1]))
    idx = mx.nd.array(keep)
    dropped = to_np(MultiBoxLossTerms(**kwargs)(
        *[x[0:1].take(idx, axis=1) for x in (cls_pred, box_pred, cls_target, box_target)]))
    for a, b in zip(full, dropped):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize('kwargs', VARIANTS)
def test_gradients_flow(kwargs):
    cls_pred, box_pred, cls_target, box_target = random_inputs(9)
    cls_pred.attach_grad()
    box_pred.attach_grad()
    loss = SSDMultiBoxLoss(**kwargs)
    with mx.autograd.record():
        sums, _, _ = loss(cls_pred, box_pred, cls_target, box_target)
    mx.autograd.backward(sums)
    cls_grad, box_grad = cls_pred.grad.asnumpy(), box_pred.grad.asnumpy()
    assert np.isfinite(cls_grad).all() and np.abs(cls_grad).sum() > 0
    pos = cls_target.asnumpy() > 0
    assert np.abs(box_grad[pos]).sum() > 0
    assert (box_grad[~pos] == 0).all()


@pytest.mark.parametrize('kwargs', VARIANTS)
def test_terms_hybridized_equals_imperative(kwargs):
    inputs = random_inputs(10, ignore_rate=0.05)
    block = MultiBoxLossTerms(**kwargs)
    imperative = to_np(block(*inputs))
    block.hybridize(static_alloc=True, static_shape=True)
    for _ in range(2):
        hybrid = to_np(block(*inputs))
        for a, b in zip(imperative, hybrid):
            np.testing.assert_allclose(a, b, rtol=1e-6)


def test_bad_options():
    with pytest.raises(ValueError, match=r"normalization must be one of \['batch', 'sample'\]"):
        SSDMultiBoxLoss(normalization='image')
    with pytest.raises(ValueError, match='box_loss'):
        MultiBoxLossTerms(box_loss='l2')
    with pytest.raises(ValueError, match='cls_loss'):
        MultiBoxLossTerms(cls_loss='sigmoid')
    with pytest.raises(ValueError, match='rho'):
        MultiBoxLossTerms(rho=0)
    with pytest.raises(ValueError, match='focal_alpha'):
        MultiBoxLossTerms(focal_alpha=2)
    with pytest.raises(ValueError, match='number of devices'):
        x = random_inputs(0)
        SSDMultiBoxLoss()([x[0], x[0]], x[1], x[2], x[3])

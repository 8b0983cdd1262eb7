"""Box coding, class decoding and the SSD inference tail, compared with GluonCV on equal inputs."""
from types import SimpleNamespace

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo.ssd.ssd import SSD as GluonCVSSD
from gluoncv.nn.bbox import BBoxCenterToCorner, BBoxCornerToCenter
from gluoncv.nn.coder import (MultiClassDecoder as GluonCVMultiClassDecoder,
                              MultiPerClassDecoder as GluonCVMultiPerClassDecoder,
                              NormalizedBoxCenterDecoder, NormalizedBoxCenterEncoder)

from gluon_ssd.coder import (BoxDecoder, BoxEncoder, DetectionHead, MultiClassDecoder,
                             MultiPerClassDecoder, center_to_corner, corner_to_center)

BOX_TOL = 1e-4  # px, on boxes of a few hundred px (float32)


def _corner_boxes(rng, shape, im=300.):
    """Random valid corner boxes in pixels, shape ``shape + (4,)``."""
    xy = rng.uniform(0, im * 0.8, size=shape + (2,))
    wh = rng.uniform(4, im * 0.5, size=shape + (2,))
    return np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)


def _center_anchors(rng, n, im=300.):
    return mx.nd.array(np.concatenate([rng.uniform(0, im, size=(1, n, 2)),
                                       rng.uniform(10, im / 2, size=(1, n, 2))], axis=-1))


def _hybrid(block):
    block.initialize()
    block.hybridize(static_alloc=True, static_shape=True)
    return block


def _np(outputs):
    if isinstance(outputs, mx.nd.NDArray):
        return outputs.asnumpy()
    return [o.asnumpy() for o in outputs]


# ----------------------------------------------------------------------------- format helpers
def test_format_helpers_match_gluoncv_and_round_trip():
    boxes = mx.nd.array(_corner_boxes(np.random.RandomState(1), (2, 7)))
    center = corner_to_center(mx.nd, boxes)
    np.testing.assert_array_equal(center.asnumpy(), BBoxCornerToCenter()(boxes).asnumpy())
    np.testing.assert_array_equal(center_to_corner(mx.nd, center).asnumpy(),
                                  BBoxCenterToCorner()(center).asnumpy())
    np.testing.assert_allclose(center_to_corner(mx.nd, center).asnumpy(), boxes.asnumpy(),
                               atol=1e-4)
    sym = corner_to_center(mx.sym, mx.sym.var('b'))
    np.testing.assert_array_equal(sym.eval(b=boxes)[0].asnumpy(), center.asnumpy())


# ----------------------------------------------------------------------------- encoder
def _encoder_inputs(seed=2, batch=2, n=60, m=5):
    rng = np.random.RandomState(seed)
    samples = rng.choice([-1., 0., 1.], size=(batch, n))
    matches = rng.randint(0, m, size=(batch, n)).astype(np.float32)
    matches[samples < 0.5] = np.where(rng.rand(*matches[samples < 0.5].shape) < 0.5, -1,
                                      matches[samples < 0.5])  # unmatched anchors carry -1
    refs = _corner_boxes(rng, (batch, m))
    refs[0, -1] = -1  # a padding row, never matched by a positive anchor
    matches[0][(matches[0] == m - 1) & (samples[0] > 0.5)] = 0
    anchors = _corner_boxes(rng, (batch, n))
    return [mx.nd.array(a) for a in (samples, matches, anchors, refs)]


@pytest.mark.parametrize('stds, means', [((0.1, 0.1, 0.2, 0.2), (0, 0, 0, 0)),
                                         ((0.2, 0.3, 0.5, 0.7), (0.1, -0.2, 0.3, 0.05))])
def test_box_encoder_matches_gluoncv(stds, means):
    inputs = _encoder_inputs()
    targets, masks = _np(BoxEncoder(stds, means)(*inputs))
    ref_t, ref_m = _np(NormalizedBoxCenterEncoder(stds, means)(*inputs))
    assert targets.shape == masks.shape == (2, 60, 4)
    assert not np.isnan(targets).any()
    np.testing.assert_allclose(targets, ref_t, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(masks, ref_m)
    positive = inputs[0].asnumpy() > 0.5
    assert (masks[positive] == 1).all() and (masks[~positive] == 0).all()
    assert (targets[~positive] == 0).all() and np.abs(targets[positive]).sum() > 0


def test_box_encoder_hybridized_equals_imperative():
    inputs = _encoder_inputs(seed=3)
    imperative = _np(BoxEncoder()(*inputs))
    hybrid = _hybrid(BoxEncoder())
    for _ in range(2):
        for a, b in zip(_np(hybrid(*inputs)), imperative):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- decoder
@pytest.mark.parametrize('clip', [None, 0.3, 1.0])
def test_box_decoder_matches_gluoncv(clip):
    rng = np.random.RandomState(4)
    preds = mx.nd.array(rng.normal(0, 4, size=(2, 80, 4)))  # large enough for clip to bite
    anchors = _center_anchors(rng, 80)
    ours = BoxDecoder(clip=clip)(preds, anchors).asnumpy()
    ref = NormalizedBoxCenterDecoder(clip=clip)(preds, anchors).asnumpy()
    assert ours.shape == (2, 80, 4)
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=BOX_TOL)
    if clip is not None:  # clipping changed something
        assert not np.allclose(ours, BoxDecoder()(preds, anchors).asnumpy())


@pytest.mark.parametrize('clip', [None, 0.3])
def test_box_decoder_gluoncv_positional_arguments(clip):
    """GluonCV's order ``(stds, convert_anchor, clip, minimal_opset)``: corner anchors."""
    rng = np.random.RandomState(10)
    stds = (0.2, 0.3, 0.4, 0.5)
    preds = mx.nd.array(rng.normal(0, 3, size=(2, 40, 4)))
    corner = mx.nd.array(_corner_boxes(rng, (1, 40)))
    for minimal_opset in (False, True):
        ours = BoxDecoder(stds, True, clip, minimal_opset)(preds, corner).asnumpy()
        ref = NormalizedBoxCenterDecoder(stds, True, clip, minimal_opset)(preds, corner)
        np.testing.assert_allclose(ours, ref.asnumpy(), rtol=1e-6, atol=BOX_TOL)
    # convert_anchor=True on corner anchors == default on the same anchors in center format
    np.testing.assert_allclose(
        ours, BoxDecoder(stds, clip=clip)(preds, corner_to_center(mx.nd, corner)).asnumpy(),
        rtol=1e-6, atol=BOX_TOL)
    np.testing.assert_array_equal(_hybrid(BoxDecoder(stds, True, clip))(preds, corner).asnumpy(),
                                  ours)


def test_box_decoder_means_is_keyword_only():
    rng = np.random.RandomState(11)
    preds, anchors = mx.nd.array(rng.normal(size=(1, 20, 4))), _center_anchors(rng, 20)
    means = (0.1, -0.2, 0.3, 0.05)
    shifted = BoxDecoder(means=means)(preds, anchors).asnumpy()
    # means shift the codes before decoding: same as decoding preds + means / stds
    offset = mx.nd.array(np.array(means) / np.array((0.1, 0.1, 0.2, 0.2)))
    np.testing.assert_allclose(
        shifted, BoxDecoder()(mx.nd.broadcast_add(preds, offset.reshape((1, 1, 4))),
                              anchors).asnumpy(), rtol=1e-5, atol=BOX_TOL)
    # the old order (stds, means) must not be read as convert_anchor=True
    with pytest.raises(TypeError, match='convert_anchor'):
        BoxDecoder((0.1, 0.1, 0.2, 0.2), means)


def test_encode_then_decode_recovers_boxes_and_per_image_anchors():
    rng = np.random.RandomState(5)
    gt = mx.nd.array(_corner_boxes(rng, (3, 20)))
    anchors = mx.nd.array(_corner_boxes(rng, (3, 20)))
    samples = mx.nd.ones((3, 20))
    matches = mx.nd.array(np.tile(np.arange(20), (3, 1)))
    targets, _ = BoxEncoder()(samples, matches, anchors, gt)
    decoded = BoxDecoder()(targets, corner_to_center(mx.nd, anchors))  # (B, N, 4) anchors
    np.testing.assert_allclose(decoded.asnumpy(), gt.asnumpy(), atol=1e-3)


def test_box_decoder_hybridized_equals_imperative():
    rng = np.random.RandomState(6)
    preds, anchors = mx.nd.array(rng.normal(size=(2, 30, 4))), _center_anchors(rng, 30)
    for clip in (None, 1.0):
        np.testing.assert_array_equal(_hybrid(BoxDecoder(clip=clip))(preds, anchors).asnumpy(),
                                      BoxDecoder(clip=clip)(preds, anchors).asnumpy())


# ----------------------------------------------------------------------------- class decoders
def _probs(seed=7, batch=2, n=50, num_class=5, spread=3.0):
    rng = np.random.RandomState(seed)
    return mx.nd.softmax(mx.nd.array(rng.normal(0, spread, size=(batch, n, num_class))))


def test_multi_class_decoder_matches_gluoncv():
    probs = _probs()
    for thresh in (0.01, 0.8):
        ids, scores = _np(MultiClassDecoder(thresh=thresh)(probs))
        ref_ids, ref_scores = _np(GluonCVMultiClassDecoder(thresh=thresh)(probs))
        assert ids.shape == scores.shape == (2, 50, 1) and ids.dtype == np.float32
        np.testing.assert_array_equal(ids[..., 0], ref_ids)  # GluonCV returns (B, N)
        np.testing.assert_array_equal(scores[..., 0], ref_scores)
    assert (ids == -1).any() and (scores[ids == -1] == 0).all()  # thresh 0.8 dropped some


def test_multi_class_decoder_takes_gluoncv_positional_arguments():
    """``MultiClassDecoder(axis, thresh)`` as GluonCV: no class count (read from the input)."""
    for num_class in (2, 5, 9):
        probs = _probs(seed=num_class, num_class=num_class)
        ids, scores = _np(MultiClassDecoder(-1, 0.3)(probs))
        ref_ids, ref_scores = _np(GluonCVMultiClassDecoder(-1, 0.3)(probs))
        np.testing.assert_array_equal(ids[..., 0], ref_ids)
        np.testing.assert_array_equal(scores[..., 0], ref_scores)
    moved = _np(MultiClassDecoder(1, 0.3)(mx.nd.transpose(probs, (0, 2, 1))))
    np.testing.assert_array_equal(moved[0][:, 0], ids[..., 0])


def test_multi_per_class_decoder_matches_gluoncv():
    probs = _probs()
    for thresh in (0.01, 0.2):
        ids, scores = _np(MultiPerClassDecoder(5, thresh=thresh)(probs))
        ref_ids, ref_scores = _np(GluonCVMultiPerClassDecoder(5, thresh=thresh)(probs))
        assert ids.shape == (2, 50, 4) and ids.dtype == np.float32
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores, ref_scores)
    assert set(np.unique(ids)) == {-1., 0., 1., 2., 3.}


def _class_decoder(block, num_class=5, **kwargs):
    """``block`` built the GluonCV way: only ``MultiPerClassDecoder`` takes the class count."""
    if block is MultiPerClassDecoder:
        return block(num_class, **kwargs)
    return block(**kwargs)


def test_class_decoders_follow_axis():
    probs = _probs()
    moved = mx.nd.transpose(probs, (0, 2, 1))  # classes on axis 1
    for block in (MultiClassDecoder, MultiPerClassDecoder):
        last = _np(_class_decoder(block)(probs))
        first = _np(_class_decoder(block, axis=1)(moved))
        for a, b in zip(first, last):
            np.testing.assert_array_equal(np.transpose(a, (0, 2, 1)), b)


@pytest.mark.parametrize('block', [MultiClassDecoder, MultiPerClassDecoder])
def test_class_decoders_hybridized_equal_imperative(block):
    probs = _probs(seed=8)
    for a, b in zip(_np(_hybrid(_class_decoder(block))(probs)),
                    _np(_class_decoder(block)(probs))):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- detection head
def _head_inputs(seed=9, batch=2, n=120, num_classes=4):
    """Clustered anchors so NMS has overlaps to suppress."""
    rng = np.random.RandomState(seed)
    centers = rng.uniform(60, 240, size=(1, n, 2))
    sizes = rng.uniform(60, 120, size=(1, n, 2))
    anchors = mx.nd.array(np.concatenate([centers, sizes], axis=-1))
    cls_preds = mx.nd.array(rng.normal(0, 2, size=(batch, n, num_classes + 1)))
    box_preds = mx.nd.array(rng.normal(0, 1, size=(batch, n, 4)))
    return cls_preds, box_preds, anchors


def _gluoncv_ssd_inference(cls_preds, box_preds, anchors, nms_thresh, nms_topk, post_nms):
    """Run GluonCV's own ``SSD.hybrid_forward`` (inference branch) on given predictions.

    A stand-in ``self`` feeds the predictions through one "feature map" of shape (B, 1, 1, 1):
    the predictors return them as (B, N*K, 1, 1) maps, which GluonCV transposes/flattens back.
    """
    batch, n, num_cls = cls_preds.shape
    stub = SimpleNamespace(
        features=lambda x: [x],
        class_predictors=[lambda feat: cls_preds.reshape((batch, -1, 1, 1))],
        box_predictors=[lambda feat: box_preds.reshape((batch, -1, 1, 1))],
        anchor_generators=[lambda feat: anchors],
        num_classes=num_cls - 1, nms_thresh=nms_thresh, nms_topk=nms_topk, post_nms=post_nms,
        bbox_decoder=NormalizedBoxCenterDecoder((0.1, 0.1, 0.2, 0.2)),
        cls_decoder=GluonCVMultiPerClassDecoder(num_cls, thresh=0.01))
    return _np(GluonCVSSD.hybrid_forward(stub, mx.nd, mx.nd.zeros((batch, 1, 1, 1))))


def _assert_detections_equal(ours, ref):
    ids, scores, boxes = ours
    ref_ids, ref_scores, ref_boxes = ref
    assert ids.shape == ref_ids.shape and boxes.shape == ref_boxes.shape
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(boxes, ref_boxes, rtol=1e-6, atol=BOX_TOL)


@pytest.mark.parametrize('nms', [(0.45, 400, 100), (0.5, -1, -1), (0.3, 50, 20),
                                 (0, 400, 100), (1.5, 400, 100)])
def test_detection_head_per_class_equals_gluoncv_ssd(nms):
    inputs = _head_inputs()
    head = DetectionHead(4, nms_thresh=nms[0], nms_topk=nms[1], post_nms=nms[2])
    ours = _np(head(*inputs))
    ref = _gluoncv_ssd_inference(*inputs, *nms)
    _assert_detections_equal(ours, ref)
    n_rows = {0.45: 100, 0.5: 120 * 4, 0.3: 20}.get(nms[0], 120 * 4)  # NMS off: all rows
    assert ours[0].shape == (2, n_rows, 1)
    if 0 < nms[0] < 1:  # NMS on: valid rows first, sorted by score
        valid = ours[0][0, :, 0] >= 0
        assert valid.any() and (np.diff(valid.astype(int)) <= 0).all()
        assert (np.diff(ours[1][0, valid, 0]) <= 0).all()
        if nms[2] <= 0:  # nothing cut: some of the 480 candidates were suppressed
            assert not valid.all()


def test_detection_head_hybridized_equals_imperative_and_set_nms_rebuilds():
    inputs = _head_inputs(seed=10)
    for decoder in ('per_class', 'argmax'):
        hybrid = _hybrid(DetectionHead(4, decoder=decoder))
        imperative = DetectionHead(4, decoder=decoder)
        for a, b in zip(_np(hybrid(*inputs)), _np(imperative(*inputs))):
            np.testing.assert_array_equal(a, b)
        hybrid.set_nms(nms_thresh=0.45, nms_topk=400, post_nms=7)
        assert hybrid(*inputs)[0].shape == (2, 7, 1)  # the cached graph was rebuilt
    # switching the decoder of a hybridized head rebuilds the graph too
    hybrid.set_decoder('per_class')
    _assert_detections_equal(_np(hybrid(*inputs)),
                             _np(DetectionHead(4, post_nms=7)(*inputs)))


def test_argmax_keeps_only_the_best_class_per_box():
    """probabilities (bg 0.1, class0 0.5, class1 0.4) on one box: per-class NMS keeps both
    classes for the same box (NMS never compares different classes), argmax only class 0."""
    logits = mx.nd.log(mx.nd.array([[[0.1, 0.5, 0.4]]]))
    box_preds = mx.nd.zeros((1, 1, 4))
    anchors = mx.nd.array([[[50., 40., 20., 10.]]])
    ids, scores, boxes = _np(DetectionHead(2, decoder='per_class')(logits, box_preds, anchors))
    np.testing.assert_array_equal(ids[0, :, 0], [0, 1])
    np.testing.assert_allclose(scores[0, :, 0], [0.5, 0.4], rtol=1e-6)
    np.testing.assert_allclose(boxes[0], [[40, 35, 60, 45]] * 2, atol=1e-5)  # corner px
    ids, scores, boxes = _np(DetectionHead(2, decoder='argmax')(logits, box_preds, anchors))
    assert ids.shape == (1, 1, 1) and ids[0, 0, 0] == 0
    np.testing.assert_allclose(scores[0, 0], [0.5], rtol=1e-6)
    np.testing.assert_allclose(boxes[0, 0], [40, 35, 60, 45], atol=1e-5)


def test_nms_suppresses_overlapping_box_of_same_class():
    logits = mx.nd.log(mx.nd.array([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]]))
    anchors = mx.nd.array([[[50., 50., 20., 20.], [51., 50., 20., 20.], [150., 50., 20., 20.]]])
    ids, scores, _ = _np(DetectionHead(1)(logits, mx.nd.zeros((1, 3, 4)), anchors))
    np.testing.assert_array_equal(ids[0, :, 0], [0, 0, -1])  # the 0.8 box overlaps the 0.9 one
    np.testing.assert_allclose(scores[0, :2, 0], [0.9, 0.7], rtol=1e-6)


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match=r"decoder must be one of \('per_class', 'argmax'\)"):
        DetectionHead(3, decoder='softmax')
    with pytest.raises(ValueError, match='num_classes'):
        DetectionHead(0)
    with pytest.raises(ValueError, match='stds'):
        BoxDecoder(stds=(0.1, 0.2))
    with pytest.raises(ValueError, match='num_class'):
        MultiPerClassDecoder(1)

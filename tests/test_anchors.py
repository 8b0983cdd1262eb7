"""AnchorGenerator / ssd_sizes: bit-identical to GluonCV's SSDAnchorGenerator on every GluonCV
preset (and so the same training targets), close to d2l's MultiBoxPrior anchors for TinySSD."""
import math

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo.ssd.anchor import SSDAnchorGenerator
from gluoncv.model_zoo.ssd.target import SSDTargetGenerator as GluonCVTargetGenerator
from mxnet import autograd

from gluon_ssd.anchors import AnchorGenerator, ssd_sizes
from gluon_ssd.model.zoo import PRESETS as ZOO_PRESETS
from gluon_ssd.model.zoo import anchor_sizes, get_model
from gluon_ssd.target import SSDTargetGenerator

pytestmark = pytest.mark.filterwarnings(
    'ignore:Cannot decide type for the following arguments:UserWarning')

_R3 = [1, 2, 0.5]
_R5 = [1, 2, 0.5, 3, 1.0 / 3]
_VGG300 = ([_R3] + [_R5] * 3 + [_R3] * 2, [8, 16, 32, 64, 100, 300], [38, 19, 10, 5, 3, 1], 8732)
_VGG512 = ([_R3] + [_R5] * 4 + [_R3] * 2, [8, 16, 32, 64, 128, 256, 512],
           [64, 32, 16, 8, 4, 2, 1], 24564)
_EXP512 = ([_R3] + [_R5] * 3 + [_R3] * 2, [16, 32, 64, 128, 256, 512], [32, 16, 8, 4, 2, 1], 6132)
_SIZES512 = [51.2, 102.4, 189.4, 276.4, 363.52, 450.6, 492]

# GluonCV 0.10.5's presets (gluoncv/model_zoo/ssd/presets.py), written out independently of our
# zoo: input size, paper-style sizes, ratios, steps; then the network's feature-map sizes and the
# anchor total.
GLUONCV_PRESETS = {
    'ssd_300_vgg16_atrous_voc': (300, [30, 60, 111, 162, 213, 264, 315]) + _VGG300,
    'ssd_300_vgg16_atrous_coco': (300, [21, 45, 99, 153, 207, 261, 315]) + _VGG300,
    'ssd_512_vgg16_atrous_voc': (512, [51.2, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6])
                                + _VGG512,
    'ssd_512_vgg16_atrous_coco': (512, [51.2, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6])
                                 + _VGG512,
    'ssd_512_resnet50_v1_voc': (512, _SIZES512) + _EXP512,
    'ssd_512_resnet50_v1_coco': (512, [51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72])
                                + _EXP512,
    'ssd_512_mobilenet1.0_voc': (512, _SIZES512) + _EXP512,
    'ssd_512_mobilenet1.0_coco': (512, _SIZES512) + _EXP512,
}


def _gluoncv_layers(name, batch=1):
    """Per-layer anchors of GluonCV's generators, built as ``gluoncv...ssd.SSD`` builds them."""
    im, sizes, ratios, steps, feats, _ = GLUONCV_PRESETS[name]
    layers, alloc = [], 128
    for index, (pair, layer_ratios, step, feat) in enumerate(
            zip(zip(sizes[:-1], sizes[1:]), ratios, steps, feats)):
        gen = SSDAnchorGenerator(index, (im, im), pair, layer_ratios, step, (alloc, alloc))
        alloc = max(alloc // 2, 16)
        gen.initialize()
        layers.append(gen(mx.nd.zeros((batch, 1, feat, feat))).asnumpy())
    return layers


def _our_generators(name, hybridize=False):
    """Our generators built as ``gluon_ssd.model.ssd.SSD`` builds them from our zoo preset."""
    preset = ZOO_PRESETS[name]
    im = preset['data_size']
    gens = [AnchorGenerator(size, ratios, step, (im, im)) for size, ratios, step in
            zip(anchor_sizes(preset), preset['ratios'], preset['steps'])]
    for gen in gens:
        gen.initialize()
        if hybridize:
            gen.hybridize(static_alloc=True, static_shape=True)
    return gens


def _our_layers(name, batch=1, hybridize=False, channels=3):
    feats = GLUONCV_PRESETS[name][4]
    return [gen(mx.nd.zeros((batch, channels, f, f))).asnumpy()
            for gen, f in zip(_our_generators(name, hybridize), feats)]


def _ours(sizes, ratios, step, im_size, feat_hw, clip=False, hybridize=False):
    gen = AnchorGenerator(sizes, ratios, step, im_size, clip=clip)
    gen.initialize()
    if hybridize:
        gen.hybridize(static_alloc=True, static_shape=True)
    return gen, gen(mx.nd.zeros((2, 3) + tuple(feat_hw))).asnumpy()


def _gluoncv_anchors(index, im_size, min_max, ratios, step, feat_hw, clip=False):
    gen = SSDAnchorGenerator(index, im_size, min_max, ratios, step,
                             alloc_size=(max(feat_hw), max(feat_hw)), clip=clip)
    gen.initialize()
    return gen(mx.nd.zeros((1, 1) + tuple(feat_hw))).asnumpy()


def _center_to_corner(anchors):
    """float32 corners the way GluonCV's target generator makes them (x -/+ w / 2)."""
    xy, half = anchors[..., :2], anchors[..., 2:] / np.float32(2)
    return np.concatenate([xy - half, xy + half], axis=-1)


def test_ssd_sizes_pairs_each_size_with_geometric_mean_of_next():
    assert ssd_sizes([30, 60, 111]) == [(30.0, math.sqrt(30 * 60)), (60.0, math.sqrt(60 * 111))]
    with pytest.raises(ValueError, match='min_max_sizes'):
        ssd_sizes([30])


def test_zoo_covers_every_gluoncv_preset():
    assert set(GLUONCV_PRESETS) <= set(ZOO_PRESETS)


@pytest.mark.parametrize('hybridize', [False, True], ids=['imperative', 'hybrid'])
@pytest.mark.parametrize('batch', [1, 2])
@pytest.mark.parametrize('name', sorted(GLUONCV_PRESETS))
def test_bit_identical_to_gluoncv_presets(name, batch, hybridize):
    ours = _our_layers(name, batch, hybridize)
    ref = _gluoncv_layers(name, batch)
    assert len(ours) == len(ref)
    for k, (a, b) in enumerate(zip(ours, ref)):
        assert a.dtype == np.float32 and a.shape == b.shape, (k, a.dtype, a.shape, b.shape)
        assert np.abs(a - b).max() == 0.0, f"{name} layer {k}: max |ours - GluonCV| > 0"
    assert sum(a.shape[1] for a in ours) == GLUONCV_PRESETS[name][5]


def test_ssd300_model_anchors_bit_identical_to_gluoncv():
    """The anchors the hybridized SSD300 returns in training mode (inside its static graph)."""
    name = 'ssd_300_vgg16_atrous_voc'
    net = get_model(name)
    net.initialize()
    net.hybridize(static_alloc=True, static_shape=True)
    with autograd.train_mode():
        anchors = net(mx.nd.zeros((1, 3, 300, 300)))[2].asnumpy()
    ref = np.concatenate(_gluoncv_layers(name), axis=1)
    assert anchors.shape == ref.shape == (1, 8732, 4)
    assert np.abs(anchors - ref).max() == 0.0


def test_non_square_input_and_clip_match_gluoncv():
    """Non-square image and map: widths must not depend on the map's aspect; clip per axis."""
    im_size, feat_hw = (300, 400), (10, 14)
    pair, ratios, step = ssd_sizes([264, 315])[0], _R5, 32
    for clip in (False, True):
        for hybridize in (False, True):
            _, ours = _ours(pair, ratios, step, im_size, feat_hw, clip=clip, hybridize=hybridize)
            ref = _gluoncv_anchors(2, im_size, [264, 315], ratios, step, feat_hw, clip=clip)
            np.testing.assert_array_equal(ours, ref)
    # clip=True really clipped here, per axis: cx, w to [0, W=400]; cy, h to [0, H=300]
    _, unclipped = _ours(pair, ratios, step, im_size, feat_hw, clip=False)
    for col, limit in zip(range(4), (400, 300, 400, 300)):
        assert unclipped[..., col].max() > limit
        assert ours[..., col].max() == limit


def test_clip_on_ssd300_last_layer_matches_gluoncv():
    pair = ssd_sizes([264, 315])[0]
    _, ours = _ours(pair, _R3, 300, (300, 300), (1, 1), clip=True)
    ref = _gluoncv_anchors(5, (300, 300), [264, 315], _R3, 300, (1, 1), clip=True)
    np.testing.assert_array_equal(ours, ref)
    assert ours[..., 2:].max() == 300  # 264*sqrt(2) > 300 got clipped


@pytest.mark.parametrize('step, feat', [(300 / 38, 38), (512 / 63, 63), (7.3, 40)])
def test_non_integer_step_within_one_ulp_of_gluoncv(step, feat):
    """Centres are float32 (j + 0.5) * float32(step): exact for integer steps only; otherwise
    at most 1 float32 ulp from GluonCV's float64-built values. Widths/heights stay exact."""
    _, ours = _ours(ssd_sizes([30, 60])[0], _R5, step, (300, 300), (feat, feat))
    ref = _gluoncv_anchors(0, (300, 300), [30, 60], _R5, step, (feat, feat))
    np.testing.assert_array_equal(ours[..., 2:], ref[..., 2:])
    assert (np.abs(ours - ref) <= np.spacing(np.abs(ref))).all()


# Ground truths whose IoU with some anchors is exactly 0.5 with GluonCV's float32 SSD300 anchors
# (a 60x30 or 30x60 box on integer pixels around 30 px anchors of the 38x38 map). The old
# MultiBoxPrior-based anchors were 1 float32 ulp off there: 7, 7 and 5 positive anchors for these
# boxes instead of GluonCV's 11, 11 and 10 (both tests below failed with them).
BOUNDARY_BOXES = [[5, 5, 65, 35], [29, 5, 59, 65], [45, 5, 105, 35]]


def _target_counts(anchors, gt_boxes, ours):
    """(cls_targets, box_masks) of our target generator or GluonCV's (negative_mining_ratio=-1)."""
    gt_boxes = mx.nd.array(gt_boxes)
    gt_ids = mx.nd.where(gt_boxes[:, :, :1] >= 0, mx.nd.zeros_like(gt_boxes[:, :, :1]),
                         -mx.nd.ones_like(gt_boxes[:, :, :1]))
    anchors = mx.nd.array(anchors)
    cls_preds = mx.nd.zeros((gt_boxes.shape[0], anchors.shape[1], 21))
    gen = SSDTargetGenerator() if ours else GluonCVTargetGenerator(negative_mining_ratio=-1)
    cls_targets, _, box_masks = gen(anchors, cls_preds, gt_boxes, gt_ids)
    return cls_targets.asnumpy(), box_masks.asnumpy()


def _assert_same_targets(gt_boxes):
    name = 'ssd_300_vgg16_atrous_voc'
    ours = np.concatenate(_our_layers(name, hybridize=True), axis=1)
    ref = np.concatenate(_gluoncv_layers(name), axis=1)
    cls_ours, mask_ours = _target_counts(ours, gt_boxes, ours=True)
    cls_ref, mask_ref = _target_counts(ref, gt_boxes, ours=False)
    np.testing.assert_array_equal((cls_ours > 0).sum(axis=1), (cls_ref > 0).sum(axis=1))
    np.testing.assert_array_equal(cls_ours, cls_ref)
    np.testing.assert_array_equal(mask_ours, mask_ref)
    return ref, (cls_ref > 0).sum(axis=1)


def test_iou_boundary_ground_truths_get_gluoncvs_positives():
    """The consequence of bit-identical anchors: a ground truth whose IoU with some anchor is
    exactly 0.5 gets the same positive anchors as through GluonCV."""
    gt_boxes = np.array(BOUNDARY_BOXES, np.float32)[:, None, :]       # one box per image
    ref, positives = _assert_same_targets(gt_boxes)
    corners = _center_to_corner(ref[0])
    for box in gt_boxes[:, 0]:   # the boxes really are on the boundary for GluonCV's anchors
        inter_wh = np.clip(np.minimum(corners[:, 2:], box[2:]) - np.maximum(corners[:, :2],
                                                                            box[:2]), 0, None)
        inter = inter_wh.prod(axis=1)
        union = (corners[:, 2:] - corners[:, :2]).prod(axis=1) + (box[2:] - box[:2]).prod() - inter
        assert (np.abs(inter / union - 0.5) <= 1e-6).sum() >= 4
    np.testing.assert_array_equal(positives, [11, 11, 10])


def test_random_integer_ground_truths_get_gluoncvs_positives():
    """Random boxes on integer pixels (where IoU ties at 0.5 are common), 1-4 per image."""
    rng = np.random.RandomState(0)
    gt_boxes = np.full((16, 4, 4), -1, np.float32)
    for image in range(16):
        for row in range(rng.randint(1, 5)):
            w, h = rng.choice([15, 30, 42, 60, 84, 120], size=2)
            x, y = rng.randint(0, 300 - w + 1), rng.randint(0, 300 - h + 1)
            gt_boxes[image, row] = [x, y, x + w, y + h]
    _assert_same_targets(gt_boxes)


def test_tiny_ssd_close_to_d2l_multiboxprior():
    """d2l's TinySSD calls MultiBoxPrior directly (default steps) with relative sizes. That works
    in float32 0-1 corner units (and the reference is converted back to centres in float32),
    ours in exact pixels (as GluonCV): they differ by up to 3.1e-5 px, 1 float32 ulp at the
    256 px input size; the test allows 2 such ulps."""
    im = 256
    feats = [32, 16, 8, 4, 1]
    sizes = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
    ratios = [1, 2, 0.5]
    ours, d2l = [], []
    for f, size in zip(feats, sizes):
        gen, anchors = _ours([s * im for s in size], ratios, im / f, (im, im), (f, f))
        assert gen.num_anchors == 4
        ours.append(anchors)
        corners = mx.nd.contrib.MultiBoxPrior(mx.nd.zeros((1, 8, f, f)), sizes=size,
                                              ratios=ratios).asnumpy() * im
        d2l.append(np.concatenate([(corners[..., :2] + corners[..., 2:]) / 2,
                                   corners[..., 2:] - corners[..., :2]], axis=-1))
    ours, d2l = np.concatenate(ours, axis=1), np.concatenate(d2l, axis=1)
    assert ours.shape == (1, 5444, 4)
    np.testing.assert_allclose(ours, d2l, rtol=0, atol=2 * np.spacing(np.float32(im)))


@pytest.mark.parametrize('clip', [False, True])
def test_hybridized_equals_imperative(clip):
    args = (ssd_sizes([30, 60])[0], _R5, 8, (300, 300))
    _, imperative = _ours(*args, (38, 38), clip=clip)
    gen, hybrid = _ours(*args, (38, 38), clip=clip, hybridize=True)
    np.testing.assert_array_equal(hybrid, imperative)
    # a second call with a different map size still works (new cached graph for new shape)
    assert gen(mx.nd.zeros((1, 1, 19, 19))).shape == (1, 19 * 19 * 6, 4)


def test_order_within_a_cell():
    """Per cell: each size with ratios[0], then sizes[0] with the other ratios."""
    _, a = _ours([30, 42], [1, 2, 0.5], 8, (300, 300), (2, 2))
    np.testing.assert_array_equal(a[0, :4, :2], [[4, 4]] * 4)
    expected = np.float32([[30, 30], [42, 42], [30 * 2 ** .5, 30 / 2 ** .5],
                           [30 / 2 ** .5, 30 * 2 ** .5]])
    np.testing.assert_array_equal(a[0, :4, 2:], expected)
    np.testing.assert_array_equal(a[0, 4, :2], [12, 4])  # next cell is one column right
    np.testing.assert_array_equal(a[0, 8, :2], [4, 12])  # then the next row


def test_no_parameters_and_no_gradient():
    """No Parameters/Constants (saved .params keep their keys); the anchors carry no gradient
    into the feature map."""
    gen = AnchorGenerator([30, 42], _R3, 8, (300, 300))
    gen.initialize()
    assert not list(gen.collect_params().keys())
    feat = mx.nd.random.uniform(shape=(2, 3, 5, 5))
    feat.attach_grad()
    with autograd.record():
        anchors = gen(feat)
    anchors.backward()
    assert anchors.dtype == np.float32
    assert not feat.grad.asnumpy().any()


@pytest.mark.parametrize('kwargs, word', [
    (dict(sizes=[], ratios=[1], step=8, im_size=(300, 300)), 'sizes'),
    (dict(sizes=[30], ratios=[0], step=8, im_size=(300, 300)), 'ratios'),
    (dict(sizes=[30], ratios=[1], step=-1, im_size=(300, 300)), 'step'),
    (dict(sizes=[30], ratios=[1], step=8, im_size=(300,)), 'im_size'),
])
def test_bad_arguments_name_the_parameter(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AnchorGenerator(**kwargs)

"""AnchorGenerator / ssd_sizes against GluonCV's SSDAnchorGenerator and d2l's MultiBoxPrior use."""
import math

import mxnet as mx
import numpy as np
import pytest
from gluoncv.model_zoo.ssd.anchor import SSDAnchorGenerator

from gluon_ssd.anchors import AnchorGenerator, ssd_sizes

TOL_PX = 1e-4


def _assert_close_px(ours, ref, what):
    """|ours - ref| <= max(1e-4 px, 2 float32 ulps of ref).

    MultiBoxPrior computes float32 corners, so anchors larger than 512 px (ulp 6.1e-5) can be
    2 ulps = 1.22e-4 px off GluonCV's (float64-built) anchors; smaller ones are within 1e-4 px.
    """
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    tol = np.maximum(TOL_PX, 2 * np.spacing(np.abs(ref).astype(np.float32)))
    diff = np.abs(ours - ref)
    assert (diff <= tol).all(), f"{what}: max |ours - GluonCV| = {diff.max()} px"
_R3 = [1, 2, 0.5]
_R5 = [1, 2, 0.5, 3, 1.0 / 3]

# GluonCV presets (gluoncv/model_zoo/ssd/presets.py): input size, paper-style sizes, ratios,
# steps, feature-map sizes of the network, expected anchor total.
PRESETS = {
    'ssd_300_vgg16_atrous_voc': (300, [30, 60, 111, 162, 213, 264, 315],
                                 [_R3] + [_R5] * 3 + [_R3] * 2, [8, 16, 32, 64, 100, 300],
                                 [38, 19, 10, 5, 3, 1], 8732),
    'ssd_300_vgg16_atrous_coco': (300, [21, 45, 99, 153, 207, 261, 315],
                                  [_R3] + [_R5] * 3 + [_R3] * 2, [8, 16, 32, 64, 100, 300],
                                  [38, 19, 10, 5, 3, 1], 8732),
    'ssd_512_vgg16_atrous_voc': (512, [51.2, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
                                 [_R3] + [_R5] * 4 + [_R3] * 2, [8, 16, 32, 64, 128, 256, 512],
                                 [64, 32, 16, 8, 4, 2, 1], 24564),
    'ssd_512_resnet50_v1_voc': (512, [51.2, 102.4, 189.4, 276.4, 363.52, 450.6, 492],
                                [_R3] + [_R5] * 3 + [_R3] * 2, [16, 32, 64, 128, 256, 512],
                                [32, 16, 8, 4, 2, 1], 6132),
    'ssd_512_mobilenet1.0_voc': (512, [51.2, 102.4, 189.4, 276.4, 363.52, 450.6, 492],
                                 [_R3] + [_R5] * 3 + [_R3] * 2, [16, 32, 64, 128, 256, 512],
                                 [32, 16, 8, 4, 2, 1], 6132),
}


def _gluoncv_anchors(index, im_size, min_max, ratios, step, feat_hw, clip=False):
    gen = SSDAnchorGenerator(index, im_size, min_max, ratios, step,
                             alloc_size=(max(feat_hw), max(feat_hw)), clip=clip)
    gen.initialize()
    return gen(mx.nd.zeros((1, 1) + tuple(feat_hw))).asnumpy()


def _ours(sizes, ratios, step, im_size, feat_hw, clip=False, hybridize=False):
    gen = AnchorGenerator(sizes, ratios, step, im_size, clip=clip)
    gen.initialize()
    if hybridize:
        gen.hybridize(static_alloc=True, static_shape=True)
    return gen, gen(mx.nd.zeros((2, 3) + tuple(feat_hw))).asnumpy()


def test_ssd_sizes_pairs_each_size_with_geometric_mean_of_next():
    assert ssd_sizes([30, 60, 111]) == [(30.0, math.sqrt(30 * 60)), (60.0, math.sqrt(60 * 111))]
    with pytest.raises(ValueError, match='min_max_sizes'):
        ssd_sizes([30])


@pytest.mark.parametrize('name', sorted(PRESETS))
def test_matches_gluoncv_presets_every_layer(name):
    im, sizes, ratios, steps, feats, total = PRESETS[name]
    count = 0
    for k, (pair, layer_ratios, step, f) in enumerate(zip(ssd_sizes(sizes), ratios, steps, feats)):
        gen, ours = _ours(pair, layer_ratios, step, (im, im), (f, f))
        ref = _gluoncv_anchors(k, (im, im), sizes[k:k + 2], layer_ratios, step, (f, f))
        assert ours.shape == (1, f * f * gen.num_anchors, 4)
        _assert_close_px(ours, ref, f"{name} layer {k}")
        count += ours.shape[1]
    assert count == total


def test_non_square_input_and_clip_match_gluoncv():
    """Non-square image and map: widths must not depend on the map's aspect; clip per axis."""
    im_size, feat_hw = (300, 400), (10, 14)
    pair, ratios, step = ssd_sizes([264, 315])[0], _R5, 32
    for clip in (False, True):
        _, ours = _ours(pair, ratios, step, im_size, feat_hw, clip=clip)
        ref = _gluoncv_anchors(2, im_size, [264, 315], ratios, step, feat_hw, clip=clip)
        _assert_close_px(ours, ref, f"non-square clip={clip}")
    # clip=True really clipped here, per axis: cx, w to [0, W=400]; cy, h to [0, H=300]
    _, unclipped = _ours(pair, ratios, step, im_size, feat_hw, clip=False)
    for col, limit in zip(range(4), (400, 300, 400, 300)):
        assert unclipped[..., col].max() > limit
        assert ours[..., col].max() == pytest.approx(limit)


def test_clip_on_ssd300_last_layer_matches_gluoncv():
    pair = ssd_sizes([264, 315])[0]
    _, ours = _ours(pair, _R3, 300, (300, 300), (1, 1), clip=True)
    ref = _gluoncv_anchors(5, (300, 300), [264, 315], _R3, 300, (1, 1), clip=True)
    _assert_close_px(ours, ref, "ssd300 last layer clip=True")
    assert ours[..., 2:].max() == pytest.approx(300)  # 264*sqrt(2) > 300 got clipped


def test_tiny_ssd_equals_d2l_multiboxprior():
    """d2l's TinySSD calls MultiBoxPrior directly (default steps) with relative sizes."""
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
    np.testing.assert_allclose(ours, d2l, rtol=0, atol=TOL_PX)


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
    np.testing.assert_allclose(a[0, :4, :2], [[4, 4]] * 4, atol=1e-4)
    np.testing.assert_allclose(a[0, :4, 2:], [[30, 30], [42, 42], [30 * 2 ** .5, 30 / 2 ** .5],
                                              [30 / 2 ** .5, 30 * 2 ** .5]], atol=1e-4)
    np.testing.assert_allclose(a[0, 4, :2], [12, 4], atol=1e-4)  # next cell is one column right


@pytest.mark.parametrize('kwargs, word', [
    (dict(sizes=[], ratios=[1], step=8, im_size=(300, 300)), 'sizes'),
    (dict(sizes=[30], ratios=[0], step=8, im_size=(300, 300)), 'ratios'),
    (dict(sizes=[30], ratios=[1], step=-1, im_size=(300, 300)), 'step'),
    (dict(sizes=[30], ratios=[1], step=8, im_size=(300,)), 'im_size'),
])
def test_bad_arguments_name_the_parameter(kwargs, word):
    with pytest.raises(ValueError, match=word):
        AnchorGenerator(**kwargs)

"""Tests of gluon_ssd.model: blocks, backbones, the SSD block (modes, hybridize, export,
reset_class, init) and numerical equality with GluonCV 0.10.5's SSD on identical weights."""
import re

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_ssd.model.backbones import (VGGAtrousFeatures, get_backbone, resolve_pretrained)
from gluon_ssd.model.blocks import (ConvPredictor, DownSampleBlock, L2Normalization,
                                    concat_preds, flatten_pred)
from gluon_ssd.model.ssd import SSD
from gluon_ssd.model.zoo import get_model


pytestmark = pytest.mark.filterwarnings(
    'ignore:Cannot decide type for the following arguments:UserWarning')


def _np(x):
    return x.asnumpy()


def _center_to_corner(a):
    cx, cy, w, h = np.split(a, 4, axis=-1)
    return np.concatenate([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


# ------------------------------------------------------------------------------------- blocks
def test_concat_preds_two_scales():
    c1, c2 = ConvPredictor(5 * (10 + 1)), ConvPredictor(3 * (10 + 1))
    c1.initialize()
    c2.initialize()
    y1 = c1(mx.nd.zeros((2, 8, 20, 20)))
    y2 = c2(mx.nd.zeros((2, 16, 10, 10)))
    assert y1.shape == (2, 55, 20, 20) and y2.shape == (2, 33, 10, 10)
    assert concat_preds(mx.nd, [y1, y2]).shape == (2, 25300)


def test_flatten_pred_is_channels_last():
    x = mx.nd.arange(2 * 3 * 4 * 5).reshape((2, 3, 4, 5))
    expected = _np(x).transpose(0, 2, 3, 1).reshape(2, -1)
    np.testing.assert_array_equal(_np(flatten_pred(mx.nd, x)), expected)
    with pytest.raises(ValueError, match="at least one"):
        concat_preds(mx.nd, [])


def test_conv_predictor_and_downsample_shapes():
    pred = ConvPredictor(12)
    pred.initialize()
    assert pred(mx.nd.ones((1, 7, 9, 9))).shape == (1, 12, 9, 9)
    np.testing.assert_array_equal(_np(pred.predictor.bias.data()), 0)
    blk = DownSampleBlock(10)
    blk.initialize()
    assert blk(mx.nd.ones((2, 3, 20, 20))).shape == (2, 10, 10, 10)
    with pytest.raises(ValueError, match="num_channel"):
        ConvPredictor(0)
    with pytest.raises(ValueError, match="num_channels"):
        DownSampleBlock(-1)


def test_l2_normalization_matches_formula():
    norm = L2Normalization(4, initial=20)
    norm.initialize()
    x = mx.nd.random.uniform(-1, 1, shape=(2, 4, 3, 3))
    xn = _np(x)
    expected = 20 * xn / np.sqrt((xn ** 2).sum(axis=1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(_np(norm(x)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(_np(norm.scale.data()), 20 * np.ones((1, 4, 1, 1)))
    with pytest.raises(ValueError, match="channels"):
        L2Normalization(0)


# ---------------------------------------------------------------------------------- backbones
def test_tiny_base_feature_shapes():
    net = get_backbone('tiny_ssd_base')
    net.initialize()
    shapes = [f.shape for f in net(mx.nd.zeros((1, 3, 256, 256)))]
    assert shapes == [(1, 64, 32, 32), (1, 128, 16, 16), (1, 128, 8, 8), (1, 128, 4, 4),
                      (1, 128, 1, 1)]


@pytest.fixture(scope='module')
def vgg300():
    net = get_model('ssd_300_vgg16_atrous_voc')
    net.initialize()
    return net


def test_vgg300_feature_map_sizes(vgg300):
    feats = vgg300.features(mx.nd.zeros((1, 3, 300, 300)))
    assert [f.shape[2] for f in feats] == [38, 19, 10, 5, 3, 1]
    assert [f.shape[1] for f in feats] == [512, 1024, 512, 256, 256, 256]


def test_pretrained_base_from_local_file(tmp_path):
    src = VGGAtrousFeatures(300)
    src.initialize()
    path = str(tmp_path / 'vgg.params')
    src.save_parameters(path)
    dst = get_model('ssd_300_vgg16_atrous_voc', pretrained_base=path).features
    np.testing.assert_array_equal(_np(dst.stages[0][0].weight.data()),
                                  _np(src.stages[0][0].weight.data()))
    np.testing.assert_array_equal(_np(dst.norm4.scale.data()), _np(src.norm4.scale.data()))


def test_pretrained_base_gluoncv_backbone_file(tmp_path):
    from gluoncv.model_zoo.mobilenet import mobilenet1_0
    src = mobilenet1_0(pretrained=False)
    src.initialize()
    src(mx.nd.zeros((1, 3, 32, 32)))
    path = str(tmp_path / 'mobilenet.params')
    src.save_parameters(path)
    feats = get_model('ssd_512_mobilenet1.0_voc', pretrained_base=path).features
    np.testing.assert_array_equal(_np(feats.stage_a[0].weight.data()),
                                  _np(src.features[0].weight.data()))
    np.testing.assert_array_equal(_np(feats.stage_b[-3].weight.data()),
                                  _np(src.features[78].weight.data()))


def test_pretrained_base_errors(tmp_path, monkeypatch):
    from gluon_ssd.errors import UserError
    monkeypatch.setenv('MXNET_HOME', str(tmp_path))
    # offline: nothing to download from -> one line with the cache path and the way out
    monkeypatch.setenv('MXNET_GLUON_REPO', (tmp_path / 'no_repo').as_uri() + '/')
    with pytest.raises(UserError, match=re.escape(str(tmp_path / 'models'))) as err:
        resolve_pretrained(True, 'vgg16_atrous')
    assert 'pretrained_base=False' in str(err.value) and '\n' not in str(err.value)
    assert '--no-pretrained-base' in str(err.value)     # the CLI's way out too
    assert not (tmp_path / 'models').exists() or not list((tmp_path / 'models').iterdir())
    with pytest.raises((FileNotFoundError, UserError), match='no such|not found'):
        resolve_pretrained(str(tmp_path / 'missing.params'), 'vgg16_atrous')
    with pytest.raises(ValueError, match='pretrained_base'):
        resolve_pretrained(3, 'vgg16_atrous')
    with pytest.raises(ValueError, match='TinySSD has no pretrained'):
        get_model('tiny_ssd', pretrained_base=True)
    assert resolve_pretrained(False, 'vgg16_atrous') is None


# ------------------------------------------------------------------------------------ SSD300
@pytest.fixture(scope='module')
def vgg300_outputs(vgg300):
    x = mx.nd.random.uniform(-1, 1, shape=(2, 3, 300, 300))
    with autograd.train_mode():
        train = vgg300(x)
    infer = vgg300(x)
    return train, infer


def test_ssd300_training_outputs(vgg300, vgg300_outputs):
    cls_preds, box_preds, anchors = vgg300_outputs[0]
    assert cls_preds.shape == (2, 8732, 21)
    assert box_preds.shape == (2, 8732, 4)
    assert anchors.shape == (1, 8732, 4)
    assert vgg300.class_predictors[0].predictor.weight.shape == (84, 512, 3, 3)
    assert vgg300.num_classes == 20 and len(vgg300.classes) == 20


def test_ssd300_anchors_equal_gluoncv(vgg300_outputs):
    from gluoncv.model_zoo import get_model as gcv_get_model
    ref = gcv_get_model('ssd_300_vgg16_atrous_voc', pretrained_base=False)
    ref.initialize()
    # GluonCV's anchor generators only look at the feature-map shape
    sizes = [38, 19, 10, 5, 3, 1]
    ref_anchors = np.concatenate(
        [_np(ag(mx.nd.zeros((1, 1, s, s)))) for ag, s in zip(ref.anchor_generators, sizes)], 1)
    diff = np.abs(_np(vgg300_outputs[0][2]) - ref_anchors).max()
    assert diff == 0.0, diff


def test_ssd300_inference_outputs(vgg300_outputs):
    ids, scores, bboxes = vgg300_outputs[1]
    assert ids.shape == (2, 100, 1) and scores.shape == (2, 100, 1) and bboxes.shape == (2, 100, 4)
    valid = _np(ids) >= 0
    assert valid.any()
    assert (_np(scores)[valid] > 0.01).all() and (_np(ids)[valid] < 20).all()


# ------------------------------------------------------------------------- tiny SSD, modes
@pytest.fixture()
def tiny():
    net = get_model('tiny_ssd')
    net.initialize()
    return net


def _tiny_input(batch=2):
    return mx.nd.random.uniform(-1, 1, shape=(batch, 3, 256, 256))


def test_tiny_ssd_shapes_and_anchors(tiny):
    with autograd.train_mode():
        cls_preds, box_preds, anchors = tiny(_tiny_input())
    assert anchors.shape == (1, 5444, 4)
    assert cls_preds.shape == (2, 5444, 2) and box_preds.shape == (2, 5444, 4)
    # d2l builds the same anchors with MultiBoxPrior in 0-1 corner units (default steps)
    sizes = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
    ref = np.concatenate([_np(mx.nd.contrib.MultiBoxPrior(
        mx.nd.zeros((1, 1, s, s)), sizes=sz, ratios=[1, 2, 0.5]))
        for s, sz in zip([32, 16, 8, 4, 1], sizes)], axis=1) * 256
    np.testing.assert_allclose(_center_to_corner(_np(anchors)), ref, atol=1e-3)


@pytest.mark.slow
def test_tiny_ssd_batch_32(tiny):
    with autograd.train_mode():
        cls_preds, box_preds, anchors = tiny(_tiny_input(32))
    mx.nd.waitall()
    assert anchors.shape == (1, 5444, 4)
    assert cls_preds.shape == (32, 5444, 2)
    assert box_preds.reshape((0, -1)).shape == (32, 21776)


def test_mode_switch_after_hybridize(tiny):
    tiny.hybridize(static_alloc=True, static_shape=True)
    x = _tiny_input()
    first = tiny(x)
    assert first[0].shape == (2, 100, 1)
    with autograd.record(train_mode=True):
        train = tiny(x)
        loss = train[0].sum() + train[1].sum()
    assert [o.shape for o in train] == [(2, 5444, 2), (2, 5444, 4), (1, 5444, 4)]
    loss.backward()
    assert np.abs(_np(tiny.class_predictors[0].predictor.weight.grad())).sum() > 0
    again = tiny(x)   # BatchNorm statistics moved, so only the kind of output is compared
    assert [o.shape for o in again] == [(2, 100, 1), (2, 100, 1), (2, 100, 4)]
    valid = _np(again[0]) >= 0
    assert valid.any() and (_np(again[1])[valid] <= 1).all()
    assert (_np(again[1])[valid] > 0.01).all()
    with autograd.record(train_mode=True):
        assert tiny(x)[0].shape == (2, 5444, 2)


def test_hybridized_equals_imperative(tiny):
    x = _tiny_input()
    with autograd.train_mode():
        imp_train = tiny(x)
    imp_infer = tiny(x)
    tiny.hybridize(static_alloc=True, static_shape=True)
    with autograd.train_mode():
        hyb_train = tiny(x)
    hyb_infer = tiny(x)
    for a, b in zip(list(imp_train) + list(imp_infer), list(hyb_train) + list(hyb_infer)):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-4)


def test_export_import_round_trip(tiny, tmp_path):
    x = _tiny_input(1)
    tiny.hybridize(static_alloc=True, static_shape=True)
    with autograd.train_mode():
        tiny(x)  # a training graph must not be what gets exported
    expected = tiny(x)
    sym_file, params_file = tiny.export(str(tmp_path / 'tiny'))
    loaded = gluon.SymbolBlock.imports(sym_file, ['data'], params_file)
    got = loaded(x)
    assert len(got) == 3
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(_np(a), _np(b))
    with autograd.train_mode():  # the training graph survives the export
        assert tiny(x)[2].shape == (1, 5444, 4)


def test_export_without_forward_builds_inference_graph(tmp_path):
    net = get_model('tiny_ssd')
    net.initialize()
    sym_file, params_file = net.export(str(tmp_path / 'fresh'))
    loaded = gluon.SymbolBlock.imports(sym_file, ['data'], params_file)
    assert loaded(_tiny_input(1))[2].shape == (1, 100, 4)


def test_set_nms_and_decoder(tiny):
    x = _tiny_input(1)
    tiny.hybridize()
    assert tiny(x)[0].shape == (1, 100, 1)
    tiny.set_nms(nms_thresh=0.5, nms_topk=200, post_nms=10)
    assert tiny(x)[0].shape == (1, 10, 1)
    assert (tiny.nms_thresh, tiny.nms_topk, tiny.post_nms) == (0.5, 200, 10)
    tiny.set_decoder('argmax')
    assert tiny.decoder == 'argmax'
    ids, scores, _ = tiny(x)
    assert ids.shape == (1, 10, 1)
    with pytest.raises(ValueError, match='decoder'):
        tiny.set_decoder('best')


def test_reset_class_reuses_weights():
    net = get_model('tiny_ssd', classes=('a', 'b', 'c'))
    net.initialize()
    net(_tiny_input(1))
    old_w = _np(net.class_predictors[0].predictor.weight.data())   # (4 * 4, 64, 3, 3)
    old_b = _np(net.class_predictors[0].predictor.bias.data())
    net.reset_class(['c', 'x'], reuse_weights={'c': 'c', 1: 0})
    assert net.classes == ('c', 'x') and net.num_classes == 2
    new_w = _np(net.class_predictors[0].predictor.weight.data())
    assert new_w.shape == (4 * 3, 64, 3, 3)
    np.testing.assert_array_equal(new_w[0::3], old_w[0::4])    # background
    np.testing.assert_array_equal(new_w[1::3], old_w[3::4])    # 'c' <- 'c'
    np.testing.assert_array_equal(new_w[2::3], old_w[1::4])    # 'x' <- index 0 ('a')
    np.testing.assert_array_equal(_np(net.class_predictors[0].predictor.bias.data())[1::3],
                                  old_b[3::4])
    with autograd.train_mode():
        assert net(_tiny_input(1))[0].shape == (1, 5444, 3)
    assert net(_tiny_input(1))[0].shape == (1, 100, 1)
    with pytest.raises(ValueError, match="not found in old"):
        net.reset_class(['p'], reuse_weights={'p': 'zzz'})
    net.reset_class(['p', 'c'], reuse_weights=['c'])
    np.testing.assert_array_equal(
        _np(net.class_predictors[0].predictor.weight.data())[2::3], new_w[1::3])
    net.reset_class(['q'])  # no reuse: fresh predictor
    assert net.class_predictors[0].predictor.weight.shape == (4 * 2, 64, 3, 3)


@pytest.mark.parametrize('init', ['xavier', 'uniform', 'normal'])
def test_init_choice_sets_added_layer_statistics(init):
    net = get_model('tiny_ssd', classes=tuple('abcdefghij'), init=init)
    net.initialize()
    net(_tiny_input(1))  # TinySSD's shapes are inferred on the first call
    w = _np(net.class_predictors[0].predictor.weight.data())        # (44, 64, 3, 3)
    extra = _np(net.features.extras[0][0].weight.data())            # (128, 64, 3, 3)
    for weights in (w, extra):
        fan_out = weights.shape[0] * 9
        if init == 'xavier':
            assert abs(weights.std() / np.sqrt(2.0 / fan_out) - 1) < 0.1
            assert np.abs(weights).max() > 0.07
        elif init == 'uniform':
            assert np.abs(weights).max() <= 0.07
            assert abs(weights.std() / (0.07 / np.sqrt(3)) - 1) < 0.1
        else:
            assert abs(weights.std() / 0.01 - 1) < 0.1
    np.testing.assert_array_equal(_np(net.class_predictors[0].predictor.bias.data()), 0)


def test_init_does_not_touch_vgg_base():
    net = get_model('ssd_300_vgg16_atrous_voc', init='normal')
    net.initialize()
    base = _np(net.features.stages[3][0].weight.data())             # (512, 256, 3, 3)
    assert abs(base.std() / np.sqrt(2.0 / (512 * 9)) - 1) < 0.05   # GluonCV's Xavier
    extra = _np(net.features.extras[0][2].weight.data())
    assert abs(extra.std() / 0.01 - 1) < 0.05


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"init must be one of \['normal', 'uniform', 'xavier'\]"):
        get_model('tiny_ssd', init='glorot')
    feats = get_backbone('tiny_ssd_base')
    with pytest.raises(ValueError, match='ratios must have one entry per feature map'):
        SSD(feats, None, [[10]] * 5, [[1]] * 4, [8] * 5, ['a'], 256)
    with pytest.raises(ValueError, match='classes'):
        SSD(feats, None, [[10]] * 5, [1, 2], [8] * 5, [], 256)


# ---------------------------------------------------------------- equality with GluonCV's SSD
def _copy_weights_from_gluoncv(ours, ref):
    """Give ``ours`` the weights of GluonCV's ``ref`` (both initialised, shapes known)."""
    ref_params = {n: p for n, p in ref.collect_params().items() if 'anchor' not in n}
    our_params = ours._collect_params_with_prefix()
    if not hasattr(ours.features, 'stage_a'):       # VGG: same parameter order
        for ours_p, ref_p in zip(our_params.values(), ref_params.values()):
            ours_p.set_data(ref_p.data())
        assert len(our_params) == len(ref_params)
        return
    # expanded GluonCV backbones: GluonCV keeps them in a SymbolBlock, match by name
    strip = re.compile(r'^(ssd\d+_)?((resnetv1|mobilenet)\d+_)?')
    ref_by_name = {strip.sub('', n): p for n, p in ref_params.items()}
    extra_names = {0: 'expand_trans_conv', 1: 'expand_trans_bn', 3: 'expand_conv', 4: 'expand_bn'}
    for key, param in our_params.items():
        m = re.match(r'features\.extras\.(\d+)\.(\d+)\.(\w+)$', key)
        if m:
            attr = m.group(3).replace('running_', 'moving_')  # symbolic BatchNorm naming
            name = f'{extra_names[int(m.group(2))]}{m.group(1)}_{attr}'
        else:
            name = strip.sub('', param.name)
        param.set_data(ref_by_name.pop(name).data())
    assert not ref_by_name, sorted(ref_by_name)


def _max_abs_diff(a, b):
    """Largest |a - b|, counting equal infinities and NaN in both as equal (random weights can
    overflow the box decoding's exp)."""
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid='ignore'):
        return float(np.where(same, 0.0, np.abs(a - b)).max())


def _compare_with_gluoncv(name, size):
    from gluoncv.model_zoo import get_model as gcv_get_model
    ours = get_model(name)
    ours.initialize()
    ref = gcv_get_model(name, pretrained_base=False)
    ref.initialize()
    x = mx.nd.random.uniform(-1, 1, shape=(1, 3, size, size))
    ref(x)
    ours(x)
    _copy_weights_from_gluoncv(ours, ref)
    with autograd.train_mode():
        got_train, ref_train = ours(x), ref(x)
    got_infer, ref_infer = ours(x), ref(x)
    diffs = [_max_abs_diff(_np(a), _np(b))
             for a, b in zip(list(got_train) + list(got_infer),
                             list(ref_train) + list(ref_infer))]
    # cls_preds, box_preds exact; anchors / boxes within float32 rounding of pixel values
    assert diffs[0] < 1e-4 and diffs[1] < 1e-4, diffs
    assert diffs[2] < 1e-4, diffs
    assert diffs[3] == 0 and diffs[4] < 1e-5, diffs
    # boxes: float32 rounding of pixel coordinates (huge where random weights blow up exp)
    np.testing.assert_allclose(_np(got_infer[2]), _np(ref_infer[2]), rtol=1e-5, atol=2e-3)
    print(name, "max abs diff vs GluonCV (cls, box, anchors, ids, scores, bboxes):", diffs)
    assert ours(x)[0].shape == ref(x)[0].shape
    return diffs


@pytest.mark.slow
def test_ssd300_vgg_equals_gluoncv():
    _compare_with_gluoncv('ssd_300_vgg16_atrous_voc', 300)


@pytest.mark.slow
def test_ssd512_mobilenet_equals_gluoncv():
    _compare_with_gluoncv('ssd_512_mobilenet1.0_voc', 512)


@pytest.mark.slow
def test_ssd512_resnet50_equals_gluoncv():
    _compare_with_gluoncv('ssd_512_resnet50_v1_voc', 512)

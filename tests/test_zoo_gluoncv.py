"""Every SSD of GluonCV 0.10.5's model zoo, loaded from GluonCV's own weight files.

For each GluonCV SSD name (and each ``*_custom`` name with ``classes=['raccoon', 'dog']``):
GluonCV's network is built and given seeded random weights, saved with GluonCV's
``save_parameters`` (GluonCV's file layout), loaded with ``get_model(name, pretrained=file)``,
and both networks run on two real photos (``../shared/data/raccoon``), resized to the preset's
input size and normalised with its mean/std. Detections must agree: class ids and scores
identical, boxes within 1e-4 px; the raw class/box predictions of training mode (BatchNorm on
the first photo's statistics) and the anchors must agree too. This checks the network, the
anchors, the classes and the name map of every backbone family (``gluoncv_weights.NAME_MAPS``)
at once.

Making the comparison meaningful with random weights:

* every BatchNorm gets random statistics and affine terms, every bias a random value (seeded
  initializers), so that a weight loaded into the wrong place changes the outputs (a default
  BatchNorm, 0/1 everywhere, would hide swapped statistics);
* the class and box predictors of each map get seeded normal weights scaled to that map's
  feature magnitude (logits of standard deviation 1 + ln(C + 1) / 2, 1.5 for 2 classes to 3.2
  for COCO; box offsets ~0.5): scores spread over the classes instead of a flat softmax
  (~1/(C+1), at COCO's 0.012 barely above the 0.01 threshold), so many anchors pass the
  threshold with distinct scores, NMS keeps a full list of 100 detections per photo and the
  ranking is not decided by ties; boxes stay finite.

Boxes differ from GluonCV's by at most 1 float32 ulp (the decoding's arithmetic order).
"""
import time
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from gluon_ssd.errors import UserError
from gluon_ssd.model.zoo import PRESETS, get_model

pytestmark = pytest.mark.filterwarnings(
    'ignore:Cannot decide type for the following arguments:UserWarning')

CUSTOM_CLASSES = ['raccoon', 'dog']

#: GluonCV's SSD names (without the int8 ones) and whether the test is slow (large networks).
NAMES = {
    'ssd_300_vgg16_atrous_voc': False, 'ssd_300_vgg16_atrous_coco': False,
    'ssd_300_vgg16_atrous_custom': False,
    'ssd_512_vgg16_atrous_voc': True, 'ssd_512_vgg16_atrous_coco': True,
    'ssd_512_vgg16_atrous_custom': True,
    'ssd_512_resnet18_v1_voc': False, 'ssd_512_resnet18_v1_coco': False,
    'ssd_512_resnet50_v1_voc': False, 'ssd_512_resnet50_v1_coco': False,
    'ssd_512_resnet50_v1_custom': False,
    'ssd_512_resnet101_v2_voc': True, 'ssd_512_resnet152_v2_voc': True,
    'ssd_512_mobilenet1.0_voc': False, 'ssd_512_mobilenet1.0_coco': False,
    'ssd_512_mobilenet1.0_custom': False,
    'ssd_300_mobilenet1.0_lite_coco': False,
    'ssd_300_mobilenet0.25_voc': False, 'ssd_300_mobilenet0.25_coco': False,
    'ssd_300_mobilenet0.25_custom': False,
    'ssd_300_resnet34_v1b_voc': False, 'ssd_300_resnet34_v1b_coco': False,
    'ssd_300_resnet34_v1b_custom': False,
}


def test_names_are_gluoncvs():
    import gluoncv
    gluoncv_names = {n for n in gluoncv.model_zoo.get_model_list()
                     if n.startswith('ssd') and not n.endswith('_int8')}
    assert set(NAMES) == gluoncv_names
    assert gluoncv_names <= set(PRESETS)


class _Between(mx.init.Initializer):
    """Uniform in [low, high) from MXNet's seeded generator."""

    def __init__(self, low, high):
        super().__init__(low=low, high=high)
        self.low, self.high = low, high

    def _init_weight(self, _, arr):
        mx.nd.random.uniform(self.low, self.high, out=arr)


def _randomise_init(net):
    """Random BatchNorm statistics / affine terms and biases (``net`` not yet initialised)."""
    for name, param in net.collect_params().items():
        if 'anchor' in name:
            continue
        if name.endswith(('running_var', 'moving_var', 'gamma')):
            param.init = _Between(0.5, 1.5)
        elif name.endswith(('running_mean', 'moving_mean', 'beta', 'bias')):
            param.init = _Between(-0.2, 0.2)


def _calibrate_predictors(net, x):
    """Seeded normal predictor weights scaled to each map's RMS (see the module docstring)."""
    rng = np.random.RandomState(7)
    logit_std = 1 + np.log(len(net.classes) + 1) / 2    # 1.5 (2 classes) .. 3.2 (COCO)
    feats = net.features(x)
    for k, feat in enumerate(feats):
        rms = max(float(mx.nd.sqrt(mx.nd.mean(feat * feat)).asscalar()), 1e-6)
        for predictors, scale in ((net.class_predictors, logit_std), (net.box_predictors, 0.5)):
            conv = predictors[k].predictor
            conv(feat[:, :, :1, :1])          # shapes of GluonCV's deferred predictors
            weight = conv.weight
            fan_in = int(np.prod(weight.shape[1:]))
            std = scale / (rms * np.sqrt(fan_in))
            weight.set_data(mx.nd.array(rng.normal(0, std, weight.shape)))
            conv.bias.set_data(mx.nd.array(rng.normal(0, scale / 3, conv.bias.shape)))


@pytest.fixture(scope='module')
def photos(shared_data):
    """Two raccoon photos as uint8 HWC NDArrays."""
    folder = Path(shared_data) / 'raccoon' / 'JPEGImages'
    files = [folder / 'raccoon-1.jpg', folder / 'raccoon-10.jpg']
    if not all(f.is_file() for f in files):
        pytest.skip(f"raccoon photos not found in {folder}")
    return [mx.image.imread(str(f)) for f in files]


def _batch(photos, preset):
    """The photos resized to the preset's input size, normalised: (2, 3, S, S) float32."""
    size = preset['data_size']
    mean = mx.nd.array(preset['mean']).reshape((1, 1, 3))
    std = mx.nd.array(preset['std']).reshape((1, 1, 3))
    images = [(mx.image.imresize(p, size, size, interp=1).astype('float32') / 255 - mean) / std
              for p in photos]
    return mx.nd.stack(*[img.transpose((2, 0, 1)) for img in images])


def _gluoncv_file(name, x, path):
    """GluonCV's network ``name`` with seeded random weights, saved to ``path``."""
    from gluoncv.model_zoo import get_model as gcv_get_model
    extra = {'classes': CUSTOM_CLASSES} if name.endswith('_custom') else {}
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ref = gcv_get_model(name, pretrained=False, pretrained_base=False, **extra)
        _randomise_init(ref)
        ref.initialize()
        _calibrate_predictors(ref, x[:1])
    ref.save_parameters(str(path))
    return ref


def _max_diff(a, b):
    return float(np.abs(a - b).max()) if a.size else 0.0


def _compare(name, photos, tmp_path):
    t0 = time.time()
    preset = PRESETS[name]
    x = _batch(photos, preset)
    path = tmp_path / f'{name}.params'
    ref = _gluoncv_file(name, x, path)
    classes = CUSTOM_CLASSES if name.endswith('_custom') else None
    ours = get_model(name, pretrained=str(path), classes=classes)
    assert list(ours.classes) == list(ref.classes)
    ref_ids, ref_scores, ref_boxes = [a.asnumpy() for a in ref(x)]
    ids, scores, boxes = [a.asnumpy() for a in ours(x)]
    valid = ref_ids >= 0
    assert valid.sum() == valid.size, "fewer than 100 detections per image: not meaningful"
    assert len(np.unique(ref_scores)) > 20
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    box_diff = _max_diff(boxes, ref_boxes)
    assert np.isfinite(ref_boxes).all() and box_diff <= 1e-4, box_diff
    with autograd.train_mode():      # one photo: BatchNorm on its statistics
        ref_train = [a.asnumpy() for a in ref(x[:1])]
        train = [a.asnumpy() for a in ours(x[:1])]
    raw = [_max_diff(a, b) for a, b in zip(train, ref_train)]
    assert [a.shape for a in train] == [a.shape for a in ref_train]
    assert raw[2] == 0.0, raw                    # anchors bit-identical
    assert raw[0] <= 1e-4 and raw[1] <= 1e-4, raw
    print(f"{name}: max |box diff| {box_diff:.2e} px, max |score diff| "
          f"{_max_diff(scores, ref_scores):.1e}, training-mode cls/box {raw[0]:.1e}/{raw[1]:.1e}"
          f" ({time.time() - t0:.1f} s)")


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if slow else n
                                  for n, slow in NAMES.items()])
def test_gluoncv_weights_give_gluoncv_detections(name, photos, tmp_path):
    _compare(name, photos, tmp_path)


# ---------------------------------------------------------------- weight files that do not fit
SMALL = 'ssd_300_mobilenet0.25_voc'     # the smallest GluonCV SSD (1 s to build and run)


@pytest.fixture(scope='module')
def small_file(tmp_path_factory):
    """GluonCV's ``ssd_300_mobilenet0.25_voc`` with random weights, saved by GluonCV."""
    from gluoncv.model_zoo import get_model as gcv_get_model
    mx.random.seed(3)
    ref = gcv_get_model(SMALL, pretrained=False, pretrained_base=False)
    ref.initialize()
    ref(mx.nd.zeros((1, 3, 300, 300)))
    path = tmp_path_factory.mktemp('gluoncv') / f'{SMALL}.params'
    ref.save_parameters(str(path))
    return str(path)


def _edited(src, dst, drop=(), add=None):
    params = mx.nd.load(src)
    for key in drop:
        del params[key]
    params.update(add or {})
    mx.nd.save(str(dst), params)
    return str(dst)


def _one_line_error(path, **kwargs):
    with pytest.raises(UserError) as err:
        get_model(SMALL, pretrained=path, **kwargs)
    message = str(err.value)
    assert '\n' not in message and path in message
    return message


@pytest.mark.parametrize('key', ['features.mobilenet0_conv99_weight', 'features.extra_thing',
                                 'anchor_generators.6.anchors',
                                 'class_predictors.7.predictor.weight'])
def test_unexpected_key_names_file_and_key(small_file, tmp_path, key):
    path = _edited(small_file, tmp_path / 'extra.params', add={key: mx.nd.zeros((2,))})
    assert repr(key) in _one_line_error(path)


def test_missing_key_names_file_and_key(small_file, tmp_path):
    path = _edited(small_file, tmp_path / 'missing.params', drop=['features.expand_bn1_moving_var'])
    assert "'features.extras.1.4.running_var'" in _one_line_error(path)
    path = _edited(small_file, tmp_path / 'missing2.params',
                   drop=['features.mobilenet0_conv3_weight'])
    assert "'features.stage_a.9.weight'" in _one_line_error(path)


def test_wrong_class_count_names_both_counts(small_file, tmp_path):
    message = _one_line_error(small_file, classes=['raccoon', 'dog'])
    assert 'are for 20 classes' in message and 'built with 2;' in message
    ours = get_model(SMALL, classes=['raccoon', 'dog'])
    ours.initialize()
    ours(mx.nd.zeros((1, 3, 300, 300)))
    own = str(tmp_path / 'ours.params')
    ours.save_parameters(own)
    message = _one_line_error(own)                # our layout, VOC's 20 classes expected
    assert 'are for 2 classes' in message and 'built with 20;' in message


def test_not_a_weights_file(tmp_path):
    path = tmp_path / 'junk.params'
    path.write_bytes(b'not a params file')
    assert 'not a readable MXNet .params file' in _one_line_error(str(path))
    legacy = str(tmp_path / 'legacy.params')
    mx.nd.save(legacy, {'ssd0_conv0_weight': mx.nd.zeros(1)})
    assert 'legacy save_params layout' in _one_line_error(legacy)


def test_our_layout_loads_directly(small_file, tmp_path):
    net = get_model(SMALL, pretrained=small_file)
    own = str(tmp_path / 'ours.params')
    net.save_parameters(own)
    again = get_model(SMALL, pretrained=own)
    x = mx.nd.random.uniform(-1, 1, (1, 3, 300, 300))
    for a, b in zip(net(x), again(x)):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    path = _edited(own, tmp_path / 'ours_extra.params', add={'features.bogus': mx.nd.zeros(1)})
    assert "unexpected parameter 'features.bogus'" in _one_line_error(path)
    path = _edited(own, tmp_path / 'ours_missing.params', drop=['features.extras.0.0.weight'])
    assert "'features.extras.0.0.weight'" in _one_line_error(path)


# -------------------------------------------------- pretrained=True and transfer via the store
@pytest.fixture()
def small_in_store(small_file, tmp_path):
    """``ssd_300_mobilenet0.25_voc`` (no weights in GluonCV's store) registered with a cached
    file under ``tmp_path``: ``pretrained=True`` loads it without a download."""
    import hashlib
    import shutil
    from gluon_ssd.model import store
    with open(small_file, 'rb') as f:
        store.register(SMALL, hashlib.sha1(f.read()).hexdigest())
    target = store.cache_path(SMALL, str(tmp_path))
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(small_file, target)
    yield str(tmp_path)
    store.unregister(SMALL)


def test_pretrained_true_loads_the_store_file(small_file, small_in_store):
    net = get_model(SMALL, pretrained=True, root=small_in_store)
    ref = mx.nd.load(small_file)
    np.testing.assert_array_equal(net.features.stage_a[0].weight.data().asnumpy(),
                                  ref['features.mobilenet0_conv0_weight'].asnumpy())
    assert net(mx.nd.zeros((1, 3, 300, 300)))[0].shape == (1, 100, 1)    # initialised


@pytest.mark.parametrize('source', ['store', 'file'])
def test_custom_transfer_reuses_same_named_classes(small_file, small_in_store, source):
    """GluonCV's ``*_custom(classes, transfer='voc')``: the trained VOC detector with its class
    predictors reset to the new classes; 'dog' (and the background) keep their VOC rows."""
    pretrained = small_file if source == 'file' else False
    net = get_model('ssd_300_mobilenet0.25_custom', classes=['raccoon', 'dog'], transfer='voc',
                    root=small_in_store, pretrained=pretrained)
    assert net.classes == ('raccoon', 'dog')
    ref = mx.nd.load(small_file)
    voc_dog = 11 + 1
    for k, anchors in enumerate(net.num_anchors):
        got = net.class_predictors[k].predictor.weight.data().asnumpy()
        old = ref[f'class_predictors.{k}.predictor.weight'].asnumpy()
        np.testing.assert_array_equal(got[0::3], old[0::21])           # background
        np.testing.assert_array_equal(got[2::3], old[voc_dog::21])     # dog
        assert not np.array_equal(got[1::3], old[1::21])               # raccoon: new
        assert got.shape[0] == anchors * 3
    np.testing.assert_array_equal(net.box_predictors[0].predictor.weight.data().asnumpy(),
                                  ref['box_predictors.0.predictor.weight'].asnumpy())

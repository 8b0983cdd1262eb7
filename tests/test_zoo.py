"""Tests of gluon_ssd.model.zoo: names, presets and anchors identical to GluonCV 0.10.5's."""
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from gluon_ssd.errors import UserError
from gluon_ssd.model import store
from gluon_ssd.model.backbones import resolve_pretrained
from gluon_ssd.model.classes import COCO_CLASSES, VOC_CLASSES
from gluon_ssd.model.io import make_meta
from gluon_ssd.model.zoo import (NETWORKS, PRESETS, anchor_sizes, get_model, get_model_list,
                                 get_preset, list_models, model_name)

pytestmark = pytest.mark.filterwarnings(
    'ignore:Cannot decide type for the following arguments:UserWarning')

# GluonCV 0.10.5's SSD names (without the int8 ones): tests/test_zoo_gluoncv.py checks the list
GLUONCV_NAMES = [
    'ssd_300_vgg16_atrous_voc', 'ssd_300_vgg16_atrous_coco', 'ssd_300_vgg16_atrous_custom',
    'ssd_512_vgg16_atrous_voc', 'ssd_512_vgg16_atrous_coco', 'ssd_512_vgg16_atrous_custom',
    'ssd_512_resnet18_v1_voc', 'ssd_512_resnet18_v1_coco',
    'ssd_512_resnet50_v1_voc', 'ssd_512_resnet50_v1_coco', 'ssd_512_resnet50_v1_custom',
    'ssd_512_resnet101_v2_voc', 'ssd_512_resnet152_v2_voc',
    'ssd_512_mobilenet1.0_voc', 'ssd_512_mobilenet1.0_coco', 'ssd_512_mobilenet1.0_custom',
    'ssd_300_mobilenet1.0_lite_coco',
    'ssd_300_mobilenet0.25_voc', 'ssd_300_mobilenet0.25_coco', 'ssd_300_mobilenet0.25_custom',
    'ssd_300_resnet34_v1b_voc', 'ssd_300_resnet34_v1b_coco', 'ssd_300_resnet34_v1b_custom']

# feature map sizes of each base at its data size, and the resulting anchor count
MAP_SIZES = {'vgg16_atrous_300': ([38, 19, 10, 5, 3, 1], 8732),
             'vgg16_atrous_512': ([64, 32, 16, 8, 4, 2, 1], 24564),
             'resnet18_v1_512': ([32, 16, 8, 4, 2, 1], 6132),
             'resnet50_v1_512': ([32, 16, 8, 4, 2, 1], 6132),
             'resnet101_v2_512': ([32, 16, 8, 4, 2, 1], 6132),
             'resnet152_v2_512': ([64, 32, 16, 8, 4, 2, 1], 24564),
             'mobilenet1.0_512': ([32, 16, 8, 4, 2, 1], 6132),
             'mobilenet1.0_lite_300': ([19, 10, 5, 3, 2, 1], 1917),
             'mobilenet0.25_300': ([19, 10, 5, 3, 2, 1], 2268),
             'resnet34_v1b_300': ([38, 19, 10, 5, 3, 1], 8732),
             'tiny_ssd_base': ([32, 16, 8, 4, 1], 5444)}


def _anchors(generators, sizes):
    """Concatenated anchors (1, N, 4) of ``generators`` for square maps of ``sizes``."""
    return np.concatenate([ag(mx.nd.zeros((1, 1, s, s))).asnumpy()
                           for ag, s in zip(generators, sizes)], axis=1)


def test_list_models():
    ours = ['tiny_ssd', 'tiny_ssd_128', 'scratch_ssd_192', 'scratch_ssd_256', 'scratch_ssd_320']
    assert sorted(GLUONCV_NAMES + ours) == list_models()
    assert not [n for n in list_models() if n.endswith('_int8')]   # get_model trains these
    int8 = ['ssd_300_vgg16_atrous_voc_int8', 'ssd_512_mobilenet1.0_voc_int8',
            'ssd_512_resnet50_v1_voc_int8', 'ssd_512_vgg16_atrous_voc_int8']
    assert get_model_list() == list_models() + int8               # + GluonCV's INT8 graphs


def test_unknown_name_lists_models():
    with pytest.raises(ValueError, match='ssd_300_vgg16_atrous_voc'):
        get_model('ssd_999')


def test_presets_are_plain_data():
    preset = get_preset('ssd_300_vgg16_atrous_voc')
    preset['steps'][0] = 0        # a copy: the registry is untouched
    assert PRESETS['ssd_300_vgg16_atrous_voc']['steps'][0] == 8
    for name, p in PRESETS.items():
        n = len(p['ratios'])
        assert len(p['steps']) == n and len(anchor_sizes(p)) == n, name


def test_classes_default_and_override():
    assert get_model('ssd_300_vgg16_atrous_voc').classes == VOC_CLASSES
    assert get_model('ssd_512_vgg16_atrous_coco').num_classes == 80
    assert get_model('ssd_512_vgg16_atrous_coco').classes == COCO_CLASSES
    assert get_model('tiny_ssd').classes == ('object',)
    net = get_model('tiny_ssd', classes=['banana', 'raccoon'], nms_thresh=0.5, decoder='argmax')
    assert net.num_classes == 2 and net.nms_thresh == 0.5 and net.decoder == 'argmax'


def test_custom_names_need_classes():
    net = get_model('ssd_300_mobilenet0.25_custom', classes=['raccoon', 'dog'])
    assert net.classes == ('raccoon', 'dog')
    with pytest.raises(ValueError, match='classes='):
        get_model('ssd_300_mobilenet0.25_custom')
    with pytest.warns(UserWarning, match='custom models have no trained weights'):
        net = get_model('ssd_300_mobilenet0.25_custom', classes=['a'], pretrained=True)
    assert net.class_predictors[0].predictor.weight._data is None      # fresh, as GluonCV
    with pytest.raises(ValueError, match=r"transfer must be one of \['coco', 'voc'\]"):
        get_model('ssd_300_mobilenet0.25_custom', classes=['a'], transfer='kitti')
    with pytest.raises(ValueError, match='only|not one'):
        get_model('ssd_300_mobilenet0.25_voc', transfer='coco')


def test_pretrained_true_without_store_weights_is_a_user_error():
    with pytest.raises(UserError, match=r"no trained weights for ssd_512_resnet18_v1_voc .*"
                                        r"pretrained=False"):
        get_model('ssd_512_resnet18_v1_voc', pretrained=True)
    with pytest.raises(UserError, match='weights file not found'):
        get_model('ssd_300_mobilenet0.25_voc', pretrained='/no/such/file.params')


def test_lite_preset_has_1x1_predictors_after_reset_class():
    net = get_model('ssd_300_mobilenet1.0_lite_coco')
    assert net.num_anchors == [3, 6, 6, 6, 6, 6]
    net.initialize()
    net(mx.nd.zeros((1, 3, 300, 300)))
    assert net.class_predictors[1].predictor.weight.shape == (6 * 81, 1024, 1, 1)
    net.reset_class(['person', 'raccoon'], reuse_weights=['person'])
    assert net.class_predictors[1].predictor.weight.shape == (6 * 3, 1024, 1, 1)
    with autograd.train_mode():
        cls_preds = net(mx.nd.zeros((1, 3, 300, 300)))[0]
    assert cls_preds.shape == (1, 1917, 3)


def test_class_names_match_gluoncv():
    from gluoncv.data import COCODetection, VOCDetection
    assert VOC_CLASSES == tuple(VOCDetection.CLASSES)
    assert COCO_CLASSES == tuple(COCODetection.CLASSES)


def test_tiny_ssd_anchor_count():
    net = get_model('tiny_ssd')
    sizes, count = MAP_SIZES['tiny_ssd_base']
    assert _anchors(net.anchor_generators, sizes).shape == (1, count, 4)
    assert net.num_anchors == [4] * 5


@pytest.mark.parametrize('name', GLUONCV_NAMES)
def test_anchors_equal_gluoncv(name):
    from gluoncv.model_zoo import get_model as gcv_get_model
    classes = ['raccoon', 'dog'] if name.endswith('_custom') else None
    ours = get_model(name, classes=classes)
    extra = {'classes': classes} if classes else {}
    ref = gcv_get_model(name, pretrained_base=False, **extra)
    ref.anchor_generators.initialize()  # GluonCV stores its anchors as constants
    sizes, count = MAP_SIZES[PRESETS[name]['base']]
    got = _anchors(ours.anchor_generators, sizes)
    expected = _anchors(ref.anchor_generators, sizes)
    assert got.shape == (1, count, 4)
    assert np.abs(got - expected).max() == 0.0      # bit-identical (tests/test_anchors.py)
    assert ours.num_anchors == [ag.num_depth for ag in ref.anchor_generators]
    assert list(ours.classes) == list(ref.classes)


@pytest.mark.parametrize('name, size, maps, count', [('tiny_ssd', 256, [32, 16, 8, 4, 1], 5444),
                                                    ('tiny_ssd_128', 128, [16, 8, 4, 2, 1], 1364)])
def test_tiny_ssd_anchors_equal_d2l_multiboxprior(name, size, maps, count):
    """d2l builds TinySSD anchors with MultiBoxPrior's default steps; ours match at both sizes."""
    d2l_sizes = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
    ref = np.concatenate([
        mx.nd.contrib.MultiBoxPrior(mx.nd.zeros((1, 1, m, m)), sizes=s, ratios=[1, 2, 0.5]).asnumpy()
        for m, s in zip(maps, d2l_sizes)], axis=1) * size                 # corner, pixels
    ours = _anchors(get_model(name).anchor_generators, maps)             # center, pixels
    ours = np.concatenate([ours[..., :2] - ours[..., 2:] / 2, ours[..., :2] + ours[..., 2:] / 2],
                          axis=-1)
    assert ours.shape == (1, count, 4)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


# ------------------------------------------------------------------------- --network / presets
@pytest.mark.parametrize('network, shape, dataset, name', [
    ('vgg16_atrous', None, 'voc', 'ssd_300_vgg16_atrous_voc'),
    ('vgg16_atrous', 512, 'coco', 'ssd_512_vgg16_atrous_coco'),
    ('vgg16_atrous', 300, 'synthetic', 'ssd_300_vgg16_atrous_voc'),
    ('resnet18_v1', None, 'coco', 'ssd_512_resnet18_v1_coco'),
    ('resnet101_v2', None, 'voc', 'ssd_512_resnet101_v2_voc'),
    ('resnet152_v2', 512, 'rec', 'ssd_512_resnet152_v2_voc'),
    ('mobilenet1.0_lite', None, 'coco', 'ssd_300_mobilenet1.0_lite_coco'),
    ('mobilenet1.0_lite', None, 'synthetic', 'ssd_300_mobilenet1.0_lite_coco'),
    ('mobilenet0.25', None, 'voc', 'ssd_300_mobilenet0.25_voc'),
    ('resnet34_v1b', 300, 'coco', 'ssd_300_resnet34_v1b_coco'),
    ('tiny_ssd', None, 'coco', 'tiny_ssd_128'),
])
def test_model_name(network, shape, dataset, name):
    assert model_name(network, shape, dataset) == name
    assert make_meta(name, [])['network'] == network       # what a trained model records


@pytest.mark.parametrize('network, dataset', [('resnet101_v2', 'coco'), ('resnet152_v2', 'coco'),
                                              ('mobilenet1.0_lite', 'voc')])
def test_model_name_never_invents_a_preset(network, dataset):
    with pytest.raises(UserError, match=f'--dataset {dataset}: .*--network {network}') as err:
        model_name(network, dataset=dataset)
    assert '\n' not in str(err.value)
    with pytest.raises(UserError, match='--data-shape'):
        model_name(network, 700, dataset)
    with pytest.raises(UserError, match='--network'):
        model_name('resnet1000', dataset=dataset)


def test_every_network_preset_exists():
    names = set()
    for network, spec in NETWORKS.items():
        for shape in spec['data_shapes']:
            for dataset in spec['datasets'] or ['synthetic']:
                names.add(model_name(network, shape, dataset))
    assert names <= set(PRESETS)
    assert {n for n in GLUONCV_NAMES if not n.endswith('_custom')} <= names


# ------------------------------------------------------------------ weights through the store
def _register(tmp_path, name, path):
    """Make ``path`` the cached store file of ``name`` under ``tmp_path`` (no download)."""
    import hashlib
    sha1 = hashlib.sha1(open(path, 'rb').read()).hexdigest()
    store.register(name, sha1)
    target = store.cache_path(name, str(tmp_path))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(path, target)
    return target


def test_pretrained_base_true_comes_from_the_store(tmp_path, monkeypatch):
    from gluoncv.model_zoo.mobilenet import mobilenet0_25
    src = mobilenet0_25(pretrained=False)
    src.initialize()
    src(mx.nd.zeros((1, 3, 32, 32)))
    src.save_parameters(str(tmp_path / 'base.params'))
    try:
        _register(tmp_path, 'mobilenet0.25', str(tmp_path / 'base.params'))
        feats = get_model('ssd_300_mobilenet0.25_voc', pretrained_base=True,
                          root=str(tmp_path)).features
        np.testing.assert_array_equal(feats.stage_a[0].weight.data().asnumpy(),
                                      src.features[0].weight.data().asnumpy())
    finally:
        store.unregister('mobilenet0.25')
    # absent and not downloadable: one line naming the cache path and pretrained_base=False
    monkeypatch.setenv('MXNET_GLUON_REPO', (tmp_path / 'no_repo').as_uri() + '/')
    with pytest.raises(UserError, match=r'put the file at .*resnet34_v1b-.*\.params or pass '
                                        r'pretrained_base=False'):
        resolve_pretrained(True, 'resnet34_v1b', root=str(tmp_path / 'cache'))
    with pytest.raises(UserError, match='pretrained_base=False'):
        get_model('ssd_300_resnet34_v1b_voc', pretrained_base=True, root=str(tmp_path / 'cache'))

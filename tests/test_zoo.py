"""Tests of gluon_ssd.model.zoo: names, presets and anchors identical to GluonCV 0.10.5's."""
import mxnet as mx
import numpy as np
import pytest

from gluon_ssd.model.classes import COCO_CLASSES, VOC_CLASSES
from gluon_ssd.model.zoo import PRESETS, anchor_sizes, get_model, get_preset, list_models

pytestmark = pytest.mark.filterwarnings(
    'ignore:Cannot decide type for the following arguments:UserWarning')

GLUONCV_NAMES = ['ssd_300_vgg16_atrous_voc', 'ssd_300_vgg16_atrous_coco',
                 'ssd_512_vgg16_atrous_voc', 'ssd_512_vgg16_atrous_coco',
                 'ssd_512_resnet50_v1_voc', 'ssd_512_resnet50_v1_coco',
                 'ssd_512_mobilenet1.0_voc', 'ssd_512_mobilenet1.0_coco']

# feature map sizes of each base at its data size, and the resulting anchor count
MAP_SIZES = {'vgg16_atrous_300': ([38, 19, 10, 5, 3, 1], 8732),
             'vgg16_atrous_512': ([64, 32, 16, 8, 4, 2, 1], 24564),
             'resnet50_v1_512': ([32, 16, 8, 4, 2, 1], 6132),
             'mobilenet1.0_512': ([32, 16, 8, 4, 2, 1], 6132),
             'tiny_ssd_base': ([32, 16, 8, 4, 1], 5444)}


def _anchors(generators, sizes):
    """Concatenated anchors (1, N, 4) of ``generators`` for square maps of ``sizes``."""
    return np.concatenate([ag(mx.nd.zeros((1, 1, s, s))).asnumpy()
                           for ag, s in zip(generators, sizes)], axis=1)


def test_list_models():
    assert sorted(GLUONCV_NAMES + ['tiny_ssd', 'tiny_ssd_128']) == list_models()


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
    ours = get_model(name)
    ref = gcv_get_model(name, pretrained_base=False)
    ref.anchor_generators.initialize()  # GluonCV stores its anchors as constants
    sizes, count = MAP_SIZES[PRESETS[name]['base']]
    got = _anchors(ours.anchor_generators, sizes)
    expected = _anchors(ref.anchor_generators, sizes)
    assert got.shape == (1, count, 4)
    assert np.abs(got - expected).max() == 0.0      # bit-identical (tests/test_anchors.py)
    assert ours.num_anchors == [ag.num_depth for ag in ref.anchor_generators]


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

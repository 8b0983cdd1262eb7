"""Named SSD configurations (presets as plain data) and ``get_model``.

A preset is a dict:

* ``base``: backbone name (a key of ``backbones.BACKBONES``);
* ``data_size``: square input size in pixels the anchors are laid out for;
* anchor sizes, either ``min_max_sizes`` (the SSD paper's L+1 scales in pixels, as GluonCV's
  presets; layer k uses ``(s_k, sqrt(s_k * s_{k+1}))``) or ``rel_sizes`` (per layer, the ratio-1
  sizes as fractions of ``data_size``, as d2l's TinySSD);
* ``ratios``: per layer aspect ratios; ``steps``: per layer anchor spacing in pixels;
* ``classes``: key of ``classes.CLASS_SETS`` (the default class names);
* ``mean`` / ``std``: the input normalisation, ``(x / 255 - mean) / std`` per RGB channel.

The GluonCV presets copy the numbers of GluonCV 0.10.5 so that the anchors are identical.
:data:`NETWORKS` and :func:`model_name` are the one place that turns train_ssd.py's
``--network/--data-shape/--dataset`` into a preset name.
"""
import copy

from gluon_ssd.anchors import ssd_sizes
from gluon_ssd.errors import UserError
from gluon_ssd.model.backbones import IMAGENET_MEAN, IMAGENET_STD, get_backbone
from gluon_ssd.model.classes import CLASS_SETS
from gluon_ssd.model.ssd import SSD

__all__ = ['PRESETS', 'NETWORKS', 'list_models', 'get_model_list', 'get_preset', 'anchor_sizes',
           'model_name', 'get_model']

_R3 = [1, 2, 0.5]
_R5 = [1, 2, 0.5, 3, 1.0 / 3]

_IMAGENET = {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD}

_VGG300 = {'base': 'vgg16_atrous_300', 'data_size': 300,
           'ratios': [_R3] + [_R5] * 3 + [_R3] * 2,
           'steps': [8, 16, 32, 64, 100, 300]}
_VGG512 = {'base': 'vgg16_atrous_512', 'data_size': 512,
           'min_max_sizes': [51.2, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
           'ratios': [_R3] + [_R5] * 4 + [_R3] * 2,
           'steps': [8, 16, 32, 64, 128, 256, 512]}
_EXPANDED512 = {'data_size': 512,
                'min_max_sizes': [51.2, 102.4, 189.4, 276.4, 363.52, 450.6, 492],
                'ratios': [_R3] + [_R5] * 3 + [_R3] * 2,
                'steps': [16, 32, 64, 128, 256, 512]}

# d2l's TinySSD: 5 maps, sizes relative to the input, ratios 1, 2, 0.5 on every map.
_TINY = {'base': 'tiny_ssd_base',
         'rel_sizes': [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]],
         'ratios': [_R3] * 5,
         'classes': 'object'}

#: Model name -> preset (see the module docstring for the keys).
_PRESETS = {
    'ssd_300_vgg16_atrous_voc': dict(_VGG300, classes='voc',
                                     min_max_sizes=[30, 60, 111, 162, 213, 264, 315]),
    'ssd_300_vgg16_atrous_coco': dict(_VGG300, classes='coco',
                                      min_max_sizes=[21, 45, 99, 153, 207, 261, 315]),
    'ssd_512_vgg16_atrous_voc': dict(_VGG512, classes='voc'),
    'ssd_512_vgg16_atrous_coco': dict(_VGG512, classes='coco'),
    'ssd_512_resnet50_v1_voc': dict(_EXPANDED512, base='resnet50_v1_512', classes='voc'),
    'ssd_512_resnet50_v1_coco': dict(
        _EXPANDED512, base='resnet50_v1_512', classes='coco',
        min_max_sizes=[51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72]),
    'ssd_512_mobilenet1.0_voc': dict(_EXPANDED512, base='mobilenet1.0_512', classes='voc'),
    'ssd_512_mobilenet1.0_coco': dict(_EXPANDED512, base='mobilenet1.0_512', classes='coco'),
    'tiny_ssd': dict(_TINY, data_size=256, steps=[8, 16, 32, 64, 256]),
    # The same d2l network and relative anchors on a 128 px input (maps 16/8/4/2/1, 1364
    # anchors): about 3x faster per image, the default of train_ssd.py on CPU.
    'tiny_ssd_128': dict(_TINY, data_size=128, steps=[8, 16, 32, 64, 128]),
}
PRESETS = {name: dict(preset, **_IMAGENET) for name, preset in _PRESETS.items()}

#: train_ssd.py's ``--network`` -> the input sizes it has presets for (first = default) and
#: whether its presets exist per dataset (``ssd_<size>_<network>_{voc,coco}``: the COCO presets
#: have other anchor sizes) or once (tiny_ssd: 256 px is d2l's model, others ``tiny_ssd_<size>``).
NETWORKS = {
    'tiny_ssd': {'data_shapes': (128, 256), 'per_dataset': False},
    'vgg16_atrous': {'data_shapes': (300, 512), 'per_dataset': True},
    'resnet50_v1': {'data_shapes': (512,), 'per_dataset': True},
    'mobilenet1.0': {'data_shapes': (512,), 'per_dataset': True},
}


def list_models():
    """Names accepted by :func:`get_model` (sorted list of str)."""
    return sorted(PRESETS)


def get_model_list():
    """GluonCV's name for :func:`list_models` (every name :func:`get_model` accepts)."""
    return list_models()


def model_name(network, data_shape=None, dataset='voc'):
    """The preset name of train_ssd.py's ``--network``, ``--data-shape`` and ``--dataset``.

    ``data_shape=None`` takes the network's default size. VGG16-atrous, ResNet50-v1 and
    MobileNet1.0 have GluonCV's COCO presets (other anchor sizes) for ``dataset='coco'`` and the
    VOC presets for every other dataset (the class list is the dataset's either way). TinySSD:
    ``tiny_ssd`` (d2l's 256 px model) or ``tiny_ssd_<size>``. Raises :class:`UserError` naming
    ``--network`` or ``--data-shape``.
    """
    if network not in NETWORKS:
        raise UserError(f"--network: unknown network {network!r}; choose one of "
                        f"{', '.join(NETWORKS)}")
    shapes = NETWORKS[network]['data_shapes']
    data_shape = shapes[0] if data_shape is None else data_shape
    if data_shape not in shapes:
        raise UserError(f"--data-shape: {network} supports {', '.join(map(str, shapes))}, "
                        f"got {data_shape}")
    if not NETWORKS[network]['per_dataset']:
        return 'tiny_ssd' if data_shape == 256 else f'tiny_ssd_{data_shape}'
    return f"ssd_{data_shape}_{network}_{'coco' if dataset == 'coco' else 'voc'}"


def get_preset(name):
    """A deep copy of the preset dict of model ``name``."""
    if name not in PRESETS:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(list_models())}")
    return copy.deepcopy(PRESETS[name])


def anchor_sizes(preset):
    """Per-layer ratio-1 anchor sizes in pixels of a preset (list of L tuples)."""
    if 'min_max_sizes' in preset:
        return ssd_sizes(preset['min_max_sizes'])
    return [tuple(s * preset['data_size'] for s in layer) for layer in preset['rel_sizes']]


def get_model(name, classes=None, pretrained_base=False, **kwargs):
    """Build the SSD called ``name`` (see :func:`list_models`).

    Parameters
    ----------
    name : str
        Model name, e.g. ``'ssd_300_vgg16_atrous_voc'`` or ``'tiny_ssd'``.
    classes : sequence of str or None
        Foreground class names; default: the preset's dataset classes.
    pretrained_base : bool or str
        ``False``, a local ``.params`` file of the base network, or ``True`` for GluonCV's cached
        file (never downloaded; see ``backbones.resolve_pretrained``).
    **kwargs
        Passed to :class:`~gluon_ssd.model.ssd.SSD` (``nms_thresh``, ``nms_topk``, ``post_nms``,
        ``decoder``, ``init``, ``stds``).

    Returns an uninitialised :class:`SSD` (call ``initialize()``; a pretrained base is already
    loaded). Inputs are ``(B, 3, S, S)`` with ``S = preset['data_size']``; anchors are center
    format in pixels of that size.
    """
    preset = get_preset(name)
    if classes is None:
        classes = CLASS_SETS[preset['classes']]
    features = get_backbone(preset['base'], pretrained_base=pretrained_base)
    return SSD(features, getattr(features, 'channels', None), anchor_sizes(preset),
               preset['ratios'], preset['steps'], classes, preset['data_size'], **kwargs)

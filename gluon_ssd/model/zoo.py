"""Named SSD configurations (presets as plain data) and ``get_model``.

A preset is a dict:

* ``base``: backbone name (a key of ``backbones.BACKBONES``);
* ``data_size``: square input size in pixels the anchors are laid out for;
* anchor sizes, either ``min_max_sizes`` (the SSD paper's L+1 scales in pixels, as GluonCV's
  presets; layer k uses ``(s_k, sqrt(s_k * s_{k+1}))``) or ``rel_sizes`` (per layer, the ratio-1
  sizes as fractions of ``data_size``, as d2l's TinySSD);
* ``ratios``: per layer aspect ratios; ``steps``: per layer anchor spacing in pixels;
* ``classes``: key of ``classes.CLASS_SETS`` (the default class names), or ``None`` for
  GluonCV's ``*_custom`` entry points (``classes=`` is required);
* ``mean`` / ``std``: the input normalisation, ``(x / 255 - mean) / std`` per RGB channel;
* optional: ``anchor_layout`` (``'lite'``: ``ssd.LiteAnchorGenerator``, whose first layer has
  only the size ``s_0``), ``predictor_kernel`` (3 unless given; padding ``kernel // 2``),
  ``transfer`` (custom presets: ``{dataset: trained preset}`` for ``get_model(transfer=...)``),
  ``head_norm`` (``SSD(head_norm=...)``, default ``False``) and ``bn_momentum`` (of the head
  norms' BatchNorms, default MXNet's 0.9).

The GluonCV presets copy the numbers of GluonCV 0.10.5 so that the networks and anchors are
identical (including its quirks: e.g. the 300 px MobileNet0.25 presets lay 19x19 maps out with
step 8). :data:`NETWORKS` and :func:`model_name` are the one place that turns train_ssd.py's
``--network/--data-shape/--dataset`` into a preset name.
"""
import copy
import os
import warnings

from gluon_ssd.anchors import ssd_sizes
from gluon_ssd.errors import UserError
from gluon_ssd.model.backbones import IMAGENET_MEAN, IMAGENET_STD, get_backbone
from gluon_ssd.model.classes import CLASS_SETS
from gluon_ssd.model.scratch import BN_MOMENTUM as SCRATCH_BN_MOMENTUM
from gluon_ssd.model.ssd import SSD, LiteAnchorGenerator

__all__ = ['PRESETS', 'NETWORKS', 'INT8_MODELS', 'list_models', 'get_model_list', 'get_preset',
           'anchor_sizes', 'model_name', 'get_model']

_R3 = [1, 2, 0.5]
_R5 = [1, 2, 0.5, 3, 1.0 / 3]

_IMAGENET = {'mean': IMAGENET_MEAN, 'std': IMAGENET_STD}

# 300 px, six maps 38..1 (VGG16, ResNet34-v1b) or 19..1 (MobileNet0.25)
_SSD300 = {'data_size': 300, 'ratios': [_R3] + [_R5] * 3 + [_R3] * 2,
           'steps': [8, 16, 32, 64, 100, 300]}
_SIZES300_VOC = [30, 60, 111, 162, 213, 264, 315]
_SIZES300_COCO = [21, 45, 99, 153, 207, 261, 315]
# 512 px, seven maps 64..1 (VGG16, ResNet152-v2)
_SSD512_7 = {'data_size': 512,
             'min_max_sizes': [51.2, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8, 537.6],
             'ratios': [_R3] + [_R5] * 4 + [_R3] * 2,
             'steps': [8, 16, 32, 64, 128, 256, 512]}
# 512 px, six maps 32..1 (ResNet18/50-v1, ResNet101-v2, MobileNet1.0)
_EXPANDED512 = {'data_size': 512,
                'min_max_sizes': [51.2, 102.4, 189.4, 276.4, 363.52, 450.6, 492],
                'ratios': [_R3] + [_R5] * 3 + [_R3] * 2,
                'steps': [16, 32, 64, 128, 256, 512]}
_RESNET50_COCO_SIZES = [51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72]
# GluonCV's ssd_300_mobilenet1.0_lite_coco (1x1 predictors, TF-style anchors; maps 19..1)
_LITE300 = {'data_size': 300, 'base': 'mobilenet1.0_lite_300',
            'min_max_sizes': [60, 105, 150, 195, 240, 285, 300],
            'ratios': [_R3] + [_R5] * 5, 'steps': [16, 30, 60, 100, 150, 300],
            'anchor_layout': 'lite', 'predictor_kernel': 1}

# d2l's TinySSD: 5 maps, sizes relative to the input, ratios 1, 2, 0.5 on every map.
_TINY = {'base': 'tiny_ssd_base',
         'rel_sizes': [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]],
         'ratios': [_R3] * 5,
         'classes': 'object'}


def _datasets(prefix, preset, datasets=('voc', 'coco'), **per_dataset):
    """``{prefix_<dataset>: preset with classes=<dataset>}``; ``per_dataset`` overrides."""
    return {f'{prefix}_{ds}': dict(preset, classes=ds, **per_dataset.get(ds, {}))
            for ds in datasets}


def _custom(prefix, preset, datasets=('voc', 'coco')):
    """GluonCV's ``<prefix>_custom`` entry point: no default classes, ``transfer`` sources."""
    return {f'{prefix}_custom': dict(preset, classes=None,
                                     transfer={ds: f'{prefix}_{ds}' for ds in datasets})}


# From-scratch SSD (model/scratch.py, BatchNorm in the backbone, extras and heads: ScratchDet):
# 6 maps at strides 8, 16, 32, 64, 128 and a global one; ratio-1 anchors of 6, 12, 24, 45, 70
# and 90 % of the image (second size sqrt(s_k * s_k+1), s_6 = 1). Each anchor is about twice
# its spacing at 256 px: anchors the size of their spacing left objects between anchors (IoU <
# 0.3) and measured 0.14 vs 0.41 synthetic mAP. Ratios 1, 2, 0.5.
_SCRATCH_S = [0.06, 0.12, 0.24, 0.45, 0.7, 0.9, 1.0]
_SCRATCH = {'base': 'scratch_ssd_base',
            'rel_sizes': [[a, round((a * b) ** 0.5, 4)] for a, b in zip(_SCRATCH_S, _SCRATCH_S[1:])],
            'ratios': [_R3] * 6, 'head_norm': True, 'bn_momentum': SCRATCH_BN_MOMENTUM,
            'classes': 'object'}


def _scratch_steps(size):
    """Anchor spacing of the 6 scratch maps at input ``size``: ``size / map_size``."""
    maps = [-(-size // s) for s in (8, 16, 32, 64, 128)] + [1]
    return [size / m for m in maps]


#: Model name -> preset (see the module docstring for the keys).
_PRESETS = {
    **_datasets('ssd_300_vgg16_atrous', dict(_SSD300, base='vgg16_atrous_300'),
                voc={'min_max_sizes': _SIZES300_VOC}, coco={'min_max_sizes': _SIZES300_COCO}),
    **_custom('ssd_300_vgg16_atrous',
              dict(_SSD300, base='vgg16_atrous_300', min_max_sizes=_SIZES300_COCO)),
    **_datasets('ssd_512_vgg16_atrous', dict(_SSD512_7, base='vgg16_atrous_512')),
    **_custom('ssd_512_vgg16_atrous', dict(_SSD512_7, base='vgg16_atrous_512')),
    **_datasets('ssd_512_resnet18_v1', dict(_EXPANDED512, base='resnet18_v1_512')),
    **_datasets('ssd_512_resnet50_v1', dict(_EXPANDED512, base='resnet50_v1_512'),
                coco={'min_max_sizes': _RESNET50_COCO_SIZES}),
    **_custom('ssd_512_resnet50_v1', dict(_EXPANDED512, base='resnet50_v1_512',
                                          min_max_sizes=_RESNET50_COCO_SIZES)),
    **_datasets('ssd_512_resnet101_v2', dict(_EXPANDED512, base='resnet101_v2_512'), ('voc',)),
    **_datasets('ssd_512_resnet152_v2', dict(_SSD512_7, base='resnet152_v2_512'), ('voc',)),
    **_datasets('ssd_512_mobilenet1.0', dict(_EXPANDED512, base='mobilenet1.0_512')),
    **_custom('ssd_512_mobilenet1.0', dict(_EXPANDED512, base='mobilenet1.0_512')),
    **_datasets('ssd_300_mobilenet1.0_lite', _LITE300, ('coco',)),
    **_datasets('ssd_300_mobilenet0.25', dict(_SSD300, base='mobilenet0.25_300',
                                              min_max_sizes=_SIZES300_COCO)),
    **_custom('ssd_300_mobilenet0.25', dict(_SSD300, base='mobilenet0.25_300',
                                            min_max_sizes=_SIZES300_COCO)),
    **_datasets('ssd_300_resnet34_v1b', dict(_SSD300, base='resnet34_v1b_300',
                                             min_max_sizes=_SIZES300_COCO)),
    **_custom('ssd_300_resnet34_v1b', dict(_SSD300, base='resnet34_v1b_300',
                                           min_max_sizes=_SIZES300_COCO)),
    'tiny_ssd': dict(_TINY, data_size=256, steps=[8, 16, 32, 64, 256]),
    # The same d2l network and relative anchors on a 128 px input (maps 16/8/4/2/1, 1364
    # anchors): about 3x faster per image, the default of train_ssd.py on CPU.
    'tiny_ssd_128': dict(_TINY, data_size=128, steps=[8, 16, 32, 64, 128]),
}
_PRESETS.update({f'scratch_ssd_{size}': dict(_SCRATCH, data_size=size, steps=_scratch_steps(size))
                 for size in (256, 192, 320)})
PRESETS = {name: dict(preset, **_IMAGENET) for name, preset in _PRESETS.items()}

#: train_ssd.py's ``--network`` -> the input sizes it has presets for (first = default) and the
#: datasets GluonCV has presets for (``ssd_<size>_<network>_<dataset>``; first = the one every
#: other dataset uses), or ``None`` for tiny_ssd (one preset per size: 256 px is d2l's model,
#: others ``tiny_ssd_<size>``).
NETWORKS = {
    'tiny_ssd': {'data_shapes': (128, 256), 'datasets': None},
    'scratch_ssd': {'data_shapes': (192, 256, 320), 'datasets': None},
    'vgg16_atrous': {'data_shapes': (300, 512), 'datasets': ('voc', 'coco')},
    'resnet18_v1': {'data_shapes': (512,), 'datasets': ('voc', 'coco')},
    'resnet50_v1': {'data_shapes': (512,), 'datasets': ('voc', 'coco')},
    'resnet101_v2': {'data_shapes': (512,), 'datasets': ('voc',)},
    'resnet152_v2': {'data_shapes': (512,), 'datasets': ('voc',)},
    'mobilenet1.0': {'data_shapes': (512,), 'datasets': ('voc', 'coco')},
    'mobilenet1.0_lite': {'data_shapes': (300,), 'datasets': ('coco',)},
    'mobilenet0.25': {'data_shapes': (300,), 'datasets': ('voc', 'coco')},
    'resnet34_v1b': {'data_shapes': (300,), 'datasets': ('voc', 'coco')},
}


#: GluonCV's INT8 detectors -> the float32 detector they are a quantized graph of. GluonCV ships
#: the calibrated MXNet oneDNN graph (``gluoncv/model_zoo/quantized/<name>-symbol.json``) and
#: runs it with the float32 detector's trained weights from its model store.
INT8_MODELS = {f'{base}_int8': base for base in (
    'ssd_300_vgg16_atrous_voc', 'ssd_512_mobilenet1.0_voc', 'ssd_512_resnet50_v1_voc',
    'ssd_512_vgg16_atrous_voc')}


def list_models():
    """Names of the SSDs :func:`get_model` builds (sorted list of str; the INT8 graphs of
    :data:`INT8_MODELS` are listed by :func:`get_model_list`)."""
    return sorted(PRESETS)


#: How to do without a trained detector's download, for the offline error: Python and CLI words.
_DETECTOR_SKIP = "pretrained=False (command line: --run-dir/--params instead of --pretrained)"


def get_model_list():
    """Every name :func:`get_model` accepts, as GluonCV's function: :func:`list_models` and
    the INT8 detectors of :data:`INT8_MODELS`."""
    return list_models() + sorted(INT8_MODELS)


def model_name(network, data_shape=None, dataset='voc'):
    """The preset name of train_ssd.py's ``--network``, ``--data-shape`` and ``--dataset``.

    ``data_shape=None`` takes the network's default size. ``dataset`` ``'voc'`` or ``'coco'``
    takes GluonCV's preset of that dataset (the COCO ones may have other anchor sizes); any
    other dataset takes the network's first preset in :data:`NETWORKS` (VOC, or COCO for
    ``mobilenet1.0_lite``); the class list is the dataset's either way. TinySSD: ``tiny_ssd``
    (d2l's 256 px model) or ``tiny_ssd_<size>``. Raises :class:`UserError` naming
    ``--network``, ``--data-shape`` or ``--dataset`` (GluonCV has e.g. no COCO preset of
    ``resnet101_v2``: no preset is made up).
    """
    if network not in NETWORKS:
        raise UserError(f"--network: unknown network {network!r}; choose one of "
                        f"{', '.join(NETWORKS)}")
    shapes = NETWORKS[network]['data_shapes']
    data_shape = shapes[0] if data_shape is None else data_shape
    if data_shape not in shapes:
        raise UserError(f"--data-shape: {network} supports {', '.join(map(str, shapes))}, "
                        f"got {data_shape}")
    datasets = NETWORKS[network]['datasets']
    if datasets is None:       # our own networks: one preset per input size
        if network == 'tiny_ssd' and data_shape == 256:
            return 'tiny_ssd'       # d2l's exact model keeps its name
        return f'{network}_{data_shape}'
    if dataset in ('voc', 'coco') and dataset not in datasets:
        others = [n for n in NETWORKS if NETWORKS[n]['datasets'] and dataset in
                  NETWORKS[n]['datasets']]
        raise UserError(f"--dataset {dataset}: GluonCV has no {dataset.upper()} preset of "
                        f"--network {network} (only ssd_{data_shape}_{network}_{datasets[0]}); "
                        f"use another --network (e.g. {others[0]}) or --dataset")
    preset_dataset = dataset if dataset in datasets else datasets[0]
    return f"ssd_{data_shape}_{network}_{preset_dataset}"


def get_preset(name):
    """A deep copy of the preset dict of model ``name``; an INT8 name (:data:`INT8_MODELS`)
    gives its float32 detector's preset (input size, normalisation, classes) with ``int8_of``
    naming that detector."""
    if name in INT8_MODELS:
        return dict(copy.deepcopy(PRESETS[INT8_MODELS[name]]), int8_of=INT8_MODELS[name])
    if name not in PRESETS:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(list_models())}")
    return copy.deepcopy(PRESETS[name])


def anchor_sizes(preset):
    """Per-layer ratio-1 anchor sizes in pixels of a preset (list of L tuples; with the lite
    anchor layout the first layer has only ``s_0``)."""
    if 'min_max_sizes' in preset:
        sizes = ssd_sizes(preset['min_max_sizes'])
        if preset.get('anchor_layout') == 'lite':
            sizes[0] = sizes[0][:1]
        return sizes
    return [tuple(s * preset['data_size'] for s in layer) for layer in preset['rel_sizes']]


def get_model(name, pretrained=False, classes=None, pretrained_base=False, root=None,
              transfer=None, ctx=None, **kwargs):
    """Build the SSD called ``name`` (see :func:`list_models`), optionally with trained weights.

    Parameters
    ----------
    name : str
        Model name: GluonCV's SSD names (``'ssd_300_vgg16_atrous_voc'``, ...,
        ``'ssd_512_mobilenet1.0_custom'``), ``'tiny_ssd'`` or ``'tiny_ssd_128'``.
    pretrained : bool or str
        ``False``: no trained weights. ``True``: GluonCV's trained detector ``name`` from the
        model store (``store.get_weights``: cached in ``root``, downloaded when absent; a
        :class:`UserError` for names GluonCV has no weights for). A path (or store name): that
        ``.params`` file, in GluonCV's layout or ours (``gluoncv_weights``). The detector is
        returned initialised on ``ctx``; ``pretrained_base`` is then not used. ``*_custom``
        names ignore ``True`` with a warning, as GluonCV (see ``transfer``).
    classes : sequence of str or None
        Foreground class names; default: the preset's dataset classes (required for
        ``*_custom`` names). With ``pretrained``, the file's class predictors must have as many
        classes (:class:`UserError` naming both counts otherwise).
    pretrained_base : bool or str
        Without ``pretrained``: ``False``, a local ``.params`` file of the base network, or
        ``True`` for GluonCV's ImageNet weights (model store, downloaded into ``root`` when
        absent; see ``backbones.resolve_pretrained``).
    root : str, optional
        Weight cache directory (default ``$MXNET_HOME/models`` or ``~/.mxnet/models``).
    transfer : None, 'voc' or 'coco'
        Only for ``*_custom`` names (GluonCV's semantics): start from the trained
        ``*_<transfer>`` detector (GluonCV's store file, or the file ``pretrained`` names) and
        reset its classes to ``classes``, keeping the trained predictors of the classes whose
        names it has (and of the background). The network and anchors are then the source
        detector's.
    ctx : Context or list of Context
        Where the weights of ``pretrained`` are loaded (default CPU).
    **kwargs
        Passed to :class:`~gluon_ssd.model.ssd.SSD` (``nms_thresh``, ``nms_topk``, ``post_nms``,
        ``decoder``, ``init``, ``stds``).

    Returns an :class:`SSD`: initialised when ``pretrained`` or ``transfer`` loaded weights,
    else uninitialised (call ``initialize()``; a pretrained base is already loaded). Inputs are
    ``(B, 3, S, S)`` with ``S = preset['data_size']``, normalised with ``preset['mean']`` /
    ``preset['std']``; anchors are center format in pixels of that size.

    An INT8 name (:data:`INT8_MODELS`, e.g. ``'ssd_300_vgg16_atrous_voc_int8'``) needs
    ``pretrained`` (``True``: the float32 detector's weights from the store; or its ``.params``
    file) and returns GluonCV's quantized graph as a ``SymbolBlock`` (see :func:`_int8_model`).
    """
    if name in INT8_MODELS:
        return _int8_model(name, pretrained, classes, root, transfer, ctx, **kwargs)
    preset = get_preset(name)
    if transfer is not None:
        return _transfer(name, preset, classes, transfer, pretrained, root, ctx, **kwargs)
    if preset['classes'] is None:
        if classes is None:
            raise ValueError(f"{name} is a custom model: pass classes=[...] (its foreground "
                             "class names)")
        if pretrained is True:
            warnings.warn(f"{name}: custom models have no trained weights; pretrained=True is "
                          "ignored (use transfer='voc' or 'coco', or pretrained=<file>)")
            pretrained = False
    if classes is None:
        classes = CLASS_SETS[preset['classes']]
    path = _pretrained_path(name, pretrained, root)
    features = get_backbone(preset['base'], pretrained_base=False if path else pretrained_base,
                            root=root)
    size = preset.get('predictor_kernel', 3)
    net = SSD(features, getattr(features, 'channels', None), anchor_sizes(preset),
              preset['ratios'], preset['steps'], classes, preset['data_size'],
              anchor_generator=LiteAnchorGenerator if preset.get('anchor_layout') == 'lite'
              else None, predictor_kernel=(size, size), predictor_pad=(size // 2, size // 2),
              head_norm=preset.get('head_norm', False),
              bn_momentum=preset.get('bn_momentum', 0.9), **kwargs)
    if path:
        from gluon_ssd.model.gluoncv_weights import load_ssd_weights
        load_ssd_weights(net, path, what=name, ctx=ctx)
    return net


def _pretrained_path(name, pretrained, root):
    """The weights file ``pretrained`` stands for (``None`` for ``False``)."""
    if pretrained is None or pretrained is False:
        return None
    from gluon_ssd.model import store
    if pretrained is True:
        if not store.is_store_name(name):
            have = [n for n in list_models() if store.is_store_name(n)]
            raise UserError(f"pretrained=True: GluonCV's model store has no trained weights for "
                            f"{name} (it has {', '.join(have)}); pass pretrained='/path/to/"
                            "file.params' or pretrained=False")
        return store.get_weights(name, root, skip_hint=_DETECTOR_SKIP)
    if isinstance(pretrained, (str, os.PathLike)):
        return store.get_weights(pretrained, root, skip_hint=_DETECTOR_SKIP)
    raise ValueError("pretrained must be False, True or a path to a .params file, "
                     f"got {pretrained!r}")


def _transfer(name, preset, classes, transfer, pretrained, root, ctx, **kwargs):
    """GluonCV's ``*_custom(classes, transfer=...)``: the trained source detector, its classes
    reset to ``classes`` reusing the predictors of same-named classes."""
    sources = preset.get('transfer')
    if not sources:
        raise ValueError(f"transfer= is for the *_custom models; {name} is not one")
    if transfer not in sources:
        raise ValueError(f"transfer must be one of {sorted(sources)} for {name}, got "
                         f"{transfer!r}")
    if classes is None:
        raise ValueError(f"{name} is a custom model: pass classes=[...] (its foreground class "
                         "names)")
    source = pretrained if isinstance(pretrained, (str, os.PathLike)) else True
    net = get_model(sources[transfer], pretrained=source, root=root, ctx=ctx, **kwargs)
    reuse = [c for c in classes if c in net.classes]
    net.reset_class(classes, reuse_weights=reuse)
    return net


def _int8_model(name, pretrained, classes, root, transfer, ctx, **kwargs):
    """GluonCV's INT8 detector ``name``: its shipped oneDNN graph with the trained weights of
    the float32 detector ``INT8_MODELS[name]`` (``pretrained``: ``True`` = the store's file,
    or a path to that detector's GluonCV ``.params`` file).

    Returns a hybridized ``gluon.SymbolBlock`` (CPU only; any batch size): ``(B, 3, S, S)``
    images normalised with the preset's mean/std -> ``ids (B, 100, 1)`` (VOC class id or -1),
    ``scores (B, 100, 1)``, ``bboxes (B, 100, 4)`` corner pixels of the S x S input. It has
    ``classes`` (the 20 VOC names) and ``meta`` (the :func:`gluon_ssd.model.io.make_meta`
    fields plus ``artifact: 'mxnet-int8'`` and the NMS settings baked into the graph). The
    classes, NMS and decoder are fixed by the graph: ``classes``, ``transfer`` and SSD options
    are refused with a :class:`UserError`.
    """
    import mxnet as mx
    if not pretrained:
        raise UserError(f"{name} is GluonCV's calibrated INT8 graph of {INT8_MODELS[name]}: it "
                        "exists only with trained weights (pretrained=True); to quantize your "
                        "own model use python -m gluon_ssd.quantize")
    fixed = sorted(kwargs) + (['transfer'] if transfer is not None else []) + \
        (['classes'] if classes is not None and list(classes) != list(CLASS_SETS['voc']) else [])
    if fixed:
        raise UserError(f"{name}: {', '.join(fixed)} cannot change a quantized graph (its "
                        "classes, decoding and NMS are fixed)")
    base = INT8_MODELS[name]
    ctx = ctx[0] if isinstance(ctx, (list, tuple)) else (ctx or mx.cpu())
    if ctx.device_type != 'cpu':
        raise UserError(f"{name}: INT8 graphs run on the CPU only (oneDNN)")
    path = _pretrained_path(base, pretrained, root)
    symbol_file = _int8_symbol_file(name)
    block = mx.gluon.SymbolBlock.imports(symbol_file, ['data'], None, ctx=ctx)
    block.collect_params().load_dict(_gluoncv_named_weights(base, path), ctx=ctx)
    block.hybridize(static_alloc=True, static_shape=True)
    preset = get_preset(base)
    block.classes = tuple(CLASS_SETS['voc'])
    block.meta = {'model': name, 'network': base.split('_', 2)[2].rsplit('_', 1)[0],
                  'data_shape': int(preset['data_size']), 'classes': list(block.classes),
                  'mean': list(preset['mean']), 'std': list(preset['std']),
                  'decoder': 'per_class', 'artifact': 'mxnet-int8', 'int8_of': base,
                  **_baked_nms(symbol_file)}
    return block


def _int8_symbol_file(name):
    """GluonCV's shipped graph of INT8 detector ``name`` (in its package)."""
    import gluoncv
    path = os.path.join(os.path.dirname(gluoncv.__file__), 'model_zoo', 'quantized',
                        f'{name}-symbol.json')
    if not os.path.isfile(path):
        raise UserError(f"{name}: GluonCV {gluoncv.__version__} does not ship {path}")
    return path


def _gluoncv_named_weights(base, path):
    """``{graph name: NDArray}`` of GluonCV's ``.params`` file ``path`` of detector ``base``.

    The file names weights by their place in GluonCV's block tree, the shipped graph by the
    names GluonCV's blocks get when built with the prefix ``ssd0_``: building that (untrained)
    network and loading the file into it gives both.
    """
    import gluoncv
    import mxnet as mx
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        net = gluoncv.model_zoo.get_model(base, pretrained=False, pretrained_base=False,
                                          prefix='ssd0_')
    try:
        net.load_parameters(path, ctx=mx.cpu())
    except (AssertionError, mx.base.MXNetError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
        raise UserError(f"{path}: not the weights of GluonCV's {base} ({first})") from None
    return {p.name: p.data() for p in net.collect_params().values()}


def _baked_nms(symbol_file):
    """NMS settings of a shipped INT8 graph: ``nms_thresh``, ``nms_topk`` and ``post_nms`` (the
    rows its final ``slice_axis`` keeps)."""
    import json
    with open(symbol_file) as f:
        nodes = json.load(f)['nodes']
    nms = next(i for i, n in enumerate(nodes) if n['op'] == '_contrib_box_nms')
    keep = next(n for n in nodes if n['op'] == 'slice_axis' and n['inputs'][0][0] == nms and
                n['attrs'].get('axis') == '1')
    return {'nms_thresh': float(nodes[nms]['attrs']['overlap_thresh']),
            'nms_topk': int(nodes[nms]['attrs']['topk']), 'post_nms': int(keep['attrs']['end'])}

"""Feature extractors for SSD: each maps an image batch to a list of NCHW feature maps.

Every extractor is a ``HybridBlock``: ``x (B, 3, H, W) -> [f_0 (B, C_0, h_0, w_0), ...]``, largest
map first. It exposes:

* ``channels``: the list ``[C_0, C_1, ...]`` of output channels (the predictors' in_channels);
* ``added_blocks()``: the sub-blocks that are never loaded from a pretrained base (the extra
  layers); ``SSD`` applies its ``init`` choice to them;
* ``gluoncv_layout``: which of GluonCV's SSD weight-file layouts it corresponds to (a key of
  ``gluoncv_weights.NAME_MAPS``, or ``None`` when GluonCV has no such network).

Backbones that can start from ImageNet weights take ``pretrained_base``: ``False`` (random
initialisation), a path to a local ``.params`` file, or ``True`` for GluonCV's model-store file of
the base network (``gluon_ssd.model.store``: the cached file, downloaded into
``$MXNET_HOME/models`` when absent).

The classification networks themselves come from ``gluoncv.model_zoo`` (built with
``pretrained=False``); the extractors below take the feature maps GluonCV's SSD presets name
(e.g. ``stage3_activation5``/``stage4_activation2`` of ResNet50-v1, ``relu22_fwd``/``relu26_fwd``
of MobileNet) and append the extra layers written here.
"""
import importlib
import os
from functools import partial

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from gluon_ssd.model.blocks import DownSampleBlock, L2Normalization
from gluon_ssd.model.scratch import scratch_ssd_base

__all__ = ['TinySSDFeatures', 'VGGAtrousFeatures', 'ExpandedBackboneFeatures',
           'ResNetV1bFeatures', 'vgg16_atrous_300', 'vgg16_atrous_512', 'resnet50_v1_512',
           'mobilenet1_0_512', 'tiny_ssd_base', 'GLUONCV_BASES', 'EXPANDED_BACKBONES',
           'BACKBONES', 'get_backbone', 'resolve_pretrained']

# ---------------------------------------------------------------------------------------------
# Architecture tables (plain data)
# ---------------------------------------------------------------------------------------------

#: VGG16 convolution stages as (number of 3x3 convs, channels).
VGG16_STAGES = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

#: Extra layers after fc7, one list per extra feature map, each conv as
#: (channels, kernel, stride, pad), every conv followed by ReLU. Keyed by input size.
VGG_EXTRA_LAYERS = {
    300: [[(256, 1, 1, 0), (512, 3, 2, 1)],   # 19 -> 10
          [(128, 1, 1, 0), (256, 3, 2, 1)],   # 10 -> 5
          [(128, 1, 1, 0), (256, 3, 1, 0)],   # 5 -> 3
          [(128, 1, 1, 0), (256, 3, 1, 0)]],  # 3 -> 1
    512: [[(256, 1, 1, 0), (512, 3, 2, 1)],   # 32 -> 16
          [(128, 1, 1, 0), (256, 3, 2, 1)],   # 16 -> 8
          [(128, 1, 1, 0), (256, 3, 2, 1)],   # 8 -> 4
          [(128, 1, 1, 0), (256, 3, 2, 1)],   # 4 -> 2
          [(128, 1, 1, 0), (256, 4, 1, 1)]],  # 2 -> 1
}

#: Input normalisation (RGB, 0-1 pixels) the ImageNet-trained bases expect: images enter every
#: network as ``(x / 255 - mean) / std``. The zoo presets carry these values and the model's
#: meta file records them; nothing else defines them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Per-channel input rescale of the VGG base: the caffe-trained weights expect 0-255 pixels,
#: while our transforms feed (x / 255 - mean) / std, so the network multiplies by std * 255.
VGG_INPUT_SCALE = tuple(s * 255 for s in IMAGENET_STD)

#: GluonCV classification networks and where GluonCV's SSD presets take their feature maps.
#: The key is also the model-store name of the ImageNet weights. Either
#:
#: * ``cuts``: end indices (exclusive) of consecutive slices of ``net.features``, each slice's
#:   output a feature map (ResNet-v1: the ends of stage3 / stage4, GluonCV's
#:   ``stage3_activation<last>``/``stage4_activation<last>``; MobileNet: the pointwise ReLUs
#:   ``relu22_fwd`` / ``relu26_fwd``), or
#: * ``taps``: GluonCV's activation names ``(stage, k)`` = ``stage<s>_activation<k>`` of a
#:   pre-activation ResNet (v2), whose bottleneck blocks have 3 activations each: activation k
#:   is the ReLU after BatchNorm ``k % 3 + 1`` of block ``k // 3`` (inside the block, so later
#:   maps continue from that block's full output);
#:
#: and ``channels``, the channels of those maps.
GLUONCV_BASES = {
    'resnet18_v1': {'module': 'gluoncv.model_zoo.resnet', 'builder': 'resnet18_v1',
                    'cuts': (7, 8), 'channels': (256, 512)},
    'resnet50_v1': {'module': 'gluoncv.model_zoo.resnet', 'builder': 'resnet50_v1',
                    'cuts': (7, 8), 'channels': (1024, 2048)},
    'resnet101_v2': {'module': 'gluoncv.model_zoo.resnet', 'builder': 'resnet101_v2',
                     'taps': (('stage3', 22), ('stage4', 2)), 'channels': (256, 512)},
    'resnet152_v2': {'module': 'gluoncv.model_zoo.resnet', 'builder': 'resnet152_v2',
                     'taps': (('stage2', 7), ('stage3', 35), ('stage4', 2)),
                     'channels': (128, 256, 512)},
    'mobilenet1.0': {'module': 'gluoncv.model_zoo.mobilenet', 'builder': 'mobilenet1_0',
                     'cuts': (69, 81), 'channels': (512, 1024)},
    'mobilenet0.25': {'module': 'gluoncv.model_zoo.mobilenet', 'builder': 'mobilenet0_25',
                      'cuts': (69, 81), 'channels': (128, 256)},
}

#: Extra layers GluonCV's presets append to ResNet18/50-v1, ResNet101/152-v2, MobileNet1.0 at
#: 512 px.
EXPANDED_FILTERS_512 = (512, 512, 256, 256)

#: The zoo's expanded backbones: name -> (key of GLUONCV_BASES, extra filters, options of
#: :class:`ExpandedBackboneFeatures`). ``mobilenet1.0_lite_300`` is GluonCV's "lite" variant
#: (transition convs at half the filters, at least 64).
EXPANDED_BACKBONES = {
    'resnet18_v1_512': ('resnet18_v1', EXPANDED_FILTERS_512, {}),
    'resnet50_v1_512': ('resnet50_v1', EXPANDED_FILTERS_512, {}),
    'resnet101_v2_512': ('resnet101_v2', EXPANDED_FILTERS_512, {}),
    'resnet152_v2_512': ('resnet152_v2', EXPANDED_FILTERS_512, {}),
    'mobilenet1.0_512': ('mobilenet1.0', EXPANDED_FILTERS_512, {}),
    'mobilenet1.0_lite_300': ('mobilenet1.0', (512, 256, 256, 128),
                              {'min_depth': 64, 'reduce_ratio': 0.5}),
    'mobilenet0.25_300': ('mobilenet0.25', (256, 256, 128, 128), {}),
}

#: Extra layers of the ResNet34-v1b backbone at 300 px (no BatchNorm; the last one unpadded).
RESNET_V1B_FILTERS_300 = (256, 256, 128, 128)


def _xavier_out():
    """Gaussian Xavier scaled by fan-out, magnitude 2: the VGG / extra-layer default."""
    return mx.init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2)


# ---------------------------------------------------------------------------------------------
# Pretrained weights
# ---------------------------------------------------------------------------------------------

def resolve_pretrained(pretrained_base, store_name, root=None):
    """Turn a ``pretrained_base`` argument into a ``.params`` path, or ``None``.

    Parameters
    ----------
    pretrained_base : bool or str or None
        ``False``/``None``: no pretrained weights. A string: path of a local ``.params`` file
        (must exist). ``True``: GluonCV's model-store file ``store_name`` (see
        ``gluon_ssd.model.store.get_weights``: the cached file, downloaded when absent).
    store_name : str
        GluonCV's model-store name of the base (``'vgg16_atrous'``, ``'resnet50_v1'``,
        ``'mobilenet1.0'``, ``'resnet34_v1b'``, ...).
    root : str, optional
        Weight cache directory (default ``$MXNET_HOME/models`` or ``~/.mxnet/models``).

    Raises ``FileNotFoundError`` for a missing local file, and ``UserError`` (one line, naming the
    URL, the cache path and ``pretrained_base=False``) when a download fails.
    """
    if pretrained_base is None or pretrained_base is False:
        return None
    if isinstance(pretrained_base, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(pretrained_base))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained_base: no such .params file: {path}")
        return path
    if pretrained_base is True:
        from gluon_ssd.model import store
        return store.get_weights(store_name, root, skip_hint='pretrained_base=False (train_ssd.py: --no-pretrained-base)')
    raise ValueError("pretrained_base must be False, True or a path to a .params file, "
                     f"got {pretrained_base!r}")


# ---------------------------------------------------------------------------------------------
# TinySSD (d2l)
# ---------------------------------------------------------------------------------------------

class TinySSDFeatures(HybridBlock):
    """d2l's TinySSD feature extractor: 5 maps.

    ``(B, 3, 256, 256) -> [(B, 64, 32, 32), (B, 128, 16, 16), (B, 128, 8, 8), (B, 128, 4, 4),
    (B, 128, 1, 1)]``: a base of DownSampleBlocks 16, 32, 64 (256 -> 32), three
    DownSampleBlock(128) and a global max pooling. Trained from scratch, so every layer counts
    as an added layer.
    """

    gluoncv_layout = None   # GluonCV has no TinySSD

    def __init__(self, base_channels=(16, 32, 64), extra_channels=(128, 128, 128), **kwargs):
        super().__init__(**kwargs)
        self.channels = [base_channels[-1]] + list(extra_channels) + [extra_channels[-1]]
        with self.name_scope():
            self.base = nn.HybridSequential()
            for c in base_channels:
                self.base.add(DownSampleBlock(c))
            self.extras = nn.HybridSequential()
            for c in extra_channels:
                self.extras.add(DownSampleBlock(c))
            self.extras.add(nn.GlobalMaxPool2D())

    def added_blocks(self):
        """Blocks to initialise with the SSD ``init`` choice: all of them."""
        return [self.base, self.extras]

    def hybrid_forward(self, F, x):
        """``x (B, 3, H, W) -> list of 5 maps`` (see class docstring)."""
        x = self.base(x)
        outputs = [x]
        for block in self.extras:
            x = block(x)
            outputs.append(x)
        return outputs


# ---------------------------------------------------------------------------------------------
# VGG16 atrous
# ---------------------------------------------------------------------------------------------

def _max_pool(F, x, kernel, stride, pad=0):
    """Max pooling with ceil-mode output size ('full' convention, as caffe's SSD)."""
    return F.Pooling(x, pool_type='max', kernel=(kernel, kernel), stride=(stride, stride),
                     pad=(pad, pad), pooling_convention='full')


class VGGAtrousFeatures(HybridBlock):
    """VGG16 with dilated fc6/fc7 convolutions and SSD extra layers.

    ``(B, 3, S, S) -> [conv4_3 L2-normalised (B, 512, .), fc7 (B, 1024, .), extras...]``.
    For S=300 the maps are 38, 19, 10, 5, 3, 1; for S=512: 64, 32, 16, 8, 4, 2, 1.

    The input is expected normalised with ImageNet mean/std (0-1 pixels), and is multiplied by
    ``std * 255`` first (``init_scale``). Pooling uses ceil mode; pool5 is 3x3 stride 1 pad 1;
    fc6 is a 3x3 conv with dilation 6 (1024 channels), fc7 a 1x1 conv (1024); conv4_3 goes
    through ``L2Normalization(512, 20)``. Attribute names (``stages``, ``norm4``, ``extras``,
    ``init_scale``) match GluonCV's ``vgg16_atrous`` weight files so they load directly.

    Parameters
    ----------
    im_size : int
        300 or 512 (selects the extra layers).
    pretrained_base : bool or str
        See :func:`resolve_pretrained` (store name ``'vgg16_atrous'``); extras stay random.
    root : str, optional
        Weight cache directory for ``pretrained_base=True``.
    """

    gluoncv_layout = 'vgg16_atrous'

    def __init__(self, im_size, pretrained_base=False, root=None, **kwargs):
        super().__init__(**kwargs)
        if im_size not in VGG_EXTRA_LAYERS:
            raise ValueError(f"im_size must be one of {sorted(VGG_EXTRA_LAYERS)}, got {im_size!r}")
        extras = VGG_EXTRA_LAYERS[im_size]
        self.channels = [VGG16_STAGES[3][1], 1024] + [layers[-1][0] for layers in extras]
        conv_init = {'weight_initializer': _xavier_out(), 'bias_initializer': 'zeros'}
        with self.name_scope():
            scale = mx.nd.array(VGG_INPUT_SCALE).reshape((1, 3, 1, 1))
            self.init_scale = self.params.get_constant('init_scale', scale)
            self.stages = nn.HybridSequential()
            in_channels = 3
            for num_convs, channels in VGG16_STAGES:
                stage = nn.HybridSequential(prefix='')
                with stage.name_scope():
                    for _ in range(num_convs):
                        stage.add(nn.Conv2D(channels, kernel_size=3, padding=1,
                                            in_channels=in_channels, **conv_init))
                        stage.add(nn.Activation('relu'))
                        in_channels = channels
                self.stages.add(stage)
            fc = nn.HybridSequential(prefix='dilated_')  # fc6 + fc7 as convolutions
            with fc.name_scope():
                fc.add(nn.Conv2D(1024, kernel_size=3, padding=6, dilation=6,
                                 in_channels=in_channels, **conv_init))
                fc.add(nn.Activation('relu'))
                fc.add(nn.Conv2D(1024, kernel_size=1, in_channels=1024, **conv_init))
                fc.add(nn.Activation('relu'))
            self.stages.add(fc)
            self.norm4 = L2Normalization(VGG16_STAGES[3][1], initial=20)
            self.extras = nn.HybridSequential()
            in_channels = 1024
            for i, layers in enumerate(extras):
                extra = nn.HybridSequential(prefix=f'extra{i}_')
                with extra.name_scope():
                    for channels, kernel, stride, pad in layers:
                        extra.add(nn.Conv2D(channels, kernel, stride, pad,
                                            in_channels=in_channels, **conv_init))
                        extra.add(nn.Activation('relu'))
                        in_channels = channels
                self.extras.add(extra)
        path = resolve_pretrained(pretrained_base, 'vgg16_atrous', root)
        if path is not None:
            self.initialize()
            self.load_parameters(path, allow_missing=True, ignore_extra=True)

    def added_blocks(self):
        """The extra layers after fc7 (never part of a pretrained base)."""
        return [self.extras]

    def hybrid_forward(self, F, x, init_scale):
        """``x (B, 3, S, S) -> list of feature maps`` (see class docstring)."""
        x = F.broadcast_mul(x, init_scale)
        for stage in self.stages[:3]:
            x = _max_pool(F, stage(x), 2, 2)
        x = self.stages[3](x)          # conv4_3
        outputs = [self.norm4(x)]
        x = _max_pool(F, x, 2, 2)
        x = self.stages[4](x)          # conv5_3
        x = _max_pool(F, x, 3, 1, pad=1)
        x = self.stages[5](x)          # fc7
        outputs.append(x)
        for extra in self.extras:
            x = extra(x)
            outputs.append(x)
        return outputs


# ---------------------------------------------------------------------------------------------
# GluonCV classification backbones + extra layers
# ---------------------------------------------------------------------------------------------

def _extra_block(in_channels, trans_channels, channels, use_bn=True, padding=1):
    """1x1 transition conv + 3x3 stride-2 conv, each followed by ReLU:
    ``(B, C, h, w) -> (B, channels, (h + 2 * padding - 3) // 2 + 1, ...)``.

    ``use_bn=True``: the convs have no bias and each is followed by a BatchNorm with gamma
    fixed at 1 and eps 1e-3 (the defaults of the symbolic BatchNorm GluonCV's expander builds),
    layout ``[conv, bn, relu, conv, bn, relu]``. ``use_bn=False``: convs with bias, layout
    ``[conv, relu, conv, relu]`` (GluonCV's ResNet34-v1b SSD).
    """
    block = nn.HybridSequential(prefix='')
    conv_init = {'weight_initializer': _xavier_out(), 'use_bias': not use_bn}
    with block.name_scope():
        block.add(nn.Conv2D(trans_channels, kernel_size=1, in_channels=in_channels, **conv_init))
        if use_bn:
            block.add(nn.BatchNorm(scale=False, epsilon=1e-3, in_channels=trans_channels))
        block.add(nn.Activation('relu'))
        block.add(nn.Conv2D(channels, kernel_size=3, strides=2, padding=padding,
                            in_channels=trans_channels, **conv_init))
        if use_bn:
            block.add(nn.BatchNorm(scale=False, epsilon=1e-3, in_channels=channels))
        block.add(nn.Activation('relu'))
    return block


def _build_gluoncv_base(base, pretrained_base, root):
    """GluonCV's classification network ``base`` (a key of :data:`GLUONCV_BASES`), with its
    ImageNet weights when ``pretrained_base`` asks for them (loaded before it is cut)."""
    spec = GLUONCV_BASES[base]
    builder = getattr(importlib.import_module(spec['module']), spec['builder'])
    network = builder(pretrained=False)
    path = resolve_pretrained(pretrained_base, base, root)
    if path is not None:
        network.load_parameters(path, allow_missing=False, ignore_extra=True)
    return network


class _PreActTap(HybridBlock):
    """A run of a pre-activation ResNet (GluonCV's ResNet-v2) that ends inside a bottleneck.

    ``x -> (tap, carry)``: ``layers`` run in turn, then the bottleneck ``block`` up to its
    activation ``act`` (0, 1 or 2: the ReLU after ``bn1``, ``bn2`` or ``bn3``), which is
    ``tap``. With ``complete`` the block is finished (``conv3`` plus the shortcut) and
    ``carry`` is its output, the input of the next run; without, ``carry`` is ``tap`` and the
    block's later layers are not held (GluonCV's SSD graph never uses them, so its weight
    files do not have them).
    """

    def __init__(self, layers, block, act, complete, **kwargs):
        super().__init__(**kwargs)
        self._act = act
        norms = [block.bn1, block.bn2, block.bn3]
        convs = [block.conv1, block.conv2, block.conv3]
        with self.name_scope():
            self.body = nn.HybridSequential(prefix='')
            for layer in layers:
                self.body.add(layer)
            self.norms = nn.HybridSequential(prefix='')
            self.convs = nn.HybridSequential(prefix='')
            for norm in norms[:3 if complete else act + 1]:
                self.norms.add(norm)
            for conv in convs[:3 if complete else act]:
                self.convs.add(conv)
            self.shortcut = block.downsample if complete else None

    def hybrid_forward(self, F, x):
        """``x -> (tap, carry)`` (see the class docstring)."""
        x = self.body(x)
        y, shortcut, tap = x, x, None
        for i, norm in enumerate(self.norms):
            y = F.Activation(norm(y), act_type='relu')
            if i == 0 and self.shortcut is not None:
                shortcut = self.shortcut(y)   # pre-activation shortcut: from relu(bn1(x))
            if i == self._act:
                tap = y
            if i < len(self.convs):
                y = self.convs[i](y)
        if len(self.convs) < 3:
            return tap, tap
        return tap, y + shortcut


def _tapped_runs(network, taps):
    """Split a GluonCV ResNet-v2 into one :class:`_PreActTap` per entry of ``taps``."""
    features = list(network.features)
    stages = {}
    for child in features:
        name = child.prefix[len(network.prefix):].rstrip('_')
        if name.startswith('stage'):
            stages[name] = child
    first = features.index(stages['stage1'])
    units = features[:first] + [blk for name in sorted(stages) for blk in stages[name]]
    runs, start = [], 0
    for i, (stage, k) in enumerate(taps):
        block = stages[stage][k // 3]
        position = units.index(block)
        runs.append(_PreActTap(units[start:position], block, k % 3, complete=i < len(taps) - 1))
        start = position + 1
    return runs


class ExpandedBackboneFeatures(HybridBlock):
    """A GluonCV classification network cut into feature maps, plus stride-2 extra layers.

    ``(B, 3, S, S) -> [base maps..., (B, f_0, ., .), (B, f_1, ., .), ...]``: the base maps
    GluonCV's SSD presets take (:data:`GLUONCV_BASES`; strides 16 and 32, or 8, 16 and 32 for
    ResNet152-v2), then one map per extra filter count, each half the size of the previous one
    (ceil). For ResNet50-v1 / MobileNet1.0 at 512 px: 32, 16, 8, 4, 2, 1.

    The base pieces are held as ``stage_a``, ``stage_b`` (, ``stage_c``); their parameters keep
    GluonCV's names, with the network's prefix ``base_prefix`` (how GluonCV's SSD weight files
    name them, see ``gluoncv_weights``). The pieces of a ResNet-v2 are hybridized at once (they
    run as a graph even in an imperative SSD, as in GluonCV; imperatively MXNet rounds these
    blocks differently, ~1e-6 on the scores).

    Parameters
    ----------
    base : str
        Key of :data:`GLUONCV_BASES` (``'resnet50_v1'``, ``'mobilenet1.0'``, ...).
    num_filters : sequence of int
        Channels of each extra feature map; each extra block is a 1x1 transition conv with
        ``max(min_depth, round(f * reduce_ratio))`` channels and a 3x3 stride-2 conv with ``f``
        channels, each with BatchNorm and ReLU.
    pretrained_base : bool or str
        See :func:`resolve_pretrained`; the file is loaded into the whole GluonCV network
        (classifier weights are ignored) before it is cut.
    min_depth : int
        Minimum channels of the transition convs (128 as GluonCV; 64 for the "lite" variant).
    reduce_ratio : float
        Transition channels relative to the filters (1.0; 0.5 for the "lite" variant).
    root : str, optional
        Weight cache directory for ``pretrained_base=True``.
    """

    gluoncv_layout = 'expanded'

    def __init__(self, base, num_filters=EXPANDED_FILTERS_512, pretrained_base=False,
                 min_depth=128, reduce_ratio=1.0, root=None, **kwargs):
        super().__init__(**kwargs)
        if base not in GLUONCV_BASES:
            raise ValueError(f"base must be one of {sorted(GLUONCV_BASES)}, got {base!r}")
        spec = GLUONCV_BASES[base]
        network = _build_gluoncv_base(base, pretrained_base, root)
        self.base_prefix = network.prefix
        if 'cuts' in spec:
            bounds = (0,) + tuple(spec['cuts'])
            pieces = [network.features[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        else:
            pieces = _tapped_runs(network, spec['taps'])
            # GluonCV runs its bases as a symbol graph; MXNet computes these pre-activation
            # blocks with other float rounding imperatively, so they always run as a graph
            # (as part of the SSD's graph once that is hybridized): bit-identical to GluonCV.
            for piece in pieces:
                piece.hybridize()
        self.channels = list(spec['channels']) + list(num_filters)
        self._stage_names = ['stage_' + 'abcdefgh'[i] for i in range(len(pieces))]
        with self.name_scope():
            for attr, piece in zip(self._stage_names, pieces):
                setattr(self, attr, piece)
            self.extras = nn.HybridSequential()
            for in_channels, f in zip(self.channels[len(pieces) - 1:], num_filters):
                trans = max(min_depth, int(round(f * reduce_ratio)))
                self.extras.add(_extra_block(in_channels, trans, f))

    def added_blocks(self):
        """The extra stride-2 layers (never part of a pretrained base)."""
        return [self.extras]

    def hybrid_forward(self, F, x):
        """``x (B, 3, S, S) -> list of feature maps`` (see class docstring)."""
        outputs = []
        for attr in self._stage_names:
            out = getattr(self, attr)(x)
            if isinstance(out, (list, tuple)):     # a run ending inside a block: (tap, carry)
                outputs.append(out[0])
                x = out[1]
            else:
                outputs.append(out)
                x = out
        x = outputs[-1]
        for extra in self.extras:
            x = extra(x)
            outputs.append(x)
        return outputs


class ResNetV1bFeatures(HybridBlock):
    """GluonCV's ResNet34-v1b with its third stage kept at stride 8, plus extra layers (the
    feature extractor of GluonCV's ``ssd_300_resnet34_v1b_*``).

    ``(B, 3, 300, 300) -> [(B, 128, 38, 38), (B, 512, 19, 19), (B, 256, 10, 10),
    (B, 256, 5, 5), (B, 128, 3, 3), (B, 128, 1, 1)]``: ``stage_a`` = stem + ``layer1`` +
    ``layer2``; ``stage_b`` = ``layer3`` (its first block's conv and shortcut at stride 1
    instead of 2) + ``layer4``; ``extras``: per filter count ``f`` a 1x1 conv with
    ``max(min_depth, f)`` channels and a 3x3 stride-2 conv with ``f`` channels, both with bias
    and ReLU and no BatchNorm, padding 1 except the last (0).

    Parameters
    ----------
    num_filters : sequence of int
        Channels of the extra maps (:data:`RESNET_V1B_FILTERS_300`).
    pretrained_base : bool or str
        See :func:`resolve_pretrained` (store name ``'resnet34_v1b'``), loaded before the
        stride change.
    min_depth : int
        Minimum channels of the 1x1 convs.
    root : str, optional
        Weight cache directory for ``pretrained_base=True``.
    """

    gluoncv_layout = 'resnet_v1b'

    def __init__(self, num_filters=RESNET_V1B_FILTERS_300, pretrained_base=False, min_depth=128,
                 root=None, **kwargs):
        super().__init__(**kwargs)
        from gluoncv.model_zoo.resnetv1b import resnet34_v1b
        network = resnet34_v1b(pretrained=False)
        path = resolve_pretrained(pretrained_base, 'resnet34_v1b', root)
        if path is not None:
            network.load_parameters(path, allow_missing=False, ignore_extra=True)
        first = network.layer3[0]
        # Convolution stride is an operator argument of the built layer: set it to 1 in place
        first.conv1._kwargs['stride'] = (1, 1)          # pylint: disable=protected-access
        first.downsample[0]._kwargs['stride'] = (1, 1)  # pylint: disable=protected-access
        self.channels = [128, 512] + list(num_filters)
        with self.name_scope():
            self.stage_a = nn.HybridSequential(prefix='')
            for layer in (network.conv1, network.bn1, network.relu, network.maxpool,
                          network.layer1, network.layer2):
                self.stage_a.add(layer)
            self.stage_b = nn.HybridSequential(prefix='')
            self.stage_b.add(network.layer3)
            self.stage_b.add(network.layer4)
            self.extras = nn.HybridSequential()
            last = len(num_filters) - 1
            for i, (in_channels, f) in enumerate(zip(self.channels[1:], num_filters)):
                self.extras.add(_extra_block(in_channels, max(min_depth, f), f, use_bn=False,
                                             padding=0 if i == last else 1))

    def added_blocks(self):
        """The extra layers (never part of a pretrained base)."""
        return [self.extras]

    def hybrid_forward(self, F, x):
        """``x (B, 3, S, S) -> list of feature maps`` (see class docstring)."""
        x = self.stage_a(x)
        outputs = [x]
        x = self.stage_b(x)
        outputs.append(x)
        for extra in self.extras:
            x = extra(x)
            outputs.append(x)
        return outputs


# ---------------------------------------------------------------------------------------------
# Named constructors (what the zoo presets refer to)
# ---------------------------------------------------------------------------------------------

def tiny_ssd_base(pretrained_base=False, root=None):
    """d2l's TinySSD extractor (no pretrained weights exist; ``pretrained_base`` must be False
    or a ``.params`` file saved from a ``TinySSDFeatures``; ``root`` is unused)."""
    if pretrained_base is True:
        raise ValueError("pretrained_base=True: TinySSD has no pretrained base; pass False or "
                         "a path to a .params file saved from TinySSDFeatures")
    net = TinySSDFeatures()
    path = resolve_pretrained(pretrained_base, 'tiny_ssd', root)
    if path is not None:
        net.initialize()
        net.load_parameters(path)
    return net


def vgg16_atrous_300(pretrained_base=False, root=None):
    """VGG16-atrous extractor for 300 px inputs (6 maps: 38, 19, 10, 5, 3, 1)."""
    return VGGAtrousFeatures(300, pretrained_base=pretrained_base, root=root)


def vgg16_atrous_512(pretrained_base=False, root=None):
    """VGG16-atrous extractor for 512 px inputs (7 maps: 64, 32, 16, 8, 4, 2, 1)."""
    return VGGAtrousFeatures(512, pretrained_base=pretrained_base, root=root)


def _expanded(name, pretrained_base=False, root=None):
    """The expanded backbone ``name`` of :data:`EXPANDED_BACKBONES`."""
    base, filters, options = EXPANDED_BACKBONES[name]
    return ExpandedBackboneFeatures(base, filters, pretrained_base, root=root, **options)


def resnet50_v1_512(pretrained_base=False, root=None):
    """ResNet50-v1 + 4 extra layers for 512 px inputs (6 maps: 32, 16, 8, 4, 2, 1)."""
    return _expanded('resnet50_v1_512', pretrained_base, root)


def mobilenet1_0_512(pretrained_base=False, root=None):
    """MobileNet1.0 + 4 extra layers for 512 px inputs (6 maps: 32, 16, 8, 4, 2, 1)."""
    return _expanded('mobilenet1.0_512', pretrained_base, root)


def resnet34_v1b_300(pretrained_base=False, root=None):
    """ResNet34-v1b + 4 extra layers for 300 px inputs (6 maps: 38, 19, 10, 5, 3, 1)."""
    return ResNetV1bFeatures(RESNET_V1B_FILTERS_300, pretrained_base, root=root)


#: Backbone name (as used by the zoo presets) -> constructor ``f(pretrained_base, root)``.
BACKBONES = {
    'tiny_ssd_base': tiny_ssd_base,
    'scratch_ssd_base': scratch_ssd_base,
    'vgg16_atrous_300': vgg16_atrous_300,
    'vgg16_atrous_512': vgg16_atrous_512,
    'resnet34_v1b_300': resnet34_v1b_300,
}
BACKBONES.update({name: partial(_expanded, name) for name in EXPANDED_BACKBONES})


def get_backbone(name, pretrained_base=False, root=None):
    """Build the feature extractor called ``name`` (a key of :data:`BACKBONES`); ``root`` is the
    weight cache directory for ``pretrained_base=True``."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained_base, root)

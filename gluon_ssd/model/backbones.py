"""Feature extractors for SSD: each maps an image batch to a list of NCHW feature maps.

Every extractor is a ``HybridBlock``: ``x (B, 3, H, W) -> [f_0 (B, C_0, h_0, w_0), ...]``, largest
map first. It exposes:

* ``channels``: the list ``[C_0, C_1, ...]`` of output channels (the predictors' in_channels);
* ``added_blocks()``: the sub-blocks that are never loaded from a pretrained base (the extra
  layers); ``SSD`` applies its ``init`` choice to them.

Backbones that can start from ImageNet weights take ``pretrained_base``: ``False`` (random
initialisation), a path to a local ``.params`` file, or ``True`` for the file GluonCV keeps in its
model cache (``$MXNET_HOME/models`` or ``~/.mxnet/models``). Nothing is ever downloaded.

The ResNet50-v1 and MobileNet1.0 networks themselves come from ``gluoncv.model_zoo`` (built with
``pretrained=False``); the extractors below cut their ``features`` sequence at the same layers
GluonCV's SSD presets name (``stage3_activation5``/``stage4_activation2`` and
``relu22_fwd``/``relu26_fwd``) and append the extra layers written here.
"""
import glob
import os

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from gluon_ssd.model.blocks import DownSampleBlock, L2Normalization

__all__ = ['TinySSDFeatures', 'VGGAtrousFeatures', 'ExpandedBackboneFeatures',
           'vgg16_atrous_300', 'vgg16_atrous_512', 'resnet50_v1_512', 'mobilenet1_0_512',
           'tiny_ssd_base', 'BACKBONES', 'get_backbone', 'resolve_pretrained']

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

#: GluonCV backbones cut into two feature maps: ``cuts`` are the end indices (exclusive) of the
#: two slices of ``net.features`` (ResNet50-v1: end of stage3 / stage4; MobileNet1.0: the
#: pointwise ReLUs named relu22 / relu26), ``channels`` their output channels.
GLUONCV_BASES = {
    'resnet50_v1': {'module': 'gluoncv.model_zoo.resnet', 'builder': 'resnet50_v1',
                    'cuts': (7, 8), 'channels': (1024, 2048)},
    'mobilenet1.0': {'module': 'gluoncv.model_zoo.mobilenet', 'builder': 'mobilenet1_0',
                     'cuts': (69, 81), 'channels': (512, 1024)},
}

#: Extra layers GluonCV's presets append to ResNet50-v1 / MobileNet1.0 at 512 px.
EXPANDED_FILTERS_512 = (512, 512, 256, 256)


def _xavier_out():
    """Gaussian Xavier scaled by fan-out, magnitude 2: the VGG / extra-layer default."""
    return mx.init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2)


# ---------------------------------------------------------------------------------------------
# Pretrained weights
# ---------------------------------------------------------------------------------------------

def _model_cache_dir():
    """GluonCV's weight cache: ``$MXNET_HOME/models`` or ``~/.mxnet/models``."""
    home = os.environ.get('MXNET_HOME', os.path.join('~', '.mxnet'))
    return os.path.expanduser(os.path.join(home, 'models'))


def resolve_pretrained(pretrained_base, cache_name):
    """Turn a ``pretrained_base`` argument into a ``.params`` path, or ``None``.

    Parameters
    ----------
    pretrained_base : bool or str or None
        ``False``/``None``: no pretrained weights. A string: path of a local ``.params`` file
        (must exist). ``True``: GluonCV's cached file ``<cache>/<cache_name>-<hash>.params``.
    cache_name : str
        GluonCV's model-store name (``'vgg16_atrous'``, ``'resnet50_v1'``, ``'mobilenet1.0'``).

    Raises ``FileNotFoundError`` naming the expected location when the file is absent (no
    download is attempted).
    """
    if pretrained_base is None or pretrained_base is False:
        return None
    if isinstance(pretrained_base, (str, os.PathLike)):
        path = os.path.expanduser(os.fspath(pretrained_base))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"pretrained_base: no such .params file: {path}")
        return path
    if pretrained_base is True:
        root = _model_cache_dir()
        found = sorted(glob.glob(os.path.join(root, f'{cache_name}-*.params')))
        if found:
            return found[-1]
        try:
            from gluoncv.model_zoo.model_store import short_hash
            expected = os.path.join(root, f'{cache_name}-{short_hash(cache_name)}.params')
        except (ImportError, ValueError):
            expected = os.path.join(root, f'{cache_name}-<hash>.params')
        raise FileNotFoundError(
            f"pretrained_base=True: GluonCV's '{cache_name}' weights are not in the model cache "
            f"and cannot be downloaded here. Put the file at {expected} (or pass "
            f"pretrained_base='/path/to/file.params', or pretrained_base=False).")
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
        See :func:`resolve_pretrained` (cache name ``'vgg16_atrous'``); extras stay random.
    """

    def __init__(self, im_size, pretrained_base=False, **kwargs):
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
        path = resolve_pretrained(pretrained_base, 'vgg16_atrous')
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

def _extra_block(in_channels, trans_channels, channels):
    """1x1 transition conv + 3x3 stride-2 conv, each without bias, BatchNorm and ReLU:
    ``(B, C, h, w) -> (B, channels, ceil(h / 2), ceil(w / 2))``.

    The BatchNorms keep gamma fixed at 1 and use eps 1e-3 (the defaults of the symbolic
    BatchNorm GluonCV's expander builds), so results match GluonCV's models exactly.
    """
    block = nn.HybridSequential(prefix='')
    conv_init = {'weight_initializer': _xavier_out(), 'use_bias': False}
    with block.name_scope():
        block.add(nn.Conv2D(trans_channels, kernel_size=1, in_channels=in_channels, **conv_init))
        block.add(nn.BatchNorm(scale=False, epsilon=1e-3, in_channels=trans_channels))
        block.add(nn.Activation('relu'))
        block.add(nn.Conv2D(channels, kernel_size=3, strides=2, padding=1,
                            in_channels=trans_channels, **conv_init))
        block.add(nn.BatchNorm(scale=False, epsilon=1e-3, in_channels=channels))
        block.add(nn.Activation('relu'))
    return block


class ExpandedBackboneFeatures(HybridBlock):
    """A GluonCV classification network cut into two feature maps, plus stride-2 extra layers.

    ``(B, 3, S, S) -> [(B, C_a, S/16, S/16), (B, C_b, S/32, S/32), (B, f_0, S/64, S/64), ...]``
    (ceil division). For ResNet50-v1 / MobileNet1.0 at 512 px: 32, 16, 8, 4, 2, 1.

    Parameters
    ----------
    base : str
        Key of :data:`GLUONCV_BASES` (``'resnet50_v1'`` or ``'mobilenet1.0'``).
    num_filters : sequence of int
        Channels of each extra feature map; each extra block is a 1x1 transition conv with
        ``max(min_depth, f)`` channels and a 3x3 stride-2 conv with ``f`` channels.
    pretrained_base : bool or str
        See :func:`resolve_pretrained`; the file is loaded into the whole GluonCV network
        (classifier weights are ignored) before it is cut.
    min_depth : int
        Minimum channels of the transition convs (128 as GluonCV).
    """

    def __init__(self, base, num_filters=EXPANDED_FILTERS_512, pretrained_base=False,
                 min_depth=128, **kwargs):
        super().__init__(**kwargs)
        if base not in GLUONCV_BASES:
            raise ValueError(f"base must be one of {sorted(GLUONCV_BASES)}, got {base!r}")
        spec = GLUONCV_BASES[base]
        import importlib
        builder = getattr(importlib.import_module(spec['module']), spec['builder'])
        network = builder(pretrained=False)
        path = resolve_pretrained(pretrained_base, base)
        if path is not None:
            network.load_parameters(path, allow_missing=False, ignore_extra=True)
        first_end, second_end = spec['cuts']
        self.channels = list(spec['channels']) + list(num_filters)
        with self.name_scope():
            self.stage_a = network.features[:first_end]
            self.stage_b = network.features[first_end:second_end]
            self.extras = nn.HybridSequential()
            for in_channels, f in zip(self.channels[1:], num_filters):
                self.extras.add(_extra_block(in_channels, max(min_depth, f), f))

    def added_blocks(self):
        """The extra stride-2 layers (never part of a pretrained base)."""
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

def tiny_ssd_base(pretrained_base=False):
    """d2l's TinySSD extractor (no pretrained weights exist; ``pretrained_base`` must be False
    or a ``.params`` file saved from a ``TinySSDFeatures``)."""
    if pretrained_base is True:
        raise ValueError("pretrained_base=True: TinySSD has no pretrained base; pass False or "
                         "a path to a .params file saved from TinySSDFeatures")
    net = TinySSDFeatures()
    path = resolve_pretrained(pretrained_base, 'tiny_ssd')
    if path is not None:
        net.initialize()
        net.load_parameters(path)
    return net


def vgg16_atrous_300(pretrained_base=False):
    """VGG16-atrous extractor for 300 px inputs (6 maps: 38, 19, 10, 5, 3, 1)."""
    return VGGAtrousFeatures(300, pretrained_base=pretrained_base)


def vgg16_atrous_512(pretrained_base=False):
    """VGG16-atrous extractor for 512 px inputs (7 maps: 64, 32, 16, 8, 4, 2, 1)."""
    return VGGAtrousFeatures(512, pretrained_base=pretrained_base)


def resnet50_v1_512(pretrained_base=False):
    """ResNet50-v1 + 4 extra layers for 512 px inputs (6 maps: 32, 16, 8, 4, 2, 1)."""
    return ExpandedBackboneFeatures('resnet50_v1', EXPANDED_FILTERS_512, pretrained_base)


def mobilenet1_0_512(pretrained_base=False):
    """MobileNet1.0 + 4 extra layers for 512 px inputs (6 maps: 32, 16, 8, 4, 2, 1)."""
    return ExpandedBackboneFeatures('mobilenet1.0', EXPANDED_FILTERS_512, pretrained_base)


#: Backbone name (as used by the zoo presets) -> constructor ``f(pretrained_base)``.
BACKBONES = {
    'tiny_ssd_base': tiny_ssd_base,
    'vgg16_atrous_300': vgg16_atrous_300,
    'vgg16_atrous_512': vgg16_atrous_512,
    'resnet50_v1_512': resnet50_v1_512,
    'mobilenet1.0_512': mobilenet1_0_512,
}


def get_backbone(name, pretrained_base=False):
    """Build the feature extractor called ``name`` (a key of :data:`BACKBONES`)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name](pretrained_base)

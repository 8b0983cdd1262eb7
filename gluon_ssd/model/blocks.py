"""Small building blocks shared by the SSD backbones and heads.

All blocks work on NCHW feature maps. Nothing here knows about boxes: predictors output raw
channels, and the SSD block decides what the channels mean.
"""
import mxnet as mx
from mxnet.gluon import HybridBlock, nn

__all__ = ['ConvPredictor', 'DownSampleBlock', 'L2Normalization', 'flatten_pred', 'concat_preds']


def _pair(value, name):
    """Return ``value`` as a 2-tuple of ints (``3`` -> ``(3, 3)``), checking it is valid."""
    if isinstance(value, int):
        value = (value, value)
    value = tuple(value)
    if len(value) != 2 or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError(f"{name} must be an int or a pair of non-negative ints, got {value!r}")
    return value


class ConvPredictor(HybridBlock):
    """A single convolution used as an SSD prediction head (no normalisation).

    For a feature map ``(B, C_in, H, W)`` it returns ``(B, num_channel, H', W')`` (``H' = H``,
    ``W' = W`` with the default 3x3 kernel, pad 1, stride 1). The SSD class head uses
    ``num_channel = A * (C + 1)`` and the box head ``A * 4`` (``A`` anchors per position); the
    output is raw (logits / encoded offsets), no activation unless ``activation`` is given.

    Parameters
    ----------
    num_channel : int
        Output channels.
    kernel, pad, stride : int or (int, int)
        Convolution geometry (H, W).
    activation : str or None
        Optional activation applied after the convolution (e.g. ``'relu'``).
    use_bias : bool
        Whether the convolution has a bias (initialised to zeros).
    in_channels : int
        Input channels; 0 defers the weight shape until the first forward pass.
    weight_initializer : mx.init.Initializer or None
        Initializer of the weight. Default: ``Xavier(magnitude=2)`` (uniform, average fan),
        the same as GluonCV's predictor. ``SSD`` replaces it according to its ``init`` option.
    """

    def __init__(self, num_channel, kernel=(3, 3), pad=(1, 1), stride=(1, 1), activation=None,
                 use_bias=True, in_channels=0, weight_initializer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_channel, int) or num_channel <= 0:
            raise ValueError(f"num_channel must be a positive int, got {num_channel!r}")
        if weight_initializer is None:
            weight_initializer = mx.init.Xavier(magnitude=2)
        with self.name_scope():
            self.predictor = nn.Conv2D(
                num_channel, _pair(kernel, 'kernel'), strides=_pair(stride, 'stride'),
                padding=_pair(pad, 'pad'), activation=activation, use_bias=use_bias,
                in_channels=in_channels, weight_initializer=weight_initializer,
                bias_initializer='zeros')

    def hybrid_forward(self, F, x):
        """``x (B, C_in, H, W) -> (B, num_channel, H', W')``."""
        return self.predictor(x)


class DownSampleBlock(nn.HybridSequential):
    """d2l's down-sampling block: twice [3x3 conv pad 1, BatchNorm, ReLU], then 2x2 max pooling.

    ``(B, C_in, H, W) -> (B, num_channels, H // 2, W // 2)``.

    Parameters
    ----------
    num_channels : int
        Output channels of both convolutions.
    """

    def __init__(self, num_channels, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_channels, int) or num_channels <= 0:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        self.num_channels = num_channels
        with self.name_scope():
            for _ in range(2):
                self.add(nn.Conv2D(num_channels, kernel_size=3, padding=1))
                self.add(nn.BatchNorm(in_channels=num_channels))
                self.add(nn.Activation('relu'))
            self.add(nn.MaxPool2D(2))


class L2Normalization(HybridBlock):
    """Scale every spatial position to unit L2 norm over channels, then by a learnable
    per-channel factor (the conv4_3 normalisation of the SSD paper).

    ``(B, channels, H, W) -> (B, channels, H, W)``: ``y = scale[c] * x / sqrt(sum_c x^2 + eps)``.

    Parameters
    ----------
    channels : int
        Number of input channels (length of the scale vector).
    initial : float
        Initial value of every scale factor (20 in SSD).
    eps : float
        Added inside the square root to avoid division by zero.

    The scale is stored as parameter ``scale`` of shape ``(1, channels, 1, 1)`` (this layout and
    name load GluonCV's ``vgg16_atrous`` weight files).
    """

    def __init__(self, channels, initial=20, eps=1e-5, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        self._eps = eps
        self._channels = channels
        with self.name_scope():
            self.scale = self.params.get('normalize_scale', shape=(1, channels, 1, 1),
                                         init=mx.init.Constant(initial))

    def hybrid_forward(self, F, x, scale):
        """``x (B, channels, H, W) -> (B, channels, H, W)``."""
        unit = F.L2Normalization(x, mode='channel', eps=self._eps)
        # The per-channel scale as a 1x1 depthwise convolution: the same products as
        # broadcast_mul (identical forward), but MKL-DNN's backward is ~6x faster than
        # broadcast_mul's generic reduction on CPU (bench/blocks.py, L2Normalization row).
        weight = F.reshape(scale, (self._channels, 1, 1, 1))
        return F.Convolution(unit, weight, kernel=(1, 1), num_filter=self._channels,
                             num_group=self._channels, no_bias=True)


def flatten_pred(F, pred):
    """Put channels last, then flatten: ``(B, C, H, W) -> (B, H * W * C)``.

    With ``C = A * K`` this orders the values position by position, anchor by anchor, so a
    reshape to ``(B, H * W * A, K)`` gives one row per anchor (GluonCV's anchor order).
    ``F`` is ``mx.nd`` or ``mx.sym``.
    """
    return F.flatten(F.transpose(pred, axes=(0, 2, 3, 1)))


def concat_preds(F, preds):
    """Flatten each prediction map with :func:`flatten_pred` and join them on axis 1:
    list of ``(B, C_i, H_i, W_i)`` -> ``(B, sum_i H_i * W_i * C_i)``."""
    if len(preds) == 0:
        raise ValueError("concat_preds needs at least one prediction map, got an empty list")
    return F.concat(*[flatten_pred(F, p) for p in preds], dim=1)

"""A small SSD feature extractor designed to be trained from scratch on a CPU.

Design (DSOD / ScratchDet / "Rethinking ImageNet pre-training"): every convolution, in the
backbone and in the extra layers, is followed by BatchNorm, which is what makes training from
random weights stable at large learning rates; the network is shallow and narrow so that a few
hundred images can be seen many times in a few CPU minutes; the largest map has stride 8 so that
anchors of about 5 % of the image still tile it densely.

``(B, 3, S, S) -> [(B, C_2, S/8, S/8), (B, C_3, S/16, S/16), (B, C_4, S/32, S/32),
(B, E_0, S/64, S/64), (B, E_1, S/128, S/128), (B, E_1, 1, 1)]`` (ceil division for the
stride-2 layers; the last map is a global average pooling of the one before).

At 256 px with the default widths: 32, 16, 8, 4, 2, 1.
"""
from mxnet.gluon import HybridBlock, nn

__all__ = ['ScratchSSDFeatures', 'SCRATCH_WIDTHS', 'BN_MOMENTUM', 'scratch_ssd_base']

#: Width table: ``stages`` are the output channels of the five stride-2 stages of the backbone
#: (strides 2, 4, 8, 16, 32), ``extras`` those of the two extra layers (strides 64, 128).
SCRATCH_WIDTHS = {
    'base': {'stages': (16, 32, 64, 128, 192), 'extras': (128, 128)},
}


#: Momentum of the running BatchNorm statistics of the scratch presets (backbone, extra layers
#: and heads), instead of MXNet's 0.9. Training uses each batch's own statistics; the running
#: ones only serve inference, and with 0.9 they average about the last 10 batches. That was too
#: few: with the weights frozen by the end of the schedule (learning rate ~0), the raccoon
#: test mAP of consecutive epochs still swung between 0.51 and 0.76, and recomputing the
#: statistics over 20-100 batches gave 0.64-0.66. 0.99 averages about 100 batches. It is the
#: longest average: train_ssd.py lowers it for short runs (engine.running_stats_momentum), since
#: the average starts from mean 0 / variance 1 and keeps ``momentum ** steps`` of them.
BN_MOMENTUM = 0.99


def _conv_bn_relu(channels, kernel, stride, in_channels, momentum=0.9):
    """``conv (no bias) -> BatchNorm (running statistics' ``momentum``) -> ReLU`` as a 3-layer
    HybridSequential: ``(B, in_channels, h, w) -> (B, channels, ceil(h / stride), ceil(w /
    stride))`` (3x3 kernels pad 1, 1x1 kernels pad 0)."""
    block = nn.HybridSequential(prefix='')
    with block.name_scope():
        block.add(nn.Conv2D(channels, kernel_size=kernel, strides=stride, padding=kernel // 2,
                            use_bias=False, in_channels=in_channels))
        block.add(nn.BatchNorm(in_channels=channels, momentum=momentum))
        block.add(nn.Activation('relu'))
    return block


class _ResidualStage(HybridBlock):
    """One backbone stage: a stride-2 3x3 conv-BN-ReLU, then ``depth`` residual units of two
    3x3 conv-BN (ReLU after the first and after the sum).

    ``(B, in_channels, h, w) -> (B, channels, ceil(h / 2), ceil(w / 2))``.
    """

    def __init__(self, in_channels, channels, depth=1, momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.down = _conv_bn_relu(channels, 3, 2, in_channels, momentum)
            self.units = nn.HybridSequential()
            for _ in range(depth):
                unit = nn.HybridSequential(prefix='')
                with unit.name_scope():
                    unit.add(_conv_bn_relu(channels, 3, 1, channels, momentum))
                    unit.add(nn.Conv2D(channels, 3, padding=1, use_bias=False,
                                       in_channels=channels))
                    # gamma starts at 0: each residual unit starts as the identity
                    unit.add(nn.BatchNorm(in_channels=channels, gamma_initializer='zeros',
                                          momentum=momentum))
                self.units.add(unit)

    def hybrid_forward(self, F, x):
        """``(B, C_in, h, w) -> (B, C, ceil(h / 2), ceil(w / 2))``."""
        x = self.down(x)
        for unit in self.units:
            x = F.relu(x + unit(x))
        return x


class ScratchSSDFeatures(HybridBlock):
    """From-scratch SSD extractor, BatchNorm after every convolution: 6 maps.

    Backbone: five stride-2 :class:`_ResidualStage`\\ s (the first two without residual units,
    the last three with one) of ``stages`` channels; the outputs of the stride-8, 16 and 32
    stages are maps 0-2. Extra layers: two ``1x1 conv (half) -> 3x3 stride-2 conv`` blocks
    (conv-BN-ReLU each) give maps 3-4; a global average pooling of map 4 gives map 5.

    Parameters
    ----------
    stages : 5 ints
        Output channels of the backbone stages (strides 2, 4, 8, 16, 32).
    extras : 2 ints
        Output channels of the extra layers (strides 64, 128).
    depth : int
        Residual units in each of the last three backbone stages.
    bn_momentum : float
        Momentum of every BatchNorm's running statistics (MXNet's 0.9 by default; the presets
        use :data:`BN_MOMENTUM`).

    ``(B, 3, S, S) -> [(B, stages[2], S/8, S/8), (B, stages[3], S/16, S/16),
    (B, stages[4], S/32, S/32), (B, extras[0], S/64, S/64), (B, extras[1], S/128, S/128),
    (B, extras[1], 1, 1)]``; ``channels`` lists the six channel counts.
    """

    def __init__(self, stages=SCRATCH_WIDTHS['base']['stages'],
                 extras=SCRATCH_WIDTHS['base']['extras'], depth=1, bn_momentum=0.9, **kwargs):
        super().__init__(**kwargs)
        stages, extras = tuple(stages), tuple(extras)
        if len(stages) != 5 or len(extras) != 2:
            raise ValueError(f"need 5 stage widths and 2 extra widths, got {stages}, {extras}")
        self.channels = [stages[2], stages[3], stages[4], extras[0], extras[1], extras[1]]
        with self.name_scope():
            self.stem = nn.HybridSequential()
            in_channels = 3
            for i, c in enumerate(stages):
                self.stem.add(_ResidualStage(in_channels, c, depth if i >= 2 else 0,
                                             bn_momentum, prefix=f'stage{i}_'))
                in_channels = c
            self.extras = nn.HybridSequential()
            for i, c in enumerate(extras):
                extra = nn.HybridSequential(prefix=f'extra{i}_')
                with extra.name_scope():
                    extra.add(_conv_bn_relu(max(c // 2, 32), 1, 1, in_channels, bn_momentum))
                    extra.add(_conv_bn_relu(c, 3, 2, max(c // 2, 32), bn_momentum))
                self.extras.add(extra)
                in_channels = c

    def added_blocks(self):
        """Blocks to initialise with the SSD ``init`` choice: all of them (no pretrained base)."""
        return [self.stem, self.extras]

    def hybrid_forward(self, F, x):
        """``x (B, 3, S, S) -> list of 6 maps`` (see class docstring)."""
        outputs = []
        for i, stage in enumerate(self.stem):
            x = stage(x)
            if i >= 2:
                outputs.append(x)
        for extra in self.extras:
            x = extra(x)
            outputs.append(x)
        outputs.append(F.Pooling(x, pool_type='avg', global_pool=True, kernel=(1, 1)))
        return outputs


def scratch_ssd_base(pretrained_base=False, root=None):
    """The :class:`ScratchSSDFeatures` of the ``scratch_ssd`` presets (16-32-64-128-192, extras
    128-128, BatchNorm momentum :data:`BN_MOMENTUM`). It has no ImageNet weights: ``pretrained_base`` is ``False`` or a ``.params`` file
    saved from a ``ScratchSSDFeatures`` (``root`` is unused)."""
    if pretrained_base is True:
        raise ValueError("pretrained_base=True: the scratch SSD has no pretrained base; pass "
                         "False or a path to a .params file saved from ScratchSSDFeatures")
    net = ScratchSSDFeatures(**SCRATCH_WIDTHS['base'], bn_momentum=BN_MOMENTUM)
    if pretrained_base:
        from gluon_ssd.model.backbones import resolve_pretrained
        net.initialize()
        net.load_parameters(resolve_pretrained(pretrained_base, 'scratch_ssd'))
    return net

"""The from-scratch SSD (``--network scratch_ssd``): shapes, BatchNorm everywhere, anchors from
6 % to 90 % of the image, and a short real training run."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_ssd import engine, get_model
from gluon_ssd.config import parse_config
from gluon_ssd.model.scratch import BN_MOMENTUM, ScratchSSDFeatures


@pytest.mark.parametrize('size, maps, anchors', [(256, [32, 16, 8, 4, 2, 1], 5460),
                                                 (192, [24, 12, 6, 3, 2, 1], 3080),
                                                 (320, [40, 20, 10, 5, 3, 1], 8540)])
def test_shapes(size, maps, anchors):
    net = get_model(f'scratch_ssd_{size}', classes=['a', 'b'])
    net.initialize()
    feats = net.features(mx.nd.zeros((2, 3, size, size)))
    assert [f.shape[2] for f in feats] == maps
    assert [f.shape[1] for f in feats] == [64, 128, 192, 128, 128, 128] == net.features.channels
    with autograd.train_mode():
        cls_preds, box_preds, anchor_boxes = net(mx.nd.zeros((2, 3, size, size)))
    assert cls_preds.shape == (2, anchors, 3) and box_preds.shape == (2, anchors, 4)
    assert anchor_boxes.shape == (1, anchors, 4)
    ids, scores, bboxes = net(mx.nd.zeros((1, 3, size, size)))
    assert ids.shape == (1, 100, 1) and bboxes.shape == (1, 100, 4)


def test_batchnorm_after_every_convolution_and_in_the_heads():
    net = get_model('scratch_ssd_256', classes=['a'])
    blocks = []
    net.features.apply(blocks.append)
    convs = [b for b in blocks if isinstance(b, gluon.nn.Conv2D)]
    norms = [b for b in blocks if isinstance(b, gluon.nn.BatchNorm)]
    assert len(convs) == len(norms) > 10 and all(c._kwargs['no_bias'] for c in convs)
    assert net.head_norms is not None and len(net.head_norms) == 6
    assert isinstance(net.head_norms[0][1], gluon.nn.BatchNorm)
    assert isinstance(net.features, ScratchSSDFeatures)
    net.head_norms.apply(blocks.append)
    norms = [b for b in blocks if isinstance(b, gluon.nn.BatchNorm)]
    assert {b._kwargs['momentum'] for b in norms} == {BN_MOMENTUM} and BN_MOMENTUM == 0.99


def test_running_statistics_move_by_one_minus_the_momentum_per_training_step():
    """The running statistics (inference only) average ~100 batches: each training step moves
    them 1 % of the way to the batch's statistics (MXNet updates them in the backward pass)."""
    feats = ScratchSSDFeatures(bn_momentum=BN_MOMENTUM)
    feats.initialize()
    x = mx.nd.random.uniform(shape=(2, 3, 64, 64))
    with autograd.record():
        total = mx.nd.add_n(*[o.sum() for o in feats(x)])
    total.backward()
    first = feats.stem[0].down[1]                      # stage 0's BatchNorm, mean starts at 0
    conv = feats.stem[0].down[0](x).asnumpy()
    np.testing.assert_allclose(first.running_mean.data().asnumpy(),
                               (1 - BN_MOMENTUM) * conv.mean(axis=(0, 2, 3)), rtol=1e-3,
                               atol=1e-6)


def test_anchor_sizes_span_6_to_90_percent():
    net = get_model('scratch_ssd_256', classes=['a'])
    net.initialize()
    with autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, 256, 256)))
    square = anchors[0].asnumpy()
    square = square[np.isclose(square[:, 2], square[:, 3])]
    sides = np.unique(np.round(square[:, 2] / 256, 3))
    assert sides.min() == pytest.approx(0.06) and 0.9 <= sides.max() <= 0.95


@pytest.mark.slow
def test_short_training_run_of_the_default_network_learns(tmp_path):
    """train_ssd.py without --network trains scratch_ssd at 192 px with its own recipe."""
    out = tmp_path / 'scratch'
    cfg = parse_config(['--num-train', '32', '--num-val', '16',
                        '--val-split', 'train', '--batch-size', '8', '--epochs', '3', '-j', '0',
                        '--no-progress', '--num-samples-viz', '1', '--seed', '1',
                        '--dataset-root', str(tmp_path / 'data'), '--out-dir', str(out)])
    assert (cfg.model, cfg.optimizer, cfg.pretrained_base) == ('scratch_ssd_192', 'adam', False)
    result = engine.train(cfg)
    losses = [r['loss'] for r in result['records']]
    assert len(losses) == 3 and losses[-1] < losses[0] and np.isfinite(losses).all()
    assert json.loads((out / 'model.json').read_text())['model'] == 'scratch_ssd_192'
    assert result['final_map'] is not None

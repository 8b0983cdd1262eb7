"""Unit tests of the training engine: fused graph, multi-device normalisation, data determinism,
learning-rate schedule, checkpoints and configuration checks."""
import json
import math
import os

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from gluon_ssd import checkpoint as ckpt
from gluon_ssd import engine
from gluon_ssd.config import (TrainConfig, default_loader_workers, fill_defaults, parse_config,
                              scaled_steps, validate)
from gluon_ssd.data.build import EpochBatchSampler, SeededItems, pad_label
from gluon_ssd.errors import UserError
from gluon_ssd.loss import SSDMultiBoxLoss
from gluon_ssd.model.zoo import model_name
from gluon_ssd.target import SSDTargetGenerator


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
    """A tiny_ssd, its fused graph and one 8-image batch of the synthetic data."""
    root = tmp_path_factory.mktemp('synthetic')
    cfg = parse_config(['--network', 'tiny_ssd', '--num-train', '16', '--num-val', '8', '-j', '0',
                        '--batch-size', '8',
                        '--dataset-root', str(root), '--out-dir', str(root / 'run')])
    # the engine's own set-up steps, as engine.Run.setup calls them
    train_ds, val_ds, classes = engine.open_data(cfg)
    mx.random.seed(0)
    net = engine.build_net(cfg, classes, [mx.cpu(0), mx.cpu(1)])
    max_objects = engine.label_rows(cfg, train_ds)
    graph, normalizer = engine.build_graph(cfg, net, max_objects)
    loader, sampler = engine.build_loaders(cfg, train_ds, max_objects)
    sampler.set_epoch(0)
    data, label = next(iter(loader))
    return {'cfg': cfg, 'net': net, 'graph': graph, 'normalizer': normalizer, 'classes': classes,
            'data': data.as_in_context(mx.cpu(0)), 'label': label.as_in_context(mx.cpu(0)),
            'train_ds': train_ds}


def _total(losses):
    return sum(float(l.sum().asscalar()) for l in losses)


def test_fused_step_equals_unfused(tiny_setup):
    s = tiny_setup
    with autograd.record():
        fused, fused_cls, fused_box = engine.forward_losses(
            s['graph'], s['normalizer'], [s['data']], [s['label']])
    with autograd.record():
        cls_preds, box_preds, anchors = s['net'](s['data'])
        targets = SSDTargetGenerator()(anchors, cls_preds, s['label'][:, :, :4],
                                       s['label'][:, :, 4:5])
        ref, ref_cls, ref_box = SSDMultiBoxLoss()(cls_preds, box_preds, targets[0], targets[1])
    np.testing.assert_allclose(fused[0].asnumpy(), ref[0].asnumpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused_cls[0].asnumpy(), ref_cls[0].asnumpy(), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(fused_box[0].asnumpy(), ref_box[0].asnumpy(), rtol=1e-5,
                               atol=1e-5)


def test_two_contexts_normalise_over_all_positives(tiny_setup):
    """'batch' mode on 2 devices = (sum of both halves' terms) / (positives of both halves).

    BatchNorm uses per-device statistics, so the reference runs each half on one context."""
    s = tiny_setup
    data, label = s['data'], s['label']
    ctxs = [mx.cpu(0), mx.cpu(1)]
    halves = [mx.gluon.utils.split_and_load(a, ctxs) for a in (data, label)]
    with autograd.record():
        multi, _, _ = engine.forward_losses(s['graph'], s['normalizer'], *halves)
        terms = [s['graph'](d.as_in_context(mx.cpu(0)), l.as_in_context(mx.cpu(0)))
                 for d, l in zip(*halves)]
    cls_sum = sum(float(t[0].sum().asscalar()) for t in terms)
    box_sum = sum(float(t[1].sum().asscalar()) for t in terms)
    npos = sum(float(t[2].sum().asscalar()) for t in terms)
    assert npos > 0
    assert _total(multi) == pytest.approx((cls_sum + box_sum) / npos, rel=1e-5)
    # Every device divides by the same global count, so per-device totals add up exactly.
    assert multi[0].context == mx.cpu(0) and multi[1].context == mx.cpu(1)


def test_seeded_items_independent_of_order(tiny_setup):
    s = tiny_setup
    tf, _ = engine.build_transforms(s['cfg'])
    items = SeededItems(s['train_ds'], tf, seed=7, max_objects=8)
    n = len(items)
    keys = [3, n + 3, 5, 2 * n + 1]
    forward = [items[k] for k in keys]
    backward = [items[k] for k in reversed(keys)][::-1]
    for (a_img, a_lab), (b_img, b_lab) in zip(forward, backward):
        np.testing.assert_array_equal(a_img.asnumpy(), b_img.asnumpy())
        np.testing.assert_array_equal(a_lab, b_lab)
    assert forward[0][1].shape == (8, 6)
    assert not np.array_equal(forward[0][0].asnumpy(), forward[1][0].asnumpy())  # new epoch


def test_epoch_batch_sampler():
    sampler = EpochBatchSampler(10, 4, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    assert len(first) == len(sampler) == 2 and all(len(b) == 4 for b in first)
    sampler.set_epoch(1)
    second = list(sampler)
    assert all(10 <= k < 20 for b in second for k in b)
    sampler.set_epoch(0)
    assert list(sampler) == first
    shards = [EpochBatchSampler(10, 2, seed=1, rank=r, num_workers=2) for r in (0, 1)]
    for sh in shards:
        sh.set_epoch(0)
    keys = [k for sh in shards for b in sh for k in b]
    assert len(set(keys)) == len(keys) == 8


def test_pad_label():
    out = pad_label(np.ones((2, 6), np.float32), 4)
    assert out.shape == (4, 6) and (out[2:] == -1).all() and (out[:2] == 1).all()
    with pytest.raises(ValueError, match='--max-objects'):
        pad_label(np.ones((5, 6), np.float32), 4)


def test_learning_rate_schedule():
    cfg = fill_defaults(TrainConfig(lr=1.0, epochs=10, lr_decay_epoch='4,8', lr_decay=0.1,
                                    lr_mode='step', warmup_epochs=2, out_dir='x'))
    lr = lambda e: engine.learning_rate(cfg, e)  # noqa: E731
    assert lr(0) == 0 and lr(1) == pytest.approx(0.5)
    assert lr(2) == 1.0 and lr(3.9) == 1.0
    assert lr(4) == pytest.approx(0.1) and lr(8.5) == pytest.approx(0.01)
    cfg.lr_mode, cfg.warmup_epochs = 'cosine', 0
    assert lr(0) == 1.0 and lr(5) == pytest.approx(0.5) and lr(10) == pytest.approx(0.0)


class _FakeNet:
    def __init__(self, value):
        self.value = value

    def save_parameters(self, path):
        with open(path, 'wb') as f:
            f.write(self.value)


class _FailingNet:
    def save_parameters(self, path):
        with open(path, 'wb') as f:
            f.write(b'partial')
        raise OSError('disk full')


def test_checkpoint_atomic_and_verified(tmp_path):
    run = str(tmp_path)
    ckpt.save_checkpoint(run, _FakeNet(b'one'), None, {'epoch': 1})
    state = ckpt.load_checkpoint_state(run)
    assert state['epoch'] == 1 and 'rng' in state and state['states'] is None
    assert open(state['params'], 'rb').read() == b'one' == (tmp_path / 'last.params').read_bytes()
    with pytest.raises(ckpt.CheckpointError, match='disk full.*epoch 1 is kept'):
        ckpt.save_checkpoint(run, _FailingNet(), None, {'epoch': 2})
    # the old checkpoint intact and still the committed one; nothing half-written left
    assert sorted(os.listdir(run)) == ['checkpoints', 'last.json', 'last.params']
    assert os.listdir(tmp_path / 'checkpoints') == ['ckpt-0001']
    assert ckpt.load_checkpoint_state(run)['epoch'] == 1
    new = ckpt.save_checkpoint(run, _FakeNet(b'two'), None, {'epoch': 2})
    assert os.listdir(tmp_path / 'checkpoints') == ['ckpt-0002']     # older ones removed
    assert (tmp_path / 'last.params').read_bytes() == b'two'
    with open(new['params'], 'wb') as f:
        f.write(b'tw0')                                            # damaged afterwards
    with pytest.raises(ckpt.CheckpointError, match='does not match') as err:
        ckpt.load_checkpoint_state(run)
    assert '\n' not in str(err.value) and 'no usable checkpoint' in str(err.value)


def test_checkpoint_resaving_the_committed_epoch(tmp_path):
    """--resume FILE --start-epoch N into a run whose last checkpoint is epoch N+1."""
    run = str(tmp_path)
    ckpt.save_checkpoint(run, _FakeNet(b'one'), None, {'epoch': 2})
    again = ckpt.save_checkpoint(run, _FakeNet(b'two'), None, {'epoch': 2})
    assert again['dir'].endswith('ckpt-0002-1')
    state = ckpt.load_checkpoint_state(run)
    assert open(state['params'], 'rb').read() == b'two'
    assert os.listdir(tmp_path / 'checkpoints') == ['ckpt-0002-1']


def test_checkpoint_signals_are_deferred_while_saving():
    import signal
    with pytest.raises(KeyboardInterrupt):
        with ckpt.signals_deferred():
            signal.raise_signal(signal.SIGINT)
            done = True                           # not interrupted inside the block
    assert done


def test_rng_state_roundtrip():
    import random
    state = ckpt.rng_state()
    a = (random.random(), np.random.rand())
    ckpt.set_rng_state(json.loads(json.dumps(state)))
    assert (random.random(), np.random.rand()) == a


@pytest.mark.parametrize('argv, flag', [
    (['--network', 'resnet9000'], '--network'),
    (['--data-shape', '300'], '--data-shape'),
    (['--dataset', 'voc'], '--dataset-root'),
    (['--dataset', 'voc', '--dataset-root', '/nonexistent/dir'], '--dataset-root'),
    (['--cpu-contexts', '4', '--batch-size', '2'], '--batch-size'),
    (['--gpus', '0,1,2', '--batch-size', '2'], '--batch-size'),
    (['--lr-decay-epoch', '1,x'], '--lr-decay-epoch'),
    (['--resume', '/nonexistent/run'], '--resume'),
])
def test_bad_configuration_messages(argv, flag):
    with pytest.raises(UserError) as err:
        parse_config(argv + ['--out-dir', 'unused'])
    message = str(err.value)
    assert flag in message and '\n' not in message


def test_defaults_come_from_network_preset():
    cfg = parse_config(['--out-dir', 'x'])     # no --network: the from-scratch SSD and recipe
    assert (cfg.network, cfg.data_shape, cfg.dataset) == ('scratch_ssd', 192, 'synthetic')
    assert (cfg.model, cfg.optimizer, cfg.lr, cfg.steps) == ('scratch_ssd_192', 'adam', 0.01,
                                                             1040)
    tiny = parse_config(['--network', 'tiny_ssd', '--out-dir', 'x'])
    assert (tiny.model, tiny.epochs) == ('tiny_ssd_128', 16)
    assert model_name('tiny_ssd', 256) == 'tiny_ssd'   # d2l's exact model
    vgg = parse_config(['--network', 'vgg16_atrous', '--out-dir', 'x'])
    assert (vgg.data_shape, vgg.lr, vgg.lr_decay_epochs) == (300, 0.001, [160, 200])
    assert vgg.pretrained_base is True and cfg.pretrained_base is False   # as GluonCV; scratch
    assert parse_config(['--network', 'vgg16_atrous', '--no-pretrained-base',
                         '--out-dir', 'x']).pretrained_base is False
    assert parse_config(['--lr', '0.5', '--out-dir', 'x']).lr == 0.5
    assert validate(cfg) is cfg


@pytest.mark.parametrize('argv, flag', [
    (['--lr', 'nan'], '--lr'), (['--lr', 'inf'], '--lr'), (['--wd', 'nan'], '--wd'),
    (['--momentum', '5'], '--momentum'), (['--seed', '-1'], '--seed'),
    (['--max-expand', '0.5'], '--max-expand'), (['--gpus', 'x'], '--gpus'),
    (['--iou-thresh', '0'], '--iou-thresh'), (['--iou-thresh', '1.5'], '--iou-thresh'),
    (['--iou-thresh', 'nan'], '--iou-thresh'),
])
def test_numeric_flags_reject_nan_inf_and_nonsense(argv, flag):
    with pytest.raises(UserError) as err:
        parse_config(argv + ['--out-dir', 'unused'])
    assert flag in str(err.value)


@pytest.mark.parametrize('network, shape, dataset, name', [
    ('vgg16_atrous', 300, 'coco', 'ssd_300_vgg16_atrous_coco'),
    ('vgg16_atrous', 512, 'coco', 'ssd_512_vgg16_atrous_coco'),
    ('resnet50_v1', 512, 'coco', 'ssd_512_resnet50_v1_coco'),
    ('mobilenet1.0', 512, 'coco', 'ssd_512_mobilenet1.0_coco'),
    ('vgg16_atrous', 300, 'voc', 'ssd_300_vgg16_atrous_voc'),
    ('vgg16_atrous', 300, 'synthetic', 'ssd_300_vgg16_atrous_voc'),
    ('tiny_ssd', 256, 'coco', 'tiny_ssd'),
])
def test_training_takes_the_datasets_preset(network, shape, dataset, name, tmp_path):
    """Bug: --dataset coco --network vgg16_atrous trained with VOC's anchor sizes (30, 60, ...)
    instead of GluonCV's COCO preset (21, 45, ...)."""
    root = [] if dataset == 'synthetic' else ['--dataset-root', str(tmp_path)]
    cfg = parse_config(['--network', network, '--data-shape', str(shape), '--dataset', dataset,
                        '--out-dir', 'x'] + root)
    assert engine.run_model_name(cfg) == name


def test_coco_run_builds_the_coco_anchors(tmp_path):
    from gluon_ssd.model.zoo import anchor_sizes, get_preset
    cfg = parse_config(['--network', 'vgg16_atrous', '--dataset', 'coco', '--dataset-root',
                        str(tmp_path), '--out-dir', 'x', '--no-pretrained-base'])
    net = engine.build_net(cfg, ['a', 'b'], [mx.cpu()])
    with autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, 300, 300)))
    first = anchors[0, 0].asnumpy()            # (cx, cy, w, h) of the first anchor, pixels
    assert first[2] == pytest.approx(21) and anchor_sizes(get_preset(
        'ssd_300_vgg16_atrous_coco'))[0][0] == 21


def test_too_small_max_objects_is_refused_before_training(tiny_setup):
    """Bug: too small a --max-objects crashed in whichever later epoch drew a crowded image."""
    from dataclasses import replace
    most = engine.label_rows(tiny_setup['cfg'], tiny_setup['train_ds'])
    assert most >= 2
    cfg = replace(tiny_setup['cfg'], max_objects=most - 1)
    with pytest.raises(UserError, match=f'--max-objects {most - 1}: a training image has {most}'):
        engine.label_rows(cfg, tiny_setup['train_ds'])
    assert engine.label_rows(replace(cfg, max_objects=most + 5), tiny_setup['train_ds']) == most + 5


def test_anchor_matching_iou_is_recipe_data_and_reaches_the_target_generator():
    from gluon_ssd.config import NETWORK_PRESETS
    cfg = parse_config(['--out-dir', 'x'])
    assert cfg.iou_thresh == NETWORK_PRESETS['scratch_ssd']['iou_thresh'] < 0.5
    for network in ('tiny_ssd', 'vgg16_atrous'):   # d2l's and GluonCV's 0.5
        assert parse_config(['--network', network, '--out-dir', 'x']).iou_thresh == 0.5
    cfg = parse_config(['--iou-thresh', '0.45', '--out-dir', 'x'])
    graph, _ = engine.build_graph(cfg, engine.build_net(cfg, ['a'], [mx.cpu()]), 3)
    assert graph.target_generator._iou_thresh == 0.45   # pylint: disable=protected-access


def test_running_statistics_average_a_tenth_of_the_schedule_between_10_and_100_batches():
    assert engine.running_stats_momentum(0.99, 1040) == 0.99       # the default recipe
    assert engine.running_stats_momentum(0.99, 60) == 0.9          # a 6-epoch raccoon run
    assert engine.running_stats_momentum(0.99, 400) == pytest.approx(0.975)
    for steps in (60, 400, 1040):     # what is left of the initial statistics at the end
        assert engine.running_stats_momentum(0.99, steps) ** steps < 0.01


@pytest.mark.parametrize('argv, momentum', [([], '0.99'), (['--epochs', '1'], '0.9')])
def test_the_training_graph_uses_the_runs_running_stats_momentum(tmp_path, argv, momentum):
    cfg = parse_config(['--dataset-root', str(tmp_path / 'data'), '--num-train', '16',
                        '--num-val', '4', '-j', '0', '--out-dir', str(tmp_path / 'r'),
                        '--no-progress'] + argv)
    run = engine.Run(cfg, [mx.cpu()])
    run.setup()
    try:
        data, label = next(iter(run.train_loader))
        run.step(data, label)
        graph = json.loads(run.graph._cached_graph[1].tojson())  # pylint: disable=protected-access
        moms = {n['attrs']['momentum'] for n in graph['nodes'] if n['op'] == 'BatchNorm'}
        assert moms == {momentum}
    finally:
        run.close()


def test_default_loader_workers_are_gluoncvs_4_at_most_one_per_two_cores():
    assert [default_loader_workers(c) for c in (1, 2, 3, 4, 6, 8, 64)] == [1, 1, 1, 2, 3, 4, 4]
    assert parse_config(['--out-dir', 'x']).num_workers == default_loader_workers()
    assert parse_config(['-j', '0', '--out-dir', 'x']).num_workers == 0


def test_a_recipe_in_steps_sets_epochs_from_the_batches_per_epoch():
    """scratch_ssd's length is 1040 optimizer steps at 192 px: ceil(1040 / batches per epoch)
    epochs; another input size scales the steps by the pixel count (the same compute)."""
    cfg = parse_config(['--network', 'scratch_ssd', '--out-dir', 'x'])
    assert (cfg.steps, cfg.epochs, cfg.batch_size) == (1040, None, 16)
    assert engine.schedule_epochs(cfg, 160 // 16) and cfg.epochs == 104   # the raccoon photos
    assert not engine.schedule_epochs(cfg, 62) and cfg.epochs == 104      # already set: kept
    synthetic = parse_config(['--out-dir', 'x'])
    assert engine.schedule_epochs(synthetic, 1000 // 16) and synthetic.epochs == 17
    explicit = parse_config(['--network', 'scratch_ssd', '--epochs', '3', '--out-dir', 'x'])
    assert (explicit.epochs, explicit.steps) == (3, None)    # --epochs wins, no steps recorded
    assert not engine.schedule_epochs(explicit, 10) and explicit.epochs == 3
    for shape, steps in ((256, 585), (320, 374)):            # 1040 * (192 / shape) ** 2
        assert parse_config(['--data-shape', str(shape), '--out-dir', 'x']).steps == steps
    assert scaled_steps(1040, 'scratch_ssd', 192) == 1040
    default = parse_config(['--network', 'tiny_ssd', '--out-dir', 'x'])   # epochs, no steps
    assert (default.epochs, default.steps) == (16, None)


def test_a_recipe_with_validations_spreads_them_over_the_run():
    """scratch_ssd validates ``validations`` times (the last epoch always); --val-interval wins,
    and the other recipes validate every epoch."""
    from gluon_ssd.config import NETWORK_PRESETS
    count = NETWORK_PRESETS['scratch_ssd']['validations']
    synthetic = parse_config(['--out-dir', 'x'])
    assert synthetic.val_interval is None and synthetic.validations == count
    engine.schedule_epochs(synthetic, 1000 // 16)
    assert synthetic.val_interval == math.ceil(17 / count)
    raccoon = parse_config(['--out-dir', 'x'])
    engine.schedule_epochs(raccoon, 160 // 16)
    assert raccoon.val_interval == math.ceil(104 / count)
    short = parse_config(['--epochs', '2', '--out-dir', 'x'])
    engine.schedule_epochs(short, 62)
    assert short.val_interval == 1
    explicit = parse_config(['--val-interval', '1', '--out-dir', 'x'])
    engine.schedule_epochs(explicit, 10)
    assert explicit.val_interval == 1
    for network in ('tiny_ssd', 'vgg16_atrous'):
        other = parse_config(['--network', network, '--out-dir', 'x'])
        assert (other.val_interval, other.validations) == (1, None)
    with pytest.raises(UserError, match='--val-interval'):
        parse_config(['--val-interval', '0', '--out-dir', 'x'])


def test_colour_distortion_is_recipe_data_and_reaches_the_transform():
    """scratch_ssd distorts colours as the SSD paper (hue within 18 degrees); GluonCV's recipes
    and d2l's TinySSD keep GluonCV's exact augmentation; --photometric overrides."""
    assert parse_config(['--out-dir', 'x']).photometric == 'paper'
    for network in ('tiny_ssd', 'vgg16_atrous'):
        assert parse_config(['--network', network, '--out-dir', 'x']).photometric == 'gluoncv'
    cfg = parse_config(['--photometric', 'none', '--out-dir', 'x'])
    train_tf, _ = engine.build_transforms(cfg)
    assert train_tf._photometric == 'none'     # pylint: disable=protected-access
    with pytest.raises(SystemExit):             # argparse: one line naming the choices
        parse_config(['--photometric', 'hsv', '--out-dir', 'x'])


def test_a_run_records_the_epochs_of_its_steps(tmp_path):
    """40 images in batches of 16: 2 steps per epoch (the last partial batch is dropped)."""
    run_dir = tmp_path / 'run'
    cfg = parse_config(['--network', 'scratch_ssd', '--num-train', '40', '--num-val', '4',
                        '-j', '0', '--dataset-root', str(tmp_path / 'data'), '--no-progress',
                        '--out-dir', str(run_dir)])
    run = engine.Run(cfg, [mx.cpu()])
    try:
        run.setup()
    finally:
        run.close()
        engine.rundir.release_run_dir(getattr(run, 'run_lock', None))
    saved = json.loads((run_dir / 'config.json').read_text())
    assert (saved['steps'], saved['epochs']) == (1040, 520)
    assert '1040 steps of 2 batches per epoch (40 training images, batch 16): 520 epochs' in \
        (run_dir / 'train.log').read_text()

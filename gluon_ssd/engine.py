"""The SSD training engine: one fused, hybridized training graph and the epoch loop around it.

Per batch the host only *queues* work: the batch is split across devices, each device runs
:class:`TrainGraph` (network forward + :class:`~gluon_ssd.target.SSDTargetGenerator` +
:class:`~gluon_ssd.loss.MultiBoxLossTerms` in one ``static_alloc``/``static_shape`` graph), the
per-image loss terms are normalised across devices with NDArray ops
(:meth:`~gluon_ssd.loss.SSDMultiBoxLoss.normalize`), backward, ``trainer.step``. The host waits
for the device only every ``log_interval`` batches (to log the loss and check it is finite) and
at the end of the epoch.

A run is set up in explicit steps (:func:`open_data`, :func:`build_net`, :func:`build_graph`,
:func:`build_loaders`, :func:`build_evaluator`, :func:`build_trainer`) that :class:`Run` calls
in order and tests call one by one. Data: :mod:`gluon_ssd.data.build` (deterministic batches, so
a resumed run ends with exactly the parameters of an uninterrupted one on the same CPU thread
count); validation: :mod:`gluon_ssd.evaluate`; run-directory files: :mod:`gluon_ssd.rundir`.

Distributed (``--kvstore dist_sync|dist_device_sync``, started with :mod:`gluon_ssd.launch`):
every worker trains on its shard, gradients are averaged over the global batch
(``trainer.step(global_batch_size(1, kv))``), rank 0 alone validates and writes the run
directory. ``--horovod`` uses Horovod's ``DistributedTrainer``.
"""
import math
import os
import random
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_ssd import checkpoint as ckpt
from gluon_ssd import rundir
from gluon_ssd.data import ImageDecodeError
from gluon_ssd.data.build import (DATA_COUNT_KEYS, LoadProblems, max_objects_of, open_datasets,
                                  train_loader)
from gluon_ssd.devices import make_contexts
from gluon_ssd.distributed import (create_kvstore, global_batch_size, is_distributed,
                                   worker_info)
from gluon_ssd.errors import EXIT_DIVERGED, UserError
from gluon_ssd.evaluate import Evaluator
from gluon_ssd.loss import SSDMultiBoxLoss
from gluon_ssd.model.io import (RUN_META, find_meta, finite_detections, input_transform,
                                load_model, load_params, make_meta, save_meta)
from gluon_ssd.model.zoo import get_model, get_preset, model_name
from gluon_ssd.precision import PrecisionMixin
from gluon_ssd.rundir import LOG
from gluon_ssd.target import SSDTargetGenerator

__all__ = ['TrainGraph', 'TrainingDiverged', 'Run', 'train', 'run_model_name', 'open_data',
           'build_net', 'build_graph', 'build_transforms', 'build_loaders', 'build_evaluator',
           'build_trainer', 'label_rows', 'learning_rate', 'forward_losses', 'schedule_epochs']


class TrainingDiverged(UserError):
    """The loss became NaN/inf; the last good checkpoint is left untouched (exit code 3)."""
    exit_code = EXIT_DIVERGED


# ----------------------------------------------------------------------------------------------
# the fused training graph
# ----------------------------------------------------------------------------------------------
class TrainGraph(PrecisionMixin, gluon.HybridBlock):
    """Network forward, target generation and per-image loss terms in one graph.

    Parameters
    ----------
    net : SSD network; called in training mode it returns ``(cls_preds (B,N,C+1), box_preds
        (B,N,4), anchors (1,N,4) center px)``.
    target_generator : :class:`~gluon_ssd.target.SSDTargetGenerator`.
    loss_terms : :class:`~gluon_ssd.loss.MultiBoxLossTerms`.

    Inputs: ``data (B, 3, H, W)`` normalised images; ``label (B, M, >=5)`` rows ``[xmin, ymin,
    xmax, ymax, class_id, ...]`` in input pixels, padding rows ``-1`` (``M`` fixed per run).
    Outputs: ``(cls_loss (B,), box_loss (B,), num_pos (B,))`` un-normalised per-image sums.
    Only ever call it under ``autograd.record()`` (training mode).
    """

    def __init__(self, net, target_generator, loss_terms, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.target_generator = target_generator
        self.loss_terms = loss_terms

    def hybrid_forward(self, F, data, label):  # pylint: disable=arguments-differ
        gt_boxes = F.slice_axis(label, axis=-1, begin=0, end=4)
        gt_ids = F.slice_axis(label, axis=-1, begin=4, end=5)
        cls_preds, box_preds, anchors = self.net(data)
        cls_targets, box_targets, _ = self.target_generator(
            F.BlockGrad(anchors), F.BlockGrad(cls_preds), gt_boxes, gt_ids)
        return self.loss_terms(cls_preds, box_preds, F.BlockGrad(cls_targets),
                               F.BlockGrad(box_targets))


def forward_losses(graph, normalizer, datas, labels):
    """Run ``graph`` on each device's slice and normalise across devices (no host sync).

    ``datas``/``labels``: lists (one per device) of ``(B_i, 3, H, W)`` / ``(B_i, M, 6)``.
    Returns ``(sum_losses, cls_losses, box_losses)``: lists of ``(B_i,)`` NDArrays whose sum
    over all devices and images is the batch loss. Call under ``autograd.record()``.
    """
    cls_terms, box_terms, num_pos = [], [], []
    for data, label in zip(datas, labels):
        c, b, n = graph(data, label)
        cls_terms.append(c)
        box_terms.append(b)
        num_pos.append(n)
    return normalizer.normalize(cls_terms, box_terms, num_pos)


# ----------------------------------------------------------------------------------------------
# the set-up steps of a run
# ----------------------------------------------------------------------------------------------
def run_model_name(cfg):
    """The zoo preset a configuration trains (from ``--pretrained``, or ``--network``,
    ``--data-shape`` and ``--dataset``: :func:`gluon_ssd.model.zoo.model_name`)."""
    return cfg.model or model_name(cfg.network, cfg.data_shape, cfg.dataset)


def open_data(cfg):
    """``(train_dataset, val_dataset, classes)`` of raw items (see :mod:`gluon_ssd.data.build`)."""
    return open_datasets(cfg.dataset, cfg.dataset_root, cfg.train_split, cfg.val_split,
                         cfg.num_train, cfg.num_val, strict=cfg.strict_data)


def build_net(cfg, classes, ctx, load_weights=True):
    """The SSD of :func:`run_model_name` with ``classes`` on ``ctx`` (a list of contexts).

    With ``--pretrained`` the trained detector, its classes reset to ``classes`` (the predictors
    of classes with the same name are kept); else the base network's ImageNet weights with
    ``--pretrained-base`` and ``--init`` for the rest. ``load_weights=False`` builds the same
    network without loading anything (a resumed run loads its checkpoint instead).
    """
    name = run_model_name(cfg)
    if cfg.pretrained and load_weights:
        net = _pretrained_detector(cfg, name, ctx)
        reuse = [c for c in classes if c in net.classes]
        if list(net.classes) != list(classes):
            net.reset_class(classes, reuse_weights=reuse or None, keep_background=True)
        LOG.info('fine-tuning %s (%s): %d of %d classes keep their trained predictors',
                 cfg.pretrained, name, len(reuse), len(classes))
        return net
    net = get_model(name, classes=classes, init=cfg.init, decoder=cfg.decoder,
                    pretrained_base=bool(cfg.pretrained_base and load_weights))
    with _quiet_init():
        net.initialize(ctx=ctx)
    net.collect_params().reset_ctx(ctx)
    return net


def _pretrained_detector(cfg, name, ctx):
    """The ``--pretrained`` detector: a zoo name or a file with a meta file through
    :func:`~gluon_ssd.model.io.load_model`; a bare file as GluonCV's (or our) weights of the
    run's preset."""
    spec = os.path.expanduser(cfg.pretrained)
    if os.path.isfile(spec) and find_meta(spec) is None:
        net = get_model(name, pretrained=spec, init=cfg.init, decoder=cfg.decoder)
        net.collect_params().reset_ctx(ctx)
        return net
    net, _ = load_model(pretrained=cfg.pretrained, ctx=ctx, hybridize=False,
                        decoder=cfg.decoder, init=cfg.init)
    return net


class _quiet_init:
    """Silence MXNet's "parameter already initialized" warning (the zoo may initialise)."""

    def __enter__(self):
        import warnings
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter('ignore')

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def label_rows(cfg, train_ds):
    """Fixed label padding ``M`` of the training batches: ``--max-objects`` or the dataset's
    most objects per image. A ``--max-objects`` below what the dataset holds is an error now,
    naming the flag, rather than in whichever later epoch first draws that image."""
    if cfg.max_objects and not hasattr(train_ds, 'label'):
        return cfg.max_objects       # labels cannot be listed cheaply (RecordIO): trust the flag
    most = max_objects_of(train_ds)
    if cfg.max_objects and most > cfg.max_objects:
        raise UserError(f"--max-objects {cfg.max_objects}: a training image has {most} objects; "
                        f"use --max-objects {most} or more (or 0: the dataset's most)")
    return cfg.max_objects or most


def build_graph(cfg, net, max_objects):
    """``(graph, normalizer)``: the hybridized :class:`TrainGraph` and the cross-device loss
    normaliser. The label padding ``max_objects`` lets the target generator trace its fast
    bipartite step."""
    normalizer = SSDMultiBoxLoss(normalization=cfg.loss_norm)
    targets = SSDTargetGenerator(iou_thresh=cfg.iou_thresh, max_objects=max_objects)
    graph = TrainGraph(net, targets, normalizer.terms)
    if cfg.amp_dtype == 'bfloat16':   # the training graph and the validation graph
        graph.set_precision('bfloat16')
        net.set_precision('bfloat16')
    graph.hybridize(static_alloc=True, static_shape=True)
    return graph, normalizer


def build_transforms(cfg):
    """``(train_transform, val_transform)`` of the run: ``(image, label) -> (image (3, S, S)
    float32 normalised with the preset's mean/std, label (M, 6) pixels of the input)``."""
    from gluon_ssd.data.transforms import SSDTrainTransform
    meta = make_meta(run_model_name(cfg), [])
    size = meta['data_shape']
    train_tf = SSDTrainTransform(size, size, mean=tuple(meta['mean']), std=tuple(meta['std']),
                                 max_expand=cfg.max_expand, photometric=cfg.photometric)
    return train_tf, input_transform(meta)


def build_loaders(cfg, train_ds, max_objects, rank=0, world_size=1):
    """``(train_loader, sampler)`` of this worker's augmented, padded training batches."""
    train_tf, _ = build_transforms(cfg)
    return train_loader(train_ds, train_tf, cfg.batch_size, cfg.seed, max_objects,
                        cfg.num_workers, rank, world_size)


def build_evaluator(cfg, val_ds, classes):
    """Validation of the run: VOC07 mAP, and COCO AP too when training on COCO."""
    kinds = ('voc07', 'coco') if cfg.dataset == 'coco' else ('voc07',)
    _, val_tf = build_transforms(cfg)
    return Evaluator(val_ds, val_tf, cfg.data_shape, classes, kinds, cfg.batch_size,
                     cfg.num_workers)


def schedule_epochs(cfg, batches_per_epoch):
    """Set ``cfg.epochs`` from ``cfg.steps`` when ``--epochs`` was not given (in place).

    ``batches_per_epoch``: optimizer steps per epoch of this run (``len`` of the training
    sampler: ``floor(training images / batch)``, the last partial batch is dropped; per worker when
    distributed). Epochs ``= ceil(steps / batches_per_epoch)``, so a small dataset gets more epochs
    and a large one fewer for the same number of updates. A recipe with ``validations`` and no
    ``--val-interval`` validates every ``ceil(epochs / validations)`` epochs (and after the last).
    Returns ``True`` when it set ``cfg.epochs``, ``False`` when the run already had them.
    """
    scheduled = cfg.epochs is None
    if scheduled:
        cfg.epochs = math.ceil(cfg.steps / max(batches_per_epoch, 1))
    if cfg.val_interval is None:
        # a validation costs about a tenth of an epoch of 1000 images; every epoch of a short
        # run (or of a small dataset's many epochs) adds up: validate ``validations`` times
        cfg.val_interval = max(1, math.ceil(cfg.epochs / cfg.validations))
    return scheduled


def running_stats_momentum(longest, total_steps):
    """Momentum of the BatchNorm running statistics for a run of ``total_steps`` optimizer steps:
    they average about the last 10 % of the schedule, over at most the preset's ``longest``
    (``bn_momentum``; 0.99 = ~100 batches) and at least MXNet's 0.9 (~10 batches).

    The statistics only serve inference, and an average that starts from the initial values
    (mean 0, variance 1) keeps ``momentum ** steps`` of them: a 60-step run at 0.99 would keep 55 %
    and evaluate near 0 mAP. At ``1 - 10 / total_steps`` what is left by the end of any run is
    ``e ** -10``; until then the first ~10 % of a run is evaluated with part-initial statistics.
    """
    return min(longest, max(0.9, 1.0 - 10.0 / max(total_steps, 1)))


def set_running_stats_momentum(net, momentum):
    """Set the running-statistics ``momentum`` of every BatchNorm of ``net`` (in place; call before
    the hybridized training graph first runs, which fixes it)."""
    def visit(block):
        if isinstance(block, gluon.nn.BatchNorm):
            block._kwargs['momentum'] = momentum   # pylint: disable=protected-access
    net.apply(visit)


def learning_rate(cfg, epoch):
    """Learning rate at fractional ``epoch`` (``e + batch / batches``): linear warm-up over
    ``warmup_epochs``, then ``step`` (times ``lr_decay`` at each ``--lr-decay-epoch``) or
    ``cosine`` (to 0 at ``epochs``)."""
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return cfg.lr * epoch / cfg.warmup_epochs
    if cfg.lr_mode == 'cosine':
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
        progress = min(max(epoch - cfg.warmup_epochs, 0) / span, 1.0)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    passed = sum(1 for e in cfg.lr_decay_epochs if math.floor(epoch) >= e)
    return cfg.lr * cfg.lr_decay ** passed


def build_trainer(cfg, net, kv, hvd=None):
    """The ``gluon.Trainer`` (Horovod's ``DistributedTrainer`` with ``hvd``) of the run."""
    opts = {'learning_rate': cfg.lr, 'wd': cfg.wd}
    if cfg.optimizer == 'sgd':
        opts['momentum'] = cfg.momentum
    params = net.collect_params()
    if hvd is not None:
        hvd.broadcast_parameters(params, root_rank=0)
        return hvd.DistributedTrainer(params, cfg.optimizer, opts)
    # Local updates (also for dist_*: gradients are summed across workers, states stay local
    # and can be checkpointed).
    update_on_kv = False if (cfg.amp_dtype == 'float16' or is_distributed(kv)) else None
    trainer = gluon.Trainer(params, cfg.optimizer, opts, kvstore=kv, update_on_kvstore=update_on_kv)
    if cfg.amp_dtype == 'float16':
        from mxnet.contrib import amp  # pylint: disable=import-outside-toplevel
        amp.init_trainer(trainer)
    return trainer


def _import_horovod():
    try:
        import horovod.mxnet as hvd  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise UserError("--horovod needs Horovod built with MXNet support: install it with "
                        "HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 pip install --no-binary "
                        "horovod horovod (or use --kvstore dist_sync)") from None
    hvd.init()
    return hvd


# ----------------------------------------------------------------------------------------------
# pictures
# ----------------------------------------------------------------------------------------------
def _denormalize(img, mean, std):
    """(3, H, W) normalised float -> (H, W, 3) uint8 RGB."""
    arr = img.asnumpy().transpose(1, 2, 0) * np.array(std) + np.array(mean)
    return np.clip(arr * 255, 0, 255).astype(np.uint8)


def save_detection_picture(net, meta, val_ds, count, ctx, path):
    """``detections.png``: the first ``count`` validation images with predictions (solid) and
    ground truth (dashed)."""
    from gluon_ssd.viz import save_detections_grid
    transform = input_transform(meta)
    images, dets, gts = [], [], []
    for i in range(min(count, len(val_ds))):
        try:
            img, label = transform(*val_ds[i])
        except ImageDecodeError:     # skipped and counted by the validation already
            continue
        ids, scores, bboxes = (a.asnumpy() for a in net(img.expand_dims(0).as_in_context(ctx)))
        finite_detections(ids, scores, bboxes)
        keep = ids[0, :, 0] >= 0
        dets.append((bboxes[0][keep], scores[0, :, 0][keep], ids[0, :, 0][keep]))
        images.append(_denormalize(img, meta['mean'], meta['std']))
        gts.append(np.asarray(label))
    if images:                   # --num-samples-viz 0: no picture
        save_detections_grid(images, dets, gts, meta['classes'], path)


# ----------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------
def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)


def _check_finite(value, where, run_dir):
    if not math.isfinite(value):
        raise TrainingDiverged(f"loss is {value} at {where}; stopped, the last good checkpoint "
                               f"in {run_dir} is untouched (try a lower --lr)")


class Run:
    """State of one training run: :meth:`setup` (the steps above, in order), then
    :meth:`train_epoch` / :meth:`end_epoch` per epoch, :meth:`finish`, :meth:`close`."""

    def __init__(self, cfg, ctx, hooks=None):
        self.cfg, self.ctx, self.hooks = cfg, ctx, hooks or {}
        self.kv = None
        self.hvd = None
        self.rank, self.num_workers = 0, 1
        self.log_handlers = []

    # -- setup ---------------------------------------------------------------------------------
    def setup(self):
        cfg = self.cfg
        if cfg.horovod:
            self.hvd = _import_horovod()
            self.rank, self.num_workers = self.hvd.rank(), self.hvd.size()
            self.ctx = [mx.gpu(self.hvd.local_rank())] if cfg.gpus else [mx.cpu()]
        self.train_ds, self.val_ds, self.classes = open_data(cfg)
        self.meta = make_meta(run_model_name(cfg), self.classes, cfg.decoder)
        self.resume_state = rundir.load_resume_state(cfg, self.classes)
        if self.resume_state and cfg.out_dir is None:
            cfg.out_dir = rundir.resume_source(cfg.resume)[0]
        if cfg.amp_dtype == 'float16':
            from mxnet.contrib import amp  # pylint: disable=import-outside-toplevel
            amp.init()
        self._setup_kvstore()
        self.is_chief = self.rank == 0
        self.run_dir = cfg.out_dir
        # the run's directory: created, locked by the chief, refused if another run's (not
        # --resume / --overwrite)
        self.run_lock = rundir.claim_run_dir(self.run_dir, resume=bool(cfg.resume),
                                             overwrite=cfg.overwrite, chief=self.is_chief)
        self.log_handlers = rundir.setup_logging(self.run_dir, self.rank)
        _seed_everything(cfg.seed)
        self.net = build_net(cfg, self.classes, self.ctx, load_weights=not self.resume_state)
        max_objects = label_rows(cfg, self.train_ds)
        self.graph, self.normalizer = build_graph(cfg, self.net, max_objects)
        self.train_loader, self.sampler = build_loaders(cfg, self.train_ds, max_objects,
                                                        self.rank, self.num_workers)
        if schedule_epochs(cfg, len(self.sampler)):
            LOG.info('%d steps of %d batches per epoch (%d training images, batch %d): %d '
                     'epochs', cfg.steps, len(self.sampler), len(self.train_ds), cfg.batch_size,
                     cfg.epochs)
        longest = get_preset(run_model_name(cfg)).get('bn_momentum')
        if longest:     # the scratch presets; GluonCV's backbones keep their 0.9
            momentum = running_stats_momentum(longest, cfg.epochs * len(self.sampler))
            set_running_stats_momentum(self.net, momentum)
            LOG.info('BatchNorm running statistics: momentum %.4f', momentum)
        self.evaluator = build_evaluator(cfg, self.val_ds, self.classes)
        self.trainer = build_trainer(cfg, self.net, self.kv, self.hvd)
        self.step_scale = global_batch_size(1, self.kv)
        self.start_epoch, self.best_map = 0, None
        if self.resume_state:
            self._restore()
        self.metrics_path = os.path.join(self.run_dir, 'metrics.jsonl')
        self.records = rundir.read_metrics(self.metrics_path, self.start_epoch)
        if self.is_chief:
            rundir.write_config(self.run_dir, cfg.to_dict(), self.classes)
            save_meta(self.meta, os.path.join(self.run_dir, RUN_META))
        LOG.info('model %s, %d classes, %d train / %d val images, contexts %s, epochs %d-%d, '
                 'precision %s', self.meta['model'], len(self.classes), len(self.train_ds),
                 len(self.val_ds), self.ctx, self.start_epoch, cfg.epochs - 1,
                 cfg.amp_dtype or 'float32')

    def _setup_kvstore(self):
        cfg = self.cfg
        if cfg.kvstore.startswith('dist'):
            try:
                self.kv = create_kvstore(cfg.kvstore)
            except RuntimeError as exc:
                raise UserError(f"--kvstore {cfg.kvstore}: {exc}") from None
            self.rank, self.num_workers = worker_info(self.kv)
        else:
            self.kv = cfg.kvstore

    def _restore(self):
        state = self.resume_state
        load_params(self.net, state['params'], self.ctx, self.meta['model'], '--resume',
                    '; --resume continues the same run: to start from another detector use '
                    '--pretrained')
        if state.get('states'):
            self.trainer.load_states(state['states'])
        self.start_epoch = int(state['epoch'])
        self.best_map = state.get('best_map')
        if state.get('rng'):
            ckpt.set_rng_state(state['rng'])
        for note in state.get('skipped', ()):
            LOG.warning('resume: skipped %s', note)
        if self.is_chief:
            ckpt.repair_last_params(self.run_dir, state)
        LOG.info('resumed from %s at epoch %d', state['params'], self.start_epoch)

    # -- one epoch -----------------------------------------------------------------------------
    def train_epoch(self, epoch):
        cfg = self.cfg
        mx.random.seed((cfg.seed * 1000003 + epoch) % (2 ** 31 - 1))
        self.sampler.set_epoch(epoch)
        num_batches = len(self.sampler)
        acc = [mx.nd.zeros((3,), ctx=self.ctx[0])]   # sum of loss, cls, box over the epoch
        bar = _progress(num_batches, epoch, cfg.no_progress or not self.is_chief)
        tic = time.time()
        problems = LoadProblems(strict=cfg.strict_data)   # skipped/repaired images (any worker)
        for i, batch in enumerate(self.train_loader):
            problems.add(batch)
            data, label = batch
            self.trainer.set_learning_rate(learning_rate(cfg, epoch + i / num_batches))
            acc[0] = acc[0] + self._loss_sums(self.step(data, label))
            if 'after_batch' in self.hooks:
                self.hooks['after_batch'](epoch, i)
            bar.update(1)
            if (i + 1) % cfg.log_interval == 0:
                self._log_batch(acc[0], epoch, i, tic, bar)
        sums = acc[0].asnumpy() / max(num_batches, 1)
        elapsed = time.time() - tic
        bar.close()
        _check_finite(float(sums[0]), f'epoch {epoch}', self.run_dir)
        if problems:
            LOG.warning('%s', problems.summary(f'[epoch {epoch}] training data'))
        return {'epoch': epoch, 'lr': self.trainer.learning_rate, 'loss': float(sums[0]),
                'cls_loss': float(sums[1]), 'box_loss': float(sums[2]),
                'img_per_s': num_batches * cfg.batch_size / max(elapsed, 1e-9),
                'time': elapsed, **problems.as_record()}

    def step(self, data, label):
        """One optimisation step on a batch; returns ``[sum, cls, box]`` lists of losses."""
        datas = gluon.utils.split_and_load(data, self.ctx, even_split=False)
        labels = gluon.utils.split_and_load(label, self.ctx, even_split=False)
        with autograd.record():
            sum_l, cls_l, box_l = forward_losses(self.graph, self.normalizer, datas, labels)
            if self.cfg.amp_dtype == 'float16':  # loss scaling (bfloat16 needs none)
                from mxnet.contrib import amp  # pylint: disable=import-outside-toplevel
                with amp.scale_loss(sum_l, self.trainer) as scaled:
                    autograd.backward(scaled)
            else:
                autograd.backward(sum_l)
        self.trainer.step(self.step_scale)
        return sum_l + cls_l + box_l

    def _loss_sums(self, losses):
        """(3,) NDArray on the first device: batch loss, cls loss, box loss (no host sync)."""
        sums = [l.sum().as_in_context(self.ctx[0]) for l in losses]   # 3 x num_devices
        return mx.nd.concat(*sums, dim=0).reshape((3, len(self.ctx))).sum(axis=1)

    def _log_batch(self, acc, epoch, i, tic, bar):
        sums = acc.asnumpy() / (i + 1)
        _check_finite(float(sums[0]), f'epoch {epoch} batch {i}', self.run_dir)
        speed = (i + 1) * self.cfg.batch_size / max(time.time() - tic, 1e-9)
        bar.set_postfix(loss=f'{sums[0]:.3f}', img_s=f'{speed:.1f}')
        if self.cfg.no_progress:
            LOG.info('[epoch %d][batch %d] loss %.4f (cls %.4f, box %.4f) %.1f img/s',
                     epoch, i, sums[0], sums[1], sums[2], speed)

    # -- epoch end -----------------------------------------------------------------------------
    def end_epoch(self, epoch, record):
        cfg = self.cfg
        last = epoch == cfg.epochs - 1
        self._check_params_finite(epoch)
        if self.is_chief and ((epoch + 1) % cfg.val_interval == 0 or last):
            summaries = self.evaluator(self.net, self.ctx, strict=cfg.strict_data)
            record['map'] = summaries['voc07']['map']
            record.update({'val_' + k: summaries['voc07'].get(k, 0) for k in DATA_COUNT_KEYS})
            if 'coco' in summaries:
                record['coco_ap'] = summaries['coco']['map']
        LOG.info('[epoch %d] lr %.5f loss %.4f (cls %.4f, box %.4f) %.1f img/s%s%s%s', epoch,
                 record['lr'], record['loss'], record['cls_loss'], record['box_loss'],
                 record['img_per_s'], _fmt_metric(' mAP', record.get('map')),
                 _fmt_metric(' COCO AP', record.get('coco_ap')), _fmt_data(record))
        if not self.is_chief:
            return
        self.records.append(record)
        rundir.write_metrics(self.metrics_path, self.records)
        self._save(epoch, record)

    def _check_params_finite(self, epoch):
        norms = [p.data(self.ctx[0]).norm() for p in self.net.collect_params().values()
                 if p.grad_req != 'null' or p.name.endswith(('mean', 'var'))]
        _check_finite(float(mx.nd.add_n(*norms).asscalar()), f'parameters after epoch {epoch}',
                      self.run_dir)

    def _save(self, epoch, record):
        m = record.get('map')
        improved = m is not None and (self.best_map is None or m > self.best_map)
        with ckpt.signals_deferred():   # Ctrl-C/SIGTERM now: this epoch's checkpoint first
            if improved:
                self.best_map = m
                ckpt.write_params(os.path.join(self.run_dir, 'best.params'), self.net)
            if (epoch + 1) % self.cfg.save_interval == 0:
                ckpt.write_params(os.path.join(self.run_dir, f'epoch_{epoch:04d}.params'),
                                  self.net)
            state = {'epoch': epoch + 1, 'seed': self.cfg.seed, 'classes': self.classes,
                     'network': self.cfg.network, 'data_shape': self.cfg.data_shape,
                     'best_map': self.best_map, 'mx_seed_schedule': 'seed*1000003+epoch'}
            ckpt.save_checkpoint(self.run_dir, self.net, self.trainer, state)
        if 'after_save' in self.hooks:
            self.hooks['after_save'](epoch)

    def finish(self):
        """Pictures and ``best.params``; returns the run's summary (see :func:`train`)."""
        if self.is_chief:
            best = os.path.join(self.run_dir, 'best.params')
            if not os.path.isfile(best):      # never validated: the final weights
                ckpt.write_params(best, self.net)
            if self.records:
                from gluon_ssd.viz import plot_curves
                plot_curves(self.records, os.path.join(self.run_dir, 'curves.png'),
                            title=f'{self.cfg.network} on {self.cfg.dataset}')
            save_detection_picture(self.net, self.meta, self.val_ds, self.cfg.num_samples_viz,
                                   self.ctx[0], os.path.join(self.run_dir, 'detections.png'))
        validated = [r for r in self.records if r.get('map') is not None]
        final = validated[-1] if validated and validated[-1]['epoch'] == self.cfg.epochs - 1 \
            else None
        best = max(validated, key=lambda r: r['map'], default=None)
        return {'run_dir': self.run_dir, 'final_map': final and final['map'],
                'final_coco_ap': final and final.get('coco_ap'),
                'best_map': self.best_map, 'best_epoch': best and best['epoch'],
                'records': list(self.records), 'classes': self.classes,
                'model': self.meta['model'],
                'data_skips': {k: sum(r.get(k) or 0 for r in self.records) for k in _DATA_KEYS}}

    def close(self):
        rundir.close_logging(self.log_handlers)


def _fmt_metric(label, value):
    return f'{label} {value:.4f}' if value is not None else ''


# epoch-record counts of images skipped / repaired (gluon_ssd.data.build.LoadProblems), in
# training and in validation
_DATA_KEYS = DATA_COUNT_KEYS + tuple('val_' + k for k in DATA_COUNT_KEYS)


def _fmt_data(record):
    """`` images: 2 skipped, 1 repaired, 1 val skipped`` (empty when all counts are 0)."""
    parts = [f"{record[k]} {k[:-len('_images')].replace('_', ' ')}" for k in _DATA_KEYS
             if record.get(k)]
    return f" images: {', '.join(parts)}" if parts else ''


def _progress(total, epoch, disable):
    from tqdm import tqdm
    return tqdm(total=total, desc=f'epoch {epoch}', leave=False, disable=disable,
                dynamic_ncols=True)


def train(cfg, ctx=None, hooks=None):
    """Train according to ``cfg`` (a validated :class:`~gluon_ssd.config.TrainConfig`).

    Parameters
    ----------
    ctx : list of ``mx.Context`` or None (from ``--gpus`` / ``--cpu-contexts``).
    hooks : optional dict of callables for tests/extensions: ``after_batch(epoch, batch)``,
        ``after_save(epoch)``.

    Returns ``{'run_dir', 'model', 'final_map' (the last epoch's VOC07 mAP: the headline),
    'final_coco_ap', 'best_map', 'best_epoch', 'records', 'classes'}``. Raises
    :class:`~gluon_ssd.errors.UserError` (bad configuration or data, before training starts) or
    :class:`TrainingDiverged` (NaN loss).
    """
    run = Run(cfg, ctx or make_contexts(cfg.gpus, cfg.cpu_contexts), hooks)
    try:
        run.setup()
        for epoch in range(run.start_epoch, cfg.epochs):
            record = run.train_epoch(epoch)
            run.end_epoch(epoch, record)
        return run.finish()
    except TrainingDiverged as exc:
        LOG.error('%s', exc)
        raise
    finally:
        run.close()
        rundir.release_run_dir(getattr(run, 'run_lock', None))

"""The SSD training engine: one fused, hybridized training graph and the epoch loop around it.

Per batch the host only *queues* work: the batch is split across devices, each device runs
:class:`TrainGraph` (network forward + :class:`~gluon_ssd.target.SSDTargetGenerator` +
:class:`~gluon_ssd.loss.MultiBoxLossTerms` in one ``static_alloc``/``static_shape`` graph), the
per-image loss terms are normalised across devices with NDArray ops
(:meth:`~gluon_ssd.loss.SSDMultiBoxLoss.normalize`), backward, ``trainer.step``. The host waits
for the device only every ``log_interval`` batches (to log the loss and check it is finite) and
at the end of the epoch.

Determinism: the shuffling of epoch ``e`` and the augmentation of item ``i`` in epoch ``e`` are
seeded from ``(seed, e, i)`` (see :class:`SeededItems`), whichever worker process runs them, so a
run resumed from its checkpoint ends with exactly the parameters of an uninterrupted run (CPU,
same ``OMP_NUM_THREADS``: MKL-DNN's reductions depend on the thread count). Worker *processes*
are required for that (each has its own global RNG); never use ``thread_pool`` loaders here.

Distributed (``--kvstore dist_sync|dist_device_sync``, started with :mod:`gluon_ssd.launch`):
every worker trains on its shard (:func:`gluon_ssd.distributed.shard_indices`), gradients are
averaged over the global batch (``trainer.step(global_batch_size(1, kv))``), rank 0 alone
validates and writes the run directory. ``--horovod`` uses Horovod's ``DistributedTrainer``.

Run directory (``cfg.out_dir``): ``config.json``, ``train.log``, ``metrics.jsonl`` (one JSON
object per epoch), ``last.{params,states,json}`` (every epoch, atomic), ``best.params`` (best
validation mAP), ``epoch_XXXX.params`` (every ``save_interval`` epochs), ``curves.png`` and
``detections.png``.
"""
import json
import logging
import math
import os
import random
import shutil
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from gluon_ssd import checkpoint as ckpt
from gluon_ssd.config import ConfigError, amp_dtype, model_name, parse_gpus
from gluon_ssd.distributed import (create_kvstore, global_batch_size, is_distributed,
                                   shard_indices, worker_info)
from gluon_ssd.loss import SSDMultiBoxLoss
from gluon_ssd.metrics import make_metric
from gluon_ssd.precision import PrecisionMixin
from gluon_ssd.target import SSDTargetGenerator

__all__ = ['TrainGraph', 'TrainingDiverged', 'SeededItems', 'EpochBatchSampler', 'train',
           'build_contexts', 'build_datasets', 'build_loaders', 'build_net', 'learning_rate',
           'forward_losses', 'evaluate', 'pad_label', 'MEAN', 'STD']

LOG = logging.getLogger('gluon_ssd.train')
MEAN = (0.485, 0.456, 0.406)   # ImageNet statistics used by the SSD transforms (0-1 RGB)
STD = (0.229, 0.224, 0.225)
_DEFAULT_MAX_OBJECTS = 100      # label padding when the dataset cannot list its labels cheaply


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint is left untouched."""


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
# data: deterministic per-item augmentation, epoch-seeded batches, fixed label padding
# ----------------------------------------------------------------------------------------------
def _item_seed(seed, epoch, index):
    return (int(seed) * 1000003 + int(epoch) * 7919 + int(index) * 104729) % (2 ** 31 - 1)


def pad_label(label, max_objects):
    """(M, K) label -> (max_objects, K) float32, extra rows -1; raises if M > max_objects."""
    label = np.asarray(label, dtype=np.float32)
    if label.ndim != 2:
        label = label.reshape(-1, 6)
    if label.shape[0] > max_objects:
        raise ValueError(f"an image has {label.shape[0]} objects, more than --max-objects "
                         f"{max_objects}; raise --max-objects")
    out = np.full((max_objects, label.shape[1]), -1, dtype=np.float32)
    out[:label.shape[0]] = label
    return out


class SeededItems(gluon.data.Dataset):
    """Training items whose augmentation depends only on ``(seed, epoch, index)``.

    ``key = epoch * len(dataset) + index`` (as produced by :class:`EpochBatchSampler`). Before
    calling ``transform(image, label)``, Python's and NumPy's global RNGs are seeded from
    ``(seed, epoch, index)``: the result is the same in any worker process, in any order.
    Items: ``(image (3, H, W) float32, label (max_objects, 6) float32 padded with -1)``.
    """

    def __init__(self, dataset, transform, seed, max_objects):
        self._dataset = dataset
        self._transform = transform
        self._seed = seed
        self._max_objects = max_objects

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, key):
        epoch, index = divmod(int(key), len(self._dataset))
        item_seed = _item_seed(self._seed, epoch, index)
        random.seed(item_seed)
        np.random.seed(item_seed)
        img, label = self._transform(*self._dataset[index])
        return img, pad_label(label, self._max_objects)


class EpochBatchSampler(gluon.data.Sampler):
    """Fixed-size batches of keys ``epoch * n + index``, shuffled per ``(seed, epoch)``.

    Each worker of a distributed run takes its shard (:func:`gluon_ssd.distributed.shard_indices`);
    the incomplete last batch is dropped so every batch has the same shape. Call
    :meth:`set_epoch` before iterating.
    """

    def __init__(self, n, batch_size, seed, rank=0, num_workers=1):
        self._n, self._batch_size, self._seed = n, batch_size, seed
        self._rank, self._num_workers = rank, num_workers
        self._epoch = 0

    def set_epoch(self, epoch):
        """Select the permutation of ``epoch``."""
        self._epoch = int(epoch)

    def _indices(self):
        return shard_indices(self._n, self._rank, self._num_workers, seed=self._seed,
                             epoch=self._epoch, remainder='pad')

    def __iter__(self):
        keys = self._indices() + self._epoch * self._n
        for start in range(0, len(self) * self._batch_size, self._batch_size):
            yield keys[start:start + self._batch_size].tolist()

    def __len__(self):
        return len(self._indices()) // self._batch_size


class _Transformed(gluon.data.Dataset):
    """``dataset`` with ``transform(image, label)`` applied (validation: no randomness)."""

    def __init__(self, dataset, transform):
        self._dataset, self._transform = dataset, transform

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        return self._transform(*self._dataset[index])


class _Subset(gluon.data.Dataset):
    """The first ``n`` items of ``dataset`` (keeps ``classes`` and ``label()``)."""

    def __init__(self, dataset, n):
        self._dataset, self._n = dataset, min(n, len(dataset))
        self.classes = dataset.classes

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        if index >= self._n:
            raise IndexError(index)
        return self._dataset[index]

    def label(self, index):
        """Label of item ``index`` (delegated)."""
        return self._dataset.label(index)


def _splits(text, root):
    """``'2007_trainval,2012_trainval'`` -> VOCdevkit pairs; ``'train'`` -> ``['train']``."""
    single = os.path.isdir(os.path.join(root, 'Annotations'))
    out = []
    for part in (p.strip() for p in text.split(',') if p.strip()):
        year, _, name = part.partition('_')
        out.append((int(year), name) if (not single and year.isdigit() and name) else part)
    return out


def build_datasets(cfg):
    """``(train_dataset, val_dataset, classes)``: raw items ``(image HWC uint8, label (M, 6))``.

    Raises :class:`ConfigError` for dataset problems the user can fix (paths, splits).
    """
    try:
        train, val = _open_datasets(cfg)
    except (OSError, ValueError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"--dataset {cfg.dataset}: {exc}") from exc
    if cfg.num_train:
        train = _Subset(train, cfg.num_train)
    if cfg.num_val:
        val = _Subset(val, cfg.num_val)
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"--dataset {cfg.dataset}: empty training or validation set")
    return train, val, list(train.classes)


def _open_datasets(cfg):
    """Dispatch on ``--dataset``; splits as in :data:`gluon_ssd.config.DEFAULT_SPLITS`."""
    from gluon_ssd.data.voc import VOCDetection
    root = os.path.expanduser(cfg.dataset_root) if cfg.dataset_root else None
    if cfg.dataset == 'synthetic':
        from gluon_ssd.data.synthetic import synthetic_voc
        sizes = {'num_train': cfg.num_train or 1000, 'num_val': cfg.num_val or 200}
        root = synthetic_voc(root=root, **sizes)
    if cfg.dataset in ('synthetic', 'voc'):
        train = VOCDetection(root, _splits(cfg.train_split, root))
        val = VOCDetection(root, _splits(cfg.val_split, root), classes=train.classes)
        return train, val
    if cfg.dataset == 'coco':
        from gluon_ssd.data.coco import COCODetection

        def coco(split, skip_empty):
            ann = os.path.join(root, 'annotations', split + '.json')
            return COCODetection(ann, os.path.join(root, split.split('_')[-1]),
                                 skip_empty=skip_empty)
        return coco(cfg.train_split, True), coco(cfg.val_split, False)
    from gluon_ssd.data.recordio import RecordDetection
    train = RecordDetection(os.path.join(root, cfg.train_split))
    return train, RecordDetection(os.path.join(root, cfg.val_split), classes=train.classes)


def max_objects_of(dataset):
    """Most objects in any image of ``dataset`` (via its cheap ``label(i)``), else a default."""
    if not hasattr(dataset, 'label'):
        return _DEFAULT_MAX_OBJECTS
    return max(1, max(dataset.label(i).shape[0] for i in range(len(dataset))))


def _transforms(size, max_expand=4):
    """``(train_transform, val_transform)`` for square ``size`` inputs: ``(image, label) ->
    (image (3, size, size) float32 normalised, label (M, 6) pixels of the input)``."""
    from gluon_ssd.data.transforms import SSDTrainTransform, SSDValTransform
    return (SSDTrainTransform(size, size, mean=MEAN, std=STD, max_expand=max_expand),
            SSDValTransform(size, size, mean=MEAN, std=STD))


def label_rows(cfg, train_ds):
    """Fixed label padding ``M`` of the training batches: ``--max-objects`` or the dataset's
    most objects per image."""
    return cfg.max_objects or max_objects_of(train_ds)


def build_loaders(cfg, train_ds, val_ds, rank=0, num_workers=1):
    """``(train_loader, train_sampler, val_loader)`` for the configuration."""
    from gluon_ssd.data.transforms import detection_batchify
    train_tf, val_tf = _transforms(cfg.data_shape, cfg.max_expand)
    max_objects = label_rows(cfg, train_ds)
    items = SeededItems(train_ds, train_tf, cfg.seed, max_objects)
    sampler = EpochBatchSampler(len(train_ds), cfg.batch_size, cfg.seed, rank, num_workers)
    if len(sampler) == 0:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than this worker's "
                          f"{len(train_ds) // num_workers} training images")
    from gluoncv.data.batchify import Stack, Tuple
    train_loader = gluon.data.DataLoader(
        items, batch_sampler=sampler, batchify_fn=Tuple(Stack(), Stack()),
        num_workers=cfg.num_workers)
    val_loader = gluon.data.DataLoader(
        _Transformed(val_ds, val_tf), batch_size=cfg.batch_size, shuffle=False,
        last_batch='keep', batchify_fn=detection_batchify, num_workers=cfg.num_workers)
    return train_loader, sampler, val_loader


# ----------------------------------------------------------------------------------------------
# model, contexts, optimisation
# ----------------------------------------------------------------------------------------------
def build_contexts(cfg):
    """List of ``mx.Context``: the GPUs of ``--gpus``, else ``--cpu-contexts`` CPU contexts."""
    gpus = parse_gpus(cfg.gpus)
    if gpus:
        return [mx.gpu(i) for i in gpus]
    return [mx.cpu(i) for i in range(cfg.cpu_contexts)]


def build_net(cfg, classes, ctx):
    """The SSD network for ``cfg.network``/``cfg.data_shape`` with ``classes``, initialised on
    ``ctx`` (list of contexts)."""
    from gluon_ssd.model.zoo import get_model
    net = get_model(model_name(cfg.network, cfg.data_shape), classes=classes,
                    pretrained_base=False, init=cfg.init, decoder=cfg.decoder)
    with _quiet_init():
        net.initialize(ctx=ctx)
    net.collect_params().reset_ctx(ctx)
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


def _make_trainer(cfg, net, kv, hvd):
    opts = {'learning_rate': cfg.lr, 'wd': cfg.wd}
    if cfg.optimizer == 'sgd':
        opts['momentum'] = cfg.momentum
    params = net.collect_params()
    if hvd is not None:
        hvd.broadcast_parameters(params, root_rank=0)
        return hvd.DistributedTrainer(params, cfg.optimizer, opts)
    # Local updates (also for dist_*: gradients are summed across workers, states stay local
    # and can be checkpointed).
    update_on_kv = False if (amp_dtype(cfg) == 'float16' or is_distributed(kv)) else None
    return gluon.Trainer(params, cfg.optimizer, opts, kvstore=kv, update_on_kvstore=update_on_kv)


def _import_horovod():
    try:
        import horovod.mxnet as hvd  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise ConfigError("--horovod needs Horovod built with MXNet support: install it with "
                          "HOROVOD_WITH_MXNET=1 HOROVOD_WITH_GLOO=1 pip install --no-binary "
                          "horovod horovod (or use --kvstore dist_sync)") from None
    hvd.init()
    return hvd


# ----------------------------------------------------------------------------------------------
# evaluation and pictures
# ----------------------------------------------------------------------------------------------
def _finite_detections(ids, scores, bboxes):
    """Numpy ``(ids (B,K), scores (B,K), bboxes (B,K,4))`` with non-finite boxes (an exploded
    box regression) turned into padding rows (id -1)."""
    ids, scores, bboxes = (a.asnumpy() for a in (ids, scores, bboxes))
    bad = ~np.isfinite(bboxes).all(axis=-1)
    ids, scores = ids.reshape(bad.shape), scores.reshape(bad.shape)
    ids[bad], scores[bad], bboxes[bad] = -1, 0, 0
    return ids, scores, bboxes


def evaluate(net, loader, ctx, classes, kind='voc07'):
    """mAP summary dict (see :meth:`gluon_ssd.metrics.VOCEvaluator.summary`) of ``net`` in
    inference mode on ``loader`` batches ``(data (B,3,H,W), label (B,M,6) padded -1)``."""
    metric = make_metric(kind, classes)
    for data, label in loader:
        datas = gluon.utils.split_and_load(data, ctx, even_split=False)
        for x, y in zip(datas, gluon.utils.split_and_load(label, ctx, even_split=False)):
            ids, scores, bboxes = _finite_detections(*net(x))
            y = y.asnumpy()
            metric.update(bboxes, ids, scores, y[:, :, :4], y[:, :, 4],
                          y[:, :, 5] if y.shape[-1] > 5 else None)
    return metric.summary()


def _denormalize(img):
    """(3, H, W) normalised float -> (H, W, 3) uint8 RGB."""
    arr = img.asnumpy().transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)
    return np.clip(arr * 255, 0, 255).astype(np.uint8)


def save_detection_picture(net, val_ds, cfg, classes, ctx, path):
    """``detections.png``: the first ``num_samples_viz`` validation images with predictions
    (solid) and ground truth (dashed)."""
    from gluon_ssd.viz import save_detections_grid
    _, val_tf = _transforms(cfg.data_shape)
    images, dets, gts = [], [], []
    for i in range(min(cfg.num_samples_viz, len(val_ds))):
        img, label = val_tf(*val_ds[i])
        ids, scores, bboxes = _finite_detections(*net(img.expand_dims(0).as_in_context(ctx)))
        keep = ids[0] >= 0
        dets.append((bboxes[0][keep], scores[0][keep], ids[0][keep]))
        images.append(_denormalize(img))
        gts.append(np.asarray(label))
    save_detections_grid(images, dets, gts, classes, path)


# ----------------------------------------------------------------------------------------------
# run directory
# ----------------------------------------------------------------------------------------------
def _setup_logging(run_dir, rank):
    """Log to the console and, for rank 0, to ``<run_dir>/train.log``. Returns the handlers."""
    LOG.setLevel(logging.INFO)
    LOG.propagate = False
    handlers = [logging.StreamHandler()]
    if rank == 0:
        handlers.append(logging.FileHandler(os.path.join(run_dir, 'train.log')))
    fmt = logging.Formatter('%(asctime)s %(message)s' if rank == 0 else
                            f'%(asctime)s [worker {rank}] %(message)s')
    for h in handlers:
        h.setFormatter(fmt)
        LOG.addHandler(h)
    return handlers


def _read_metrics(path, before_epoch):
    """Records of ``metrics.jsonl`` before ``before_epoch`` (a resumed run redoes the rest)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if r.get('epoch', 0) < before_epoch]


def _write_metrics(path, records):
    def write(tmp):
        with open(tmp, 'w') as f:
            for r in records:
                f.write(json.dumps(r) + '\n')
    ckpt.atomic_write(path, write)


def _resume_source(resume):
    """``(run_dir, name, is_full_checkpoint)`` for ``--resume`` (run dir or a .params file)."""
    if os.path.isdir(resume):
        return resume, 'last', True
    run_dir, fname = os.path.split(os.path.abspath(resume))
    name = fname[:-len('.params')] if fname.endswith('.params') else fname
    return run_dir, name, os.path.isfile(os.path.join(run_dir, name + '.json'))


def _load_resume(cfg, classes):
    """Checkpoint state for ``--resume`` (or ``None``); checks it matches this run."""
    if not cfg.resume:
        return None
    run_dir, name, full = _resume_source(cfg.resume)
    if not full:
        return {'epoch': cfg.start_epoch, 'params': cfg.resume, 'states': None, 'best_map': None}
    try:
        state, paths = ckpt.load_checkpoint_state(run_dir, name)
    except ckpt.CheckpointError as exc:
        raise ConfigError(f"--resume: {exc}") from None
    if list(state.get('classes', [])) != list(classes):
        raise ConfigError(f"--resume: checkpoint classes {state.get('classes')} differ from the "
                          f"dataset's {classes}")
    for key in ('network', 'data_shape'):
        if state.get(key) != getattr(cfg, key):
            raise ConfigError(f"--resume: checkpoint {key} {state.get(key)!r} differs from "
                              f"--{key.replace('_', '-')} {getattr(cfg, key)!r}")
    state['params'] = paths['params']
    state['states'] = paths['states'] if os.path.isfile(paths['states']) else None
    return state


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


class _Run:
    """State of one training run (built by :func:`train`)."""

    def __init__(self, cfg, ctx, hooks):
        self.cfg, self.ctx, self.hooks = cfg, ctx, hooks or {}
        self.kv = None
        self.hvd = None
        self.rank, self.num_workers = 0, 1

    # -- setup ---------------------------------------------------------------------------------
    def setup(self):
        cfg = self.cfg
        if cfg.horovod:
            self.hvd = _import_horovod()
            self.rank, self.num_workers = self.hvd.rank(), self.hvd.size()
            self.ctx = [mx.gpu(self.hvd.local_rank())] if parse_gpus(cfg.gpus) else [mx.cpu()]
        self.train_ds, self.val_ds, self.classes = build_datasets(cfg)
        self.resume_state = _load_resume(cfg, self.classes)
        if self.resume_state and cfg.out_dir is None:
            cfg.out_dir = _resume_source(cfg.resume)[0]
        if amp_dtype(cfg) == 'float16':
            from mxnet.contrib import amp  # pylint: disable=import-outside-toplevel
            amp.init()
        if cfg.kvstore.startswith('dist'):
            try:
                self.kv = create_kvstore(cfg.kvstore)
            except RuntimeError as exc:
                raise ConfigError(f"--kvstore {cfg.kvstore}: {exc}") from None
            self.rank, self.num_workers = worker_info(self.kv)
        else:
            self.kv = cfg.kvstore
        self.is_chief = self.rank == 0
        self.run_dir = cfg.out_dir
        os.makedirs(self.run_dir, exist_ok=True)
        self.log_handlers = _setup_logging(self.run_dir, self.rank)
        _seed_everything(cfg.seed)
        self.net = build_net(cfg, self.classes, self.ctx)
        self.normalizer = SSDMultiBoxLoss(normalization=cfg.loss_norm)
        # the label padding lets the target generator trace its fast bipartite step
        target_generator = SSDTargetGenerator(max_objects=label_rows(cfg, self.train_ds))
        self.graph = TrainGraph(self.net, target_generator, self.normalizer.terms)
        if amp_dtype(cfg) == 'bfloat16':  # the training graph and the validation graph
            self.graph.set_precision('bfloat16')
            self.net.set_precision('bfloat16')
        self.graph.hybridize(static_alloc=True, static_shape=True)
        self.train_loader, self.sampler, self.val_loader = build_loaders(
            cfg, self.train_ds, self.val_ds, self.rank, self.num_workers)
        self.trainer = _make_trainer(cfg, self.net, self.kv, self.hvd)
        if amp_dtype(cfg) == 'float16':
            from mxnet.contrib import amp  # pylint: disable=import-outside-toplevel
            amp.init_trainer(self.trainer)
        self.step_scale = global_batch_size(1, self.kv)
        self.start_epoch, self.best_map = 0, None
        if self.resume_state:
            self._restore()
        self.metrics_path = os.path.join(self.run_dir, 'metrics.jsonl')
        self.records = _read_metrics(self.metrics_path, self.start_epoch)
        if self.is_chief:
            with open(os.path.join(self.run_dir, 'config.json'), 'w') as f:
                json.dump(dict(cfg.to_dict(), classes=self.classes), f, indent=1)
        LOG.info('network %s, %d classes, %d train / %d val images, contexts %s, epochs %d-%d, '
                 'precision %s', model_name(cfg.network, cfg.data_shape), len(self.classes),
                 len(self.train_ds), len(self.val_ds), self.ctx, self.start_epoch, cfg.epochs - 1,
                 amp_dtype(cfg) or 'float32')

    def _restore(self):
        state = self.resume_state
        self.net.load_parameters(state['params'], ctx=self.ctx)
        if state.get('states'):
            self.trainer.load_states(state['states'])
        self.start_epoch = int(state['epoch'])
        self.best_map = state.get('best_map')
        if state.get('rng'):
            ckpt.set_rng_state(state['rng'])
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
        for i, (data, label) in enumerate(self.train_loader):
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
        return {'epoch': epoch, 'lr': self.trainer.learning_rate, 'loss': float(sums[0]),
                'cls_loss': float(sums[1]), 'box_loss': float(sums[2]),
                'img_per_s': num_batches * cfg.batch_size / max(elapsed, 1e-9),
                'time': elapsed}

    def step(self, data, label):
        """One optimisation step on a batch; returns ``[sum, cls, box]`` lists of losses."""
        datas = gluon.utils.split_and_load(data, self.ctx, even_split=False)
        labels = gluon.utils.split_and_load(label, self.ctx, even_split=False)
        with autograd.record():
            sum_l, cls_l, box_l = forward_losses(self.graph, self.normalizer, datas, labels)
            if amp_dtype(self.cfg) == 'float16':  # loss scaling (bfloat16 needs none)
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
            summary = evaluate(self.net, self.val_loader, self.ctx, self.classes)
            record['map'] = summary['map']
        LOG.info('[epoch %d] lr %.5f loss %.4f (cls %.4f, box %.4f) %.1f img/s%s', epoch,
                 record['lr'], record['loss'], record['cls_loss'], record['box_loss'],
                 record['img_per_s'], f" mAP {record['map']:.4f}" if 'map' in record
                 and record['map'] is not None else '')
        if not self.is_chief:
            return
        self.records.append(record)
        _write_metrics(self.metrics_path, self.records)
        self._save(epoch, record)

    def _check_params_finite(self, epoch):
        norms = [p.data(self.ctx[0]).norm() for p in self.net.collect_params().values()
                 if p.grad_req != 'null' or p.name.endswith(('mean', 'var'))]
        _check_finite(float(mx.nd.add_n(*norms).asscalar()), f'parameters after epoch {epoch}',
                      self.run_dir)

    def _save(self, epoch, record):
        m = record.get('map')
        improved = m is not None and (self.best_map is None or m > self.best_map)
        if improved:
            self.best_map = m
            ckpt.atomic_write(os.path.join(self.run_dir, 'best.params'), self.net.save_parameters)
        if (epoch + 1) % self.cfg.save_interval == 0:
            ckpt.atomic_write(os.path.join(self.run_dir, f'epoch_{epoch:04d}.params'),
                              self.net.save_parameters)
        state = {'epoch': epoch + 1, 'seed': self.cfg.seed, 'classes': self.classes,
                 'network': self.cfg.network, 'data_shape': self.cfg.data_shape,
                 'best_map': self.best_map, 'mx_seed_schedule': 'seed*1000003+epoch'}
        ckpt.save_checkpoint(self.run_dir, self.net, self.trainer, state)
        if 'after_save' in self.hooks:
            self.hooks['after_save'](epoch)

    def finish(self):
        if self.is_chief:
            best = os.path.join(self.run_dir, 'best.params')
            if not os.path.isfile(best):
                shutil.copyfile(os.path.join(self.run_dir, 'last.params'), best)
            if self.records:
                from gluon_ssd.viz import plot_curves
                plot_curves(self.records, os.path.join(self.run_dir, 'curves.png'),
                            title=f'{self.cfg.network} on {self.cfg.dataset}')
            save_detection_picture(self.net, self.val_ds, self.cfg, self.classes, self.ctx[0],
                                   os.path.join(self.run_dir, 'detections.png'))
        return {'run_dir': self.run_dir, 'best_map': self.best_map,
                'records': list(self.records), 'classes': self.classes}

    def close(self):
        for h in getattr(self, 'log_handlers', []):
            LOG.removeHandler(h)
            h.close()


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

    Returns ``{'run_dir', 'best_map', 'records', 'classes'}``. Raises :class:`ConfigError`
    (bad configuration, before training starts) or :class:`TrainingDiverged` (NaN loss).
    """
    run = _Run(cfg, ctx or build_contexts(cfg), hooks)
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

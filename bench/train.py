"""End-to-end training throughput, data loading and augmentation included.

* SSD300-VGG16, batch 8: ours (the engine's fused hybridized ``TrainGraph``: network + target
  generator + loss in one graph, labels padded in the loader) vs GluonCV's ``train_ssd.py``
  pipeline (``SSDDefaultTrainTransform`` computing targets in the loader workers, hybridized
  net, ``SSDMultiBoxLoss``, ``autograd.backward``, ``trainer.step``), identical initial weights.
* TinySSD 256 px, batch 32: ours vs the d2l recipe (``contrib.MultiBoxPrior`` /
  ``MultiBoxTarget``, softmax cross-entropy + masked L1, not hybridized), written here from the
  book's description.

Both sides of a pair read the same on-disk JPEG dataset (``gluon_ssd.data.synthetic``) with the
same number of loader workers. Throughput is measured in chunks, alternating pipelines: each
chunk opens a fresh loader iterator, runs ``skip`` batches untimed (pipeline fill), then times
``timed`` batches back to back (one ``waitall`` at the end, so host and device overlap as in a
real run).
"""
import os
import statistics
import time

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon import nn

from bench.common import SSD300_GMAC, copy_params
from gluon_ssd.precision import PrecisionMixin

__all__ = ['synthetic_dataset', 'ssd300_pipelines', 'tiny_pipelines', 'D2LTinySSD',
           'run_chunks', 'bench_train']


class _NonEmpty(gluon.data.Dataset):
    """The images of ``dataset`` with at least one object (GluonCV's transform cannot take an
    image without boxes, which never happens in VOC)."""

    def __init__(self, dataset):
        self._dataset = dataset
        self._index = [i for i in range(len(dataset)) if len(dataset.label(i))]
        self.classes = dataset.classes

    def __len__(self):
        return len(self._index)

    def __getitem__(self, i):
        return self._dataset[self._index[i]]


def synthetic_dataset(size, num_train, root=None):
    """The synthetic VOC-format JPEG dataset (generated once, cached on disk), images with at
    least one object."""
    from gluon_ssd.data.synthetic import SyntheticDetection
    root = root or os.path.join(os.environ.get('GLUON_SSD_HOME') or
                                os.path.expanduser('~/.cache/gluon_ssd'), 'bench')
    return _NonEmpty(SyntheticDetection('train', root=root, num_train=num_train, num_val=1,
                                        size=size, max_objects=8))


def _ours_loader(dataset, size, batch, workers, max_objects):
    from gluon_ssd.data.build import train_loader
    from gluon_ssd.data.transforms import SSDTrainTransform
    loader, _ = train_loader(dataset, SSDTrainTransform(size, size), batch, 0, max_objects,
                             workers)
    return loader


def _ours_step(net, batch_lr=0.001, max_objects=8, precision='float32'):
    """The engine's step: fused graph, cross-device normalisation, backward, SGD;
    ``precision='bfloat16'`` is what ``train_ssd.py --amp`` does on CPU."""
    from gluon_ssd.engine import TrainGraph, forward_losses
    from gluon_ssd.loss import MultiBoxLossTerms, SSDMultiBoxLoss
    from gluon_ssd.target import SSDTargetGenerator
    graph = TrainGraph(net, SSDTargetGenerator(max_objects=max_objects), MultiBoxLossTerms())
    graph.set_precision(precision)
    graph.hybridize(static_alloc=True, static_shape=True)
    normalizer = SSDMultiBoxLoss()
    trainer = gluon.Trainer(net.collect_params(), 'sgd',
                            {'learning_rate': batch_lr, 'wd': 5e-4, 'momentum': 0.9})

    def step(batch):
        # loader batches live in shared memory: copy to the device as the engine does
        datas = gluon.utils.split_and_load(batch[0], [mx.cpu()])
        labels = gluon.utils.split_and_load(batch[1], [mx.cpu()])
        with autograd.record():
            sum_l, _, _ = forward_losses(graph, normalizer, datas, labels)
        autograd.backward(sum_l)
        trainer.step(1)
        return sum_l
    return step


def _twin(net, name, classes, size):
    """A second network ``name`` with ``net``'s current weights."""
    from gluon_ssd.model.zoo import get_model
    twin = get_model(name, classes=classes)
    twin.initialize()
    twin(mx.nd.zeros((1, 3, size, size)))
    for p, q in zip(net.collect_params().values(), twin.collect_params().values()):
        q.set_data(p.data())
    return twin


def ssd300_pipelines(dataset, batch, workers):
    """{'ours': (make_iterator, step), 'ours_bf16': ..., 'gluoncv': ..., 'gluoncv_bf16': ...}
    for SSD300-VGG16, all from the same start weights. ``ours_bf16`` is ``--amp`` on CPU;
    ``gluoncv_bf16`` is GluonCV's pipeline with its training graph rewritten by our
    ``to_bfloat16`` (GluonCV has no CPU mixed precision of its own): the like-for-like
    comparison in bfloat16."""
    import gluoncv
    from gluoncv.data.batchify import Stack, Tuple
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform

    from gluon_ssd.model.zoo import get_model
    max_objects = 8
    ours = get_model('ssd_300_vgg16_atrous_voc', classes=dataset.classes)
    ours.initialize(mx.init.Xavier())
    ref = gluoncv.model_zoo.ssd_300_vgg16_atrous_custom(list(dataset.classes),
                                                        pretrained_base=False)
    ref.initialize()
    x = mx.nd.zeros((1, 3, 300, 300))
    ours(x)
    ref(x)
    copy_params(ours, ref)

    ours_bf16 = _twin(ours, 'ssd_300_vgg16_atrous_voc', dataset.classes, 300)
    ours_loader = _ours_loader(dataset, 300, batch, workers, max_objects)
    ours_step = _ours_step(ours, max_objects=max_objects)
    bf16_step = _ours_step(ours_bf16, max_objects=max_objects, precision='bfloat16')

    # GluonCV train_ssd.py: anchors from a train-mode forward, targets in the loader workers
    with autograd.train_mode():
        _, _, anchors = ref(mx.nd.zeros((1, 3, 300, 300)))
    ref_loader = gluon.data.DataLoader(
        dataset.transform(SSDDefaultTrainTransform(300, 300, anchors)), batch, shuffle=True,
        batchify_fn=Tuple(Stack(), Stack(), Stack()), last_batch='rollover',
        num_workers=workers)
    ref_bf16 = gluoncv.model_zoo.ssd_300_vgg16_atrous_custom(list(dataset.classes),
                                                             pretrained_base=False)
    ref_bf16.initialize()
    ref_bf16(x)
    copy_params(ours, ref_bf16)
    ref_bf16.__class__ = type('GluonCVSSDBF16', (PrecisionMixin, type(ref_bf16)), {})
    ref_bf16.set_precision('bfloat16')

    def gluoncv_step(net):
        net.hybridize(static_alloc=True, static_shape=True)
        mbox_loss = gluoncv.loss.SSDMultiBoxLoss()
        trainer = gluon.Trainer(net.collect_params(), 'sgd',
                                {'learning_rate': 0.001, 'wd': 5e-4, 'momentum': 0.9})

        def step(batch_):
            data, cls_targets, box_targets = [b.as_in_context(mx.cpu()) for b in batch_]
            with autograd.record():
                cls_preds, box_preds, _ = net(data)
                sum_loss, _, _ = mbox_loss(cls_preds, box_preds, cls_targets, box_targets)
                autograd.backward(sum_loss)
            trainer.step(1)
            return sum_loss
        return step

    return {'ours': (lambda: iter(ours_loader), ours_step),
            'ours_bf16': (lambda: iter(ours_loader), bf16_step),
            'gluoncv': (lambda: iter(ref_loader), gluoncv_step(ref)),
            'gluoncv_bf16': (lambda: iter(ref_loader), gluoncv_step(ref_bf16))}


# ----------------------------------------------------------------------------------------------
# d2l TinySSD (the book's design, written from its description)
# ----------------------------------------------------------------------------------------------
def _down_sample(channels):
    blk = nn.Sequential()
    for _ in range(2):
        blk.add(nn.Conv2D(channels, kernel_size=3, padding=1), nn.BatchNorm(),
                nn.Activation('relu'))
    blk.add(nn.MaxPool2D(2))
    return blk


class D2LTinySSD(gluon.Block):
    """d2l's TinySSD: base 16-32-64 down-sampling, three 128-channel down-sampling stages, a
    global max pool; per stage 4 anchors from ``MultiBoxPrior`` and 3x3 conv predictors.
    ``forward(x) -> (anchors (1, N, 4) 0-1 corner, cls_preds (B, N, C+1), box_preds (B, N*4))``.
    """
    SIZES = [[0.2, 0.272], [0.37, 0.447], [0.54, 0.619], [0.71, 0.79], [0.88, 0.961]]
    RATIOS = [1, 2, 0.5]

    def __init__(self, num_classes, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        num_anchors = len(self.SIZES[0]) + len(self.RATIOS) - 1
        with self.name_scope():
            base = nn.Sequential()
            for c in (16, 32, 64):
                base.add(_down_sample(c))
            self.stages = nn.Sequential()
            self.stages.add(base, _down_sample(128), _down_sample(128), _down_sample(128),
                            nn.GlobalMaxPool2D())
            self.cls_preds = nn.Sequential()
            self.box_preds = nn.Sequential()
            for _ in range(5):
                self.cls_preds.add(nn.Conv2D(num_anchors * (num_classes + 1), 3, padding=1))
                self.box_preds.add(nn.Conv2D(num_anchors * 4, 3, padding=1))

    def forward(self, x):  # pylint: disable=arguments-differ
        anchors, cls, box = [], [], []
        for i in range(5):
            x = self.stages[i](x)
            anchors.append(mx.nd.contrib.MultiBoxPrior(x, sizes=self.SIZES[i],
                                                       ratios=self.RATIOS))
            cls.append(self.cls_preds[i](x).transpose((0, 2, 3, 1)).flatten())
            box.append(self.box_preds[i](x).transpose((0, 2, 3, 1)).flatten())
        cls_preds = mx.nd.concat(*cls, dim=1).reshape((0, -1, self.num_classes + 1))
        return mx.nd.concat(*anchors, dim=1), cls_preds, mx.nd.concat(*box, dim=1)


def tiny_pipelines(dataset, batch, workers):
    """{'ours': ..., 'd2l': ...} for TinySSD at 256 px (same loader and augmentation)."""
    from gluon_ssd.model.zoo import get_model
    max_objects = 8
    classes = dataset.classes
    ours = get_model('tiny_ssd', classes=classes)
    ours.initialize(mx.init.Xavier())
    ours_step = _ours_step(ours, batch_lr=0.2 / batch, max_objects=max_objects)
    ours(mx.nd.zeros((1, 3, 256, 256)))
    bf16_step = _ours_step(_twin(ours, 'tiny_ssd', classes, 256), batch_lr=0.2 / batch,
                           max_objects=max_objects, precision='bfloat16')
    loader = _ours_loader(dataset, 256, batch, workers, max_objects)

    d2l = D2LTinySSD(len(classes))
    d2l.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(d2l.collect_params(), 'sgd', {'learning_rate': 0.2, 'wd': 5e-4})
    cls_loss = gluon.loss.SoftmaxCrossEntropyLoss()
    box_loss = gluon.loss.L1Loss()

    def d2l_step(batch_):
        data, label = [b.as_in_context(mx.cpu()) for b in batch_]
        # d2l labels: [class, xmin, ymin, xmax, ymax] in 0-1, padding rows -1
        valid = label.slice_axis(axis=-1, begin=4, end=5) >= 0
        y = mx.nd.concat(label.slice_axis(axis=-1, begin=4, end=5),
                         label.slice_axis(axis=-1, begin=0, end=4) / 256, dim=-1)
        y = mx.nd.where(mx.nd.broadcast_like(valid, y), y, -mx.nd.ones_like(y))
        with autograd.record():
            anchors, cls_preds, box_preds = d2l(data)
            box_labels, box_masks, cls_labels = mx.nd.contrib.MultiBoxTarget(
                anchors, y, cls_preds.transpose((0, 2, 1)))
            loss = (cls_loss(cls_preds, cls_labels)
                    + box_loss(box_preds * box_masks, box_labels * box_masks))
        loss.backward()
        trainer.step(batch)
        return loss

    return {'ours': (lambda: iter(loader), ours_step),
            'ours_bf16': (lambda: iter(loader), bf16_step),
            'd2l': (lambda: iter(loader), d2l_step)}


# ----------------------------------------------------------------------------------------------
def run_chunks(pipelines, rounds, timed, skip=1):
    """Alternate pipelines chunk by chunk; returns name -> list of seconds per batch (one value
    per chunk: the chunk's timed wall time / ``timed``)."""
    names = list(pipelines)
    per_batch = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            make_iter, step = pipelines[name]
            it = make_iter()
            for _ in range(skip):
                step(next(it))
            mx.nd.waitall()
            start = time.perf_counter()
            for _ in range(timed):
                step(next(it))
            mx.nd.waitall()
            per_batch[name].append((time.perf_counter() - start) / timed)
            del it
    return per_batch


def bench_train(kind, batch, rounds, timed, workers, num_images, skip=1):
    """One training comparison entry (``kind`` 'ssd300' or 'tiny')."""
    if kind == 'ssd300':
        dataset = synthetic_dataset(300, num_images)
        pipelines = ssd300_pipelines(dataset, batch, workers)
        ref_name, target = 'gluoncv', 1.2
        title = f'SSD300-VGG16 training, batch {batch}, data loading + augmentation included'
        gmac = 3 * SSD300_GMAC  # training ~ 3x forward
    else:
        dataset = synthetic_dataset(256, num_images)
        pipelines = tiny_pipelines(dataset, batch, workers)
        ref_name, target = 'd2l', 4.0
        title = f'TinySSD 256 px training, batch {batch}, data loading + augmentation included'
        gmac = None
    # warm-up: graph building, first allocations
    for make_iter, step in pipelines.values():
        step(next(make_iter()))
    mx.nd.waitall()
    per_batch = run_chunks(pipelines, rounds, timed, skip)
    med = {k: statistics.median(v) for k, v in per_batch.items()}
    entry = {'name': f'train_{kind}_b{batch}', 'title': title, 'unit': 'ms/batch',
             'params': {'batch': batch, 'loader_workers': workers, 'images': num_images,
                        'rounds': rounds, 'timed_batches_per_chunk': timed},
             'times': {k: {'median': statistics.median(v) * 1e3, 'min': min(v) * 1e3,
                           'max': max(v) * 1e3, 'n': len(v)} for k, v in per_batch.items()},
             'images_per_s': {k: batch / t for k, t in med.items()},
             'ratios': dict({f'vs {ref_name}': med[ref_name] / med['ours'],
                             f'bf16 vs {ref_name}': med[ref_name] / med['ours_bf16']},
                            **({f'bf16 vs {ref_name}_bf16': med[f'{ref_name}_bf16'] /
                                med['ours_bf16']} if f'{ref_name}_bf16' in med else {})),
             'target': target, 'target_vs': [f'vs {ref_name}', f'bf16 vs {ref_name}']}
    if gmac:
        entry['gflops'] = {k: 2 * gmac * batch / t for k, t in med.items()}
    return entry


def training_workload(network, impl, quick):
    """``(make_iter, step)`` of one training pipeline at the sizes the memory and profile
    benchmarks share: ``network`` 'ssd300' (batch 8, 96 images) or 'tiny' (batch 32, 256 images),
    ``impl`` a key of :func:`ssd300_pipelines` / :func:`tiny_pipelines`; ``quick`` shrinks both."""
    if network == 'ssd300':
        pipes = ssd300_pipelines(synthetic_dataset(300, 8 if quick else 96), 1 if quick else 8, 0)
    else:
        pipes = tiny_pipelines(synthetic_dataset(256, 16 if quick else 256), 4 if quick else 32, 0)
    return pipes[impl]

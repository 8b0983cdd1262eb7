"""Accuracy of d2l's TinySSD recipe on a dataset of this project (final-epoch VOC07 mAP).

    PYTHONPATH=. python -m bench.d2l_recipe --dataset voc --dataset-root ../shared/data/raccoon \\
        --train-split train --val-split test --epochs 30 --seed 0 --out results.json

The recipe, as the d2l book trains its TinySSD: the network of :class:`bench.train.D2LTinySSD`
(Xavier init, not hybridized), images resized to 256x256 and nothing else (no crop, flip or
colour augmentation), pixels fed as raw 0-255 floats (the book neither divides by 255 nor
subtracts a mean), batch 32 shuffled, SGD lr 0.2 without momentum, wd 5e-4, softmax
cross-entropy + L1 on ``contrib.MultiBoxTarget`` targets (its defaults: IoU 0.5, no hard negative
mining, variances 0.1/0.2). Prediction as in the book: softmax, then
``contrib.MultiBoxDetection`` (score threshold 0.01, per-class NMS, clipped boxes; NMS IoU
``--nms-thresh`` 0.45 here, the operator's default is 0.5). Boxes are scaled back to each image's
original pixels and scored with :class:`gluon_ssd.metrics.VOCEvaluator` ('voc07', IoU 0.5,
difficult objects ignored).

The last line on stdout is one JSON object (also written to ``--out``): ``final_map``, the list
``maps`` (one per evaluation, epochs in ``map_epochs``), ``cpu_s`` (user + sys of this process
and its children from the start of the run: data opening, training, evaluation) and ``wall_s``.
Exit codes: 0 success, 2 a bad flag (one line on stderr naming it).
"""
import argparse
import json
import math
import os
import random
import resource
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from bench.train import D2LTinySSD
from gluon_ssd.data.build import open_datasets
from gluon_ssd.data.transforms import PadLabels
from gluon_ssd.errors import UserError, fail, one_line_warnings
from gluon_ssd.metrics import VOCEvaluator

__all__ = ['SIZE', 'resize_item', 'batchify', 'make_loader', 'train_epoch', 'detect',
           'evaluate', 'cpu_seconds', 'run', 'build_parser', 'main']

PROG = 'python -m bench.d2l_recipe'
SIZE = 256          # d2l's input side
LR, WD = 0.2, 5e-4  # d2l's SGD settings (no momentum)


def resize_item(image, label):
    """One raw item -> what both loaders need.

    ``image`` (H, W, 3) uint8, ``label`` (M, 6) float32 ``[xmin, ymin, xmax, ymax, class,
    difficult]`` original pixels. Returns ``(data (3, SIZE, SIZE) float32 0-255, target (M, 5)
    [class, xmin, ymin, xmax, ymax] 0-1 (d2l's label layout), gt (M, 6) the label unchanged,
    hw (2,) float32 original height and width)``.
    """
    h, w = image.shape[:2]
    data = mx.image.imresize(image, SIZE, SIZE, interp=1)
    data = data.transpose((2, 0, 1)).astype('float32')
    gt = np.asarray(label.asnumpy() if isinstance(label, mx.nd.NDArray) else label,
                    dtype=np.float32).reshape(-1, 6)
    target = np.empty((gt.shape[0], 5), np.float32)
    target[:, 0] = gt[:, 4]
    target[:, 1:5] = gt[:, :4] / np.array([w, h, w, h], np.float32)
    return data, target, gt, np.array([h, w], np.float32)


def batchify(items):
    """Items of :func:`resize_item` -> ``(data (B, 3, S, S), target (B, M, 5), gt (B, M', 6),
    hw (B, 2))``; label rows padded with -1 (MultiBoxTarget's padding)."""
    data, target, gt, hw = zip(*items)
    data = mx.nd.stack(*[d.as_in_context(mx.cpu()) for d in data])
    pad = PadLabels()
    return data, pad(target), pad(gt), mx.nd.array(np.stack(hw))


def make_loader(dataset, batch_size, shuffle, workers):
    """A plain gluon DataLoader over ``dataset`` (raw items) with :func:`resize_item`; the
    training loader keeps the last partial batch, as the book's does."""
    return gluon.data.DataLoader(dataset.transform(resize_item), batch_size, shuffle=shuffle,
                                 batchify_fn=batchify, last_batch='keep', num_workers=workers)


def train_epoch(net, trainer, loader):
    """One epoch of d2l's step; returns the mean per-image loss (class CE + box L1)."""
    cls_loss, box_loss = gluon.loss.SoftmaxCrossEntropyLoss(), gluon.loss.L1Loss()
    total, count = mx.nd.zeros((1,)), 0
    for data, target, _, _ in loader:
        with autograd.record():
            anchors, cls_preds, box_preds = net(data)   # (1, N, 4), (B, N, C+1), (B, N*4)
            box_labels, box_masks, cls_labels = mx.nd.contrib.MultiBoxTarget(
                anchors, target, cls_preds.transpose((0, 2, 1)))
            loss = (cls_loss(cls_preds, cls_labels) +
                    box_loss(box_preds * box_masks, box_labels * box_masks))   # (B,)
        loss.backward()
        trainer.step(data.shape[0])
        total += loss.sum()
        count += data.shape[0]
    return float(total.asscalar()) / max(count, 1)


def detect(net, data, hw, nms_thresh):
    """d2l's prediction for a batch ``data`` (B, 3, S, S) of images of original sizes ``hw``
    (B, 2) -> numpy ``(ids (B, N), scores (B, N), boxes (B, N, 4) original pixels)``; id -1 marks
    a suppressed or background row. Rows with a non-finite score or box become -1 as well."""
    anchors, cls_preds, box_preds = net(data)
    cls_probs = mx.nd.softmax(cls_preds, axis=-1).transpose((0, 2, 1))   # (B, C+1, N)
    out = mx.nd.contrib.MultiBoxDetection(cls_probs, box_preds, anchors,
                                          nms_threshold=nms_thresh).asnumpy()   # (B, N, 6)
    ids, scores = out[..., 0].copy(), out[..., 1].copy()
    h, w = hw.asnumpy()[:, 0], hw.asnumpy()[:, 1]
    boxes = out[..., 2:6] * np.stack([w, h, w, h], axis=-1)[:, None, :]
    bad = ~(np.isfinite(scores) & np.isfinite(boxes).all(axis=-1))
    ids[bad], scores[bad], boxes[bad] = -1, 0, 0
    return ids, scores, boxes


def evaluate(net, loader, classes, nms_thresh):
    """VOC07 11-point mAP of ``net`` over ``loader`` (batches of :func:`batchify`) in original
    pixels; ground-truth difficult flags from the label's 6th column. NaN if no ground truth."""
    metric = VOCEvaluator(classes, 'voc07')
    for data, _, gt, hw in loader:
        ids, scores, boxes = detect(net, data, hw, nms_thresh)
        gt = gt.asnumpy()
        metric.update(boxes, ids, scores, gt[..., :4], gt[..., 4], gt[..., 5])
    return metric.get()[1][-1]


def cpu_seconds():
    """User + system CPU seconds of this process and its waited-for children so far."""
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def _check_flags(dataset, root, epochs, batch_size, workers, val_interval, num_train, num_val,
                 nms_thresh):
    if dataset not in ('voc', 'synthetic'):
        raise UserError(f"--dataset: {dataset!r} is not supported here; choose voc or synthetic")
    if dataset != 'synthetic' and not root:
        raise UserError(f"--dataset-root is required for --dataset {dataset}")
    for flag, value in (('--epochs', epochs), ('--batch-size', batch_size)):
        if value < 1:
            raise UserError(f"{flag}: must be positive, got {value}")
    for flag, value in (('-j/--num-workers', workers), ('--val-interval', val_interval),
                        ('--num-train', num_train), ('--num-val', num_val)):
        if value < 0:
            raise UserError(f"{flag}: must be 0 or more, got {value}")
    if not 0 < nms_thresh <= 1:
        raise UserError(f"--nms-thresh: must be in (0, 1], got {nms_thresh}")


def run(dataset='voc', root=None, train_split=None, val_split=None, epochs=30, seed=0,
        num_train=0, num_val=0, batch_size=32, workers=0, val_interval=0, nms_thresh=0.45,
        log=sys.stderr):
    """Train d2l's TinySSD with the book's recipe and return the result dict (see the module
    docstring). ``num_train``/``num_val`` keep the first N images (0 = all; synthetic: the
    generated sizes); ``val_interval`` N > 0 also evaluates every N epochs (the last epoch is
    always evaluated). Raises :class:`UserError` for bad arguments or data."""
    _check_flags(dataset, root, epochs, batch_size, workers, val_interval, num_train, num_val,
                 nms_thresh)
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    random.seed(seed)
    np.random.seed(seed)
    mx.random.seed(seed)
    train_set, val_set, classes = open_datasets(dataset, root, train_split, val_split,
                                                num_train=num_train, num_val=num_val)
    train_loader = make_loader(train_set, batch_size, True, workers)
    val_loader = make_loader(val_set, batch_size, False, workers)
    net = D2LTinySSD(len(classes))
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': LR, 'wd': WD})
    maps, map_epochs = [], []
    for epoch in range(1, epochs + 1):
        tic = time.perf_counter()
        loss = train_epoch(net, trainer, train_loader)
        line = f"epoch {epoch}/{epochs} loss {loss:.4f} {time.perf_counter() - tic:.1f}s"
        if epoch == epochs or (val_interval and epoch % val_interval == 0):
            maps.append(float(evaluate(net, val_loader, classes, nms_thresh)))
            map_epochs.append(epoch)
            line += f" voc07 mAP {maps[-1]:.4f}"
        if log is not None:
            log.write(line + '\n')
            log.flush()
    mx.nd.waitall()
    final = maps[-1]
    return {'recipe': 'd2l', 'dataset': dataset, 'dataset_root': root,
            'train_split': train_split, 'val_split': val_split,
            'train_images': len(train_set), 'val_images': len(val_set), 'seed': seed,
            'epochs': epochs, 'batch_size': batch_size, 'nms_thresh': nms_thresh,
            'final_map': None if math.isnan(final) else final,
            'cpu_s': round(cpu_seconds() - cpu0, 2),
            'wall_s': round(time.perf_counter() - wall0, 2),
            'maps': [None if math.isnan(m) else m for m in maps], 'map_epochs': map_epochs}


def build_parser():
    """The command-line flags (defaults: the book's recipe)."""
    p = argparse.ArgumentParser(prog=PROG, description="Train d2l's TinySSD with the book's "
                                "recipe and report its final-epoch VOC07 mAP and CPU time.")
    a = p.add_argument
    a('--dataset', default='voc', help='voc | synthetic (default voc)')
    a('--dataset-root', default=None, help='dataset folder (optional for synthetic)')
    a('--train-split', default=None, help="training split (default: the dataset's)")
    a('--val-split', default=None, help="validation split (default: the dataset's)")
    a('--epochs', type=int, default=30)
    a('--seed', type=int, default=0)
    a('--batch-size', type=int, default=32)
    a('-j', '--num-workers', type=int, default=0, help='loader worker processes (default 0)')
    a('--num-train', type=int, default=0, help='use the first N training images (0 = all)')
    a('--num-val', type=int, default=0, help='use the first N validation images (0 = all)')
    a('--val-interval', type=int, default=0,
      help='also evaluate every N epochs (default 0: only after the last epoch)')
    a('--nms-thresh', type=float, default=0.45, help='NMS IoU of MultiBoxDetection (0.45)')
    a('--out', default=None, help='also write the result JSON to this file')
    return p


def main(argv=None):
    """Parse flags, run, print the result as one JSON line. Returns the exit code."""
    args = build_parser().parse_args(argv)
    one_line_warnings(PROG)
    try:
        if args.out:    # a bad --out fails now, not after the training
            parent = os.path.dirname(os.path.abspath(args.out))
            if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
                raise UserError(f"--out {args.out}: {parent} is not a writable directory")
        result = run(args.dataset, args.dataset_root, args.train_split, args.val_split,
                     args.epochs, args.seed, args.num_train, args.num_val, args.batch_size,
                     args.num_workers, args.val_interval, args.nms_thresh)
    except UserError as exc:
        return fail(PROG, exc)
    text = json.dumps(result)
    sys.stdout.write(text + '\n')
    if args.out:
        try:
            with open(args.out, 'w') as f:
                f.write(text + '\n')
        except OSError as exc:
            return fail(PROG, f"--out {args.out}: {exc.strerror or exc}")
    return 0


if __name__ == '__main__':
    sys.exit(main())

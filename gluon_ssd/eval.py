"""Evaluate a trained SSD on a dataset split: VOC07 11-point mAP, VOC area mAP and COCO AP.

    python eval_ssd.py --run-dir runs/tiny_ssd_synthetic_X          # the run's own val split
    python -m gluon_ssd.eval --params best.params --network tiny_ssd --dataset voc \\
        --dataset-root ../shared/data/raccoon --val-split test --metrics voc07,coco --out m.json

The metrics JSON goes to stdout (and ``--out FILE``); a per-class AP table goes to stderr.
Dataset flags are train_ssd.py's; with a run directory, the unset ones are taken from its
``config.json`` (same dataset), so the run's validation split is evaluated by default.

How each metric sees the boxes:

* ``voc07`` / ``voc``: detections and ground truth in pixels of the network input (the
  validation transform resizes both), exactly as during training and in GluonCV's eval script.
* ``coco``: in **original image pixels**. On a COCO dataset the annotation file itself is the
  ground truth (crowd regions included, GluonCV's protocol); on any other dataset (VOC folder,
  synthetic, RecordIO) a COCO ground truth is built in memory from the dataset's labels
  (difficult boxes become ``iscrowd`` ignore regions).

Exit codes: 0 success, 2 a problem the user can fix (one line on stderr, no traceback).
"""
# Owner: the eval/predict/export helper (issue 4). Shared model loading lives in predict.py.
import argparse
import json
import os
import sys
import time

import numpy as np

from gluon_ssd.predict import (CLIError, _contexts, _model_name, add_model_args, fail,
                               model_from_args, parse_classes, resolve_model_source,
                               val_transform)

__all__ = ['build_parser', 'dataset_settings', 'open_eval_dataset', 'evaluate_dataset',
           'format_ap_table', 'run', 'main']

PROG = 'eval_ssd.py'
DEFAULT_METRICS = 'voc07,voc,coco'


# ----------------------------------------------------------------------------------------------
# dataset
# ----------------------------------------------------------------------------------------------
class _First:
    """The first ``n`` items of ``dataset`` (``--num-val``); keeps the attributes used here."""

    def __init__(self, dataset, n):
        self._dataset, self._n = dataset, min(int(n), len(dataset))
        self.classes = dataset.classes
        for attr in ('coco', 'contiguous_id_to_json'):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))
        if hasattr(dataset, 'image_ids'):
            self.image_ids = list(dataset.image_ids)[:self._n]

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._dataset[index]


def _voc_splits(text, root):
    """``'test'`` (single VOC folder) or ``'2007_test,...'`` (VOCdevkit) -> VOCDetection splits."""
    single = os.path.isdir(os.path.join(root, 'Annotations'))
    out = []
    for part in (p.strip() for p in text.split(',') if p.strip()):
        year, _, name = part.partition('_')
        out.append((int(year), name) if not single and year.isdigit() and name else part)
    return out


def dataset_settings(args, run_cfg):
    """``{'dataset', 'dataset_root', 'val_split', 'num_train', 'num_val'}``: flags first, then
    the run's config when it used the same dataset, then train_ssd.py's defaults."""
    from gluon_ssd.config import DATASETS, DEFAULT_SPLITS
    dataset = args.dataset or run_cfg.get('dataset') or 'synthetic'
    if dataset not in DATASETS:
        raise CLIError(f"--dataset: unknown dataset {dataset!r}; choose one of "
                       f"{', '.join(DATASETS)}")
    same = run_cfg.get('dataset') == dataset

    def pick(flag, key):
        if flag not in (None, ''):
            return flag
        return run_cfg.get(key) if same else None

    out = {'dataset': dataset, 'dataset_root': pick(args.dataset_root, 'dataset_root'),
           'val_split': pick(args.val_split, 'val_split') or DEFAULT_SPLITS[dataset][1],
           'num_train': pick(args.num_train, 'num_train') or 0,
           'num_val': pick(args.num_val, 'num_val') or 0}
    if dataset != 'synthetic':
        root = out['dataset_root']
        if not root:
            raise CLIError(f"--dataset-root is required for --dataset {dataset}")
        if not os.path.isdir(os.path.expanduser(root)):
            raise CLIError(f"--dataset-root: {root} is not a directory")
    return out


def open_eval_dataset(settings, classes=None):
    """The evaluation split as a dataset of raw items ``(image (H,W,3) uint8 NDArray, label
    (M, 6) float32 original pixels)`` with ``.classes``.

    ``classes``: the model's class names (objects of other classes are dropped for VOC/rec);
    ``None`` uses the dataset's own. Raises :class:`CLIError` for dataset problems.
    """
    from gluon_ssd.data import DatasetError
    try:
        ds = _open(settings, classes)
    except (DatasetError, OSError) as exc:
        raise CLIError(f"--dataset {settings['dataset']}: {exc}") from None
    if settings['num_val']:
        ds = _First(ds, settings['num_val'])
    if len(ds) == 0:
        raise CLIError(f"--dataset {settings['dataset']}: the split {settings['val_split']!r} "
                       "has no images")
    if classes is not None and list(ds.classes) != list(classes):
        raise CLIError(f"--dataset {settings['dataset']}: its classes {list(ds.classes)} differ "
                       f"from the model's {list(classes)}")
    return ds


def _open(settings, classes):
    from gluon_ssd.data import VOCDetection
    root = settings['dataset_root']
    root = os.path.expanduser(root) if root else None
    if settings['dataset'] == 'synthetic':
        from gluon_ssd.data import synthetic_voc
        root = str(synthetic_voc(root=root, num_train=settings['num_train'] or 1000,
                                 num_val=settings['num_val'] or 200))
    if settings['dataset'] in ('synthetic', 'voc'):
        return VOCDetection(root, _voc_splits(settings['val_split'], root), classes=classes)
    if settings['dataset'] == 'coco':
        from gluon_ssd.data import COCODetection
        split = settings['val_split']
        return COCODetection(os.path.join(root, 'annotations', split + '.json'),
                             os.path.join(root, split.split('_')[-1]), skip_empty=False,
                             use_crowd=False)
    from gluon_ssd.data import RecordDetection
    return RecordDetection(os.path.join(root, settings['val_split']), classes=classes)


class _EvalItems:
    """Items ``(image (3,S,S) normalised, label (M,6) input pixels, label (M,6) original pixels,
    size [W, H] float32)`` of a raw dataset."""

    def __init__(self, dataset, data_shape):
        self._dataset, self._transform = dataset, val_transform(data_shape)

    def __len__(self):
        return len(self._dataset)

    def __getitem__(self, index):
        image, label = self._dataset[index]
        label = np.asarray(label, np.float32).reshape(-1, 6) if np.size(label) else \
            np.zeros((0, 6), np.float32)
        x, net_label = self._transform(image, label)
        size = np.array([image.shape[1], image.shape[0]], np.float32)
        return x, net_label.reshape(-1, label.shape[1]), label, size


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
def _make_metrics(kinds, dataset, classes, data_shape):
    """``{kind: evaluator}``; COCO uses the annotation file on COCO datasets."""
    from gluon_ssd.metrics import make_metric
    metrics = {}
    for kind in kinds:
        if kind == 'coco' and getattr(dataset, 'coco', None) is not None:
            metrics[kind] = make_metric('coco', classes, coco_gt=dataset.coco,
                                        img_ids=list(dataset.image_ids),
                                        cat_ids=list(dataset.contiguous_id_to_json),
                                        data_shape=(data_shape, data_shape))
        else:
            metrics[kind] = make_metric(kind, classes)
    return metrics


def _to_original(bboxes, sizes, data_shape):
    """(B,K,4) input-pixel boxes -> original pixels with per-image ``sizes`` (B, 2) = [W, H]."""
    scale = sizes / float(data_shape)                      # (B, 2)
    return bboxes * np.tile(scale, 2)[:, None, :]


def _forward(net, data, ctx):
    """Inference on a batch split over ``ctx``; numpy ``(ids (B,K,1), scores (B,K,1), bboxes
    (B,K,4))``."""
    from mxnet import gluon
    parts = gluon.utils.split_and_load(data, ctx, even_split=False)
    outs = [net(x) for x in parts]
    return tuple(np.concatenate([o[i].asnumpy() for o in outs], axis=0) for i in range(3))


def _drop_non_finite(ids, scores, bboxes):
    """Turn detections with a NaN/inf box or score into padding rows (in place); returns how
    many real (id >= 0) detections were dropped. ``ids``/``scores`` (B,K,1), ``bboxes`` (B,K,4).
    """
    bad = ~(np.isfinite(bboxes).all(axis=-1) & np.isfinite(scores[..., 0]))
    count = int((bad & (ids[..., 0] >= 0)).sum())
    ids[bad] = -1
    scores[bad] = 0
    bboxes[bad] = 0
    return count


def evaluate_dataset(net, data_shape, dataset, kinds, classes, batch_size=8, ctx=None,
                     num_workers=0):
    """Run ``net`` over ``dataset`` and return ``{kind: metric summary dict}``.

    ``net``: SSD in inference mode taking ``(B, 3, S, S)`` with ``S = data_shape``; ``kinds``:
    subset of ``('voc07', 'voc', 'coco')``. VOC metrics compare input-pixel boxes, COCO
    original-pixel boxes (module docstring). Detections with NaN/inf boxes or scores (a
    diverged model) are ignored and counted in each summary's ``non_finite_detections``.
    Raises :class:`CLIError` for unreadable images.
    """
    import mxnet as mx
    from gluoncv.data.batchify import Stack, Tuple
    from gluon_ssd.data import ImageDecodeError
    from gluon_ssd.data.transforms import PadLabels
    ctx = ctx or [mx.cpu()]
    metrics = _make_metrics(kinds, dataset, classes, data_shape)
    loader = mx.gluon.data.DataLoader(
        _EvalItems(dataset, data_shape), batch_size=batch_size, shuffle=False, last_batch='keep',
        batchify_fn=Tuple(Stack(), PadLabels(), PadLabels(), Stack()), num_workers=num_workers)
    dropped = 0
    try:
        for data, net_label, orig_label, sizes in loader:
            ids, scores, bboxes = _forward(net, data, ctx)
            dropped += _drop_non_finite(ids, scores, bboxes)
            _update(metrics, ids, scores, bboxes, net_label.asnumpy(), orig_label.asnumpy(),
                    sizes.asnumpy(), data_shape)
    except ImageDecodeError as exc:
        raise CLIError(str(exc)) from None
    if dropped:
        sys.stderr.write(f"warning: {dropped} detections with NaN/infinite boxes or scores "
                         "(a diverged model?) were ignored\n")
    return {kind: dict(m.summary(), non_finite_detections=dropped)
            for kind, m in metrics.items()}


def _update(metrics, ids, scores, bboxes, net_label, orig_label, sizes, data_shape):
    """Feed one batch to every metric in the coordinates it uses."""
    for kind, metric in metrics.items():
        if kind == 'coco':
            boxes, label = _to_original(bboxes, sizes, data_shape), orig_label
        else:
            boxes, label = bboxes, net_label
        metric.update(boxes, ids, scores, label[..., 0:4], label[..., 4], label[..., 5])


def format_ap_table(results, classes):
    """Per-class AP table (one column per metric, last row mAP) as a string."""
    kinds = list(results)
    width = max(12, max(len(c) for c in classes) + 2)

    def fmt(v):
        return f"{v:8.4f}" if v is not None else f"{'n/a':>8}"

    lines = [f"{'class':<{width}}" + ''.join(f"{k:>8}" for k in kinds)]
    for name in classes:
        lines.append(f"{name:<{width}}" + ''.join(fmt(results[k]['ap'].get(name))
                                                  for k in kinds))
    lines.append(f"{'mAP':<{width}}" + ''.join(fmt(results[k]['map']) for k in kinds))
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser():
    """The ``eval_ssd.py`` / ``python -m gluon_ssd.eval`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, description='Evaluate a trained SSD: VOC07 / VOC / COCO metrics as JSON on '
                               'stdout (and --out), a per-class AP table on stderr.')
    add_model_args(p)
    a = p.add_argument
    a('--dataset', help='synthetic | voc | coco | rec (default: the run\'s, else synthetic)')
    a('--dataset-root', help='VOC folder or VOCdevkit, COCO root, .rec folder; for synthetic, '
                             'the cache folder')
    a('--val-split', help='split to evaluate (default: the run\'s, else train_ssd.py\'s)')
    a('--num-val', type=int, help='evaluate only the first N images (0 = all); for synthetic '
                                  'also the generated val size')
    a('--num-train', type=int, help='synthetic only: the generated train size (to find the '
                                    'same cached dataset as the training run)')
    a('--metrics', default=DEFAULT_METRICS,
      help=f'comma-separated subset of voc07, voc, coco (default {DEFAULT_METRICS})')
    a('--batch-size', type=int, default=8, help='images per batch (default 8)')
    a('-j', '--num-workers', type=int, default=0, help='data-loading processes (default 0)')
    a('--out', help='also write the JSON to this file')
    return p


def _parse_metrics(text):
    from gluon_ssd.metrics import METRIC_KINDS
    kinds = [k.strip() for k in text.split(',') if k.strip()]
    bad = [k for k in kinds if k not in METRIC_KINDS]
    if not kinds or bad:
        raise CLIError(f"--metrics: expected a comma-separated subset of "
                       f"{', '.join(METRIC_KINDS)}, got {text!r}")
    return list(dict.fromkeys(kinds))


def run(args):
    """Evaluate according to parsed ``args``; returns the result dict printed by :func:`main`:
    ``{'model', 'dataset', 'num_images', 'nms_thresh', 'seconds', 'map': {kind: mAP},
    'metrics': {kind: summary}}``."""
    kinds = _parse_metrics(args.metrics)
    if args.batch_size < 1:
        raise CLIError(f"--batch-size: must be positive, got {args.batch_size}")
    _, run_cfg = resolve_model_source(args.run_dir, args.params)
    _model_name(args.network or run_cfg.get('network') or 'tiny_ssd',
                args.data_shape or run_cfg.get('data_shape'))   # fail fast, before the data
    settings = dataset_settings(args, run_cfg)
    if parse_classes(args.classes) or run_cfg.get('classes'):
        net, info = model_from_args(args)            # check the params before reading data
        dataset = open_eval_dataset(settings, info['classes'])
    else:                                            # the model takes the dataset's classes
        dataset = open_eval_dataset(settings, None)
        net, info = model_from_args(args, default_classes=list(dataset.classes))
    tic = time.time()
    results = evaluate_dataset(net, info['data_shape'], dataset, kinds, info['classes'],
                               args.batch_size, _contexts(args.gpus), args.num_workers)
    return {'model': info, 'dataset': settings, 'num_images': len(dataset),
            'nms_thresh': args.nms_thresh, 'seconds': round(time.time() - tic, 3),
            'map': {k: v['map'] for k, v in results.items()}, 'metrics': results}


def main(argv=None):
    """Parse flags, evaluate, print JSON (stdout) and the AP table (stderr). Returns the exit
    code."""
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
        text = json.dumps(result, indent=1)
        if args.out:
            parent = os.path.dirname(os.path.abspath(args.out))
            os.makedirs(parent, exist_ok=True)
            with open(args.out, 'w') as f:
                f.write(text + '\n')
    except CLIError as exc:
        return fail(PROG, exc)
    except OSError as exc:
        return fail(PROG, f"--out {args.out}: {exc.strerror or exc}")
    sys.stderr.write(format_ap_table(result['metrics'], result['model']['classes']) + '\n')
    sys.stdout.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Evaluate a trained SSD on a dataset split: VOC07 11-point mAP, VOC area mAP and COCO AP.

    python eval_ssd.py --run-dir runs/tiny_ssd_synthetic_X          # the run's own val split
    python -m gluon_ssd.eval --params best.params --network tiny_ssd --dataset voc \\
        --dataset-root ../shared/data/raccoon --val-split test --metrics voc07,coco --out m.json

The metrics JSON goes to stdout (and ``--out FILE``); a per-class AP table goes to stderr.
Dataset flags are train_ssd.py's; with a run directory, the unset ones are taken from its
``config.json`` (same dataset), so the run's validation split is evaluated by default.

How each metric sees the boxes: see :mod:`gluon_ssd.evaluate` (the one evaluation loop, also
used by training); ``coco`` reports all 12 COCOeval numbers under ``stats``.

Exit codes: 0 success, 2 a problem the user can fix (one line on stderr, no traceback).
"""
import argparse
import json
import os
import sys
import time

from gluon_ssd.cli import add_model_args, contexts_from_args, model_from_args
from gluon_ssd.data.build import DEFAULT_SPLITS, check_dataset, open_split, Subset
from gluon_ssd.errors import UserError, fail, one_line_warnings
from gluon_ssd.evaluate import evaluate
from gluon_ssd.model.io import is_zoo_detector, resolve_source
from gluon_ssd.rundir import read_config

__all__ = ['build_parser', 'dataset_settings', 'open_eval_dataset', 'format_ap_table', 'run',
           'main']

PROG = 'eval_ssd.py'
DEFAULT_METRICS = 'voc07,voc,coco'


def dataset_settings(args, run_cfg):
    """``{'dataset', 'dataset_root', 'val_split', 'num_train', 'num_val'}``: flags first, then
    the run's config when it used the same dataset, then train_ssd.py's defaults."""
    run_cfg = run_cfg or {}
    dataset = args.dataset or run_cfg.get('dataset') or 'synthetic'
    same = run_cfg.get('dataset') == dataset

    def pick(flag, key):
        if flag not in (None, ''):
            return flag
        return run_cfg.get(key) if same else None

    out = {'dataset': dataset, 'dataset_root': pick(args.dataset_root, 'dataset_root'),
           'num_train': pick(args.num_train, 'num_train') or 0,
           'num_val': pick(args.num_val, 'num_val') or 0}
    check_dataset(dataset, out['dataset_root'])
    out['val_split'] = pick(args.val_split, 'val_split') or DEFAULT_SPLITS[dataset][1]
    return out


def open_eval_dataset(settings, classes):
    """The evaluation split (raw items, original pixels) for a model with ``classes`` (``None``:
    the dataset's own); objects of other classes are dropped (VOC, synthetic, rec). Raises
    :class:`UserError`."""
    ds = open_split(settings['dataset'], settings['dataset_root'], settings['val_split'],
                    classes=None if settings['dataset'] == 'coco' else classes,
                    num_train=settings['num_train'], num_val=settings['num_val'])
    ds = Subset.first(ds, settings['num_val'])
    if len(ds) == 0:
        raise UserError(f"--dataset {settings['dataset']}: the split {settings['val_split']!r} "
                        "has no images")
    if classes is not None and list(ds.classes) != list(classes):
        raise UserError(f"--dataset {settings['dataset']}: its classes {list(ds.classes)} differ "
                        f"from the model's {list(classes)}")
    return ds


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
        raise UserError(f"--metrics: expected a comma-separated subset of "
                        f"{', '.join(METRIC_KINDS)}, got {text!r}")
    return list(dict.fromkeys(kinds))


def run(args):
    """Evaluate according to parsed ``args``; returns the result dict printed by :func:`main`:
    ``{'model', 'weights' (the file evaluated, or the zoo name), 'dataset', 'num_images',
    'nms_thresh', 'seconds', 'map': {kind: mAP}, 'metrics': {kind: summary}}``."""
    kinds = _parse_metrics(args.metrics)
    for flag, value in (('--batch-size', args.batch_size), ('-j/--num-workers',
                                                            args.num_workers + 1)):
        if value < 1:
            raise UserError(f"{flag}: must be positive, got {value}")
    if is_zoo_detector(args.pretrained):     # a zoo detector: its classes, no run directory
        run_cfg, file_meta, weights = None, True, args.pretrained
    else:
        params, file_meta = resolve_source(args.run_dir, args.params or args.pretrained)
        weights = os.path.abspath(params)
        run_cfg = read_config(os.path.dirname(weights))
    settings = dataset_settings(args, run_cfg)
    if file_meta or args.classes:
        net, meta = model_from_args(args)        # checks the weights before reading data
        dataset = open_eval_dataset(settings, meta['classes'])
    else:                                        # a bare .params: the dataset names the classes
        dataset = open_eval_dataset(settings, None)
        net, meta = model_from_args(args, default_classes=list(dataset.classes))
    tic = time.time()
    results = evaluate(net, meta, dataset, kinds, args.batch_size, contexts_from_args(args),
                       args.num_workers)
    dropped = next(iter(results.values()))['non_finite_detections']
    if dropped:
        sys.stderr.write(f"warning: {dropped} detections with NaN/infinite boxes or scores "
                         "(a diverged model?) were ignored\n")
    return {'model': meta, 'weights': weights, 'dataset': settings, 'num_images': len(dataset),
            'nms_thresh': meta.get('nms_thresh', getattr(net, 'nms_thresh', None)),
            'backend': meta.get('backend', 'mxnet'), 'seconds': round(time.time() - tic, 3),
            'map': {k: v['map'] for k, v in results.items()}, 'metrics': results}


def main(argv=None):
    """Parse flags, evaluate, print JSON (stdout) and the AP table (stderr). Returns the exit
    code."""
    args = build_parser().parse_args(argv)
    one_line_warnings(PROG)
    try:
        result = run(args)
        text = json.dumps(result, indent=1)
        if args.out:
            parent = os.path.dirname(os.path.abspath(args.out))
            os.makedirs(parent, exist_ok=True)
            with open(args.out, 'w') as f:
                f.write(text + '\n')
    except UserError as exc:
        return fail(PROG, exc)
    except OSError as exc:
        return fail(PROG, f"--out {args.out}: {exc.strerror or exc}")
    sys.stderr.write(format_ap_table(result['metrics'], result['model']['classes']) + '\n')
    sys.stdout.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

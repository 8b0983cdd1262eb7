"""Ablation of GluonCV's three SSD training tips: loss normalisation, initialiser, decoder.

GluonCV's tutorial *Deep dive into SSD training: 3 tips to boost performance* claims, for SSD on
Pascal VOC:

* normalising the loss by the positives of the **whole batch** (GluonCV's default) instead of
  **per sample** (each image by its own positives): +1 to 2 mAP ("batch-wise norm is always
  better on Pascal VOC");
* **Xavier** instead of Uniform initialisation of the (non-pretrained) layers: about +1 mAP;
* **per-class** decoding (every class above threshold per anchor) instead of **argmax**
  (only the best class per anchor): +0.5 to 0.8 mAP.

This runner measures them on a given dataset. It trains one model per ``(normalisation,
initialiser, seed)`` with :func:`gluon_ssd.engine.train` and evaluates its final weights with
*both* decoders (the decoder only matters at inference), so a grid of ``2 x 2 x 2`` settings over
``S`` seeds costs ``4 S`` trainings. Everything a run needs is in its own directory, and a run
whose ``ablation_result.json`` exists is not trained again, so an interrupted grid resumes.

Outputs in ``--out-dir``:

* ``results.csv``: one row per (setting, seed): mAP, training time;
* ``summary.csv`` / ``summary.md``: per setting the mean, standard deviation, min and max of mAP
  over seeds and the difference to the default ``batch / xavier / per_class`` (difference of
  means, and mean +- std of the per-seed paired differences: the same seed means the same data
  order and augmentation, so pairing removes much of the noise); ``summary.md`` also puts each
  tip's measured effect beside the tutorial's claim;
* ``ablation.png``: mAP of every run per setting, means and the default's level;
* ``runs/<norm>_<init>_seed<k>/``: the training runs (engine run directories).

Example (about 20 minutes on 2 CPU cores; see the README for measured times)::

    python -m gluon_ssd.ablation --dataset synthetic --epochs 8 --seeds 0,1,2 --out-dir runs/abl
    python -m gluon_ssd.ablation --dataset voc --dataset-root ../shared/data/raccoon \\
        --train-split train --val-split test --epochs 8 --seeds 0,1,2 --out-dir runs/abl_raccoon
"""
import argparse
import csv
import itertools
import json
import math
import os
import sys
import time

from gluon_ssd.errors import UserError, fail

__all__ = ['NORMS', 'INITS', 'DECODERS', 'DEFAULT', 'CLAIMS', 'build_parser', 'run_grid',
           'summarize', 'write_outputs', 'main']

NORMS = ('batch', 'sample')
INITS = ('xavier', 'uniform')
DECODERS = ('per_class', 'argmax')
DEFAULT = ('batch', 'xavier', 'per_class')
PROG = 'python -m gluon_ssd.ablation'

#: tip name -> (setting that should win, setting it is compared with, claimed gain in mAP points)
CLAIMS = {
    'batch-wise loss normalisation': (DEFAULT, ('sample', 'xavier', 'per_class'), (1.0, 2.0)),
    'Xavier initialisation': (DEFAULT, ('batch', 'uniform', 'per_class'), (1.0, 1.0)),
    'per-class decoding': (DEFAULT, ('batch', 'xavier', 'argmax'), (0.5, 0.8)),
}


def _csv_list(text, allowed, flag):
    values = [v.strip() for v in text.split(',') if v.strip()]
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise UserError(f"{flag}: expected a comma-separated subset of {', '.join(allowed)}, "
                        f"got {text!r}")
    return values


def build_parser():
    """Command-line flags of ``python -m gluon_ssd.ablation``."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description='Train a grid of SSD settings (loss normalisation x initialiser) over seeds, '
                    'evaluate each model with both decoders, and tabulate/plot mAP.')
    a = p.add_argument
    a('--out-dir', default='runs/ablation', help='where the runs, tables and plot go')
    a('--dataset', default='synthetic', choices=('synthetic', 'voc'),
      help='synthetic (built-in, default) or a VOC-format folder (--dataset-root)')
    a('--dataset-root', help='VOC folder (Annotations/, JPEGImages/, ImageSets/Main/) for voc; '
                             'cache folder for synthetic')
    a('--train-split', help='training split (default: train)')
    a('--val-split', help='validation split (default: val for synthetic; for voc: test if '
                          'ImageSets/Main/test.txt exists, else val)')
    a('--network', default='tiny_ssd', help='network (default tiny_ssd)')
    a('--data-shape', type=int, help='input size (default: the network preset)')
    a('--epochs', type=int, default=8, help='epochs per training (default 8)')
    a('--batch-size', type=int, default=16, help='batch size (default 16)')
    a('--optimizer', choices=('sgd', 'adam'), help='optimizer (default: the network preset)')
    a('--lr', type=float, help='learning rate (default: the network preset)')
    a('--warmup-epochs', type=float, help='warm-up epochs (default: the network preset)')
    a('--seeds', default='0,1,2', help='comma-separated seeds (default 0,1,2)')
    a('--norms', default=','.join(NORMS), help='loss normalisations (default batch,sample)')
    a('--inits', default=','.join(INITS), help='initialisers (default xavier,uniform)')
    a('--decoders', default=','.join(DECODERS), help='decoders (default per_class,argmax)')
    a('--num-train', type=int, default=0, help='use the first N training images (0 = all; '
                                               'synthetic: generates N, default 1000)')
    a('--num-val', type=int, default=0, help='use the first N validation images (0 = all)')
    a('-j', '--num-workers', type=int, default=0, help='data-loading workers (default 0)')
    a('--max-expand', type=float, help='largest zoom-out of the augmentation (default preset)')
    a('--report-only', action='store_true',
      help='train nothing: tabulate the runs of --out-dir that have finished')
    return p


def _val_split(args):
    if args.val_split:
        return args.val_split
    if args.dataset == 'voc' and args.dataset_root and os.path.isfile(
            os.path.join(args.dataset_root, 'ImageSets', 'Main', 'test.txt')):
        return 'test'
    return 'val'


def make_config(args, norm, init, seed, out_dir):
    """The engine's :class:`~gluon_ssd.config.TrainConfig` of one training of the grid."""
    from gluon_ssd.config import TrainConfig, fill_defaults, validate
    cfg = TrainConfig(network=args.network, data_shape=args.data_shape,
                      batch_size=args.batch_size, dataset=args.dataset,
                      dataset_root=args.dataset_root, train_split=args.train_split or 'train',
                      val_split=_val_split(args), num_workers=args.num_workers,
                      epochs=args.epochs, lr=args.lr, warmup_epochs=args.warmup_epochs,
                      optimizer=args.optimizer,
                      seed=seed, out_dir=out_dir, loss_norm=norm, init=init,
                      decoder='per_class', num_train=args.num_train, num_val=args.num_val,
                      no_progress=True, max_expand=args.max_expand)
    # decay the learning rate at 70 % and 90 % of the (short) schedule; validate only at the end
    cfg.lr_decay_epoch = ','.join(str(e) for e in sorted({max(1, int(args.epochs * 0.7)),
                                                         max(1, int(args.epochs * 0.9))})
                                  if e < args.epochs)
    cfg.val_interval = args.epochs
    cfg.overwrite = True      # an interrupted cell of the grid is trained again from the start
    cfg.save_interval = args.epochs
    cfg.log_interval = 10 ** 6
    return validate(fill_defaults(cfg))


def evaluate_decoders(run_dir, cfg, decoders):
    """VOC07 mAP of the run's final weights (``last.params``) with each decoder."""
    import mxnet as mx
    from gluon_ssd.engine import open_data
    from gluon_ssd.evaluate import evaluate
    from gluon_ssd.model.io import load_model
    ctx = [mx.cpu()]
    _, val_ds, _ = open_data(cfg)
    net, meta = load_model(params=os.path.join(run_dir, 'last.params'), ctx=ctx)
    maps = {}
    for decoder in decoders:
        net.set_decoder(decoder)
        summary = evaluate(net, meta, val_ds, ('voc07',), cfg.batch_size, ctx)['voc07']
        maps[decoder] = summary['map'] if summary['map'] is not None else float('nan')
    return maps


def run_grid(args, log=print):
    """Train/evaluate every (norm, init, seed); returns the list of result rows (dicts)."""
    from gluon_ssd.engine import train
    norms = _csv_list(args.norms, NORMS, '--norms')
    inits = _csv_list(args.inits, INITS, '--inits')
    decoders = _csv_list(args.decoders, DECODERS, '--decoders')
    try:
        seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") \
            from None
    if not seeds:
        raise UserError('--seeds: give at least one seed')
    rows = []
    grid = list(itertools.product(norms, inits, seeds))
    for k, (norm, init, seed) in enumerate(grid):
        run_dir = os.path.join(args.out_dir, 'runs', f'{norm}_{init}_seed{seed}')
        done = os.path.join(run_dir, 'ablation_result.json')
        if os.path.isfile(done):
            with open(done) as f:
                result = json.load(f)
            if set(decoders) <= set(result['map']):
                log(f'[{k + 1}/{len(grid)}] {norm}/{init}/seed {seed}: done before, reused')
                rows.extend(_rows(result, decoders))
                continue
        if getattr(args, 'report_only', False):
            log(f'[{k + 1}/{len(grid)}] {norm}/{init}/seed {seed}: not finished, skipped')
            continue
        cfg = make_config(args, norm, init, seed, run_dir)
        log(f'[{k + 1}/{len(grid)}] training {norm}/{init}/seed {seed} -> {run_dir}')
        tic = time.time()
        out = train(cfg)
        train_s = time.time() - tic
        tic = time.time()
        maps = evaluate_decoders(run_dir, cfg, decoders)
        result = {'norm': norm, 'init': init, 'seed': seed, 'map': maps,
                  'train_seconds': round(train_s, 1),
                  'eval_seconds': round(time.time() - tic, 1),
                  'epochs': cfg.epochs, 'num_train': _count(cfg, 'train'),
                  'dataset': cfg.dataset, 'network': cfg.network}
        with open(done, 'w') as f:
            json.dump(result, f, indent=1)
        log('    ' + ', '.join(f'{d} mAP {m:.4f}' for d, m in maps.items())
            + f' ({train_s:.0f} s training)')
        rows.extend(_rows(result, decoders))
    return rows


def _count(cfg, which):
    return cfg.num_train if which == 'train' else cfg.num_val


def _rows(result, decoders):
    return [{'norm': result['norm'], 'init': result['init'], 'decoder': d,
             'seed': result['seed'], 'map': result['map'][d],
             'train_seconds': result['train_seconds'],
             'eval_seconds': result.get('eval_seconds', 0.0)} for d in decoders]


# ----------------------------------------------------------------------------------------------
# tables and plot
# ----------------------------------------------------------------------------------------------
def _stats(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {'n': 0, 'mean': float('nan'), 'std': float('nan'), 'min': float('nan'),
                'max': float('nan')}
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 \
        else 0.0
    return {'n': len(vals), 'mean': mean, 'std': std, 'min': min(vals), 'max': max(vals)}


def _paired(rows, setting, reference):
    """Per-seed differences ``map(setting) - map(reference)``."""
    def by_seed(s):
        return {r['seed']: r['map'] for r in rows if (r['norm'], r['init'], r['decoder']) == s}
    a, b = by_seed(setting), by_seed(reference)
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def summarize(rows):
    """Per-setting statistics and the three tips' effects.

    Returns ``(settings, effects)``: ``settings`` is a list of dicts (``norm``, ``init``,
    ``decoder``, ``n``, ``mean``, ``std``, ``min``, ``max``, ``delta``, ``paired_mean``,
    ``paired_std``), mAP as fractions; ``effects`` maps each tip of :data:`CLAIMS` to
    ``{'mean', 'std', 'n', 'claim', 'direction_holds', 'within_claim'}`` in mAP **points**.
    """
    keys = []
    for r in rows:
        k = (r['norm'], r['init'], r['decoder'])
        if k not in keys:
            keys.append(k)
    keys.sort(key=lambda k: (k != DEFAULT, NORMS.index(k[0]), INITS.index(k[1]),
                             DECODERS.index(k[2])))
    ref = _stats([r['map'] for r in rows if (r['norm'], r['init'], r['decoder']) == DEFAULT])
    settings = []
    for k in keys:
        st = _stats([r['map'] for r in rows if (r['norm'], r['init'], r['decoder']) == k])
        diffs = _paired(rows, k, DEFAULT) if ref['n'] else []
        pst = _stats(diffs)
        settings.append(dict(zip(('norm', 'init', 'decoder'), k), **st,
                             delta=st['mean'] - ref['mean'], paired_mean=pst['mean'],
                             paired_std=pst['std']))
    effects = {}
    for tip, (better, worse, claim) in CLAIMS.items():
        diffs = [100 * d for d in _paired(rows, better, worse)]
        if not diffs:
            continue
        st = _stats(diffs)
        if all(d == 0 for d in diffs):   # e.g. the decoders on a single-class dataset
            effects[tip] = {'mean': 0.0, 'std': 0.0, 'n': st['n'], 'claim': claim,
                            'direction_holds': None, 'within_claim': None,
                            'note': 'identical results (one foreground class?)'}
            continue
        effects[tip] = {'mean': st['mean'], 'std': st['std'], 'n': st['n'], 'claim': claim,
                        'direction_holds': st['mean'] > 0,
                        'within_claim': st['mean'] > 0
                        and claim[0] - 0.5 <= st['mean'] <= claim[1] + 0.5}
    return settings, effects


def _fmt(v, scale=100.0, digits=2, sign=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return 'n/a'
    return f'{v * scale:+.{digits}f}' if sign else f'{v * scale:.{digits}f}'


def markdown_tables(settings, effects, meta):
    """The ``summary.md`` text."""
    lines = [f"# SSD training tips ablation: {meta['dataset']}", '',
             f"{meta['network']}, {meta['epochs']} epochs, seeds {meta['seeds']}, "
             f"{meta['trainings']} trainings: {meta.get('grid_minutes', meta['wall_minutes']):.1f}"
             " min of training + evaluation. "
             'mAP = VOC07 11-point mAP (IoU 0.5) on the validation split, in points (x100).', '',
             '| loss norm | init | decoder | runs | mean mAP | std | min | max | '
             'delta vs default | paired delta (mean +- std) |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for s in settings:
        tag = ' (default)' if (s['norm'], s['init'], s['decoder']) == DEFAULT else ''
        lines.append(f"| {s['norm']}{tag} | {s['init']} | {s['decoder']} | {s['n']} | "
                     f"{_fmt(s['mean'])} | {_fmt(s['std'])} | {_fmt(s['min'])} | "
                     f"{_fmt(s['max'])} | {_fmt(s['delta'], sign=True)} | "
                     f"{_fmt(s['paired_mean'], sign=True)} +- {_fmt(s['paired_std'])} |")
    if effects:
        lines += ['', "## The tutorial's claims", '',
                  '| tip | claimed gain (mAP points) | measured gain (mean +- std over seeds) | '
                  'direction holds | within claim (+-0.5) |', '|---|---|---|---|---|']
        for tip, e in effects.items():
            lo, hi = e['claim']
            claim = f'+{lo:g}' if lo == hi else f'+{lo:g} to +{hi:g}'
            if e['direction_holds'] is None:
                lines.append(f"| {tip} | {claim} | 0 (n={e['n']}): {e['note']} | n/a | n/a |")
                continue
            lines.append(f"| {tip} | {claim} | {e['mean']:+.2f} +- {e['std']:.2f} "
                         f"(n={e['n']}) | {'yes' if e['direction_holds'] else 'no'} | "
                         f"{'yes' if e['within_claim'] else 'no'} |")
    return '\n'.join(lines) + '\n'


def plot(rows, settings, path, title):
    """``ablation.png``: every run's mAP per setting (dots), the mean (bar), default's mean."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(max(6.0, 1.3 * len(settings) + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    labels = []
    seeds = sorted({r['seed'] for r in rows})
    markers = 'osD^vP*Xh'
    for i, s in enumerate(settings):
        k = (s['norm'], s['init'], s['decoder'])
        colour = 'tab:blue' if k == DEFAULT else 'tab:grey'
        ax.bar(i, 100 * s['mean'], color=colour, alpha=0.35, edgecolor=colour)
        for j, seed in enumerate(seeds):   # one marker per seed: runs sharing a seed are paired
            vals = [100 * r['map'] for r in rows
                    if (r['norm'], r['init'], r['decoder']) == k and r['seed'] == seed]
            ax.plot([i] * len(vals), vals, markers[j % len(markers)], color=f'C{j % 10}', ms=6,
                    label=f'seed {seed}' if i == 0 else None)
        labels.append(f"{s['norm']}\n{s['init']}\n{s['decoder']}")
    ref = next((s['mean'] for s in settings
                if (s['norm'], s['init'], s['decoder']) == DEFAULT), None)
    if ref is not None and not math.isnan(ref):
        ax.axhline(100 * ref, color='tab:blue', ls='--', lw=1, label='default mean')
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(settings)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel('VOC07 mAP (points)')
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write_outputs(rows, out_dir, meta):
    """Write ``results.csv``, ``summary.csv``, ``summary.md``, ``summary.json`` and
    ``ablation.png``; returns ``(settings, effects)`` of :func:`summarize`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, 'results.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['norm', 'init', 'decoder', 'seed', 'map',
                                          'train_seconds', 'eval_seconds'], extrasaction='ignore')
        w.writeheader()
        w.writerows(rows)
    settings, effects = summarize(rows)
    fields = ['norm', 'init', 'decoder', 'n', 'mean', 'std', 'min', 'max', 'delta',
              'paired_mean', 'paired_std']
    with open(os.path.join(out_dir, 'summary.csv'), 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows([{k: s[k] for k in fields} for s in settings])
    with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
        f.write(markdown_tables(settings, effects, meta))
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
        json.dump({'meta': meta, 'settings': settings, 'effects': effects}, f, indent=1,
                  default=lambda v: None)
    plot(rows, settings, os.path.join(out_dir, 'ablation.png'),
         f"{meta['network']} on {meta['dataset']}: {meta['epochs']} epochs, "
         f"seeds {meta['seeds']}")
    return settings, effects


def main(argv=None):
    args = build_parser().parse_args(argv)
    tic = time.time()
    try:
        if args.dataset == 'voc' and not args.dataset_root:
            raise UserError('--dataset voc needs --dataset-root (a VOC-format folder)')
        os.makedirs(args.out_dir, exist_ok=True)
        rows = run_grid(args)
        if not rows:
            raise UserError(f'--out-dir {args.out_dir}: no finished runs')
    except UserError as exc:
        return fail(PROG, exc)
    dataset = args.dataset if args.dataset == 'synthetic' else \
        os.path.basename(os.path.normpath(args.dataset_root))
    meta = {'dataset': dataset, 'network': args.network, 'epochs': args.epochs,
            'seeds': args.seeds, 'trainings': len({(r['norm'], r['init'], r['seed'])
                                                   for r in rows}),
            'wall_minutes': (time.time() - tic) / 60, 'argv': sys.argv[1:] if argv is None
            else list(argv)}
    # training + evaluation time of every run of the grid, including runs reused from before
    runs = {(r['norm'], r['init'], r['seed']): r for r in rows}
    meta['grid_minutes'] = sum(r['train_seconds'] + r.get('eval_seconds', 0.0)
                               for r in runs.values()) / 60
    write_outputs(rows, args.out_dir, meta)
    with open(os.path.join(args.out_dir, 'summary.md')) as f:
        print(f.read())
    print(f"wrote {args.out_dir}/{{results.csv,summary.csv,summary.md,ablation.png}} in "
          f"{meta['wall_minutes']:.1f} min")
    return 0


if __name__ == '__main__':
    sys.exit(main())

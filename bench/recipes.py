"""From-scratch recipes x datasets x seeds: final-epoch VOC07 mAP and CPU time of each training.

    PYTHONPATH=. .venv/bin/python -m bench.recipes --out-dir runs/recipes            # the table
    PYTHONPATH=. .venv/bin/python -m bench.recipes --recipes scratch_ssd --datasets raccoon \\
        --seeds 233,1,2 --jobs 2 --out-dir runs/recipes

Each run is ``train_ssd.py`` in a child process with the recipe's flags, ``--seed`` and its own
run directory; ``results.jsonl`` gets one line per run (final and best mAP, epochs, CPU seconds =
user + system time of the child and its loader workers, wall seconds). A run already in
``results.jsonl`` is not trained again, so an interrupted table resumes. ``--jobs N`` trains N
runs at a time, each with ``OMP_NUM_THREADS = cores / N``: CPU seconds stay comparable, wall
time does not. ``table.md`` has per (recipe, dataset) the mean +- sample std of the final mAP
over seeds, the per-seed values, the mean best-epoch mAP and the mean CPU minutes.

The d2l textbook recipe itself (its own network, targets and SGD) is ``bench/d2l_recipe.py``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: recipe -> train_ssd.py flags (everything else: the network's preset)
RECIPES = {
    'scratch_ssd': [],                                   # the default: no --network
    'tiny_ssd_128': ['--network', 'tiny_ssd', '--data-shape', '128'],
    'tiny_ssd_256': ['--network', 'tiny_ssd', '--data-shape', '256'],
}

#: dataset -> train_ssd.py flags (``{shared}``: the shared photo folder)
DATASETS = {
    'synthetic': [],
    'raccoon': ['--dataset', 'voc', '--dataset-root', '{shared}/raccoon', '--train-split',
                'train', '--val-split', 'test'],
}


def run_one(recipe, dataset, seed, out_dir, shared, threads, extra=()):
    """Train one (recipe, dataset, seed) in a child process; returns its result dict."""
    run_dir = os.path.join(out_dir, 'runs', f'{recipe}_{dataset}_seed{seed}')
    data_flags = [f.format(shared=shared) for f in DATASETS[dataset]]
    cmd = [sys.executable, os.path.join(ROOT, 'train_ssd.py'), *RECIPES[recipe], *data_flags,
           '--seed', str(seed), '--out-dir', run_dir, '--overwrite', '--no-progress', '-j', '1',
           *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
    log = os.path.join(out_dir, 'logs', f'{recipe}_{dataset}_seed{seed}.log')
    os.makedirs(os.path.dirname(log), exist_ok=True)
    tic = time.time()
    with open(log, 'w') as f:
        # wait4 gives this child's own rusage (and its waited-for loader workers'), even with
        # other runs in flight in parallel threads
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f'{recipe} on {dataset}, seed {seed}: exit {proc.returncode}; see {log}')
    records = [json.loads(line) for line in open(os.path.join(run_dir, 'metrics.jsonl'))]
    validated = [r for r in records if r.get('map') is not None]   # not every epoch validates
    best = max(validated, key=lambda r: r['map'])
    return {'recipe': recipe, 'dataset': dataset, 'seed': seed, 'epochs': len(records),
            'final_map': validated[-1]['map'], 'best_map': best['map'],
            'best_epoch': best['epoch'],
            'cpu_s': round(usage.ru_utime + usage.ru_stime, 1),
            'wall_s': round(time.time() - tic, 1), 'command': ' '.join(cmd[1:])}


def _mean_sd(values):
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(results):
    """Markdown table of ``results`` (list of run dicts), one row per (recipe, dataset)."""
    rows = ['| recipe | data | seeds | final VOC07 mAP (mean ± std) | per seed | best epoch '
            '(mean) | CPU min (mean) |', '|---|---|---|---|---|---|---|']
    keys = sorted({(r['recipe'], r['dataset']) for r in results})
    for recipe, dataset in keys:
        runs = sorted((r for r in results if (r['recipe'], r['dataset']) == (recipe, dataset)),
                      key=lambda r: r['seed'])
        mean, sd = _mean_sd([r['final_map'] for r in runs])
        seeds = ', '.join(str(r['seed']) for r in runs)
        per_seed = ' / '.join('%.3f' % r['final_map'] for r in runs)
        rows.append(f"| {recipe} | {dataset} | {seeds} | {mean:.3f} ± {sd:.3f} | {per_seed} | "
                    f"{statistics.fmean(r['best_map'] for r in runs):.3f} | "
                    f"{statistics.fmean(r['cpu_s'] for r in runs) / 60:.1f} |")
    return '\n'.join(rows) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(prog='python -m bench.recipes', description=__doc__.split('\n')[0])
    p.add_argument('--recipes', default=','.join(RECIPES))
    p.add_argument('--datasets', default=','.join(DATASETS))
    p.add_argument('--seeds', default='233,1,2')
    p.add_argument('--jobs', type=int, default=1, help='runs trained at a time')
    p.add_argument('--shared', default=os.path.join(os.path.dirname(ROOT), 'shared', 'data'),
                   help='folder holding raccoon/ (default ../shared/data)')
    p.add_argument('--out-dir', default='runs/recipes')
    p.add_argument('extra', nargs=argparse.REMAINDER,
                   help='after --: more train_ssd.py flags for every run (e.g. -- --epochs 1)')
    args = p.parse_args(argv)
    recipes, datasets = args.recipes.split(','), args.datasets.split(',')
    for name, known, flag in ((recipes, RECIPES, '--recipes'), (datasets, DATASETS, '--datasets')):
        unknown = sorted(set(name) - set(known))
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    seeds = [int(s) for s in args.seeds.split(',')]
    extra = [a for a in args.extra if a != '--']
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, 'results.jsonl')
    done = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    have = {(r['recipe'], r['dataset'], r['seed']) for r in done}
    todo = [(r, d, s) for r in recipes for d in datasets for s in seeds if (r, d, s) not in have]
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))

    def work(job):
        result = run_one(*job, args.out_dir, args.shared, threads, extra)
        with open(path, 'a') as f:
            f.write(json.dumps(result) + '\n')
        print(json.dumps(result), flush=True)
        return result

    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        done += list(pool.map(work, todo))
    chosen = [r for r in done if r['recipe'] in recipes and r['dataset'] in datasets]
    text = table(chosen)
    with open(os.path.join(args.out_dir, 'table.md'), 'w') as f:
        f.write(text)
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())

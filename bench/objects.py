"""Training cost vs objects per image (issue 13): TinySSD 256 px, the engine's fused training step
(hybridized ``TrainGraph``: network + target generator + loss, backward, SGD) on synthetic
images whose labels hold exactly ``M`` random boxes each (no padding rows), ``M`` in
``OBJECTS``. Every (implementation, M) point runs in a fresh Python process (as
``bench/memory.py``), which reports its training throughput (images/s, median of timed steps
after a warm-up step) and its peak resident set size (``VmHWM``).

Implementations: ``ours`` is ``gluon_ssd.target``; ``old`` is a copy of an earlier
``target.py`` given by the environment variable ``GLUON_SSD_OLD_TARGET`` (a file path; the
point is skipped without it), swapped in for ``gluon_ssd.target.SSDTargetGenerator`` before the
graph is built.

    python -m bench.objects                      # full table (both implementations)
    python -m bench.objects --quick              # smoke run: batch 2, M 1 and 50, ours only
    GLUON_SSD_OLD_TARGET=/path/old_target.py python -m bench.objects
"""
import importlib.util
import json
import os
import statistics
import sys
import time

__all__ = ['OBJECTS', 'measure', 'child_main']

OBJECTS = (1, 50, 100, 200, 300)
QUICK_OBJECTS = (1, 50)
SIZE = 256
OLD_ENV = 'GLUON_SSD_OLD_TARGET'


def _labels(batch, num_objects, seed):
    """(B, M, 6) float32 labels ``[xmin, ymin, xmax, ymax, class, difficult]``: M random boxes
    of 8-128 px per image (integer pixels: IoU ties as in real annotations)."""
    import numpy as np
    rng = np.random.RandomState(seed)
    xy = rng.randint(0, SIZE - 8, size=(batch, num_objects, 2))
    wh = rng.randint(8, 129, size=(batch, num_objects, 2))
    label = np.zeros((batch, num_objects, 6), np.float32)
    label[..., :2] = xy
    label[..., 2:4] = np.minimum(xy + wh, SIZE)
    label[..., 4] = rng.randint(0, 20, size=(batch, num_objects))
    return label


def _use_old_target():
    path = os.environ.get(OLD_ENV)
    if not path:
        raise RuntimeError(f'set {OLD_ENV} to the old target.py to measure "old"')
    import gluon_ssd.target
    spec = importlib.util.spec_from_file_location('gluon_ssd_old_target', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gluon_ssd.target.SSDTargetGenerator = module.SSDTargetGenerator


def _rss_mb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def child_main(impl, num_objects, quick):
    """Run in the child process: print one JSON line (img/s, peak RSS)."""
    import mxnet as mx

    from bench.memory import _peak_rss_mb
    from bench.train import _ours_step
    from gluon_ssd.model.zoo import get_model
    if impl == 'old':
        _use_old_target()
    batch, timed = (2, 1) if quick else (8, 3)
    net = get_model('tiny_ssd', classes=[f'c{i}' for i in range(20)])
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    step = _ours_step(net, batch_lr=0.2 / batch, max_objects=num_objects)
    data = mx.nd.random.uniform(shape=(batch, 3, SIZE, SIZE))
    label = mx.nd.array(_labels(batch, num_objects, seed=num_objects))
    before = _rss_mb()
    step((data, label))          # warm-up: graph building, first allocations
    mx.nd.waitall()
    times = []
    for _ in range(timed):
        start = time.perf_counter()
        step((data, label))
        mx.nd.waitall()
        times.append(time.perf_counter() - start)
    med = statistics.median(times)
    print(json.dumps({'images_per_s': batch / med, 'ms_per_step': med * 1e3, 'batch': batch,
                      'peak_rss_mb': _peak_rss_mb(), 'rss_before_mb': before}))


def measure(quick=False, impls=None):
    """Every (implementation, M) point in a fresh process; returns the benchmark entry."""
    from bench.common import run_json_child
    if impls is None:
        impls = ('ours',) if quick or not os.environ.get(OLD_ENV) else ('old', 'ours')
    points = {}
    for num_objects in (QUICK_OBJECTS if quick else OBJECTS):
        points[str(num_objects)] = {
            impl: run_json_child('bench.objects', [impl, str(num_objects)], quick)
            for impl in impls}
    return {'name': 'objects', 'quick': quick, 'size': SIZE, 'impls': list(impls),
            'title': f'TinySSD {SIZE} px training vs objects per image '
                     '(fresh process per point)',
            'points': points}


def render(entry):
    """Markdown table of a :func:`measure` entry."""
    impls = entry['impls']
    batch = next(iter(next(iter(entry['points'].values())).values()))['batch']
    head = ['objects / image'] + [f'{i} img/s' for i in impls] + [f'{i} peak MB' for i in impls]
    lines = [f'## {entry["title"]}', '',
             f'Batch {batch}, {entry["size"]} px, synthetic boxes, engine training step '
             '(`python -m bench.objects`; `old` = `GLUON_SSD_OLD_TARGET=<old target.py>`).', '',
             '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for m, row in entry['points'].items():
        cells = [m] + [f'{row[i]["images_per_s"]:.2f}' for i in impls] + \
            [f'{row[i]["peak_rss_mb"]:,.0f}' for i in impls]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    args = [a for a in sys.argv[1:] if not a.startswith('--')]
    if len(args) == 2:
        child_main(args[0], int(args[1]), '--quick' in sys.argv)
    else:
        result = measure(quick='--quick' in sys.argv)
        print(render(result))
        print(json.dumps(result))

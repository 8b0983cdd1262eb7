"""Shared inputs of the benchmarks: SSD300 anchors, VOC-like label batches, machine facts."""
import datetime
import os
import platform
import subprocess

import mxnet as mx
import numpy as np

__all__ = ['ssd300_anchors', 'voc_like_labels', 'machine_facts', 'copy_params',
           'SSD300_GMAC']

#: Multiply-accumulates of one SSD300-VGG16 forward pass on a 300x300 image (~31.4 G).
SSD300_GMAC = 31.4

_ANCHORS = {}


def ssd300_anchors():
    """(1, 8732, 4) center/pixel anchors of ``ssd_300_vgg16_atrous_voc`` (our anchor blocks)."""
    if 'ssd300' not in _ANCHORS:
        from gluon_ssd.anchors import AnchorGenerator
        from gluon_ssd.model.zoo import anchor_sizes, get_preset
        preset = get_preset('ssd_300_vgg16_atrous_voc')
        layers = []
        for sizes, ratios, step, feat in zip(anchor_sizes(preset), preset['ratios'],
                                             preset['steps'], [38, 19, 10, 5, 3, 1]):
            gen = AnchorGenerator(sizes, ratios, step, (300, 300))
            layers.append(gen(mx.nd.zeros((1, 1, feat, feat))))
        _ANCHORS['ssd300'] = mx.nd.concat(*layers, dim=1)
    return _ANCHORS['ssd300']


def voc_like_labels(batch, seed=0, size=300, max_boxes=20, num_classes=20):
    """Random VOC-like labels: 1..``max_boxes`` boxes per image (box side 5 %..95 % of the image,
    aspect ratio 1/3..3), padded with -1 to the most boxes in the batch.

    Returns ``(gt_boxes (B, M, 4) corner px, gt_ids (B, M, 1))`` NDArrays.
    """
    rng = np.random.RandomState(seed)
    counts = rng.randint(1, max_boxes + 1, size=batch)
    counts[0] = max_boxes  # padding always reaches max_boxes: shapes do not depend on the seed
    m = int(counts.max())
    boxes = -np.ones((batch, m, 4), np.float32)
    ids = -np.ones((batch, m, 1), np.float32)
    for b, n in enumerate(counts):
        scale = np.exp(rng.uniform(np.log(0.05), np.log(0.95), n)) * size
        aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), n))
        w = np.minimum(scale * np.sqrt(aspect), size - 1)
        h = np.minimum(scale / np.sqrt(aspect), size - 1)
        x0 = rng.uniform(0, size - w)
        y0 = rng.uniform(0, size - h)
        boxes[b, :n] = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
        ids[b, :n, 0] = rng.randint(0, num_classes, n)
    return mx.nd.array(boxes), mx.nd.array(ids)


def copy_params(src, dst):
    """Copy ``src``'s parameters into ``dst`` by position (both nets list the same layers in the
    same order); raises if any shape differs. Both must be initialised with known shapes."""
    a = list(src.collect_params().values())
    # GluonCV keeps its precomputed anchors as constant parameters: not weights
    b = [p for p in dst.collect_params().values() if 'anchorgenerator' not in p.name]
    if len(a) != len(b):
        raise ValueError(f"parameter counts differ: {len(a)} vs {len(b)}")
    for p, q in zip(a, b):
        if p.shape != q.shape:
            raise ValueError(f"shape mismatch {p.name} {p.shape} vs {q.name} {q.shape}")
        q.set_data(p.data())


def _cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _git_rev():
    try:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=here,
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def machine_facts():
    """Machine, library versions and load at the time of the run (dict of str/number)."""
    try:
        from importlib.metadata import version
        gluoncv_version = version('gluoncv')
    except Exception:  # pylint: disable=broad-except
        import gluoncv
        gluoncv_version = gluoncv.__version__
    try:
        load = os.getloadavg()
    except OSError:
        load = (float('nan'),) * 3
    try:
        with open('/proc/meminfo') as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    features = mx.runtime.Features()
    return {
        'date_utc': datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC'),
        'cpu': _cpu_model(), 'cpu_count': os.cpu_count(),
        'memory_gb': round(mem_kb / 2 ** 20, 1),
        'os': platform.platform(), 'python': platform.python_version(),
        'mxnet': mx.__version__, 'gluoncv': gluoncv_version, 'numpy': np.__version__,
        'mkldnn': bool(features.is_enabled('MKLDNN')),
        'omp_num_threads': os.environ.get('OMP_NUM_THREADS', 'unset'),
        'load_avg_start': [round(x, 2) for x in load],
        'git': _git_rev(),
    }


def run_json_child(module, args, quick=False, extra_env=None):
    """Run ``python -m module *args [--quick]`` from the repository root in a fresh process and
    return the JSON object on its last ``{``-line (each measurement gets a clean process)."""
    import json
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, **(extra_env or {}))
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    cmd = [sys.executable, '-m', module, *args] + (['--quick'] if quick else [])
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in res.stdout.splitlines() if line.startswith('{')]
    if res.returncode != 0 or not lines:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1])

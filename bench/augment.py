"""Benchmark of the SSD training augmentation: GluonCV's ``SSDDefaultTrainTransform(256, 256)``
vs our ``SSDTrainTransform(256, 256)`` (same outputs, see tests/test_data_augment.py), and the
IoU-constrained crop alone, on the same synthetic images, timed alternately."""
import random

import mxnet as mx
import numpy as np

from bench.timing import interleaved, ratio, summary

__all__ = ['bench_augment']


def _samples(count, size, seed=0):
    """``count`` (uint8 HWC image NDArray (size, size, 3), label (M, 6) float32 pixels) pairs,
    1-10 VOC-like boxes each."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        n = rng.randint(1, 11)
        wh = np.exp(rng.uniform(np.log(0.05), np.log(0.9), (n, 2))) * size
        xy = rng.uniform(0, 1, (n, 2)) * (size - wh)
        label = np.hstack([xy, xy + wh, rng.randint(0, 20, (n, 1)), np.zeros((n, 1))])
        img = mx.nd.array(rng.randint(0, 256, (size, size, 3)), dtype=np.uint8)
        out.append((img, label.astype(np.float32)))
    return out


def _cycle(fn, samples):
    state = {'i': 0}

    def run():
        img, label = samples[state['i'] % len(samples)]
        state['i'] += 1
        return fn(img, label)
    return run


def _entry(name, title, times, **params):
    return {'name': name, 'title': title, 'unit': 'ms/image', 'params': params,
            'times': {k: {s: (v * 1e3 if s != 'n' else v) for s, v in summary(t).items()}
                      for k, t in times.items()},
            'ratios': {'vs gluoncv': ratio(times['gluoncv'], times['ours'])},
            'target': None, 'target_vs': None}


def bench_augment(quick=False):
    """Per-image time of the whole SSD train transform at 256 px, ours vs GluonCV.

    Returns an entry dict (name, title, unit, params, times{impl: {median, min, max, n}},
    ratios{'vs gluoncv'}); the crop-alone comparison is under ``params['crop']``.
    """
    from gluoncv.data.transforms.experimental.bbox import \
        random_crop_with_constraints as gcv_crop
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform

    from gluon_ssd.data.augment import random_crop_with_constraints
    from gluon_ssd.data.transforms import SSDTrainTransform
    size, repeat = 256, (40 if quick else 300)
    samples = _samples(16, size)
    random.seed(0)
    np.random.seed(0)
    mx.random.seed(0)
    # the outputs we time are the same (tests/test_data_augment.py checks many more cases)
    ours, ref = SSDTrainTransform(size, size), SSDDefaultTrainTransform(size, size)
    for k, (img, label) in enumerate(samples[:4]):
        random.seed(k)
        np.random.seed(k)
        a = ours(img, label)
        random.seed(k)
        np.random.seed(k)
        b = ref(img, label)
        np.testing.assert_array_equal(a[0].asnumpy(), b[0].asnumpy())
        np.testing.assert_array_equal(a[1], b[1])
    times = interleaved({'ours': _cycle(ours, samples), 'gluoncv': _cycle(ref, samples)},
                        repeat=repeat, warmup=2)
    crop_times = interleaved(
        {'ours': _cycle(lambda img, lb: random_crop_with_constraints(lb, (size, size)), samples),
         'gluoncv': _cycle(lambda img, lb: gcv_crop(lb, (size, size)), samples)},
        repeat=repeat, warmup=2)
    crop = _entry('augment_crop_256', 'IoU-constrained random crop alone, 256 px', crop_times)
    return _entry('augment_256', 'SSD train augmentation, 256x256 image, 1-10 boxes', times,
                  size=size, images=len(samples), boxes='1-10 per image',
                  crop={'times': crop['times'], 'ratios': crop['ratios']})


if __name__ == '__main__':
    import json
    print(json.dumps(bench_augment(quick=True), indent=1))

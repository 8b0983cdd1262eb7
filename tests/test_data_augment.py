"""gluon_ssd.data.augment equals GluonCV's augmentation functions: same outputs, same random
draws (Python ``random`` and ``numpy.random`` end in the same states)."""
import random

import mxnet as mx
import numpy as np
import pytest
from gluoncv.data.transforms import bbox as gcv_bbox
from gluoncv.data.transforms import image as gcv_image
from gluoncv.data.transforms.experimental import bbox as gcv_exp_bbox

from gluon_ssd.data import augment
from gluon_ssd.data.transforms import SSDTrainTransform


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    mx.random.seed(s)


def _states():
    return random.getstate(), np.random.get_state()


def _assert_same_states(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1], b[1]):
        np.testing.assert_array_equal(x, y)


def _run_both(fn_ours, fn_ref, seed):
    _seed(seed)
    got = fn_ours()
    got_states = _states()
    _seed(seed)
    want = fn_ref()
    _assert_same_states(got_states, _states())
    return got, want


def _box_sets(n_sets, seed=0):
    """Varied label arrays (M, 6) float32 pixels + the image size they live in."""
    rng = np.random.RandomState(seed)
    kinds = ['empty', 'single', 'border', 'tiny', 'many', 'mixed', 'full', 'degenerate']
    for i in range(n_sets):
        kind = kinds[i % len(kinds)]
        w, h = (int(v) for v in rng.randint(16, 1200, 2))
        n = {'empty': 0, 'single': 1, 'many': int(rng.randint(20, 80))}.get(
            kind, int(rng.randint(1, 8)))
        x0 = rng.uniform(0, w - 2, n)
        y0 = rng.uniform(0, h - 2, n)
        if kind == 'tiny':
            x1, y1 = x0 + rng.uniform(0.01, 2, n), y0 + rng.uniform(0.01, 2, n)
        else:
            x1, y1 = x0 + rng.uniform(1, w, n), y0 + rng.uniform(1, h, n)
        if kind == 'border':  # touching / crossing the image borders
            x0[::2], y0[1::2] = 0, 0
            x1[1::2], y1[::2] = w, h
        if kind == 'full':
            x0, y0, x1, y1 = np.zeros(n), np.zeros(n), np.full(n, w), np.full(n, h)
        if kind == 'degenerate':  # zero-size and outside boxes next to normal ones
            x1[0] = x0[0]
            x0[-1], x1[-1] = w + 5, w + 50
        if kind == 'mixed':
            x0, y0 = x0.round(), y0.round()
        x1, y1 = np.minimum(x1, w), np.minimum(y1, h)
        label = np.stack([x0, y0, x1, y1, rng.randint(0, 20, n), rng.randint(0, 2, n)], axis=1)
        yield kind, label.astype(np.float32).reshape(n, 6), (w, h)


def _same_crop(got, want):
    assert got[1] == want[1]
    assert got[0].dtype == want[0].dtype
    np.testing.assert_array_equal(got[0], want[0])


def test_crop_equals_gluoncv_many_seeds():
    cases = 0
    for i, (kind, label, size) in enumerate(_box_sets(400)):
        for seed in (i, 10_000 + i):
            got, want = _run_both(
                lambda: augment.random_crop_with_constraints(label, size),
                lambda: gcv_exp_bbox.random_crop_with_constraints(label, size), seed)
            _same_crop(got, want)
            cases += 1
    assert cases == 800


@pytest.mark.parametrize('dtype', [np.float64, np.int32])
def test_crop_equals_gluoncv_other_dtypes_and_options(dtype):
    options = [dict(), dict(min_scale=0.1, max_trial=7), dict(max_aspect_ratio=3, max_trial=1),
               dict(constraints=((0.5, 0.8), (None, None), (0.2, None))), dict(max_trial=0)]
    for i, (kind, label, size) in enumerate(_box_sets(48, seed=1)):
        label = label.astype(dtype)
        kw = options[i % len(options)]
        got, want = _run_both(lambda: augment.random_crop_with_constraints(label, size, **kw),
                              lambda: gcv_exp_bbox.random_crop_with_constraints(label, size,
                                                                                **kw), i)
        _same_crop(got, want)


def test_crop_tiny_image_and_empty_range():
    """Zero-size crops and ``randrange`` of empty ranges (a crop as large as the image, or, with
    ``max_aspect_ratio < 1``, larger) behave the same: same result, or same error raised after
    the same draws, also when the error comes after a passing proposal of the same batch."""
    raised = passed = 0
    for seed in range(120):
        label = np.array([[0, 0, 2, 3, 1, 0], [1, 1, 60, 50, 2, 0]], np.float32)[:1 + seed % 2]
        size, kw = [((3, 4), dict(min_scale=0.9)), ((3, 4), dict(min_scale=1)),
                    ((64, 64), dict(max_aspect_ratio=0.5))][seed % 3]
        outcome = []
        for fn in (augment.random_crop_with_constraints,
                   gcv_exp_bbox.random_crop_with_constraints):
            _seed(seed)
            try:
                outcome.append((fn(label, size, **kw), _states()))
            except ValueError as exc:
                outcome.append((type(exc), _states()))
        (a, sa), (b, sb) = outcome
        _assert_same_states(sa, sb)
        if isinstance(a, tuple):
            _same_crop(a, b)
            passed += 1
        else:
            assert a is b
            raised += 1
    assert raised > 10 and passed > 10


def test_crop_boxes_equals_gluoncv():
    rng = np.random.RandomState(3)
    for kind, label, (w, h) in _box_sets(64, seed=2):
        for _ in range(4):
            cw, ch = int(rng.randint(0, w + 1)), int(rng.randint(0, h + 1))
            crop = (int(rng.randint(0, w - cw + 1)), int(rng.randint(0, h - ch + 1)), cw, ch)
            want = gcv_bbox.crop(label, crop, allow_outside_center=False)
            got = augment.crop_boxes(label, crop)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_expand_and_flip_equal_gluoncv():
    rng = np.random.RandomState(4)
    for seed in range(12):
        h, w = (int(v) for v in rng.randint(5, 60, 2))
        img = mx.nd.array(rng.uniform(0, 255, (h, w, 3)), dtype=np.float32)
        fill = [123.675, 116.28, 103.53] if seed % 3 else 7
        (a, a_off), (b, b_off) = _run_both(
            lambda: augment.random_expand(img, max_ratio=4, fill=fill),
            lambda: gcv_image.random_expand(img, max_ratio=4, fill=fill), seed)
        assert a_off == b_off and a.dtype == b.dtype
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
        (a, a_flip), (b, b_flips) = _run_both(lambda: augment.random_flip_x(img, px=0.5),
                                              lambda: gcv_image.random_flip(img, px=0.5), seed)
        assert a_flip == bool(b_flips[0]) and not b_flips[1]
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_train_transform_equals_gluoncv_synthetic():
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform
    rng = np.random.RandomState(5)
    for size in (256, 300):
        ours, ref = SSDTrainTransform(size, size), SSDDefaultTrainTransform(size, size)
        for i, (kind, label, (w, h)) in enumerate(_box_sets(8, seed=size)):
            if kind == 'degenerate':  # GluonCV keeps degenerate boxes, we drop them
                continue
            w, h = min(w, 400), min(h, 400)
            label[:, [0, 2]] = np.clip(label[:, [0, 2]], 0, w)
            label[:, [1, 3]] = np.clip(label[:, [1, 3]], 0, h)
            label = label[(label[:, 2] > label[:, 0]) & (label[:, 3] > label[:, 1])]
            img = mx.nd.array(rng.randint(0, 256, (h, w, 3)), dtype=np.uint8)
            for seed in range(3):
                (a_img, a_lb), (b_img, b_lb) = _run_both(lambda: ours(img, label),
                                                         lambda: ref(img, label), seed)
                np.testing.assert_array_equal(a_img.asnumpy(), b_img.asnumpy())
                np.testing.assert_array_equal(a_lb, b_lb.reshape(-1, 6))

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


def _gluoncv_hue_turn(alpha):
    """GluonCV's hue matrix for its drawn ``alpha`` (applied as ``rgb @ t``), written out from
    its definition: a rotation by ``alpha * pi`` radians in the YIQ chroma plane."""
    u, w = np.cos(alpha * np.pi), np.sin(alpha * np.pi)
    rotate = np.array([[1.0, 0.0, 0.0], [0.0, u, -w], [0.0, w, u]])
    tyiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.321], [0.211, -0.523, 0.311]])
    ityiq = np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.107, 1.705]])
    return np.dot(np.dot(ityiq, rotate), tyiq).T


def test_photometric_hue_is_gluoncvs_turn_in_degrees():
    # one hue step alone: GluonCV turns by alpha * pi radians, ours by alpha degrees
    for degrees in (-18.0, -5.5, 0.0, 7.0, 18.0):
        turn = augment._hue_turn(degrees)
        ref = _gluoncv_hue_turn(degrees / 180.0).T
        np.testing.assert_allclose(turn, ref, atol=2e-3)   # GluonCV's rounded YIQ inverse
        np.testing.assert_allclose(augment._LUMA @ turn, augment._LUMA, atol=1e-12)  # luma kept


def test_photometric_without_hue_equals_gluoncv():
    """Brightness, contrast and saturation: the same numpy draws and the same pixels as GluonCV
    (an image whose values stay inside 0-255, where our final clip does nothing); hue off."""
    from gluoncv.data.transforms.experimental.image import random_color_distort
    rng = np.random.RandomState(3)
    img = rng.uniform(90, 110, (9, 7, 3)).astype(np.float32)
    for seed in range(40):
        (m, b), ref = _run_both(lambda: augment.photometric_matrix(hue_degrees=0),
                                lambda: random_color_distort(mx.nd.array(img), hue_delta=0),
                                seed)
        # GluonCV's zero hue turn is not quite the identity (its YIQ inverse is rounded to 3
        # digits: ~0.3 % off); a wrong factor would be off by several per cent
        np.testing.assert_allclose(augment.apply_photometric(img, m, b), ref.asnumpy(),
                                   rtol=5e-3)


def test_photometric_hue_stays_within_its_angle():
    red = np.array([[[160.0, 90.0, 90.0]]], np.float32)   # turns stay inside 0-255
    y, i, q = augment._RGB_TO_YIQ @ red[0, 0]
    for seed in range(200):
        _seed(seed)
        m, b = augment.photometric_matrix(brightness_delta=0, contrast=(1, 1), saturation=(1, 1),
                                          hue_degrees=18)
        out = augment.apply_photometric(red, m, b)[0, 0]
        y2, i2, q2 = augment._RGB_TO_YIQ @ out
        turned = np.degrees(np.arctan2(q2, i2) - np.arctan2(q, i))
        assert abs((turned + 180) % 360 - 180) <= 18 + 1e-6
        assert abs(y2 - y) < 1e-3


def test_photometric_clips_to_pixel_range():
    img = np.array([[[250.0, 5.0, 128.0]]], np.float32)
    out = augment.apply_photometric(img, 2 * np.eye(3), np.full(3, -20.0))
    np.testing.assert_allclose(out, [[[255, 0, 236]]])
    assert out.dtype == np.float32


@pytest.mark.parametrize('photometric', ['none', 'paper'])
def test_numpy_train_path_has_gluoncvs_geometry(photometric, monkeypatch):
    """The 'none' / 'paper' modes run the same geometric steps and draws as the GluonCV path:
    with the colour distortion of both turned off, equal boxes and (up to the uint8 rounding of
    the resize) equal pixels; 'paper' only changes colours."""
    from gluon_ssd.data import transforms
    # a smooth picture: on noise, cubic and Lanczos overshoot 0-255, which uint8 clips
    yy, xx = np.mgrid[0:120, 0:160]
    img = np.stack([128 + 80 * np.sin(xx / 17.0), 128 + 80 * np.cos(yy / 13.0),
                    128 + 60 * np.sin((xx + yy) / 29.0)], axis=2)
    img = mx.nd.array(np.round(img), dtype=np.uint8)
    label = np.array([[10, 20, 60, 90, 1, 0], [80, 5, 150, 50, 0, 0], [30, 60, 45, 80, 2, 0]],
                     np.float32)
    monkeypatch.setattr(transforms.experimental.image, 'random_color_distort',
                        lambda src: src.astype('float32'))
    monkeypatch.setattr(augment, 'photometric_matrix', lambda: (np.eye(3), np.zeros(3)))
    ref = SSDTrainTransform(96, 96, max_expand=3)
    ours = SSDTrainTransform(96, 96, max_expand=3, photometric=photometric)
    for seed in range(12):
        (a_img, a_lb), (b_img, b_lb) = _run_both(lambda: ours(img, label),
                                                 lambda: ref(img, label), seed)
        assert a_img.shape == (3, 96, 96) and a_img.dtype == np.float32
        np.testing.assert_array_equal(a_lb, b_lb)
        # two levels: the uint8 resize rounds (0.5) and the zoom-out fill is the mean colour
        # rounded to uint8 (123 for 123.675), in normalised units
        np.testing.assert_allclose(a_img.asnumpy(), b_img.asnumpy(), atol=2 / (255 * 0.224))


def test_train_transform_rejects_unknown_photometric():
    with pytest.raises(ValueError, match='photometric'):
        SSDTrainTransform(64, 64, photometric='caffe')

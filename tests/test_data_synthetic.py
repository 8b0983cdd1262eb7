"""Synthetic dataset: determinism, exact boxes, occlusion policy, atomic cache."""
import hashlib

import numpy as np
import pytest

from gluon_ssd.data import synthetic
from gluon_ssd.data.synthetic import (SYNTHETIC_CLASSES, SyntheticDetection, render_sample,
                                      synthetic_home, synthetic_voc)

SMALL = dict(num_train=12, num_val=4, size=128)


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    a = synthetic_voc(tmp_path / "a", seed=3, **SMALL)
    b = synthetic_voc(tmp_path / "b", seed=3, **SMALL)
    c = synthetic_voc(tmp_path / "c", seed=4, **SMALL)
    assert a.name == b.name != c.name
    assert _digest(a) == _digest(b)
    da, dc = SyntheticDetection("train", tmp_path / "a", seed=3, **SMALL), \
        SyntheticDetection("train", tmp_path / "c", seed=4, **SMALL)
    assert len(da) == 12 and da.classes == SYNTHETIC_CLASSES
    assert any(not np.array_equal(da.label(i), dc.label(i)) for i in range(12))
    assert not np.array_equal(da[0][0].asnumpy(), dc[0][0].asnumpy())
    i1, l1, _ = render_sample(3, 5, 128)
    i2, l2, _ = render_sample(3, 5, 128)
    assert np.array_equal(i1, i2) and np.array_equal(l1, l2)


def test_loader_labels_equal_rendered_boxes(tmp_path):
    ds = SyntheticDetection("val", tmp_path, seed=1, **SMALL)
    assert len(ds) == 4
    for i in range(4):
        _, label, _ = render_sample(1, i, 128, split="val")
        np.testing.assert_array_equal(ds.label(i), label)
        img, lb = ds[i]
        assert img.shape == (128, 128, 3)


def test_boxes_are_exact_drawn_extents():
    for index in range(40):
        image, label, masks = render_sample(0, index, 160, clutter=False)
        assert len(masks) == label.shape[0] <= 8
        union = np.zeros((160, 160), bool)
        for row, mask in zip(label, masks):
            ys, xs = np.nonzero(mask)
            assert row.tolist()[:4] == [xs.min(), ys.min(), xs.max(), ys.max()]
            union |= mask
        # on a black background the drawn pixels are exactly the union of the object masks
        np.testing.assert_array_equal(image.any(axis=2), union)
        # the occlusion policy: every object at least half visible, none marked difficult
        for k, mask in enumerate(masks):
            later = np.zeros_like(mask)
            for m in masks[k + 1:]:
                later |= m
            assert (mask & ~later).sum() >= 0.5 * mask.sum()
        assert (label[:, 5] == 0).all()


def test_single_object_alone_matches_box():
    found = 0
    for index in range(60):
        image, label, _ = render_sample(7, index, 128, clutter=False)
        if label.shape[0] == 1:
            ys, xs = np.nonzero(image.any(axis=2))
            assert label[0, :4].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]
            found += 1
    assert found >= 3


def test_variety_sizes_ratios_classes():
    rows = np.concatenate([render_sample(0, i, 128)[1] for i in range(100)])
    side = np.sqrt((rows[:, 2] - rows[:, 0] + 1) * (rows[:, 3] - rows[:, 1] + 1)) / 128
    ratio = (rows[:, 2] - rows[:, 0] + 1) / (rows[:, 3] - rows[:, 1] + 1)
    assert side.min() < 0.08 and side.max() > 0.6
    assert ratio.min() < 0.6 and ratio.max() > 1.7
    assert set(rows[:, 4].astype(int)) == set(range(len(SYNTHETIC_CLASSES)))
    counts = [render_sample(0, i, 64)[1].shape[0] for i in range(100)]
    assert min(counts) == 0 and max(counts) == 8


def test_cached_and_atomic(tmp_path, monkeypatch):
    path = synthetic_voc(tmp_path, seed=0, **SMALL)
    stamp = (path / "meta.json").stat().st_mtime_ns
    assert synthetic_voc(tmp_path, seed=0, **SMALL) == path
    assert (path / "meta.json").stat().st_mtime_ns == stamp  # reused, not regenerated

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return render_sample(*args, **kwargs)

    monkeypatch.setattr(synthetic, "render_sample", failing)
    with pytest.raises(KeyboardInterrupt):
        synthetic_voc(tmp_path, seed=9, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no half dataset left


def test_home_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUON_SSD_HOME", str(tmp_path))
    assert synthetic_home() == tmp_path / "synthetic"
    monkeypatch.delenv("GLUON_SSD_HOME")
    assert str(synthetic_home()).endswith(".cache/gluon_ssd/synthetic")


@pytest.mark.slow
def test_default_size_generation_time(tmp_path):
    import time
    start = time.time()
    path = synthetic_voc(tmp_path)
    elapsed = time.time() - start
    assert len(SyntheticDetection("train", tmp_path)) == 1000
    assert len(SyntheticDetection("val", tmp_path)) == 200
    assert elapsed < 60, "generating 1200 images took %.1f s" % elapsed

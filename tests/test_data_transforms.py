"""SSD train/val presets, batchify, a DataLoader pass and a picture check."""
import random

import mxnet as mx
import numpy as np
import pytest

from gluon_ssd.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, PadLabels, SSDTrainTransform,
                                       SSDValTransform, batchify_fn, detection_batchify)
from gluon_ssd.data.voc import VOCDetection


def _seed(s):
    random.seed(s)
    np.random.seed(s)
    mx.random.seed(s)


@pytest.fixture(scope="module")
def raccoon(shared_data):
    return VOCDetection(shared_data / "raccoon", ["train"])


def test_train_transform_equals_gluoncv(raccoon):
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform
    ours, ref = SSDTrainTransform(300, 300), SSDDefaultTrainTransform(300, 300)
    for i in range(4):
        img, label = raccoon[i]
        for s in range(3):
            _seed(s)
            a_img, a_lb = ours(img, label)
            _seed(s)
            b_img, b_lb = ref(img, label)
            np.testing.assert_array_equal(a_img.asnumpy(), b_img.asnumpy())
            np.testing.assert_array_equal(a_lb, b_lb)


def test_val_transform_equals_gluoncv(raccoon):
    from gluoncv.data.transforms.presets.ssd import SSDDefaultValTransform
    img, label = raccoon[3]
    a_img, a_lb = SSDValTransform(512, 384)(img, label)
    b_img, b_lb = SSDDefaultValTransform(512, 384)(img, label)
    assert a_img.shape == (3, 384, 512) and a_img.dtype == np.float32
    np.testing.assert_array_equal(a_img.asnumpy(), b_img.asnumpy())
    np.testing.assert_array_equal(a_lb, b_lb)
    h, w = img.shape[:2]
    np.testing.assert_allclose(a_lb[:, 0], label[:, 0] * 512 / w, rtol=1e-5)


def test_train_outputs_valid_boxes_and_picture(raccoon, tmp_path):
    import cv2
    tf = SSDTrainTransform(300, 300)
    tiles = []
    for k in range(12):
        img, label = tf(*raccoon[k % 6])
        assert img.shape == (3, 300, 300) and img.dtype == np.float32
        assert label.dtype == np.float32 and label.shape[1] == 6 and label.shape[0] >= 1
        assert (label[:, :2] >= 0).all() and (label[:, 2:4] <= 300).all()
        assert (label[:, 2] > label[:, 0]).all() and (label[:, 3] > label[:, 1]).all()
        assert (label[:, 4] == 0).all()
        pix = img.asnumpy().transpose(1, 2, 0) * IMAGENET_STD + IMAGENET_MEAN
        pix = np.ascontiguousarray(np.clip(pix * 255, 0, 255).astype(np.uint8)[:, :, ::-1])
        for x0, y0, x1, y1 in label[:, :4].round().astype(int):
            cv2.rectangle(pix, (x0, y0), (x1, y1), (0, 255, 0), 2)
        tiles.append(pix)
    path = tmp_path / "augmented.png"
    assert cv2.imwrite(str(path), np.vstack([np.hstack(tiles[:6]), np.hstack(tiles[6:])]))
    assert cv2.imread(str(path)).shape == (600, 1800, 3)


def test_expand_fill_and_empty_label():
    img = mx.nd.array(np.full((40, 50, 3), 255, np.uint8), dtype=np.uint8)
    tf = SSDTrainTransform(64, 64, max_expand=4)
    for s in range(6):
        _seed(s)
        out, label = tf(img, np.zeros((0, 6), np.float32))
        assert out.shape == (3, 64, 64) and label.shape == (0, 6)
    out, label = SSDValTransform(32, 32)(img, np.zeros((0, 6), np.float32))
    assert out.shape == (3, 32, 32) and label.shape == (0, 6)


def test_min_box_size_drops_small_boxes():
    img = mx.nd.zeros((100, 100, 3), dtype=np.uint8)
    label = np.array([[10, 10, 11, 11, 0, 0], [0, 0, 99, 99, 1, 0]], np.float32)
    _seed(0)
    _, kept = SSDTrainTransform(100, 100, max_expand=1, min_box_size=3)(img, label)
    assert (kept[:, 4] == 1).all() and kept.shape[0] == 1


def test_pad_labels():
    out = PadLabels()([np.ones((2, 6), np.float32), np.zeros((0, 6), np.float32)])
    assert out.shape == (2, 2, 6)
    np.testing.assert_array_equal(out[1].asnumpy(), -np.ones((2, 6)))
    assert PadLabels()([np.zeros((0, 6)), np.zeros((0, 6))]).shape == (2, 1, 6)
    imgs, labels = detection_batchify([(mx.nd.zeros((3, 8, 8)), np.ones((1, 6))),
                                       (mx.nd.ones((3, 8, 8)), np.ones((3, 6)))])
    assert imgs.shape == (2, 3, 8, 8) and labels.shape == (2, 3, 6)
    assert (labels[0, 1:].asnumpy() == -1).all()


def test_dataloader_with_train_transform(raccoon):
    from mxnet import gluon
    loader = gluon.data.DataLoader(raccoon.transform(SSDTrainTransform(128, 128)), batch_size=4,
                                   shuffle=False, last_batch="discard", batchify_fn=batchify_fn(),
                                   num_workers=0)
    for k, (imgs, labels) in enumerate(loader):
        assert imgs.shape == (4, 3, 128, 128) and imgs.dtype == np.float32
        assert labels.ndim == 3 and labels.shape[0] == 4 and labels.shape[2] == 6
        lb = labels.asnumpy()
        real = lb[:, :, 4] >= 0
        assert real.any(axis=1).all()
        assert (lb[~real] == -1).all()
        if k == 2:
            break


def test_targets_flag_matches_gluoncv(raccoon):
    pytest.importorskip("gluon_ssd.target", reason="gluon_ssd.target not available")
    from gluoncv.data.transforms.presets.ssd import SSDDefaultTrainTransform
    rng = np.random.RandomState(0)
    centers = rng.uniform(0, 300, size=(1, 200, 2))
    sizes = rng.uniform(20, 300, size=(1, 200, 2))
    anchors = mx.nd.array(np.concatenate([centers, sizes], axis=2))  # (1, N, 4) center px
    ours = SSDTrainTransform(300, 300, anchors=anchors)
    ref = SSDDefaultTrainTransform(300, 300, anchors=anchors)
    for i in range(3):
        img, label = raccoon[i]
        _seed(i)
        a = ours(img, label)
        _seed(i)
        b = ref(img, label)
        assert len(a) == 3 and a[1].shape == (200,) and a[2].shape == (200, 4)
        np.testing.assert_array_equal(a[0].asnumpy(), b[0].asnumpy())
        np.testing.assert_array_equal(a[1].asnumpy(), b[1].asnumpy())
        np.testing.assert_allclose(a[2].asnumpy(), b[2].asnumpy(), rtol=1e-5, atol=1e-5)
        assert a[1].asnumpy().max() == 1  # raccoon (class 0) matched as target 1


def test_targets_flag_empty_label():
    pytest.importorskip("gluon_ssd.target", reason="gluon_ssd.target not available")
    anchors = mx.nd.array([[[16, 16, 32, 32], [48, 48, 32, 32]]])
    img = mx.nd.zeros((50, 60, 3), dtype=np.uint8)
    _seed(0)
    _, cls_t, box_t = SSDTrainTransform(64, 64, anchors=anchors)(img, np.zeros((0, 6), np.float32))
    assert cls_t.asnumpy().tolist() == [0, 0]
    assert box_t.shape == (2, 4) and not box_t.asnumpy().any()

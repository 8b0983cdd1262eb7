"""Bad images met while training or evaluating (issue 13): each case reproduced on generated files.

Decoding (16-bit PNGs, CMYK, EXIF orientation, truncated / corrupt / empty / deleted files, an
image size differing from its annotation), the training loader's deterministic replacement of
skipped items and the counts it carries out of worker processes, the evaluator's skipping,
annotation problems counted (COCO zero-size boxes and duplicate names, VOC class typos), and
short end-to-end runs (``-j 0`` / ``-j 2``, ``--strict-data``).
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image, ImageOps

from _data_fixtures import make_coco, make_voc, voc_xml, write_image
from gluon_ssd.data import (COCODetection, DatasetError, DatasetWarning, ImageDecodeError,
                            VOCDetection, decode_image)
from gluon_ssd.data.build import Batch, LoadProblems, SeededItems, train_loader
from gluon_ssd.errors import UserError
from gluon_ssd.evaluate import Evaluator

REPO = Path(__file__).resolve().parents[1]
BOX = ("cat", 5, 5, 40, 30)


def _voc(tmp_path, n=6, name="voc"):
    """A VOC folder of ``n`` 64x48 JPEGs ``im0..``, one ``cat`` box each."""
    return make_voc(tmp_path / name, {"im%d" % i: [BOX] for i in range(n)})


def _jpg(root, i):
    return root / "JPEGImages" / ("im%d.jpg" % i)


def _damage(path, kind):
    """Turn an image file into a bad one of ``kind``."""
    data = path.read_bytes()
    if kind == "corrupt":        # a JPEG header, then garbage
        path.write_bytes(data[:20] + bytes(range(256)) * 4)
    elif kind == "zero_byte":
        path.write_bytes(b"")
    elif kind == "truncated":    # only the last bytes missing (scraped data)
        path.write_bytes(data[: len(data) * 9 // 10])
    elif kind == "not_an_image":
        path.write_text("<html>404 not found</html>")
    elif kind == "deleted":
        path.unlink()
    else:
        raise ValueError(kind)


# ---------------------------------------------------------------------------------------- decode
def test_16bit_gray_png_scaled_not_white(tmp_path):
    """Before: convert('RGB') clipped every 16-bit value above 255, an all-white image."""
    gray = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(gray).save(path)
    assert Image.open(path).mode == "I;16"
    img = decode_image(str(path)).asnumpy()
    expected = (gray >> 8).astype(np.uint8)
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(img[:, :, c], expected)
    assert img.min() == 0 and img.max() == 251          # not white
    from gluon_ssd.predict import as_image              # predict decodes files the same way
    np.testing.assert_array_equal(as_image(str(path)).asnumpy(), img)


def test_16bit_rgb_png_scaled(tmp_path):
    import cv2
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 65536, size=(48, 64, 3), dtype=np.uint16)
    path = tmp_path / "rgb16.png"
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])       # OpenCV writes BGR
    img = decode_image(str(path)).asnumpy()
    np.testing.assert_array_equal(img, (rgb >> 8).astype(np.uint8))
    # the same convention as the gray path: a 16-bit gray image saved as RGB agrees
    gray = rgb[:, :, 0]
    cv2.imwrite(str(tmp_path / "g3.png"), np.repeat(gray[:, :, None], 3, axis=2))
    Image.fromarray(gray).save(tmp_path / "g1.png")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "g3.png")).asnumpy(),
                                  decode_image(str(tmp_path / "g1.png")).asnumpy())


def _exif_jpeg(path, orientation):
    arr = np.random.default_rng(1).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, format="JPEG", exif=exif.tobytes(), quality=95)


def test_cmyk_and_exif_orientation_in_a_dataset(tmp_path):
    """CMYK is converted; EXIF orientation is ignored (boxes describe the stored pixels) unless
    the annotation gives the rotated size, then the rotation is applied (a counted repair)."""
    root = make_voc(tmp_path / "v", {"cmyk": [BOX], "exif": [BOX], "exif_rot": [BOX]})
    write_image(root / "JPEGImages" / "cmyk.jpg", mode="CMYK")
    for name in ("exif", "exif_rot"):
        _exif_jpeg(root / "JPEGImages" / (name + ".jpg"), 6)
    (root / "Annotations" / "exif_rot.xml").write_text(voc_xml("exif_rot.jpg", 48, 64, [BOX]))
    ds = VOCDetection(root, ["train"])
    img, label, events = ds.load(0)
    assert img.shape == (48, 64, 3) and events == ()
    np.testing.assert_array_equal(
        img.asnumpy(), np.asarray(Image.open(root / "JPEGImages" / "cmyk.jpg").convert("RGB")))
    img, label, events = ds.load(1)                        # XML size = stored size
    raw = np.asarray(Image.open(root / "JPEGImages" / "exif.jpg"))
    assert events == () and img.shape == (48, 64, 3)
    np.testing.assert_array_equal(img.asnumpy(), raw)
    np.testing.assert_array_equal(label, [[4, 4, 39, 29, 0, 0]])
    img, label, events = ds.load(2)                        # XML size = EXIF-rotated size
    upright = np.asarray(ImageOps.exif_transpose(Image.open(root / "JPEGImages" /
                                                            "exif_rot.jpg")))
    assert img.shape == (64, 48, 3)
    np.testing.assert_array_equal(img.asnumpy(), upright)
    assert len(events) == 1 and events[0][0] == "repaired"
    assert "exif_rot.jpg" in events[0][1] and "EXIF orientation 6 applied" in events[0][1]


@pytest.mark.parametrize("kind", ["corrupt", "zero_byte", "not_an_image", "deleted"])
def test_undecodable_image_is_a_skip_naming_the_file(tmp_path, kind):
    root = _voc(tmp_path, 2)
    ds = VOCDetection(root, ["train"])          # opened first: 'deleted' happens mid-run
    _damage(_jpg(root, 1), kind)
    with pytest.raises(ImageDecodeError, match="im1.jpg: ") as err:
        ds.load(1)
    assert "\n" not in str(err.value) and isinstance(err.value, UserError)
    assert ds.load(0)[2] == ()


def test_truncated_jpeg_is_decoded_with_a_counted_warning(tmp_path):
    root = _voc(tmp_path, 1)
    _damage(_jpg(root, 0), "truncated")
    ds = VOCDetection(root, ["train"])
    img, label, events = ds.load(0)
    assert img.shape == (48, 64, 3) and label.shape == (1, 6)
    (kind, message), = events
    assert kind == "repaired" and "im0.jpg: damaged image" in message and "truncated" in message
    with pytest.warns(DatasetWarning, match="im0.jpg: damaged image"):
        ds[0]


def test_wrong_size_in_xml(tmp_path):
    """Same aspect ratio: boxes rescaled to the real image (a counted repair); another aspect
    ratio: skipped. Before: ImageDecodeError for both, raised in a loader worker."""
    root = make_voc(tmp_path / "v", {"half": [("cat", 11, 9, 41, 31)], "square": [BOX]})
    write_image(root / "JPEGImages" / "half.jpg", width=32, height=24)
    write_image(root / "JPEGImages" / "square.jpg", width=30, height=30)
    ds = VOCDetection(root, ["train"])
    img, label, events = ds.load(0)
    assert img.shape == (24, 32, 3)
    np.testing.assert_allclose(label, [[5, 4, 20, 15, 0, 0]])   # (XML - 1) / 2
    assert events[0][0] == "repaired" and "half.jpg: image is 32x24 but its annotation says " \
        "64x48: boxes rescaled" in events[0][1]
    with pytest.raises(ImageDecodeError, match="square.jpg: image is 30x30 .* 64x48 .*aspect"):
        ds.load(1)


# ------------------------------------------------------------------------------ training items
def _identity(img, label):
    return img.astype("float32").transpose((2, 0, 1)), label


def test_skipped_training_item_replaced_deterministically(tmp_path):
    root = _voc(tmp_path, 8)
    ds = VOCDetection(root, ["train"])
    _damage(_jpg(root, 3), "corrupt")
    items = SeededItems(ds, _identity, seed=5, max_objects=4)
    n = len(items)
    first = items[n + 3]                       # epoch 1, the bad index
    (kind, message), = first.events
    assert kind == "skipped" and "im3.jpg" in message
    data, label = first                        # still a plain (image, label) pair
    assert data.shape == (3, 48, 64) and label.shape == (4, 6)
    others = [items[n + i] for i in range(n) if i != 3]
    again = items[n + 3]
    np.testing.assert_array_equal(again[0].asnumpy(), data.asnumpy())   # deterministic
    assert any(np.array_equal(o[0].asnumpy(), data.asnumpy()) for o in others)  # a real item
    assert all(o.events == () for o in others)
    other_epoch = [items[e * n + 3][0].asnumpy() for e in range(2, 8)]
    assert any(not np.array_equal(x, data.asnumpy()) for x in other_epoch)  # varies per epoch


def test_training_items_decode_each_clean_image_once_within_the_budget(tmp_path, monkeypatch):
    """A loader process keeps the decoded images it loaded (up to DECODED_CACHE_BYTES): later
    epochs augment the kept pixels, with the same result; a repaired image (an event to count)
    is loaded again every time."""
    from gluon_ssd.data import build
    root = _voc(tmp_path, 6)
    ds = VOCDetection(root, ["train"])
    calls = []
    real_load = ds.load

    def counting_load(i):
        calls.append(i)
        img, label, events = real_load(i)
        return img, label, (("repaired", "im5.jpg: test") ,) if i == 5 else events

    monkeypatch.setattr(ds, "load", counting_load)
    one = int(np.prod(real_load(0)[0].shape))            # bytes of one decoded image
    monkeypatch.setattr(build, "DECODED_CACHE_BYTES", 3 * one)
    items = SeededItems(ds, _identity, seed=5, max_objects=4)
    n = len(items)
    first = [items[i] for i in range(n)]
    second = [items[n + i] for i in range(n)]            # the next epoch
    assert sorted(calls) == [0, 1, 2, 3, 3, 4, 4, 5, 5]  # 3 kept; im5 repaired: never kept
    assert second[5].events == (("repaired", "im5.jpg: test"),)
    for a, b in zip(first, second):                      # _identity: same pixels either way
        np.testing.assert_array_equal(a[0].asnumpy(), b[0].asnumpy())


def test_every_training_image_unreadable_is_one_user_error(tmp_path):
    """Nothing to train on: the item is a stand-in with a fatal event (never an exception in a
    worker process), raised by LoadProblems in the main process, strict or not."""
    root = _voc(tmp_path, 3)
    ds = VOCDetection(root, ["train"])
    for i in range(3):
        _damage(_jpg(root, i), "zero_byte")
    item = SeededItems(ds, _identity, seed=5, max_objects=4)[1]
    assert item[1].shape == (4, 6) and item.events[0][0] == "fatal"
    with pytest.raises(DatasetError, match="im1.jpg: empty image file.*unreadable too"):
        LoadProblems().add(Batch(item, [item.events]))


def _process_facts(img, label):
    """A transform reporting the process it runs in: ``(1, 1, 3)`` pid, niceness and an
    OpenCV resize's checksum (as the image) and the label."""
    import cv2
    small = cv2.resize(img.asnumpy(), (7, 5), interpolation=cv2.INTER_CUBIC)
    return mx.nd.array([[[os.getpid(), os.nice(0), int(small.sum())]]]), label


@pytest.mark.parametrize("workers", [0, 1])
def test_loader_workers_yield_the_cores_to_the_training_step(tmp_path, workers):
    """Forked loader workers run at the lowest priority (they fill the training step's idle
    time); the training process itself (-j 0) is left as it is. OpenCV still works in a worker
    forked after the parent ran OpenCV's thread pool (cv2.setNumThreads there would hang)."""
    import cv2
    busy = np.random.RandomState(0).rand(600, 600, 3).astype(np.float32)
    cv2.resize(busy, (300, 300), interpolation=cv2.INTER_CUBIC)   # the parent's pool runs
    ds = VOCDetection(_voc(tmp_path, 4), ["train"])
    loader, sampler = train_loader(ds, _process_facts, batch_size=2, seed=1, max_objects=4,
                                   num_workers=workers)
    sampler.set_epoch(0)
    facts = np.concatenate([batch[0].asnumpy().reshape(-1, 3) for batch in loader])
    assert (facts[:, 2] > 0).all()
    if workers:
        assert (facts[:, 0] != os.getpid()).all() and (facts[:, 1] == 19).all()
    else:
        assert (facts[:, 0] == os.getpid()).all() and (facts[:, 1] == os.nice(0)).all()


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_counts_what_workers_skip_and_repair(tmp_path, workers):
    root = _voc(tmp_path, 8)
    ds = VOCDetection(root, ["train"])
    _damage(_jpg(root, 2), "corrupt")
    _damage(_jpg(root, 5), "truncated")
    _damage(_jpg(root, 6), "deleted")
    loader, sampler = train_loader(ds, _identity, batch_size=4, seed=1, max_objects=4,
                                   num_workers=workers)
    sampler.set_epoch(0)
    problems = LoadProblems()
    shapes = []
    batches = list(loader)      # a whole epoch: no worker is left busy (see the test below)
    for batch in batches:
        assert isinstance(batch, Batch) and len(batch.events) == 4
        problems.add(batch)
        data, label = batch
        shapes.append((data.shape, label.shape))
    assert shapes == [((4, 3, 48, 64), (4, 4, 6))] * 2
    assert problems.as_record() == {"skipped_images": 2, "repaired_images": 1}
    assert problems.as_record("val_") == {"val_skipped_images": 2, "val_repaired_images": 1}
    line = problems.summary("epoch 0")
    assert line.startswith("epoch 0: 2 images skipped (first: ") and "1 images repaired" in line
    assert "im5.jpg" in line and "\n" not in line
    strict = LoadProblems(strict=True)
    with pytest.raises(DatasetError, match=r"(im2|im5|im6)\.jpg: .*--strict-data"):
        for batch in batches:
            strict.add(batch)


def test_data_errors_of_worker_processes_reach_the_main_process(tmp_path):
    """Data problems found in DataLoader worker processes become one DatasetError (a UserError:
    one line, exit code 2) in the main process. Workers never raise them: MXNet answers a worker
    exception with Pool.terminate() while other workers are busy, which can deadlock (seen here
    under load: a worker killed while holding the result queue's lock)."""
    root = _voc(tmp_path, 4)
    ds = VOCDetection(root, ["train"])
    for i in range(4):
        _damage(_jpg(root, i), "corrupt")
    loader, sampler = train_loader(ds, _identity, batch_size=2, seed=1, max_objects=4,
                                   num_workers=2)
    sampler.set_epoch(0)
    batches = list(loader)
    assert all(batch.events[0][0][0] == "fatal" for batch in batches)
    with pytest.raises(DatasetError, match=r"im\d\.jpg: cannot decode image") as err:
        problems = LoadProblems()
        for batch in batches:
            problems.add(batch)
    assert err.value.exit_code == 2 and "\n" not in str(err.value)
    # and if another UserError is raised in a worker, the pool sends it back pickled: it
    # arrives with its type, message and exit code
    import pickle
    again = pickle.loads(pickle.dumps(ImageDecodeError("x.jpg: cannot decode image")))
    assert type(again) is ImageDecodeError and str(again) == "x.jpg: cannot decode image"
    assert isinstance(again, UserError) and again.exit_code == 2


# -------------------------------------------------------------------------------------- evaluate
class _WholeImageNet:
    """Stands in for an SSD: one detection of class 0 covering the whole input."""

    def __init__(self, size):
        self.size = size

    def __call__(self, x):
        b = x.shape[0]
        box = mx.nd.array([[[0, 0, self.size - 1, self.size - 1]]]).broadcast_to((b, 1, 4))
        return mx.nd.zeros((b, 1, 1)), mx.nd.ones((b, 1, 1)), box


def _transform(size):
    from gluon_ssd.model.io import input_transform
    return input_transform({"data_shape": size, "mean": [0.5] * 3, "std": [0.25] * 3})


def test_evaluator_leaves_out_and_counts_bad_images(tmp_path):
    """VOC: skipped images' ground truth is left out (AP 1 with a whole-image detector);
    COCO from the annotation file: the evaluated image ids exclude them too. Before: the first
    bad image raised and ended the validation (and the training run)."""
    whole = ("cat", 1, 1, 64, 48)
    root = make_voc(tmp_path / "v", {"im%d" % i: [whole] for i in range(5)})
    ds = VOCDetection(root, ["train"])
    _damage(_jpg(root, 1), "corrupt")
    _damage(_jpg(root, 3), "truncated")
    ev = Evaluator(ds, _transform(64), 64, ds.classes, kinds=("voc07", "coco"), batch_size=2)
    with pytest.warns(DatasetWarning, match="evaluation data: 1 images skipped .*im1.jpg"):
        out = ev(_WholeImageNet(64), [mx.cpu()])
    for kind in ("voc07", "coco"):
        assert out[kind]["skipped_images"] == 1 and out[kind]["repaired_images"] == 1
    assert out["voc07"]["map"] == pytest.approx(1.0) and out["voc07"]["num_images"] == 4
    with pytest.raises(DatasetError, match="im1.jpg.*--strict-data"):
        ev(_WholeImageNet(64), [mx.cpu()], strict=True)

    ann, imgs = make_coco(tmp_path / "c", [(i, "c%d.jpg" % i, True) for i in (1, 2, 3, 4)],
                          [{"image_id": i, "category_id": 1, "bbox": [0, 0, 64, 48]}
                           for i in (1, 2, 3, 4)])
    coco = COCODetection(ann, imgs)
    _damage(Path(imgs) / "c2.jpg", "deleted")
    ev = Evaluator(coco, _transform(64), 64, coco.classes, kinds=("voc07", "coco"),
                   batch_size=3)
    with pytest.warns(DatasetWarning, match="c2.jpg: image file not found"):
        out = ev(_WholeImageNet(64), [mx.cpu()])
    assert out["coco"]["skipped_images"] == 1 and out["coco"]["num_images"] == 3
    assert out["coco"]["map"] == pytest.approx(1.0) and out["voc07"]["map"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------- annotations
def _warning_lines(record):
    return [str(w.message) for w in record if issubclass(w.category, DatasetWarning)]


def test_coco_zero_size_boxes_and_duplicate_names_counted(tmp_path):
    """Before: zero-width/height boxes were dropped silently and two categories named 'a'
    gave two classes of the same name."""
    ann, imgs = make_coco(tmp_path, [(1, "a.jpg", True)], [
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
        {"image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10], "area": 0.0},
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 0], "area": 5.0},
        {"image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10], "area": 0.0},
    ], categories=[{"id": 1, "name": "a"}, {"id": 3, "name": "b"}, {"id": 7, "name": "a"}])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = COCODetection(ann, imgs)
    lines = _warning_lines(rec)
    assert len(lines) == 1 and "ids 1 and 7" in lines[0]
    assert ds.stats["boxes of zero width or height dropped"] == 2
    assert ds.stats["boxes with zero area dropped"] == 1
    assert ds.stats["categories with a duplicate name renamed <name>_<id>"] == 1
    assert ds.classes == ("a", "b", "a_7") and ds.contiguous_id_to_json == [1, 3, 7]
    with pytest.raises(DatasetError, match="ann.json: 'a' of ids 1 and 7.*--strict-data"):
        COCODetection(ann, imgs, strict=True)


def test_voc_class_typo_counted(tmp_path):
    items = {"im%d" % i: [("raccoon", 2, 2, 20, 20)] for i in range(6)}
    items["typo"] = [("racoon", 2, 2, 20, 20)]
    items["case"] = [("Raccoon", 3, 3, 20, 20)]
    root = make_voc(tmp_path / "v", items)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = VOCDetection(root, ["train"])          # classes read from the annotations
    lines = _warning_lines(rec)
    assert len(lines) == 1 and "'Raccoon' (1 objects) vs 'raccoon' (6 objects)" in lines[0]
    assert ds.stats == {"class names that look like a typo of another class (kept)": 2}
    assert ds.classes == ("Raccoon", "raccoon", "racoon")
    with warnings.catch_warnings(record=True) as rec:   # classes given: unknown ones dropped
        warnings.simplefilter("always")
        ds = VOCDetection(root, ["train"], classes=["raccoon"])
    assert ds.stats == {"objects of unknown class 'racoon' (a typo of 'raccoon'?) dropped": 1,
                        "objects of unknown class 'Raccoon' (a typo of 'raccoon'?) dropped": 1}
    assert len(_warning_lines(rec)) == 1


def test_strict_dataset_construction(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("cat", -5, 2, 20, 20)]})
    with pytest.warns(DatasetWarning, match="boxes clipped"):
        VOCDetection(root, ["train"])
    with pytest.raises(DatasetError, match=r"a\.xml: boxes clipped to the image \(--strict-data"):
        VOCDetection(root, ["train"], strict=True)


# ------------------------------------------------------------------------------------ end to end
def _bad_voc(tmp_path):
    """A VOC folder: 12 training images (2 unreadable, 1 truncated, 1 with a half-size file),
    6 validation images (1 unreadable, 1 truncated; the run's hook deletes 1 more)."""
    items = {"t%02d" % i: [("cat", 5, 5, 40, 30)] for i in range(12)}
    items.update({"v%d" % i: [("cat", 5, 5, 40, 30)] for i in range(6)})
    root = make_voc(tmp_path / "voc", items)
    (root / "ImageSets" / "Main" / "train.txt").write_text(
        "".join("t%02d\n" % i for i in range(12)))
    (root / "ImageSets" / "Main" / "val.txt").write_text("".join("v%d\n" % i for i in range(6)))
    img = root / "JPEGImages"
    _damage(img / "t03.jpg", "corrupt")
    _damage(img / "t07.jpg", "zero_byte")
    _damage(img / "t09.jpg", "truncated")
    write_image(img / "t10.jpg", width=32, height=24)
    _damage(img / "v4.jpg", "not_an_image")
    _damage(img / "v3.jpg", "truncated")
    return root


def _args(root, out, workers, *extra):
    return ['--dataset', 'voc', '--dataset-root', str(root), '--train-split', 'train',
            '--val-split', 'val', '--network', 'tiny_ssd', '--data-shape', '128',
            '--batch-size', '4', '--epochs', '1', '-j', str(workers), '--seed', '1',
            '--no-progress', '--num-samples-viz', '2',
            '--out-dir', str(out), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_training_run_with_bad_images_finishes_and_counts(tmp_path, workers, monkeypatch):
    """Before: the first bad image raised in a loader worker and the run died (traceback)."""
    from gluon_ssd import engine
    from gluon_ssd.config import parse_config
    root = _bad_voc(tmp_path)
    open_data = engine.open_data

    def open_then_delete(cfg):          # a validation image deleted once the data is opened
        opened = open_data(cfg)
        _damage(root / "JPEGImages" / "v5.jpg", "deleted")
        return opened

    monkeypatch.setattr(engine, "open_data", open_then_delete)
    out = tmp_path / "run"
    result = engine.train(parse_config(_args(root, out, workers)))
    counts = {"skipped_images": 2, "repaired_images": 2, "val_skipped_images": 2,
              "val_repaired_images": 1}
    assert result["data_skips"] == counts
    record, = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {k: record[k] for k in counts} == counts and record["map"] is not None
    log = (out / "train.log").read_text()
    epoch_line, = [line for line in log.splitlines() if "[epoch 0] lr" in line]
    assert epoch_line.endswith("images: 2 skipped, 2 repaired, 2 val skipped, 1 val repaired")
    assert "[epoch 0] training data: 2 images skipped (first: " in log


@pytest.mark.slow
def test_strict_data_exits_2_with_one_line(tmp_path):
    """--strict-data: the first skipped or repaired image ends the run with exit code 2 and
    one error line naming the file (the other stderr lines are the run's log), no traceback.
    (-j 0 here; a UserError from a worker process: test_user_error_in_a_worker_process...)"""
    root = _bad_voc(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, str(REPO / "train_ssd.py"),
                           *_args(root, tmp_path / "run", 0, "--strict-data")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, proc.stderr
    assert errors[0].startswith("train_ssd.py: error: ") and "--strict-data" in errors[0]
    assert any(name in errors[0] for name in ("t03.jpg", "t07.jpg", "t09.jpg", "t10.jpg"))

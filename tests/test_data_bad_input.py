"""Every bad-input kind gets a clear error naming the file, or a counted skip with one warning."""
import warnings

import numpy as np
import pytest

from _data_fixtures import make_coco, make_voc, write_image
from gluon_ssd.data import (COCODetection, DatasetError, DatasetWarning, ImageDecodeError,
                            RecordDetection, VOCDetection, decode_image)


def _one_warning(record):
    msgs = [w for w in record if issubclass(w.category, DatasetWarning)]
    assert len(msgs) == 1, [str(w.message) for w in record]
    return str(msgs[0].message)


# ---------------------------------------------------------------- images (decode at __getitem__)
@pytest.mark.parametrize("kind", ["unreadable", "corrupt", "mostly_missing", "empty"])
def test_bad_image_names_file(tmp_path, kind):
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)]})
    path = root / "JPEGImages" / "a.jpg"
    data = path.read_bytes()
    if kind == "unreadable":
        path.write_bytes(b"this is not an image at all")
    elif kind == "corrupt":
        path.write_bytes(data[:20] + bytes(range(256)) * 4)
    elif kind == "mostly_missing":   # less than half of the rows decodable: skipped, not repaired
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes(b"")
    ds = VOCDetection(root, ["train"])
    with pytest.raises(ImageDecodeError, match="a.jpg"):
        ds[0]


def test_truncated_image_decoded_with_warning(tmp_path):
    """A JPEG missing its last bytes is decoded as far as its data goes (PIL's truncated
    loading), with a warning naming the file (tests/test_data_faults.py: the counting)."""
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)]})
    path = root / "JPEGImages" / "a.jpg"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 9 // 10])
    with pytest.warns(DatasetWarning, match="a.jpg: damaged image .*truncated"):
        img, label = VOCDetection(root, ["train"])[0]
    assert img.shape == (48, 64, 3) and label.shape == (1, 6)


@pytest.mark.parametrize("mode,fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("RGBA", "PNG"),
                                      ("P", "PNG"), ("RGB", "PNG"), ("LA", "PNG")])
def test_image_modes_converted_to_rgb(tmp_path, mode, fmt):
    path = tmp_path / ("img." + fmt.lower())
    src = write_image(path, mode=mode, fmt=fmt)
    img = decode_image(str(path))
    assert img.shape == (48, 64, 3) and img.dtype == np.uint8
    from PIL import Image
    expected = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(img.asnumpy(), expected)
    if mode == "RGB":  # lossless PNG: exact pixels
        np.testing.assert_array_equal(img.asnumpy(), np.asarray(src))


def test_image_size_mismatch(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)]})
    write_image(root / "JPEGImages" / "a.jpg", width=30, height=30)
    with pytest.raises(ImageDecodeError, match="a.jpg.*30x30.*64x48"):
        VOCDetection(root, ["train"])[0]


# ---------------------------------------------------------------- VOC annotations
def test_voc_annotation_problems_counted_in_one_warning(tmp_path):
    root = make_voc(tmp_path / "v", {
        "ok": [("cat", 2, 2, 20, 20)],
        "noimage": [("cat", 2, 2, 20, 20)],
        "flipped": [("cat", 30, 2, 10, 20), ("cat", 5, 20, 15, 20), ("cat", 2, 2, 20, 20)],
        "outside": [("cat", -10, -5, 100, 30), ("cat", 80, 60, 90, 70)],
        "unknown": [("dog", 2, 2, 20, 20), ("cat", 3, 3, 9, 9)],
        "nonnum": [("cat", "a", 2, 20, 20)],
        "empty": [],
    })
    (root / "JPEGImages" / "noimage.jpg").unlink()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = VOCDetection(root, ["train"], classes=["cat"])
    msg = _one_warning(rec)
    assert "VOCDetection" in msg and "noimage.xml" in msg
    assert ds.stats == {
        "annotations without image skipped": 1,
        "degenerate boxes dropped (xmin>=xmax or ymin>=ymax)": 2,
        "boxes clipped to the image": 1,
        "boxes outside the image dropped": 1,
        "objects of unknown class 'dog' dropped": 1,
        "objects without name or numeric bndbox dropped": 1,
    }
    labels = {ds.image_path(i).split("/")[-1]: ds.label(i) for i in range(len(ds))}
    assert "noimage.jpg" not in labels and len(ds) == 6
    np.testing.assert_array_equal(labels["outside.jpg"], [[0, 0, 63, 29, 0, 0]])
    assert labels["flipped.jpg"].shape == (1, 6)
    assert labels["empty.jpg"].shape == (0, 6) and labels["nonnum.jpg"].shape == (0, 6)
    for i in range(len(ds)):
        lb = ds.label(i)
        assert (lb[:, 0] < lb[:, 2]).all() and (lb[:, 1] < lb[:, 3]).all()


def test_voc_skip_empty(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)], "b": []})
    with pytest.warns(DatasetWarning, match="1 images without objects skipped"):
        ds = VOCDetection(root, ["train"], skip_empty=True)
    assert len(ds) == 1


@pytest.mark.parametrize("content,problem", [
    ("<annotation><object>", "malformed XML"),
    ("", "malformed XML"),
    ("<html></html>", "expected <annotation>"),
])
def test_voc_malformed_xml(tmp_path, content, problem):
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)], "b": [("x", 1, 1, 5, 5)]})
    (root / "Annotations" / "b.xml").write_text(content)
    with pytest.raises(DatasetError, match="b.xml: .*" + problem):
        VOCDetection(root, ["train"], classes=["x"])
    with pytest.raises(DatasetError, match="b.xml"):  # also while inferring classes
        VOCDetection(root, ["train"])


def test_voc_missing_split_and_root(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)]})
    with pytest.raises(DatasetError, match="val.txt: split file not found"):
        VOCDetection(root, ["val"])
    with pytest.raises(DatasetError, match="nowhere: dataset root not found"):
        VOCDetection(tmp_path / "nowhere", ["train"])
    with pytest.raises(DatasetError, match="VOC2007 directory not found"):
        VOCDetection(tmp_path, [(2007, "trainval")])
    (root / "ImageSets" / "Main" / "empty.txt").write_text("\n")
    with pytest.raises(DatasetError, match="empty.txt: split file lists no image"):
        VOCDetection(root, ["empty"])


def test_voc_split_id_without_xml(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)]})
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nghost\n")
    with pytest.warns(DatasetWarning, match="ghost.xml"):
        ds = VOCDetection(root, ["train"])
    assert len(ds) == 1


# ---------------------------------------------------------------- COCO
def test_coco_problems_counted(tmp_path):
    ann, imgs = make_coco(tmp_path, [(1, "a.jpg", True), (2, "missing.jpg", False),
                                     (3, "c.jpg", True)], [
        {"image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10]},
        {"image_id": 1, "category_id": 99, "bbox": [2, 2, 10, 10]},
        {"image_id": 1, "category_id": 3, "bbox": [2, 2, "x", 10]},
        {"image_id": 1, "category_id": 3, "bbox": [50, 40, 30, 30]},
        {"image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10], "area": 0.0},
        {"image_id": 2, "category_id": 1, "bbox": [2, 2, 10, 10]},
        {"image_id": 3, "category_id": 1, "bbox": [70, 50, 5, 5]},
        {"image_id": 42, "category_id": 1, "bbox": [2, 2, 10, 10]},
    ])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = COCODetection(ann, imgs)
    msg = _one_warning(rec)
    assert "COCODetection" in msg and "missing.jpg" in msg
    assert ds.stats["images whose file is missing skipped"] == 1
    assert ds.stats["annotations of unknown category_id 99 dropped"] == 1
    assert ds.stats["annotations with malformed bbox dropped"] == 1
    assert ds.stats["boxes clipped to the image"] == 1
    assert ds.stats["annotations of unknown image_id skipped"] == 1
    assert ds.stats["boxes outside the image dropped"] == 1
    assert ds.stats["images without boxes skipped"] == 1  # c.jpg: its only box is outside
    assert len(ds) == 1
    np.testing.assert_array_equal(ds.label(0), [[2, 2, 11, 11, 0, 0], [50, 40, 63, 47, 1, 0]])


@pytest.mark.parametrize("content,problem", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"images": [], "annotations": []}', "'categories'"),
    ('{"images": [{"id": 1}], "annotations": [], "categories": []}', r"images\[0\] lacks"),
])
def test_coco_malformed_json(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match="bad.json: .*" + problem):
        COCODetection(path, tmp_path)


def test_coco_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="nope.json: annotation file not found"):
        COCODetection(tmp_path / "nope.json", tmp_path)
    with pytest.raises(DatasetError, match="noimgs: image directory not found"):
        COCODetection(tmp_path / "nope.json", tmp_path / "noimgs")


# ---------------------------------------------------------------- RecordIO
def test_record_bad_label_and_image(tmp_path):
    import mxnet as mx
    prefix = str(tmp_path / "bad")
    writer = mx.recordio.MXIndexedRecordIO(prefix + ".idx", prefix + ".rec", "w")
    good = (tmp_path / "g.jpg")
    write_image(good)
    jpg = good.read_bytes()
    labels = [[2, 5, 0, 0.1, 0.1, 0.5, 0.5],         # fine
              [2, 5, 0, 0.1, 0.1, 0.5],              # broken length
              [1, 5, 0, 0.1, 0.1, 0.5, 0.5],         # header width < 2
              [2, 5, 0, 0.1, 0.1, 0.5, 0.5]]         # fine label, image without pixel data
    for i, lb in enumerate(labels):
        payload = jpg if i < 3 else jpg[: jpg.index(b"\xff\xda")]
        writer.write_idx(i, mx.recordio.pack(
            mx.recordio.IRHeader(0, np.array(lb, np.float32), i, 0), payload))
    writer.write_idx(4, mx.recordio.pack(mx.recordio.IRHeader(0, np.array(labels[0], np.float32),
                                                              4, 0), b"garbage"))
    writer.close()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds = RecordDetection(prefix + ".rec")
    _one_warning(rec)
    assert ds.stats == {"records with malformed label skipped": 2,
                        "records with unreadable image header skipped": 1}
    assert len(ds) == 2
    img, label = ds[0]
    assert img.shape == (48, 64, 3)
    np.testing.assert_allclose(label, [[6.4, 4.8, 32, 24, 0, 0]], rtol=1e-6)
    with pytest.raises(ImageDecodeError, match="bad.rec record 3"):
        ds[1]


def test_record_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="x.rec: record file not found"):
        RecordDetection(tmp_path / "x.rec")
    (tmp_path / "y.rec").write_bytes(b"")
    with pytest.raises(DatasetError, match="y.idx: record file not found"):
        RecordDetection(tmp_path / "y.rec")

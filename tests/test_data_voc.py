"""VOCDetection on the raccoon folder and on generated VOC fixtures."""
import numpy as np
from _data_fixtures import make_voc
from gluon_ssd.data.voc import VOC_CLASSES, VOCDetection


def test_raccoon_counts(shared_data):
    root = shared_data / "raccoon"
    train = VOCDetection(root, ["train"])
    test = VOCDetection(root, "test")
    both = VOCDetection(root, ("train", "test"))
    assert (len(train), len(test), len(both)) == (160, 40, 200)
    assert train.classes == ("raccoon",)
    boxes = sum(both.label(i).shape[0] for i in range(len(both)))
    assert boxes == 217
    assert both.stats == {}


def test_raccoon_items_and_grayscale(shared_data):
    from PIL import Image
    ds = VOCDetection(shared_data / "raccoon", ["train", "test"])
    gray = [i for i in range(len(ds)) if Image.open(ds.image_path(i)).mode == "L"]
    assert len(gray) == 3
    for i in gray + [0]:
        img, label = ds[i]
        w, h = ds.image_size(i)
        assert img.shape == (h, w, 3) and img.dtype == np.uint8
        assert label.dtype == np.float32 and label.shape[1] == 6
        assert (label[:, 0] < label[:, 2]).all() and (label[:, 1] < label[:, 3]).all()
        assert (label[:, :4] >= 0).all() and (label[:, 2] <= w - 1).all()
    img, _ = ds[gray[0]]
    arr = img.asnumpy()
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2])


def test_raccoon_first_box_is_xml_minus_one(shared_data):
    ds = VOCDetection(shared_data / "raccoon", ["train"])
    idx = [i for i in range(len(ds)) if ds.image_path(i).endswith("raccoon-1.jpg")]
    if idx:  # raccoon-1.xml: 81 88 522 408 (1-based)
        np.testing.assert_array_equal(ds.label(idx[0])[0], [80, 87, 521, 407, 0, 0])


def test_classes_inferred_sorted_and_difficult_kept(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("zebra", 2, 2, 20, 20, 1)],
                                     "b": [("ant", 5, 5, 30, 40), ("zebra", 1, 1, 9, 9)]})
    ds = VOCDetection(root, ["train"])
    assert ds.classes == ("ant", "zebra")
    np.testing.assert_array_equal(ds.label(0), [[1, 1, 19, 19, 1, 1]])
    np.testing.assert_array_equal(ds.label(1)[:, 4], [0, 1])
    (root / "classes.txt").write_text("zebra\nant\n")
    assert VOCDetection(root, ["train"]).classes == ("zebra", "ant")
    given = VOCDetection(root, ["train"], classes=["ant", "zebra", "x"])
    assert given.classes == ("ant", "zebra", "x")


def test_vocdevkit_layout(tmp_path):
    make_voc(tmp_path / "VOCdevkit" / "VOC2007", {"000001": [("dog", 2, 3, 30, 40)]}, "trainval")
    make_voc(tmp_path / "VOCdevkit" / "VOC2012", {"2012_1": [("cat", 1, 1, 10, 10)]}, "trainval")
    ds = VOCDetection(tmp_path / "VOCdevkit", [(2007, "trainval"), (2012, "trainval")])
    assert ds.classes == VOC_CLASSES and len(ds) == 2
    assert ds.label(0)[0, 4] == VOC_CLASSES.index("dog")
    assert ds.label(1)[0, 4] == VOC_CLASSES.index("cat")
    img, label = ds[0]
    assert img.shape == (48, 64, 3)


def test_png_images_found(tmp_path):
    root = make_voc(tmp_path / "v", {"p": [("a", 2, 2, 20, 20)]}, image_ext=".png")
    img, _ = VOCDetection(root, ["train"])[0]
    assert img.shape == (48, 64, 3)


def test_transform_applied(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("x", 2, 2, 20, 20)]})
    ds = VOCDetection(root, ["train"], transform=lambda img, lb: (img.shape, lb.shape))
    assert ds[0] == ((48, 64, 3), (1, 6))

"""COCODetection on coco128 and on generated COCO fixtures."""
import numpy as np
import pytest

from _data_fixtures import make_coco
from gluon_ssd.data.coco import COCODetection


@pytest.fixture(scope="module")
def coco128(shared_data):
    root = shared_data / "coco128"
    return root / "annotations" / "instances_train2017.json", root / "train2017"


def test_coco128_counts(coco128):
    ann, imgs = coco128
    ds = COCODetection(ann, imgs)  # defaults: crowd excluded, empty images skipped
    assert len(ds) == 126
    assert sum(ds.label(i).shape[0] for i in range(len(ds))) == 929
    assert ds.stats == {"crowd boxes excluded": 10, "images without boxes skipped": 2}
    assert len(ds.classes) == 80 and ds.classes[0] == "person"
    everything = COCODetection(ann, imgs, skip_empty=False, use_crowd=True)
    assert len(everything) == 128
    labels = [everything.label(i) for i in range(128)]
    assert sum(lb.shape[0] for lb in labels) == 939
    assert sum(int(lb[:, 5].sum()) for lb in labels) == 10  # crowd kept as difficult
    assert sum(lb.shape[0] == 0 for lb in labels) == 2


def test_coco128_ids_map_back(coco128):
    ann, imgs = coco128
    ds = COCODetection(ann, imgs)
    ids = np.concatenate([ds.label(i)[:, 4] for i in range(len(ds))]).astype(int)
    assert ids.min() >= 0 and ids.max() < 80
    assert len(set(ids)) == 71  # 71 categories present
    json_ids = [ds.contiguous_id_to_json[i] for i in range(80)]
    assert json_ids == sorted(json_ids) and ds.json_id_to_contiguous[json_ids[5]] == 5
    img, label = ds[0]
    w, h = ds.image_size(0)
    assert img.shape == (h, w, 3)
    assert (label[:, 2] <= w - 1).all() and (label[:, 3] <= h - 1).all()


def test_box_conversion_and_crowd(tmp_path):
    ann, imgs = make_coco(tmp_path, [(7, "a.jpg", True)], [
        {"image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 10]},
        {"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5], "iscrowd": 1}])
    ds = COCODetection(ann, imgs)
    assert ds.classes == ("a", "b") and ds.contiguous_id_to_json == [1, 3]
    np.testing.assert_array_equal(ds.label(0), [[10, 5, 29, 14, 1, 0]])
    assert ds.image_ids == [7]
    ds = COCODetection(ann, imgs, use_crowd=True)
    np.testing.assert_array_equal(ds.label(0)[1], [0, 0, 4, 4, 0, 1])

"""RecordIO: label codec, packing raccoon and reading it back, the pack command."""
import mxnet as mx
import numpy as np

from _data_fixtures import make_voc
from gluon_ssd.data.recordio import RecordDetection, decode_label, encode_label, main, pack_dataset
from gluon_ssd.data.voc import VOCDetection


def test_label_codec_round_trip():
    label = np.array([[10, 20, 110, 70, 2, 1], [0, 0, 639, 479, 0, 0]], np.float32)
    raw = encode_label(label, 640, 480)
    assert raw[:2].tolist() == [2, 6] and raw.size == 14
    np.testing.assert_allclose(raw[2:8], [2, 10 / 640, 20 / 480, 110 / 640, 70 / 480, 1], rtol=1e-6)
    np.testing.assert_allclose(decode_label(raw, 640, 480), label, atol=1e-3)


def test_decode_other_layouts():
    # Pikachu / im2rec style: header [4, 5, w, h], class first, 0-1 coords, -1 padding rows
    raw = [4, 5, 256, 256, 0, 0.25, 0.5, 0.75, 1.0, -1, -1, -1, -1, -1]
    np.testing.assert_allclose(decode_label(raw, 256, 128), [[64, 64, 192, 128, 0, 0]])
    assert decode_label([2, 5], 10, 10).shape == (0, 6)


def test_pack_raccoon_reads_back_identical(shared_data, tmp_path):
    src = VOCDetection(shared_data / "raccoon", ["test"])
    rec = pack_dataset(src, tmp_path / "raccoon_test")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "raccoon_test.classes.txt", "raccoon_test.idx", "raccoon_test.rec"]
    ds = RecordDetection(rec)
    assert len(ds) == len(src) == 40 and ds.classes == ("raccoon",) and ds.stats == {}
    for i in range(len(ds)):
        assert ds.image_size(i) == src.image_size(i)
        np.testing.assert_allclose(ds.label(i), src.label(i), rtol=0, atol=1e-3)
        np.testing.assert_array_equal(np.round(ds.label(i)), src.label(i))
    for i in (0, 17):
        a, la = ds[i]
        b, lb = src[i]
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())  # raw JPEG bytes kept


def test_packed_file_reads_with_mxnet_imagedetiter(tmp_path):
    root = make_voc(tmp_path / "v", {"a": [("x", 11, 5, 40, 30)], "b": [("y", 1, 1, 64, 48)]})
    rec = pack_dataset(VOCDetection(root, ["train"]), tmp_path / "v")
    it = mx.image.ImageDetIter(batch_size=2, data_shape=(3, 48, 64), path_imgrec=rec,
                               path_imgidx=str(tmp_path / "v.idx"))
    label = it.next().label[0].asnumpy()
    assert label.shape[0] == 2
    np.testing.assert_allclose(label[0, 0, :5], [0, 10 / 64, 4 / 48, 39 / 64, 29 / 48], rtol=1e-5)


def test_pack_command(tmp_path, capsys):
    root = make_voc(tmp_path / "v", {"a": [("x", 11, 5, 40, 30)], "b": [("y", 2, 2, 9, 9)]})
    assert main(["pack", "--format", "voc", "--root", str(root), "--splits", "train",
                 "--out", str(tmp_path / "out" / "v")]) == 0
    assert "wrote" in capsys.readouterr().out
    ds = RecordDetection(tmp_path / "out" / "v.rec")
    assert ds.classes == ("x", "y") and len(ds) == 2
    np.testing.assert_allclose(ds.label(1), [[1, 1, 8, 8, 1, 0]], atol=1e-4)
    assert main(["pack", "--format", "voc", "--root", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "dataset root not found" in capsys.readouterr().err


def test_pack_coco128(shared_data, tmp_path):
    root = shared_data / "coco128"
    assert main(["pack", "--format", "coco", "--annotations",
                 str(root / "annotations" / "instances_train2017.json"), "--images",
                 str(root / "train2017"), "--out", str(tmp_path / "coco")]) == 0
    ds = RecordDetection(tmp_path / "coco.rec")
    assert len(ds) == 126 and len(ds.classes) == 80
    assert sum(ds.label(i).shape[0] for i in range(len(ds))) == 929


def test_record_dataset_in_thread_pool_loader(tmp_path):
    # Threads share one reader: without the lock around its seek + read, about 3 in 4 of these
    # passes read a record from another thread's position ("buffer is smaller than requested").
    from mxnet import gluon
    from gluon_ssd.data.transforms import SSDValTransform, batchify_fn
    items = {"i%02d" % k: [("x", 2 + k, 3, 30 + k, 40)] for k in range(30)}
    rec = pack_dataset(VOCDetection(make_voc(tmp_path / "v", items), ["train"]), tmp_path / "r")
    for _ in range(5):
        ds = RecordDetection(rec)
        loader = gluon.data.DataLoader(ds.transform(SSDValTransform(32, 32)), batch_size=3,
                                       batchify_fn=batchify_fn(), num_workers=4, thread_pool=True)
        batches = list(loader)
        assert len(batches) == 10 and batches[0][0].shape == (3, 3, 32, 32)
        xmins = np.concatenate([b[1].asnumpy()[:, 0, 0] for b in batches])
        # XML xmin 2+k, 0-based 1+k, image 64 px wide -> 32 px
        np.testing.assert_allclose(xmins, [(1 + k) * 0.5 for k in range(30)], atol=1e-4)

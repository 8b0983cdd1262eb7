"""gluon_ssd.metrics: VOC/COCO mAP equal GluonCV's / pycocotools' numbers; d2l metrics."""
import contextlib
import copy
import io
import json
import math
import warnings

import mxnet as mx
import numpy as np
import pytest
from gluoncv.utils.metrics.voc_detection import VOC07MApMetric, VOCMApMetric

from gluon_ssd.metrics import (COCOEvaluator, D2LMetric, VOCEvaluator, bbox_eval, cls_eval,
                               corner_to_coco_xywh, make_metric)

CLASSES = ['cat', 'dog', 'bird', 'car', 'boat']


def random_batch(rng, batch=6, max_gt=5, num_fp=4, num_class=len(CLASSES), pad=3):
    """Deterministic detections (jittered gt + false positives) and padded gt, (B,R,·) numpy."""
    k = max_gt + num_fp + pad
    pb, pl, ps = np.zeros((batch, k, 4)), -np.ones((batch, k)), -np.ones((batch, k))
    gb, gl, gd = np.zeros((batch, max_gt, 4)), -np.ones((batch, max_gt)), np.zeros((batch, max_gt))
    for i in range(batch):
        m = rng.randint(0, max_gt + 1)
        xy = rng.uniform(0, 200, (m, 2))
        boxes = np.hstack([xy, xy + rng.uniform(10, 100, (m, 2))])
        gb[i, :m], gl[i, :m] = boxes, rng.randint(0, num_class, m)
        gd[i, :m] = rng.rand(m) < 0.2
        fxy = rng.uniform(0, 250, (num_fp, 2))
        dets = np.vstack([boxes + rng.normal(0, 6, boxes.shape),
                          np.hstack([fxy, fxy + rng.uniform(10, 80, (num_fp, 2))])])
        labels = np.concatenate([gl[i, :m], rng.randint(0, num_class, num_fp)])
        labels[rng.rand(len(labels)) < 0.15] = rng.randint(0, num_class)
        n = len(dets)
        pb[i, :n], pl[i, :n], ps[i, :n] = dets, labels, rng.rand(n)
    return pb, pl, ps, gb, gl, gd


@pytest.mark.parametrize('kind, ref_cls', [('voc07', VOC07MApMetric), ('voc', VOCMApMetric)])
def test_voc_equals_gluoncv_on_random_detections(kind, ref_cls):
    rng = np.random.RandomState(1)
    ours, ref = make_metric(kind, CLASSES), ref_cls(iou_thresh=0.5, class_names=CLASSES)
    for _ in range(4):
        pb, pl, ps, gb, gl, gd = random_batch(rng)
        ref.update(pb, pl, ps, gb, gl, gd)
        # our adapter: NDArrays, (B,K,1) labels/scores, gt as a list of per-device arrays
        ours.update(mx.nd.array(pb), mx.nd.array(pl[..., None]), mx.nd.array(ps[..., None]),
                    [mx.nd.array(gb[:3]), mx.nd.array(gb[3:])],
                    [gl[:3, :, None], gl[3:, :, None]], mx.nd.array(gd))
    names, values = ours.get()
    ref_names, ref_values = ref.get()
    assert names == list(ref_names) == CLASSES + ['mAP']
    np.testing.assert_allclose(values, ref_values, rtol=0, atol=1e-6)  # float32 NDArray input
    assert 0.1 < values[-1] < 0.95
    summary = ours.summary()
    assert summary['kind'] == kind and summary['num_images'] == 24
    assert summary['map'] == pytest.approx(values[-1])
    assert list(summary['ap']) == CLASSES
    json.dumps(summary)


def test_voc_numpy_input_is_bit_identical_to_gluoncv():
    rng = np.random.RandomState(2)
    pb, pl, ps, gb, gl, gd = random_batch(rng, batch=10)
    ours, ref = VOCEvaluator(CLASSES, 'voc07'), VOC07MApMetric(class_names=CLASSES)
    ours.update(pb, pl, ps, gb, gl, gd)
    ref.update(pb, pl, ps, gb, gl, gd)
    assert ours.get()[1] == [float(v) for v in ref.get()[1]]


def one_image(dets, gts, difficult=None):
    """dets: list of (box, label, score); gts: list of (box, label) -> batch-of-one arrays."""
    pb = np.array([d[0] for d in dets], dtype=np.float64).reshape(1, -1, 4)
    pl = np.array([d[1] for d in dets], dtype=np.float64).reshape(1, -1)
    ps = np.array([d[2] for d in dets], dtype=np.float64).reshape(1, -1)
    gb = np.array([g[0] for g in gts], dtype=np.float64).reshape(1, -1, 4)
    gl = np.array([g[1] for g in gts], dtype=np.float64).reshape(1, -1)
    gd = None if difficult is None else np.array(difficult, dtype=np.float64).reshape(1, -1)
    return pb, pl, ps, gb, gl, gd


BOX = [10, 20, 110, 220]


@pytest.mark.parametrize('kind', ['voc07', 'voc', 'coco'])
def test_one_perfect_detection_gives_ap_one(kind):
    m = make_metric(kind, CLASSES)
    m.update(*one_image([(BOX, 1, 0.9)], [(BOX, 1)]))
    s = m.summary()
    assert s['map'] == pytest.approx(1.0)
    assert s['ap']['dog'] == pytest.approx(1.0)
    assert s['ap']['cat'] is None            # class without gt: NaN -> None, not in the mean


@pytest.mark.parametrize('kind', ['voc07', 'voc', 'coco'])
def test_false_positive_ranked_first_halves_ap(kind):
    # FP (score .9) above the only TP (.8): precision 1/2 at recall 1 -> AP 0.5 for all rules
    m = make_metric(kind, CLASSES)
    m.update(*one_image([([300, 300, 350, 350], 0, 0.9), (BOX, 0, 0.8)], [(BOX, 0)]))
    assert m.summary()['map'] == pytest.approx(0.5)


def test_two_gts_one_found_voc07_and_area():
    # dets: TP(.9), FP(.8); 2 gt -> rec [.5, .5], prec [1, .5]; area AP = .5,
    # VOC07 11-point: t in {0,.1,...,.5} -> 1, t > .5 -> 0  => 6/11
    img = one_image([(BOX, 2, 0.9), ([300, 300, 350, 350], 2, 0.8)],
                    [(BOX, 2), ([200, 0, 260, 40], 2)])
    voc07, voc = make_metric('voc07', CLASSES), make_metric('voc', CLASSES)
    voc07.update(*img)
    voc.update(*img)
    assert voc07.summary()['map'] == pytest.approx(6 / 11)
    assert voc.summary()['map'] == pytest.approx(0.5)


def test_difficult_gt_is_ignored_like_voc():
    # detection on a difficult gt is neither TP nor FP; difficult gt is not a positive
    img = one_image([([300, 300, 350, 350], 0, 0.95), (BOX, 0, 0.9)],
                    [([300, 300, 350, 350], 0), (BOX, 0)], difficult=[1, 0])
    m = make_metric('voc', CLASSES)
    m.update(*img)
    assert m.summary()['map'] == pytest.approx(1.0)
    c = make_metric('coco', CLASSES)                     # difficult -> iscrowd (ignored)
    c.update(*img)
    assert c.summary()['AP50'] == pytest.approx(1.0)


@pytest.mark.parametrize('kind', ['voc07', 'voc', 'coco'])
def test_no_detections_and_empty_images(kind):
    m = make_metric(kind, CLASSES)
    pb, pl, ps = np.zeros((2, 3, 4)), -np.ones((2, 3, 1)), -np.ones((2, 3, 1))
    gb = np.zeros((2, 2, 4))
    gb[0, 0] = BOX
    gl = np.array([[3, -1], [-1, -1]], dtype=np.float64)   # second image has no objects
    m.update(pb, pl, ps, gb, gl)
    s = m.summary()
    assert s['map'] == 0.0 and s['ap']['car'] == 0.0
    assert all(s['ap'][c] is None for c in CLASSES if c != 'car')


@pytest.mark.parametrize('kind', ['voc07', 'voc', 'coco'])
def test_nothing_seen_gives_nan_not_crash(kind):
    m = make_metric(kind, CLASSES)
    if kind == 'coco':
        with pytest.raises(RuntimeError, match='before any update'):
            m.get()
    else:
        names, values = m.get()
        assert names[-1] == 'mAP' and all(math.isnan(v) for v in values)


def test_reset_clears_state():
    m = make_metric('voc07', CLASSES)
    m.update(*one_image([([300, 300, 350, 350], 0, 0.9), (BOX, 0, 0.8)], [(BOX, 0)]))
    m.reset()
    m.update(*one_image([(BOX, 0, 0.8)], [(BOX, 0)]))
    assert m.summary()['map'] == pytest.approx(1.0) and m.num_images == 1


@pytest.mark.parametrize('kind', ['voc07', 'coco'])
def test_bad_inputs_raise_clear_errors(kind):
    m = make_metric(kind, CLASSES)
    pb, pl, ps, gb, gl, gd = one_image([(BOX, 1, 0.9)], [(BOX, 1)])
    with pytest.raises(ValueError, match='pred_scores contains NaN'):
        m.update(pb, pl, np.full_like(ps, np.nan), gb, gl)
    with pytest.raises(ValueError, match=r'pred_scores must have shape \(1, 1\)'):
        m.update(pb, pl, np.zeros((1, 2)), gb, gl)
    with pytest.raises(ValueError, match='pred_bboxes must have shape'):
        m.update(pb[..., :3], pl, ps, gb, gl)
    with pytest.raises(ValueError, match='batch size mismatch'):
        m.update(pb, pl, ps, np.concatenate([gb, gb]), np.concatenate([gl, gl]))
    with pytest.raises(ValueError, match=r'gt_labels must be integers in \[0, 4\]'):
        m.update(pb, pl, ps, gb, gl + 10)
    with pytest.raises(ValueError, match='gt_bboxes and gt_labels are required'):
        m.update(pb, pl, ps)
    with pytest.raises(ValueError, match='gt_bboxes contains NaN'):
        m.update(pb, pl, ps, gb * np.nan, gl)
    with pytest.raises(ValueError, match='unknown metric kind'):
        make_metric('coco17', CLASSES)
    with pytest.raises(ValueError, match='non-empty list'):
        make_metric(kind, [])


def test_corner_to_coco_xywh_conventions():
    np.testing.assert_allclose(corner_to_coco_xywh([[10, 20, 30, 60]]), [[10, 20, 21, 41]])
    np.testing.assert_allclose(corner_to_coco_xywh([[10, 20, 30, 60]], 0), [[10, 20, 20, 40]])


# ----------------------------------------------------------------------------------------------
# COCO on real annotations (coco128)
# ----------------------------------------------------------------------------------------------
def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


@pytest.fixture(scope='module')
def coco128(shared_data):
    from gluoncv.data import COCODetection
    with _quiet():
        ds = COCODetection(root=str(shared_data / 'coco128'), splits=('instances_train2017',),
                           skip_empty=False)
    rng = np.random.RandomState(0)
    preds = []
    for label in ds._labels:                 # gt of each image, GluonCV's (xyxy, cls) rows
        lab = np.asarray(label, dtype=np.float64)
        lab = lab[lab[:, 4] >= 0]
        n = len(lab)
        boxes = lab[:, :4] + rng.normal(0, 8, (n, 4))
        labels = lab[:, 4].copy()
        flip = rng.rand(n) < 0.1
        labels[flip] = rng.randint(0, 80, flip.sum())
        fp = rng.rand(3, 4) * 300
        fp[:, 2:] += fp[:, :2]
        boxes = np.vstack([boxes, fp, np.zeros((2, 4))])        # + false positives + padding
        labels = np.concatenate([labels, rng.randint(0, 80, 3), [-1, -1]])
        scores = np.concatenate([rng.rand(n + 3), [-1, -1]])
        preds.append((boxes, labels, scores))
    return ds, preds


def test_coco_equals_gluoncv_coco_metric_on_coco128(coco128, tmp_path):
    from gluoncv.utils.metrics.coco_detection import COCODetectionMetric
    ds, preds = coco128
    ref = COCODetectionMetric(ds, str(tmp_path / 'ref'), use_time=False)
    ours = make_metric('coco', ds.classes, coco_gt=ds.coco)
    for b, l, s in preds:
        ref.update(b[None].copy(), l[None], s[None])
        ours.update(b[None], l[None, :, None], s[None, :, None])
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ref_names, ref_values = ref.get()
    names, values = ours.get()
    np.testing.assert_array_equal(ours._coco_eval.stats, ref._coco_eval.stats)
    # GluonCV prints per-class AP (x100, 1 decimal) and mAP; same numbers
    ref_cls = np.array([float(v) for v in ref_values[1:-1]])
    np.testing.assert_array_equal(np.round(np.array(values[6:-1]) * 100, 1)[~np.isnan(ref_cls)],
                                  ref_cls[~np.isnan(ref_cls)])
    assert float(ref_values[-1]) == round(values[-1] * 100, 1)
    assert 0.1 < values[-1] < 0.6 and names[:6] == ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl']
    assert ours.summary()['map'] == pytest.approx(ref._coco_eval.stats[0])


def test_coco_data_shape_rescales_like_gluoncv(coco128, tmp_path):
    from gluoncv.utils.metrics.coco_detection import COCODetectionMetric
    ds, preds = coco128
    ref = COCODetectionMetric(ds, str(tmp_path / 'ref'), use_time=False, data_shape=(300, 300))
    ours = COCOEvaluator(ds.classes, coco_gt=ds.coco, data_shape=(300, 300))
    for img_id, (b, l, s) in zip(sorted(ds.coco.getImgIds()), preds):
        entry = ds.coco.loadImgs(img_id)[0]
        b = b * np.array([300 / entry['width'], 300 / entry['height']] * 2)  # network px
        ref.update(b[None].copy(), l[None], s[None])
        ours.update(b[None], l[None], s[None])
    with _quiet(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        ref.get()
    ours.get()
    np.testing.assert_allclose(ours._coco_eval.stats, ref._coco_eval.stats, rtol=0, atol=1e-12)


def test_coco_in_memory_equals_raw_cocoeval(coco128, shared_data):
    """In-memory mode vs pycocotools' own loadRes + COCOeval on the same boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    ds, preds = coco128
    raw = json.loads((shared_data / 'coco128/annotations/instances_train2017.json').read_text())
    cats = sorted(c['id'] for c in raw['categories'])
    # the reference gt: non-crowd boxes, area of the box (as in-memory mode defines it)
    gt = copy.deepcopy(raw)
    gt['annotations'] = [dict(a, area=a['bbox'][2] * a['bbox'][3])
                         for a in gt['annotations'] if not a['iscrowd']]
    img_ids = sorted(im['id'] for im in gt['images'])
    by_img = {i: [a for a in gt['annotations'] if a['image_id'] == i] for i in img_ids}
    ours = COCOEvaluator(ds.classes, pixel_offset=0.0, cat_ids=cats)
    results = []
    for img_id, (b, l, s) in zip(img_ids, preds):
        anns = by_img[img_id]
        gb = np.array([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)])
        gl = np.array([cats.index(a['category_id']) for a in anns], dtype=np.float64)
        ours.update(b[None], l[None], s[None], gb.reshape(1, -1, 4), gl.reshape(1, -1))
        keep = (l >= 0) & (s >= 0.05)
        results += [{'image_id': img_id, 'category_id': cats[int(c)], 'score': float(sc),
                     'bbox': [x0, y0, x1 - x0, y1 - y0]}
                    for (x0, y0, x1, y1), c, sc in zip(b[keep], l[keep], s[keep])]
    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), 'bbox')
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours.get()
    np.testing.assert_allclose(ours._coco_eval.stats, ev.stats, rtol=0, atol=1e-12)
    assert ours.summary()['map'] == pytest.approx(ev.stats[0])


# ----------------------------------------------------------------------------------------------
# d2l
# ----------------------------------------------------------------------------------------------
def test_cls_eval_and_bbox_eval_hand_computed():
    cls_preds = np.array([[[2., 1., 0.], [0., 3., 1.], [0., 0., 5.], [9., 0., 0.]]])  # (1,4,3)
    cls_targets = np.array([[0., 1., 1., 2.]])           # argmax 0,1,2,0 -> 2 correct
    assert cls_eval(cls_preds, cls_targets) == 2.0
    assert cls_eval(mx.nd.array(cls_preds), mx.nd.array(cls_targets)) == 2.0
    p = np.array([[1., 2., 3., 4., 0., 0., 0., 0.]])
    t = np.array([[1.5, 2., 2., 4., 9., 9., 9., 9.]])
    mask = np.array([[1., 1., 1., 1., 0., 0., 0., 0.]])
    assert bbox_eval(p, t, mask) == pytest.approx(1.5)
    with pytest.raises(ValueError, match='same shape'):
        bbox_eval(p, t, mask[:, :4])
    with pytest.raises(ValueError, match=r'\+ \(C\+1,\)'):
        cls_eval(cls_preds, cls_targets[:, :3])


def test_d2l_metric_ndarray_and_numpy_agree():
    rng = np.random.RandomState(3)
    m_nd, m_np = D2LMetric(), D2LMetric()
    correct = abs_sum = 0.0
    for _ in range(3):
        cp, ct = rng.randn(2, 10, 4), rng.randint(0, 4, (2, 10)).astype(np.float32)
        bp, bt = rng.randn(2, 40), rng.randn(2, 40)
        bm = (rng.rand(2, 40) < 0.3).astype(np.float32)
        m_np.update(cp, ct, bp, bt, bm)
        m_nd.update(*[mx.nd.array(a) for a in (cp, ct, bp, bt, bm)])
        correct += (cp.argmax(-1) == ct).sum()
        abs_sum += np.abs((bt - bp) * bm).sum()
    names, values = m_np.get()
    assert names == ['class_err', 'bbox_mae']
    assert values[0] == pytest.approx(1 - correct / 60)
    assert values[1] == pytest.approx(abs_sum / 240)
    np.testing.assert_allclose(m_nd.get()[1], values, rtol=1e-5)
    m_np.reset()
    assert all(math.isnan(v) for v in m_np.get()[1])

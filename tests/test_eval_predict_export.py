"""The eval / predict / export command-line tools on a tiny untrained tiny_ssd.

No training: a tiny_ssd initialised with a fixed seed is enough to check the plumbing (metric
keys and ranges, box mapping to original pixels, export round trip, error messages). Metric
correctness of the evaluation loop is checked with an "oracle" network that returns the ground
truth, which must score mAP 1 in every metric.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from gluon_ssd import eval as ssd_eval
from gluon_ssd import export as ssd_export
from gluon_ssd import predict as ssd_predict
from gluon_ssd.errors import UserError
from gluon_ssd.evaluate import evaluate
from gluon_ssd.model.io import (input_transform, load_model, make_meta, map_boxes_to_original,
                                save_meta)

REPO = Path(__file__).resolve().parents[1]
SHAPES = ['ellipse', 'rectangle', 'triangle', 'cross', 'ring', 'star']


def _save_tiny(path, classes, seed=7):
    """A tiny_ssd with ``classes``, initialised from ``seed``, saved to ``path``."""
    from gluon_ssd.model.zoo import get_model
    mx.random.seed(seed)
    net = get_model('tiny_ssd', classes=classes)
    net.initialize()
    net(mx.nd.zeros((1, 3, 256, 256)))
    net.save_parameters(str(path))
    return str(path)


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    """Synthetic VOC folder (4 val images, 128 px), a 6-class params file and a run directory."""
    from gluon_ssd.data import synthetic_voc
    root = tmp_path_factory.mktemp('evalpred')
    voc = str(synthetic_voc(root=root / 'synthetic', num_train=1, num_val=4, size=128))
    params = _save_tiny(root / 'tiny6.params', SHAPES)
    run_dir = root / 'run'
    run_dir.mkdir()
    _save_tiny(run_dir / 'best.params', SHAPES)
    (run_dir / 'config.json').write_text(json.dumps(
        {'network': 'tiny_ssd', 'data_shape': 256, 'classes': SHAPES, 'decoder': 'per_class',
         'dataset': 'voc', 'dataset_root': voc, 'val_split': 'val', 'num_train': 0,
         'num_val': 0}))
    images = root / 'images'
    images.mkdir()
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(120, 200, 3) * 255).astype(np.uint8)).save(images / 'wide.png')
    Image.fromarray((rng.rand(150, 90, 3) * 255).astype(np.uint8)).save(images / 'tall.jpg')
    (images / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 definitely not a jpeg')
    (root / 'garbage.params').write_bytes(b'not a params file at all')
    return {'root': root, 'voc': voc, 'params': params, 'run_dir': str(run_dir),
            'wide': str(images / 'wide.png'), 'tall': str(images / 'tall.jpg'),
            'corrupt': str(images / 'corrupt.jpg'), 'garbage': str(root / 'garbage.params')}


# ----------------------------------------------------------------------------------------------
# box mapping
# ----------------------------------------------------------------------------------------------
def test_map_boxes_to_original_inverts_the_resize():
    boxes = map_boxes_to_original([[64, 32, 128, 256], [-5, -5, 300, 300]],
                                              input_size=(256, 256), orig_size=(512, 128))
    np.testing.assert_allclose(boxes[0], [128, 16, 256, 127])       # y clipped to H - 1
    np.testing.assert_allclose(boxes[1], [0, 0, 511, 127])          # clipped to the image
    unclipped = map_boxes_to_original([[-5, 0, 10, 10]], (100, 50), (200, 200),
                                                  clip=False)
    np.testing.assert_allclose(unclipped[0], [-10, 0, 20, 40])


class _FixedBoxNet:
    """Stands in for an SSD: always detects ``boxes`` (input pixels) with scores 0.9, 0.8..."""

    def __init__(self, boxes, class_ids):
        self.boxes, self.class_ids = np.asarray(boxes, np.float32), class_ids

    def __call__(self, x):
        k = len(self.boxes)
        ids = mx.nd.array(np.array(self.class_ids, np.float32).reshape(1, k, 1))
        scores = mx.nd.array(np.linspace(0.9, 0.5, k, dtype=np.float32).reshape(1, k, 1))
        return ids, scores, mx.nd.array(self.boxes.reshape(1, k, 4))


def test_detect_maps_known_objects_back_to_original_pixels():
    """Objects drawn at known places in a 300x180 image, resized to 256x256 by the val
    transform: boxes reported by the network in input pixels come back in original pixels."""
    h, w = 180, 300
    img = np.zeros((h, w, 3), np.uint8)
    objects = np.array([[20, 30, 119, 89, 0, 0], [150, 100, 289, 169, 1, 0]], np.float32)
    for x0, y0, x1, y1, _, _ in objects.astype(int):
        img[y0:y1 + 1, x0:x1 + 1] = 255
    image = mx.nd.array(img, dtype=np.uint8)
    meta = make_meta('tiny_ssd', ['a', 'b'])
    _, net_label = input_transform(meta)(image, objects)
    np.testing.assert_allclose(net_label[0, :4], [20 * 256 / 300, 30 * 256 / 180,
                                                  119 * 256 / 300, 89 * 256 / 180], rtol=1e-5)
    net = _FixedBoxNet(net_label[:, :4], [0, 1])
    boxes, scores, ids = ssd_predict.detect(net, meta, image)
    np.testing.assert_allclose(boxes, objects[:, :4], atol=1e-3)
    assert ids.tolist() == [0, 1] and scores[0] > scores[1]
    # the Python entry takes a numpy HWC uint8 image (or gray, or RGBA) and a file path too
    for same in (img, img[:, :, 0], np.dstack([img, np.full((h, w), 255, np.uint8)])):
        np.testing.assert_array_equal(ssd_predict.detect(net, meta, same)[0], boxes)
    with pytest.raises(UserError, match='uint8'):
        ssd_predict.detect(net, meta, img.astype(np.float32) * 300)


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------
def test_predict_cli_writes_json_and_png_per_image(work, tmp_path, capsys):
    out = tmp_path / 'pred'
    rc = ssd_predict.main([work['wide'], work['tall'], '--params', work['params'],
                           '--classes', ','.join(SHAPES), '--thresh', '0.05',
                           '--out-dir', str(out)])
    assert rc == 0
    records = json.loads(capsys.readouterr().out)
    assert [r['image'] for r in records] == [work['wide'], work['tall']]
    for record, stem, (w, h) in zip(records, ('wide', 'tall'), ((200, 120), (90, 150))):
        assert (record['width'], record['height']) == (w, h)
        assert json.loads((out / f'{stem}.json').read_text()) == record
        with Image.open(out / f'{stem}.png') as png:
            assert png.size == (w, h)
        assert record['detections'], 'an untrained net still scores some boxes above 0.05'
        for det in record['detections']:
            x0, y0, x1, y1 = det['bbox']
            assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1
            assert det['score'] >= 0.05 and det['class'] == SHAPES[det['class_id']]


def test_predict_from_run_dir_takes_its_classes(work, capsys):
    rc = ssd_predict.main([work['wide'], '--run-dir', work['run_dir'], '--thresh', '0',
                           '--out-dir', ''])
    assert rc == 0
    (record,) = json.loads(capsys.readouterr().out)
    assert {d['class'] for d in record['detections']} <= set(SHAPES)


# ----------------------------------------------------------------------------------------------
# eval
# ----------------------------------------------------------------------------------------------
def _check_metrics(result, kinds, classes):
    assert set(result['metrics']) == set(kinds)
    for kind in kinds:
        summary = result['metrics'][kind]
        assert summary['map'] is None or 0.0 <= summary['map'] <= 1.0
        assert set(summary['ap']) == set(classes)
        assert all(v is None or 0.0 <= v <= 1.0 for v in summary['ap'].values())
        assert result['map'][kind] == summary['map']


def test_eval_cli_on_synthetic_voc_folder(work, tmp_path, capsys):
    out = tmp_path / 'metrics.json'
    rc = ssd_eval.main(['--params', work['params'], '--dataset', 'voc', '--dataset-root',
                        work['voc'], '--val-split', 'val', '--batch-size', '3',
                        '--out', str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert json.loads(out.read_text()) == result
    assert result['num_images'] == 4 and result['model']['classes'] == SHAPES
    _check_metrics(result, ['voc07', 'voc', 'coco'], SHAPES)
    assert all(k in result['metrics']['coco'] for k in ('AP', 'AP50', 'AP75'))
    assert 'mAP' in captured.err and 'ellipse' in captured.err      # the per-class table


def test_eval_cli_defaults_to_the_run_directory_dataset(work, capsys):
    rc = ssd_eval.main(['--run-dir', work['run_dir'], '--metrics', 'voc07', '--decoder',
                        'argmax', '--nms-thresh', '0.5'])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result['dataset']['dataset_root'] == work['voc'] and result['num_images'] == 4
    assert result['model']['decoder'] == 'argmax' and result['nms_thresh'] == 0.5
    _check_metrics(result, ['voc07'], SHAPES)


class _OracleNet:
    """Returns each image's ground truth (input pixels) as detections, in loader order."""

    def __init__(self, labels):
        self.labels, self.next = labels, 0

    def __call__(self, x):
        batch = self.labels[self.next:self.next + x.shape[0]]
        self.next += x.shape[0]
        k = max(1, max(len(lb) for lb in batch))
        ids = -np.ones((len(batch), k, 1), np.float32)
        scores = np.zeros((len(batch), k, 1), np.float32)
        boxes = np.zeros((len(batch), k, 4), np.float32)
        for i, lb in enumerate(batch):
            ids[i, :len(lb), 0], scores[i, :len(lb), 0] = lb[:, 4], 1.0
            boxes[i, :len(lb)] = lb[:, :4]
        return mx.nd.array(ids), mx.nd.array(scores), mx.nd.array(boxes)


def test_evaluate_dataset_gives_map_1_for_ground_truth_detections(work):
    """VOC metrics in input pixels and COCO in original pixels both see perfect boxes."""
    from gluon_ssd.data import VOCDetection
    dataset = VOCDetection(work['voc'], ['val'], classes=SHAPES)
    meta = make_meta('tiny_ssd', SHAPES)
    transform = input_transform(meta)
    labels = [transform(*dataset[i])[1] for i in range(len(dataset))]
    assert sum(len(lb) for lb in labels) > 0
    results = evaluate(_OracleNet(labels), meta, dataset, ['voc07', 'voc', 'coco'], batch_size=3)
    for kind in ('voc07', 'voc', 'coco'):
        assert results[kind]['map'] == pytest.approx(1.0), kind
    stats = results['coco']['stats']            # all 12 COCOeval numbers
    assert list(stats) == ['AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100',
                           'ARs', 'ARm', 'ARl']
    assert stats['AP'] == pytest.approx(1.0) and stats['AR100'] == pytest.approx(1.0)


class _DivergedNet:
    """A diverged model: every detection has infinite coordinates (NaN for the first)."""

    def __call__(self, x):
        b = x.shape[0]
        bboxes = np.full((b, 5, 4), np.inf, np.float32)
        bboxes[:, 0, 0] = np.nan
        return (mx.nd.zeros((b, 5, 1)), mx.nd.ones((b, 5, 1)) * 0.5, mx.nd.array(bboxes))


def test_non_finite_detections_are_ignored_not_fatal(work):
    from gluon_ssd.data import VOCDetection
    dataset = VOCDetection(work['voc'], ['val'], classes=SHAPES)
    meta = make_meta('tiny_ssd', SHAPES)
    results = evaluate(_DivergedNet(), meta, dataset, ['voc07', 'coco'])
    assert results['voc07']['non_finite_detections'] == 5 * len(dataset)
    assert results['voc07']['map'] == 0.0 and results['coco']['map'] == 0.0
    boxes, scores, ids = ssd_predict.detect(_DivergedNet(), meta, dataset[0][0])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and ids.shape == (0,)


def test_eval_raccoon_test_split(shared_data, tmp_path, capsys):
    params = _save_tiny(tmp_path / 'raccoon.params', ['raccoon'])
    rc = ssd_eval.main(['--params', params, '--classes', 'raccoon', '--dataset', 'voc',
                        '--dataset-root', str(shared_data / 'raccoon'), '--val-split', 'test'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert result['num_images'] == 40        # the whole test split
    _check_metrics(result, ['voc07', 'voc', 'coco'], ['raccoon'])


def test_eval_coco128_uses_the_annotation_file(shared_data, tmp_path, capsys):
    from gluon_ssd.model.classes import COCO_CLASSES
    params = _save_tiny(tmp_path / 'coco.params', list(COCO_CLASSES))
    rc = ssd_eval.main(['--params', params, '--dataset', 'coco', '--dataset-root',
                        str(shared_data / 'coco128'), '--val-split', 'instances_train2017',
                        '--num-val', '4', '--metrics', 'coco'])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    result = json.loads(captured.out)
    assert result['num_images'] == 4 and result['metrics']['coco']['num_images'] == 4
    _check_metrics(result, ['coco'], list(COCO_CLASSES))


# ----------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings('ignore:Cannot decide type')  # MXNet's SymbolBlock.imports
def test_export_round_trip_gives_identical_detections(work, tmp_path, capsys):
    prefix = tmp_path / 'deploy' / 'tiny'
    rc = ssd_export.main(['--params', work['params'], '--classes', ','.join(SHAPES),
                          '--out', str(prefix)])
    assert rc == 0
    files = json.loads(capsys.readouterr().out)
    assert files['symbol'] == f'{prefix}-symbol.json' and files['input_name'] == 'data'
    assert files['params'] == f'{prefix}-0000.params'
    meta = json.loads(Path(files['meta']).read_text())
    # no --data-shape and no run directory: the network preset's default input size
    assert meta['classes'] == SHAPES and meta['input']['shape'] == ['B', 3, 128, 128]
    imported = mx.gluon.SymbolBlock.imports(files['symbol'], ['data'], files['params'])
    net, _ = load_model(work['params'], classes=SHAPES)
    x = mx.nd.random.normal(shape=(2, 3, 256, 256), ctx=mx.cpu())
    for ours, theirs in zip(net(x), imported(x)):
        assert ours.shape == theirs.shape
        assert np.abs(ours.asnumpy() - theirs.asnumpy()).max() < 1e-6


# ----------------------------------------------------------------------------------------------
# bad input: one line on stderr naming the file/flag, exit code 2
# ----------------------------------------------------------------------------------------------
def _bad_cases(work):
    classes = ','.join(SHAPES)
    return {
        'missing params': (ssd_predict, [work['wide'], '--params', 'nope.params',
                                         '--classes', classes], 'nope.params'),
        'corrupt params': (ssd_export, ['--params', work['garbage'], '--classes', classes,
                                        '--out', 'x'], 'garbage.params'),
        'wrong number of classes': (ssd_eval, ['--params', work['params'], '--classes', 'a,b',
                                               '--dataset', 'voc', '--dataset-root', work['voc'],
                                               '--val-split', 'val'], 'tiny6.params'),
        'classes flag vs model': (ssd_predict, [work['wide'], '--run-dir', work['run_dir'],
                                                '--classes', 'a,b'], 'trained for 6 classes'),
        'params of another network': (ssd_predict, [work['wide'], '--params', work['params'],
                                                    '--classes', classes, '--network',
                                                    'mobilenet1.0'], 'do not fit'),
        'network flag vs model': (ssd_export, ['--run-dir', work['run_dir'], '--network',
                                               'vgg16_atrous', '--out', 'x'], '--network'),
        'bare params without classes': (ssd_predict, [work['wide'], '--params', work['params']],
                                        '--classes is required'),
        'empty folder': (ssd_predict, [str(work['root'] / 'run'), '--params', work['params'],
                                       '--classes', classes], 'no image files'),
        'gpu on the cpu wheel': (ssd_predict, [work['wide'], '--params', work['params'],
                                               '--classes', classes, '--gpus', '0'], '--gpus 0'),
        'empty export prefix': (ssd_export, ['--run-dir', work['run_dir'], '--out', ''],
                                '--out'),
        'missing image': (ssd_predict, ['missing.jpg', '--params', work['params'],
                                        '--classes', classes], 'missing.jpg'),
        'corrupt image': (ssd_predict, [work['corrupt'], '--params', work['params'],
                                        '--classes', classes], 'corrupt.jpg'),
        'unknown network': (ssd_export, ['--params', work['params'], '--network', 'resnet9000',
                                         '--out', 'x'], '--network'),
        'bad data shape': (ssd_eval, ['--params', work['params'], '--data-shape', '300'],
                           '--data-shape'),
        'missing run dir': (ssd_eval, ['--run-dir', 'no/such/run'], 'no/such/run'),
        'bad metric': (ssd_eval, ['--params', work['params'], '--metrics', 'voc07,map'],
                       '--metrics'),
    }


@pytest.mark.parametrize('case', ['missing params', 'corrupt params', 'wrong number of classes',
                                  'classes flag vs model', 'params of another network',
                                  'network flag vs model', 'bare params without classes',
                                  'empty folder', 'gpu on the cpu wheel', 'empty export prefix',
                                  'missing image', 'corrupt image', 'unknown network',
                                  'bad data shape', 'missing run dir', 'bad metric'])
def test_bad_input_exits_2_with_one_line(work, case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module, argv, needle = _bad_cases(work)[case]
    rc = module.main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.splitlines() if not line.startswith('warning:')]
    assert len(lines) == 1 and 'error:' in lines[0] and needle in lines[0], err
    assert not os.path.exists(tmp_path / 'x-symbol.json')


def test_eval_ssd_script_reports_a_missing_params_file(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / 'eval_ssd.py'), '--params',
                           str(tmp_path / 'none.params')], capture_output=True, text=True,
                          cwd=str(REPO), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"eval_ssd.py: error: --params {tmp_path / 'none.params'}: " \
                                  "file not found"


def test_amp_loads_a_bfloat16_inference_net(work, capsys, monkeypatch):
    monkeypatch.setenv('GLUON_SSD_BF16', 'on')   # bfloat16 whatever this CPU's measured speed
    net32, _ = load_model(params=work['params'], classes=SHAPES)
    net16, _ = load_model(params=work['params'], classes=SHAPES, amp=True)
    assert (net32.precision, net16.precision) == ('float32', 'bfloat16')
    x = mx.nd.array(np.random.RandomState(0).normal(0, 1, (1, 3, 256, 256)))
    scores32, scores16 = net32(x)[1].asnumpy(), net16(x)[1].asnumpy()
    assert scores16.dtype == np.float32
    assert 'amp_cast' in net16._cached_graph[1].tojson(remove_amp_cast=False)
    assert 'amp_cast' not in net32._cached_graph[1].tojson(remove_amp_cast=False)
    np.testing.assert_allclose(scores16[0, :10], scores32[0, :10], atol=2e-2)
    with pytest.raises(UserError, match='--amp'):
        load_model(params=work['params'], classes=SHAPES, amp=True, ctx=[mx.gpu(0)])
    with pytest.raises(UserError, match='hybridize'):
        load_model(params=work['params'], classes=SHAPES, amp=True, hybridize=False)
    rc = ssd_eval.main(['--params', work['params'], '--dataset', 'voc', '--dataset-root',
                        work['voc'], '--val-split', 'val', '--metrics', 'voc07', '--amp'])
    assert rc == 0, capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# the model's meta file and folders of images
# ----------------------------------------------------------------------------------------------
def test_meta_file_travels_with_the_weights(work, tmp_path):
    """A .params file with its <stem>.meta.json loads without any flag: network, input size,
    classes and normalisation come from the meta file, never from guessing."""
    params = _save_tiny(tmp_path / 'model.params', ['cat', 'dog'])
    meta = make_meta('tiny_ssd', ['cat', 'dog'])
    assert (meta['network'], meta['data_shape']) == ('tiny_ssd', 256)
    assert meta['mean'] == [0.485, 0.456, 0.406] and meta['std'] == [0.229, 0.224, 0.225]
    save_meta(meta, str(tmp_path / 'model.meta.json'))
    net, loaded = load_model(params=params)
    assert (loaded['model'], loaded['classes'], loaded['data_shape']) == \
        ('tiny_ssd', ['cat', 'dog'], 256)
    with pytest.raises(UserError, match='--data-shape 128 contradicts'):
        load_model(params=params, data_shape=128)
    renamed = load_model(params=params, classes=['kitten', 'puppy'])[1]
    assert renamed['classes'] == ['kitten', 'puppy']


def test_predict_a_folder_predicts_every_image_in_it(work, capsys):
    folder = Path(work['wide']).parent
    rc = ssd_predict.main([str(folder / 'wide.png'), str(folder / 'tall.jpg'), '--run-dir',
                           work['run_dir'], '--out-dir', ''])
    assert rc == 0
    files = json.loads(capsys.readouterr().out)
    tmp_folder = work['root'] / 'good_images'
    tmp_folder.mkdir(exist_ok=True)
    for name in ('wide.png', 'tall.jpg'):
        (tmp_folder / name).write_bytes((folder / name).read_bytes())
    (tmp_folder / 'notes.txt').write_text('not an image')
    rc = ssd_predict.main([str(tmp_folder), '--run-dir', work['run_dir'], '--out-dir', ''])
    assert rc == 0
    records = json.loads(capsys.readouterr().out)
    assert [Path(r['image']).name for r in records] == ['tall.jpg', 'wide.png']   # sorted
    by_name = {Path(r['image']).name: r['detections'] for r in files}
    assert [r['detections'] for r in records] == [by_name['tall.jpg'], by_name['wide.png']]


# ----------------------------------------------------------------------------------------------
# deployment backends through the command lines (exported files, --backend)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def onnx_file(work):
    pytest.importorskip('onnxruntime')
    pytest.importorskip('openvino')
    assert ssd_export.main(['--params', work['params'], '--classes', ','.join(SHAPES),
                            '--format', 'onnx', '--out', str(work['root'] / 'tiny6')]) == 0
    return str(work['root'] / 'tiny6.onnx')


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_predict_gives_the_same_detections_in_every_backend(work, onnx_file, backend, capsys,
                                                            tmp_path):
    def detections(*flags):
        assert ssd_predict.main([work['wide'], work['tall'], '--thresh', '0.05', '--out-dir',
                                 str(tmp_path), *flags]) == 0
        return json.loads(capsys.readouterr().out)
    reference = detections('--params', work['params'], '--classes', ','.join(SHAPES))
    for flags in (('--params', work['params'], '--classes', ','.join(SHAPES),   # in memory
                   '--backend', backend),
                  ('--params', onnx_file, '--backend', backend)):            # the exported file
        got = detections(*flags)
        for a, b in zip(reference, got):
            assert [d['class'] for d in a['detections']] == [d['class'] for d in b['detections']]
            np.testing.assert_allclose([d['bbox'] for d in a['detections']],
                                       [d['bbox'] for d in b['detections']], atol=1e-2)
            np.testing.assert_allclose([d['score'] for d in a['detections']],
                                       [d['score'] for d in b['detections']], atol=1e-4)
        assert sum(len(r['detections']) for r in got) > 0


@pytest.mark.parametrize('flags, message', [
    (['--backend', 'mxnet'], 'runs in onnxruntime or openvino'),
    (['--amp'], 'precision is fixed'),
    (['--nms-thresh', '0.6'], 'nms_thresh 0.45 built in'),
    (['--decoder', 'argmax'], 'per_class decoder built in'),
])
def test_flags_that_contradict_an_exported_file_are_one_line(work, onnx_file, flags, message,
                                                             capsys):
    assert ssd_predict.main([work['wide'], '--params', onnx_file, '--out-dir',
                             str(work['root'] / 'never'), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_exported_file_without_its_meta_file_is_one_line(work, onnx_file, tmp_path, capsys):
    lone = tmp_path / 'lone.onnx'
    lone.write_bytes(Path(onnx_file).read_bytes())
    assert ssd_predict.main([work['wide'], '--params', str(lone), '--out-dir',
                             str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'lone.meta.json' in err, err


def test_export_flags_that_do_not_combine_are_one_line(work, capsys):
    for flags, message in ((['--bake-preprocess'], 'only with --format onnx'),
                           (['--format', 'onnx', '--backend', 'openvino'], '--backend')):
        assert ssd_export.main(['--params', work['params'], '--classes', ','.join(SHAPES),
                                '--out', str(work['root'] / 'x'), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_mxnet_export_loads_back_as_a_model(work, tmp_path):
    net, meta = load_model(params=work['params'], classes=SHAPES)
    files = ssd_export.export_model(net, meta, str(tmp_path / 'sym'))
    block, loaded = load_model(params=files['symbol'])
    assert (loaded['artifact'], loaded['backend'], loaded['classes']) == \
        ('mxnet-symbol', 'mxnet', SHAPES)
    x = mx.nd.random.uniform(shape=(2, 3, 256, 256))
    for a, b in zip(net(x), block(x)):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), atol=1e-5)

"""INT8 quantization: MXNet's oneDNN route, GluonCV's int8 zoo graphs, NNCF on the ONNX export
and the ``python -m gluon_ssd.quantize`` command line."""
import hashlib
import http.server
import io
import json
import threading
import zipfile

import mxnet as mx
import numpy as np
import pytest

from gluon_ssd import quantize as ssd_quantize
from gluon_ssd.data.build import open_split
from gluon_ssd.deploy import quantize as q
from gluon_ssd.errors import UserError
from gluon_ssd.model.io import make_meta, read_meta
from gluon_ssd.model.runtime import load_symbol
from gluon_ssd.model.zoo import get_model

CLASSES = ['raccoon']
SIZE = 256      # tiny_ssd's input


def _tiny(seed=3):
    mx.random.seed(seed)
    net = get_model('tiny_ssd', classes=CLASSES)
    net.initialize()
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.zeros((1, 3, SIZE, SIZE)))
    return net


@pytest.fixture(scope='module')
def tiny():
    return _tiny(), make_meta('tiny_ssd', CLASSES)


@pytest.fixture(scope='module')
def raccoon(shared_data):
    root = str(shared_data / 'raccoon')
    return {'root': root, 'train': open_split('voc', root, 'train', classes=CLASSES),
            'test': open_split('voc', root, 'test', classes=CLASSES)}


@pytest.fixture(scope='module')
def quantized(tiny, raccoon, tmp_path_factory):
    """tiny_ssd calibrated (naive, default exclusions) on 16 raccoon training photos."""
    net, meta = tiny
    batches, skipped = q.calibration_batches(raccoon['train'], meta, 16, batch_size=8)
    assert skipped == 0 and [b.shape for b in batches] == [(8, 3, SIZE, SIZE)] * 2
    prefix = str(tmp_path_factory.mktemp('int8') / 'tiny_int8')
    return q.quantize_mxnet(net, meta, batches, prefix, calib_mode='naive', num_calib=16)


def _graph_names(symbol_file):
    with open(symbol_file) as f:
        return [n['name'] for n in json.load(f)['nodes'] if n['op'] != 'null']


def _iou(a, b):
    """IoU matrix of corner boxes a (N, 4) and b (M, 4)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


# ----------------------------------------------------------------------------------------------
# MXNet (oneDNN)
# ----------------------------------------------------------------------------------------------
def test_layer_groups_split_the_network_from_the_post_processing(tiny):
    groups = q.layer_groups(tiny[0])
    assert len(groups['first_conv']) == 1 and len(groups['predictors']) == 10  # 5 maps x 2
    assert set(groups['first_conv'] + groups['predictors']) <= set(groups['network'])
    assert not set(groups['network']) & set(groups['post'])
    post = ' '.join(groups['post'])
    for op in ('softmax', 'box_nms', 'anchorgenerator', 'concat', 'flatten'):
        assert op in post


def test_int8_graph_quantizes_the_network_and_keeps_the_tail_float(quantized, tiny):
    names = _graph_names(quantized['symbol'])
    groups = q.layer_groups(tiny[0])
    quantized_ops = {n[len('quantized_'):] for n in names if n.startswith('quantized_')}
    # every convolution and pooling but the (default-excluded) first convolution is int8
    assert quantized_ops == set(groups['network']) - set(groups['first_conv'])
    assert set(groups['post']) <= set(names) and groups['first_conv'][0] in names
    meta = read_meta(quantized['meta'])     # a valid model meta file, plus what was done
    assert meta['artifact'] == 'mxnet-int8' and meta['calib_mode'] == 'naive'
    assert meta['num_calib'] == 16 and meta['excluded'] == groups['first_conv']
    assert (meta['nms_thresh'], meta['nms_topk'], meta['post_nms']) == (0.45, 400, 100)
    assert meta['classes'] == CLASSES and 'params' not in meta


def test_int8_detections_are_close_to_float32_on_raccoon_photos(quantized, tiny, raccoon):
    """Close means, per test photo: the 20 best scores (sorted) within 0.02 of float32's, and
    >= 90 % of float32's 10 best boxes found by an int8 box of the same class with IoU >= 0.5
    (near-tied boxes may swap places through NMS, so rows are not compared one by one).
    Measured: max score difference 0.004, 100 % of the boxes found (random-weight tiny_ssd).
    On a trained scratch_ssd_256 the raccoon VOC07 mAP moved by <= 0.01 (see
    ``DEFAULT_EXCLUDE``)."""
    net, meta = tiny
    x = q.calibration_batches(raccoon['test'], meta, 8, batch_size=8)[0][0]
    int8 = load_symbol(quantized['symbol'], quantized['params'])
    ref = [o.asnumpy() for o in net(x)]
    out = [o.asnumpy() for o in int8(x)]
    assert [o.shape for o in out] == [o.shape for o in ref] == [(8, 100, 1)] * 2 + [(8, 100, 4)]
    assert np.abs(np.sort(out[1][:, :, 0], 1)[:, -20:] - np.sort(ref[1][:, :, 0], 1)[:, -20:]
                  ).max() < 0.02
    found = []
    for i in range(len(x)):
        same = out[0][i, :, 0][None, :] == ref[0][i, :10, 0][:, None]
        found.extend((_iou(ref[2][i, :10], out[2][i]) * same).max(axis=1) >= 0.5)
    assert np.mean(found) >= 0.9
    # any batch size: one image alone gives its rows of the batch
    alone = [o.asnumpy() for o in int8(x[2:3])]
    np.testing.assert_allclose(alone[1], out[1][2:3], atol=1e-5)


def test_exclude_keeps_the_named_groups_float32(tiny, tmp_path):
    net, meta = tiny
    calib = [mx.nd.random.normal(shape=(2, 3, SIZE, SIZE))]
    files = q.quantize_mxnet(net, meta, calib, str(tmp_path / 'p'), exclude=['predictors'])
    groups = q.layer_groups(net)
    names = _graph_names(files['symbol'])
    assert set(groups['predictors']) <= set(names)
    assert 'quantized_' + groups['first_conv'][0] in names
    assert json.load(open(files['meta']))['excluded'] == sorted(groups['predictors'])


@pytest.mark.parametrize('kwargs, needle', [
    ({'calib_mode': 'minmax'}, '--calib-mode'),
    ({'num_calib': 0}, '--num-calib'),
    ({'exclude': ['conv_nope']}, '--exclude conv_nope'),
    ({'calib_images': [mx.nd.zeros((2, 3, 128, 128))]}, '(2, 3, 128, 128)'),
    ({'calib_images': []}, 'no calibration images'),
])
def test_bad_quantization_arguments_are_one_line_user_errors(tiny, tmp_path, kwargs, needle):
    net, meta = tiny
    args = {'calib_images': [mx.nd.zeros((2, 3, SIZE, SIZE))], **kwargs}
    with pytest.raises(UserError, match=needle.replace('(', r'\(').replace(')', r'\)')) as err:
        q.quantize_mxnet(net, meta, prefix=str(tmp_path / 'x'), **args)
    assert '\n' not in str(err.value)
    assert not (tmp_path / 'x-symbol.json').exists()


def test_loading_an_int8_model_needs_its_files_and_the_cpu(quantized, tmp_path):
    with pytest.raises(UserError, match='file not found'):
        load_symbol(str(tmp_path / 'none-symbol.json'), quantized['params'])
    with pytest.raises(UserError, match='CPU only'):
        load_symbol(quantized['symbol'], quantized['params'], mx.gpu(0), int8=True)


def test_calibration_skips_images_nothing_decodes(tmp_path):
    from _data_fixtures import make_voc
    root = make_voc(tmp_path / 'voc', {f'im{i}': [('raccoon', 5, 5, 40, 30)] for i in range(5)})
    (root / 'JPEGImages' / 'im0.jpg').write_bytes(b'not an image at all')
    ds = open_split('voc', str(root), 'train', classes=CLASSES)
    meta = make_meta('tiny_ssd', CLASSES)
    batches, skipped = q.calibration_batches(ds, meta, 3, batch_size=2)
    assert skipped == 1 and [b.shape[0] for b in batches] == [2, 1]
    batches, skipped = q.calibration_batches(ds, meta, 10, batch_size=8)
    assert skipped == 1 and sum(b.shape[0] for b in batches) == 4    # the split ran out


# ----------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def tiny_params(tmp_path_factory):
    path = tmp_path_factory.mktemp('cli') / 'tiny.params'
    _tiny(seed=5).save_parameters(str(path))
    return str(path)


def test_cli_quantizes_end_to_end(tiny_params, raccoon, tmp_path, capsys):
    out = tmp_path / 'deploy' / 'raccoon_int8'
    rc = ssd_quantize.main(['--params', tiny_params, '--classes', 'raccoon', '--data-shape', '256',
                            '--dataset', 'voc',
                            '--data-root', raccoon['root'], '--split', 'train',
                            '--num-calib', '6', '--batch-size', '3', '--out', str(out)])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result['symbol'] == f'{out}-symbol.json' and result['params'] == f'{out}-0000.params'
    assert result['artifact'] == 'mxnet-int8' and result['num_calib'] == 6
    assert result['skipped_images'] == 0 and len(result['excluded']) == 1
    meta = read_meta(result['meta'])
    assert meta['source_params'] == tiny_params and meta['model'] == 'tiny_ssd'
    net = load_symbol(result['symbol'], result['params'])
    ids, scores, bboxes = net(mx.nd.zeros((2, 3, SIZE, SIZE)))
    assert bboxes.shape == (2, 100, 4)


@pytest.mark.parametrize('flags, needle', [
    (['--num-calib', '0'], '--num-calib'),
    (['--exclude', 'layer_x'], '--exclude layer_x'),
    (['--gpus', '0'], '--gpus'),
    (['--amp'], '--amp'),
    (['--out', ''], '--out'),
    (['--split', 'nosuchsplit'], 'nosuchsplit'),
    (['--params', 'missing.params'], 'missing.params'),
    (['--method', 'nncf', '--exclude', 'predictors'], '--exclude'),
])
def test_cli_bad_flags_are_one_line(tiny_params, raccoon, tmp_path, capsys, monkeypatch, flags,
                                    needle):
    monkeypatch.chdir(tmp_path)
    argv = ['--params', tiny_params, '--classes', 'raccoon', '--dataset', 'voc',
            '--data-root', raccoon['root'], '--split', 'train', '--num-calib', '2',
            '--out', 'x'] + flags
    assert ssd_quantize.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines()
             if 'warning' not in line.lower()]
    assert len(lines) == 1 and 'error:' in lines[0] and needle in lines[0], lines
    assert not (tmp_path / 'x-symbol.json').exists()


# ----------------------------------------------------------------------------------------------
# GluonCV's int8 zoo graphs
# ----------------------------------------------------------------------------------------------
INT8_NAMES = ['ssd_300_vgg16_atrous_voc_int8', 'ssd_512_mobilenet1.0_voc_int8',
              'ssd_512_resnet50_v1_voc_int8', 'ssd_512_vgg16_atrous_voc_int8']


def test_int8_zoo_names_are_listed_and_need_trained_weights():
    from gluon_ssd.model.zoo import get_model_list, get_preset, list_models
    assert set(INT8_NAMES) <= set(get_model_list()) and not set(INT8_NAMES) & set(list_models())
    assert get_preset('ssd_512_mobilenet1.0_voc_int8')['data_size'] == 512
    with pytest.raises(UserError, match='only with trained weights'):
        get_model('ssd_300_vgg16_atrous_voc_int8')
    with pytest.raises(UserError, match='classes'):
        get_model('ssd_300_vgg16_atrous_voc_int8', pretrained=True, classes=['a'])
    with pytest.raises(UserError, match='nms_thresh'):
        get_model('ssd_300_vgg16_atrous_voc_int8', pretrained=True, nms_thresh=0.5)


def test_int8_zoo_model_refuses_weights_of_another_network(tiny_params):
    with pytest.raises(UserError, match="not the weights of GluonCV's ssd_512_mobilenet1.0_voc"):
        get_model('ssd_512_mobilenet1.0_voc_int8', pretrained=tiny_params)


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def model_server(monkeypatch):
    """Loopback HTTP server of ``files`` {url path: bytes}, set as ``MXNET_GLUON_REPO``."""
    httpd = http.server.HTTPServer(('127.0.0.1', 0), _Handler)
    httpd.files = {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={'poll_interval': 0.05},
                              daemon=True)
    thread.start()
    monkeypatch.setenv('MXNET_GLUON_REPO', f'http://127.0.0.1:{httpd.server_address[1]}/')
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def _publish(server, monkeypatch, name, data):
    """Serve ``data`` as the store file of ``name``, its SHA-1 registered in GluonCV's list
    (which both our store and GluonCV's read)."""
    from gluoncv.model_zoo import model_store
    sha1 = hashlib.sha1(data).hexdigest()
    monkeypatch.setitem(model_store._model_sha1, name, sha1)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_STORED) as z:
        z.writestr(f'{name}-{sha1[:8]}.params', data)
    server.files[f'/gluon/models/{name}-{sha1[:8]}.zip'] = archive.getvalue()


@pytest.mark.slow
def test_int8_zoo_model_downloads_the_float_weights_and_runs(model_server, tmp_path, monkeypatch):
    """``ssd_512_mobilenet1.0_voc_int8`` through the store: GluonCV's file name, SHA-1 check,
    download from ``MXNET_GLUON_REPO`` (a fake, random-weight file registered under its SHA-1);
    the detections equal those of GluonCV's own int8 loader on the same file."""
    import gluoncv
    from gluoncv.model_zoo import model_store
    base = 'ssd_512_mobilenet1.0_voc'
    mx.random.seed(0)
    gnet = gluoncv.model_zoo.get_model(base, pretrained=False, pretrained_base=False)
    gnet.initialize()
    gnet(mx.nd.zeros((1, 3, 512, 512)))
    gnet.save_parameters(str(tmp_path / 'w.params'))
    _publish(model_server, monkeypatch, base, (tmp_path / 'w.params').read_bytes())
    # GluonCV's own loader also builds its network with the ImageNet base: serve one
    backbone = gluoncv.model_zoo.get_model('mobilenet1.0', pretrained=False)
    backbone.initialize()
    backbone(mx.nd.zeros((1, 3, 224, 224)))
    backbone.save_parameters(str(tmp_path / 'b.params'))
    _publish(model_server, monkeypatch, 'mobilenet1.0', (tmp_path / 'b.params').read_bytes())
    root = tmp_path / 'models'
    net = get_model(f'{base}_int8', pretrained=True, root=str(root))
    sha1 = model_store._model_sha1[base]
    assert (root / f'{base}-{sha1[:8]}.params').is_file()
    assert net.classes == tuple(gluoncv.data.VOCDetection.CLASSES)
    assert net.meta['data_shape'] == 512 and net.meta['artifact'] == 'mxnet-int8'
    assert (net.meta['nms_topk'], net.meta['post_nms']) == (200, 100)
    x = mx.nd.random.normal(shape=(2, 3, 512, 512))
    ids, scores, bboxes = net(x)
    assert (ids.shape, scores.shape, bboxes.shape) == ((2, 100, 1), (2, 100, 1), (2, 100, 4))
    theirs = gluoncv.model_zoo.get_model(f'{base}_int8', pretrained=True, root=str(root))
    for a, b in zip(net(x), theirs(x)):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# NNCF on the ONNX export
# ----------------------------------------------------------------------------------------------
def _run_onnx(path, x, backend):
    if backend == 'onnxruntime':
        import onnxruntime as ort
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        return session.run(['ids', 'scores', 'bboxes'], {'data': x})
    import openvino as ov
    compiled = ov.Core().compile_model(path, 'CPU')
    result = compiled(x)
    return [result[compiled.output(n)] for n in ('ids', 'scores', 'bboxes')]


def _nncf_files(fmt, tiny, tiny_params, raccoon, tmp_path, capsys):
    """QDQ ONNX through the library, OpenVINO IR through the command line (whose stdout must
    stay pure JSON although NNCF logs to stdout)."""
    net, meta = tiny
    if fmt == 'onnx':
        calib, _ = q.calibration_batches(raccoon['train'], meta, 8, batch_size=8)
        return net, q.quantize_nncf(net, meta, calib, str(tmp_path / 'tiny_int8'), fmt=fmt,
                                    subset_size=8)
    from gluon_ssd.model.io import load_model
    rc = ssd_quantize.main(['--params', tiny_params, '--classes', 'raccoon', '--data-shape',
                            '256', '--method', 'nncf', '--nncf-format', 'openvino',
                            '--dataset', 'voc', '--data-root', raccoon['root'], '--split',
                            'train', '--num-calib', '8', '--out', str(tmp_path / 'tiny_int8')])
    assert rc == 0
    files = json.loads(capsys.readouterr().out)
    assert files['weights'] == str(tmp_path / 'tiny_int8.bin')
    return load_model(params=tiny_params, classes=CLASSES, data_shape=SIZE)[0], files


def _int8_readers(path, fmt):
    """``(names of the nodes reading int8-rounded tensors, the network part's node names, the
    class predictors' names)``."""
    if fmt == 'onnx':
        import onnx
        model = onnx.load(path)
        dequantized = {t for n in model.graph.node if n.op_type == 'DequantizeLinear'
                       for t in n.output}
        readers = {n.name for n in model.graph.node if set(n.input) & dequantized}
        names, kinds, inputs, outputs = q._onnx_nodes(model)
        convs = ('Conv',)
    else:
        import openvino as ov
        model = ov.Core().read_model(path)
        readers = {t.get_node().get_friendly_name() for op in model.get_ordered_ops()
                   if op.get_type_name() == 'FakeQuantize'
                   for t in op.output(0).get_target_inputs()}
        names, kinds, inputs, outputs = q._ov_nodes(model)
        convs = ('Convolution', 'GroupConvolution')
    classes = {names[i] for i in q._class_predictors(kinds, inputs, outputs, convs)}
    return readers, q._network_part(names, kinds, inputs, convs), classes


@pytest.mark.slow
@pytest.mark.parametrize('fmt', ['onnx', 'openvino'])
def test_nncf_quantizes_the_network_and_keeps_the_tail_float(tiny, tiny_params, raccoon, tmp_path,
                                                             capsys, fmt):
    pytest.importorskip('nncf')
    net, files = _nncf_files(fmt, tiny, tiny_params, raccoon, tmp_path, capsys)
    info = json.load(open(files['meta']))
    assert info['artifact'] == f'{fmt}-int8' and info['num_calib'] == 8
    assert info['input']['name'] == 'data' and info['classes'] == CLASSES
    readers, network, classes = _int8_readers(files['model'], fmt)
    # int8 inputs only inside the network (convolutions, residual adds, pools), none in the
    # post-processing (flatten/concat of the predictions, softmax, decoding, NMS), and none in
    # the class predictors (TinySSD: one per feature map)
    assert readers and readers <= network, sorted(readers - network)
    assert len(classes) == 5 and not readers & classes, sorted(readers & classes)
    x = q.calibration_batches(raccoon['test'], info, 4, batch_size=4)[0][0]
    ref = [o.asnumpy() for o in net(x)]
    for backend in (['onnxruntime', 'openvino'] if fmt == 'onnx' else ['openvino']):
        out = _run_onnx(files['model'], x.asnumpy(), backend)
        assert [o.shape for o in out] == [o.shape for o in ref]
        assert np.abs(np.sort(out[1][:, :, 0], 1)[:, -20:] -
                      np.sort(ref[1][:, :, 0], 1)[:, -20:]).max() < 0.02

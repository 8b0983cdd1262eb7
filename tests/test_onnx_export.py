"""The ONNX export of the whole detector (gluon_ssd.model.onnx_export) and its ONNX Runtime /
OpenVINO wrappers (gluon_ssd.model.runtime) give the MXNet SSD's detections.

Random-weight networks give degenerate outputs (VGG16's logits explode, so every score is 1.0;
MobileNet's vanish, so every score is 1/(C+1)). :func:`_calibrate` rescales every convolution of
the seeded network once, on the test photos, so that its output has unit spread, and
:func:`_twin_classes` pairs up classes. The detections are then varied and distinct, of several
classes, and the per-class and argmax decoders give different rows.
"""
import json
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from gluon_ssd.coder import DetectionHead
from gluon_ssd.errors import UserError
from gluon_ssd.model.io import input_transform, make_meta, read_meta
from gluon_ssd.model.zoo import get_model

onnx = pytest.importorskip('onnx', reason='pip install gluon-ssd[deploy]')
ort = pytest.importorskip('onnxruntime', reason='pip install gluon-ssd[deploy]')
ov = pytest.importorskip('openvino', reason='pip install gluon-ssd[deploy]')

from gluon_ssd.model import onnx_post  # noqa: E402
from gluon_ssd.model.onnx_export import export_onnx, onnx_model  # noqa: E402
from gluon_ssd.model.runtime import (OnnxRuntimeDetector, OpenVINODetector,  # noqa: E402
                                     open_artifact, open_runtime)

CLASSES = ['raccoon', 'dog', 'cat', 'person']
BACKENDS = {'onnxruntime': OnnxRuntimeDetector, 'openvino': OpenVINODetector}
SCORE_TOL, BOX_TOL = 1e-4, 1e-2


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _photos(shared_data, size, count=3):
    """``count`` raccoon test photos resized to ``size``: ``(uint8 (count, S, S, 3), float32
    (count, 3, S, S) normalised)``."""
    names = (shared_data / 'raccoon' / 'ImageSets' / 'Main' / 'test.txt').read_text().split()
    transform = input_transform(dict(make_meta('tiny_ssd', CLASSES), data_shape=size))
    raw, norm = [], []
    for name in names[:count]:
        image = mx.image.imread(str(shared_data / 'raccoon' / 'JPEGImages' / f'{name}.jpg'))
        image = mx.image.imresize(image, size, size, interp=2)
        raw.append(image.asnumpy())
        # the model's own transform (its resize to the same size changes nothing)
        norm.append(transform(image, np.zeros((0, 6), np.float32))[0])
    return np.stack(raw), mx.nd.stack(*norm)


def _calibrate(net, x, cls_spread=1.0):
    """Rescale each convolution of ``net`` (weight and bias: the output scales exactly) so that
    its output on ``x`` has standard deviation 1 (the class predictors ``cls_spread``); one
    imperative pass, each layer seeing the already rescaled layers before it."""
    convs = []
    net.apply(lambda block: convs.append(block) if isinstance(block, nn.Conv2D) else None)
    class_convs = {id(p.predictor) for p in net.class_predictors}

    def rescale(block, _inputs, output):
        target = cls_spread if id(block) in class_convs else 1.0
        factor = target / (float(output.asnumpy().std()) or 1.0)
        for param in block.params.values():
            param.set_data(param.data() * factor)
        output[:] = output * factor

    hooks = [conv.register_forward_hook(rescale) for conv in convs]
    with mx.autograd.predict_mode():
        net.raw_outputs(mx.nd, x)
    for hook in hooks:
        hook.detach()


def _twin_classes(net):
    """Give each odd class the class predictor of the class before it: both then score the same
    on every anchor, so the per-class decoder reports both where the argmax decoder keeps one
    (the two decoders really differ on these nets)."""
    k = net.num_classes + 1  # channel a * k + 1 + c is class c of anchor a (0 = background)
    for predictor in net.class_predictors:
        for param in predictor.predictor.params.values():
            value = param.data().asnumpy()
            for c in range(0, net.num_classes - 1, 2):
                value[c + 2::k] = value[c + 1::k]
            param.set_data(mx.nd.array(value))


def _net(name, x, classes=CLASSES, twin=False):
    mx.random.seed(0)
    np.random.seed(0)
    net = get_model(name, classes=classes, pretrained_base=False)
    net.initialize()
    _calibrate(net, x[:1])
    if twin:
        _twin_classes(net)
    return net


def _tie_groups(scores):
    """Split row indices into runs whose consecutive scores differ by at most SCORE_TOL."""
    groups, start = [], 0
    for i in range(1, len(scores) + 1):
        if i == len(scores) or abs(scores[i] - scores[i - 1]) > SCORE_TOL:
            groups.append(range(start, i))
            start = i
    return groups


def assert_same_detections(got, ref):
    """``got`` equals ``ref`` (both ``(ids, scores, bboxes)`` numpy): same shapes, same padding
    rows (-1 in all six fields), ids identical, scores within 1e-4, boxes within 1e-2 px, same
    order. Only rows whose MXNet scores are within 1e-4 of a neighbour may come in another
    order (two runtimes' float32 roundings may order a near-tie differently); they are matched
    within their group. Returns the max abs score and box differences."""
    (gi, gs, gb), (ri, rs, rb) = [[np.asarray(a) for a in t] for t in (got, ref)]
    assert gi.shape == ri.shape and gs.shape == rs.shape and gb.shape == rb.shape
    max_score = max_box = 0.0
    for b in range(ri.shape[0]):
        valid = ri[b, :, 0] >= 0
        np.testing.assert_array_equal(gi[b, :, 0] >= 0, valid)
        for arr in (gi[b], gs[b], gb[b]):
            assert (arr[~valid] == -1).all()
        n = int(valid.sum())
        for group in _tie_groups(rs[b, :n, 0]):
            free = list(group)
            for r in group:
                match = [g for g in free if gi[b, g, 0] == ri[b, r, 0]
                         and np.abs(gb[b, g] - rb[b, r]).max() <= BOX_TOL
                         and abs(gs[b, g, 0] - rs[b, r, 0]) <= SCORE_TOL]
                assert match, f"image {b}: MXNet row {r} ({ri[b, r, 0]}, {rs[b, r, 0]}, " \
                              f"{rb[b, r]}) has no counterpart"
                g = r if r in match else match[0]
                free.remove(g)
                max_score = max(max_score, abs(gs[b, g, 0] - rs[b, r, 0]))
                max_box = max(max_box, float(np.abs(gb[b, g] - rb[b, r]).max()))
    return max_score, max_box


def _numpy(outputs):
    return [o.asnumpy() for o in outputs]


# ----------------------------------------------------------------------------------------------
# the post-processing graph alone, against DetectionHead, on crafted predictions
# ----------------------------------------------------------------------------------------------
def _tail_model(anchors, num_classes, **settings):
    from onnx import TensorProto, helper
    g = onnx_post.GraphBuilder('t')
    names = onnx_post.detection_tail(g, 'cls', 'box', anchors, num_classes=num_classes,
                                     stds=(0.1, 0.1, 0.2, 0.2), **settings)
    n = anchors.shape[0]
    inputs = [helper.make_tensor_value_info('cls', TensorProto.FLOAT, ['B', n, num_classes + 1]),
              helper.make_tensor_value_info('box', TensorProto.FLOAT, ['B', n, 4])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ['B', 'K', w])
               for name, w in zip(names, (1, 1, 4))]
    model = helper.make_model(helper.make_graph(g.nodes, 'tail', inputs, outputs, g.initializers),
                              opset_imports=[helper.make_opsetid('', 13)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _run_tail(model, backend, cls, box):
    if backend == 'onnxruntime':
        session = ort.InferenceSession(model, providers=['CPUExecutionProvider'])
        return session.run(['ids', 'scores', 'bboxes'], {'cls': cls, 'box': box})
    core = ov.Core()
    compiled = core.compile_model(core.read_model(model, b''), 'CPU',
                                  {'INFERENCE_PRECISION_HINT': 'f32'})
    result = compiled.create_infer_request().infer({'cls': cls, 'box': box})
    return [np.array(result[compiled.output(n)]) for n in ('ids', 'scores', 'bboxes')]


def _crafted(seed=0, batch=2, anchors=60, classes=3, patterns=6):
    """Predictions with many exact score ties and overlapping boxes: every anchor's logits are
    one of ``patterns`` rows (identical rows give identical scores in every runtime, so ties
    are real ties everywhere), anchors scattered over a 50 px square."""
    rng = np.random.RandomState(seed)
    xy, wh = rng.uniform(0, 50, (anchors, 2)), rng.uniform(10, 30, (anchors, 2))
    anchor = np.concatenate([xy, wh], 1).astype(np.float32)
    protos = rng.uniform(-3, 3, (patterns, classes + 1)).astype(np.float32)
    cls = protos[rng.randint(0, patterns, (batch, anchors))]
    box = (rng.randint(-2, 3, (batch, anchors, 4)) * 0.5).astype(np.float32)
    return anchor, cls, box


TAIL_SETTINGS = [  # (nms_thresh, nms_topk, post_nms)
    (0.45, 400, 100),   # the default: fewer candidates than nms_topk
    (0.45, 20, 10),     # nms_topk and post_nms cut
    (0.45, 10, 50),     # post_nms > nms_topk: -1 rows after the kept ones
    (0.45, -1, 100),    # all candidates
    (0.3, 50, -1),      # keep every row (K = candidates)
    (0, 400, 100),      # NMS off: every candidate, unsorted
]


@pytest.mark.parametrize('backend', list(BACKENDS))
@pytest.mark.parametrize('decoder', ['per_class', 'argmax'])
@pytest.mark.parametrize('nms_thresh, nms_topk, post_nms', TAIL_SETTINGS)
def test_tail_equals_detection_head(backend, decoder, nms_thresh, nms_topk, post_nms):
    anchors, cls, box = _crafted()
    settings = dict(decoder=decoder, nms_thresh=nms_thresh, nms_topk=nms_topk,
                    post_nms=post_nms)
    head = DetectionHead(3, **settings)
    ref = _numpy(head(mx.nd.array(cls), mx.nd.array(box), mx.nd.array(anchors[None])))
    got = _run_tail(_tail_model(anchors, 3, **settings), backend, cls, box)
    # exact ties (same score) are ordered by position in both: rows equal one for one
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[1], ref[1], atol=1e-6)
    np.testing.assert_allclose(got[2], ref[2], atol=1e-4)
    if (nms_thresh, nms_topk, post_nms) == (0.45, 400, 100):  # NMS really suppressed some
        probs = mx.nd.softmax(mx.nd.array(cls)).asnumpy()[..., 1:]
        candidates = probs > 0.01 if decoder == 'per_class' else probs.max(-1) > 0.01
        assert ((ref[0][..., 0] >= 0).sum(axis=1) < candidates.reshape(2, -1).sum(axis=1)).all()


def test_tail_without_candidates_is_all_padding():
    anchors, cls, box = _crafted(batch=1)
    cls[..., 0] = 30.0  # background everywhere: every foreground score < 0.01
    ref = _numpy(DetectionHead(3)(mx.nd.array(cls), mx.nd.array(box), mx.nd.array(anchors[None])))
    for backend in BACKENDS:
        got = _run_tail(_tail_model(anchors, 3, decoder='per_class', nms_thresh=0.45,
                                    nms_topk=400, post_nms=100), backend, cls, box)
        for g, r in zip(got, ref):
            assert g.shape == r.shape and (g == -1).all() and (r == -1).all()


def test_tail_above_exact_rank_limit_uses_topk_order(monkeypatch):
    """Past EXACT_RANK_LIMIT candidates the pre-NMS order is TopK's own, which the ONNX spec
    (and ONNX Runtime) breaks by lower index first, as MXNet's stable sort."""
    monkeypatch.setattr(onnx_post, 'EXACT_RANK_LIMIT', 0)
    anchors, cls, box = _crafted()
    ref = _numpy(DetectionHead(3)(mx.nd.array(cls), mx.nd.array(box), mx.nd.array(anchors[None])))
    got = _run_tail(_tail_model(anchors, 3, decoder='per_class', nms_thresh=0.45, nms_topk=400,
                                post_nms=100), 'onnxruntime', cls, box)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_allclose(got[2], ref[2], atol=1e-4)


# ----------------------------------------------------------------------------------------------
# whole detectors on real photos
# ----------------------------------------------------------------------------------------------
class Exported:
    """One calibrated network, its MXNet detections and its ONNX export, per decoder."""

    def __init__(self, name, shared_data):
        self.name = name
        net = get_model(name, classes=CLASSES, pretrained_base=False)
        size = net.im_size[0]
        self.images, self.x = _photos(shared_data, size)
        self.net = _net(name, self.x, twin=True)
        self.net.hybridize(static_alloc=True, static_shape=True)
        self.meta = make_meta(name, CLASSES)
        self.ref, self.models, self._detectors = {}, {}, {}

    def reference(self, decoder):
        if decoder not in self.ref:
            self.net.set_decoder(decoder)
            self.ref[decoder] = _numpy(self.net(self.x))
        return self.ref[decoder]

    def model(self, decoder):
        if decoder not in self.models:
            self.net.set_decoder(decoder)
            self.models[decoder] = onnx_model(self.net, dict(self.meta, decoder=decoder))
        return self.models[decoder]

    def detector(self, decoder, backend):
        key = (decoder, backend)
        if key not in self._detectors:
            self._detectors[key] = BACKENDS[backend](self.model(decoder).SerializeToString())
        return self._detectors[key]


@pytest.fixture(scope='module')
def tiny(shared_data):
    return Exported('tiny_ssd', shared_data)


@pytest.fixture(scope='module')
def vgg(shared_data):
    return Exported('ssd_300_vgg16_atrous_voc', shared_data)


@pytest.fixture(scope='module')
def mobilenet(shared_data):
    return Exported('ssd_512_mobilenet1.0_voc', shared_data)


def _check_detector(exported, decoder, backend):
    ref = exported.reference(decoder)
    # the photos give many detections, of several classes (else the test would prove little)
    valid = ref[0][..., 0] >= 0
    assert valid.sum(axis=1).min() >= 20 and len(np.unique(ref[0][valid])) >= 2
    # per_class: some anchors give two rows (the twin classes), argmax: one row per box
    boxes = ref[2][valid]
    repeated = len(boxes) - len(np.unique(boxes, axis=0))
    assert repeated > 10 if decoder == 'per_class' else repeated == 0
    detector = exported.detector(decoder, backend)
    assert detector.backend == backend
    diffs = [assert_same_detections(_numpy(detector(exported.x)), ref)]
    one = detector(exported.x[1:2].asnumpy())                     # batch 1, numpy input
    assert all(isinstance(o, mx.nd.NDArray) for o in one)
    diffs.append(assert_same_detections(_numpy(one), [r[1:2] for r in ref]))
    return max(d[0] for d in diffs), max(d[1] for d in diffs)


@pytest.mark.parametrize('network', ['tiny',                                   # TinySSD
                                     pytest.param('vgg', marks=pytest.mark.slow),   # L2Norm
                                     pytest.param('mobilenet', marks=pytest.mark.slow)])
@pytest.mark.parametrize('backend', list(BACKENDS))
@pytest.mark.parametrize('decoder', ['per_class', 'argmax'])
def test_runtimes_match_mxnet(network, decoder, backend, request):
    score, box = _check_detector(request.getfixturevalue(network), decoder, backend)
    assert score <= SCORE_TOL and box <= BOX_TOL


def test_exported_graph_is_valid_onnx(tiny):
    model = tiny.model('per_class')
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ['data']
    assert [o.name for o in model.graph.output] == ['ids', 'scores', 'bboxes']
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ['B', 3, 256, 256]
    assert model.opset_import[0].version == 13
    # every weight (BatchNorm statistics too) is an initializer, not a graph input
    assert set(tiny.net.collect_params()) <= {i.name for i in model.graph.initializer}
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props['classes']) == CLASSES and props['model'] == 'tiny_ssd'


def test_bake_preprocess_takes_uint8_images(tiny):
    model = onnx_model(tiny.net, dict(tiny.meta, decoder=tiny.net.decoder), bake_preprocess=True)
    ref = tiny.reference(tiny.net.decoder)
    for backend, cls in BACKENDS.items():
        detector = cls(model)
        assert detector.input_name == 'image' and detector.input_dtype == np.uint8
        assert_same_detections(_numpy(detector(tiny.images)), ref)


def test_static_batch_export(tiny):
    model = onnx_model(tiny.net, tiny.meta, dynamic_batch=False)
    detector = OnnxRuntimeDetector(model)
    assert detector.input_shape == [1, 3, 256, 256]
    ref = tiny.reference(tiny.net.decoder)
    assert_same_detections(_numpy(detector(tiny.x[:1])), [r[:1] for r in ref])
    with pytest.raises(ValueError, match='must have shape'):
        detector(tiny.x)


def test_opset_17_and_bad_opset(tiny):
    detector = OnnxRuntimeDetector(onnx_model(tiny.net, tiny.meta, opset=17))
    assert_same_detections(_numpy(detector(tiny.x)), tiny.reference(tiny.net.decoder))
    with pytest.raises(UserError, match='opset 12'):
        onnx_model(tiny.net, tiny.meta, opset=12)


def test_export_onnx_files_meta_and_artifact(tiny, tmp_path):
    tiny.net.set_decoder('per_class')
    path = tmp_path / 'deploy' / 'ssd.onnx'
    files = export_onnx(tiny.net, tiny.meta, str(path))
    assert files == {'onnx': str(path), 'meta': str(tmp_path / 'deploy' / 'ssd.meta.json')}
    meta = read_meta(files['meta'])
    for key in ('model', 'network', 'classes', 'data_shape', 'mean', 'std', 'decoder'):
        assert meta[key] == tiny.meta[key]
    assert meta['artifact'] == 'onnx'
    assert (meta['nms_thresh'], meta['nms_topk'], meta['post_nms']) == (0.45, 400, 100)
    assert meta['input']['name'] == 'data' and meta['input']['shape'] == ['B', 3, 256, 256]
    assert [o['name'] for o in meta['outputs']] == ['ids', 'scores', 'bboxes']
    assert meta['outputs'][2]['shape'] == ['B', 100, 4]
    ref = tiny.reference('per_class')
    for backend in BACKENDS:
        detector = open_artifact(str(path), meta, backend)
        assert detector.meta is meta
        out = detector(tiny.x)
        assert out[0].context == tiny.x.context
        assert_same_detections(_numpy(out), ref)


def test_openvino_reads_ir(tiny, tmp_path):
    core = ov.Core()
    xml = str(tmp_path / 'ssd.xml')
    ov.save_model(core.read_model(tiny.model('per_class').SerializeToString(), b''), xml,
                  compress_to_fp16=False)
    detector = open_runtime(xml, 'openvino')
    assert_same_detections(_numpy(detector(tiny.x)), tiny.reference('per_class'))
    with pytest.raises(UserError, match='OpenVINO IR'):
        open_artifact(xml, {}, 'onnxruntime')


def test_runtime_user_errors(tmp_path, monkeypatch):
    for cls in BACKENDS.values():
        with pytest.raises(UserError, match='file not found'):
            cls(str(tmp_path / 'missing.onnx'))
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'not a model')
    for cls in BACKENDS.values():
        with pytest.raises(UserError, match='bad.onnx'):
            cls(str(bad))
    if 'CUDAExecutionProvider' not in ort.get_available_providers():
        with pytest.raises(UserError, match='onnxruntime-gpu'):
            OnnxRuntimeDetector(str(bad), gpu_id=0)
    with pytest.raises(UserError, match='--backend'):
        open_runtime(str(bad), 'tensorrt')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    monkeypatch.setitem(sys.modules, 'openvino', None)
    for cls in BACKENDS.values():
        with pytest.raises(UserError, match=r'pip install gluon-ssd\[deploy\]'):
            cls(str(bad))


def test_importable_without_the_runtimes():
    code = ("import sys\n"
            "for m in ('onnx', 'onnxruntime', 'openvino'): sys.modules[m] = None\n"
            "import gluon_ssd.model.runtime, gluon_ssd.model.onnx_export\n"
            "from gluon_ssd.errors import UserError\n"
            "try:\n"
            "    gluon_ssd.model.onnx_export.onnx_model(None)\n"
            "except UserError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'pip install gluon-ssd[deploy]' in out.stdout


# ----------------------------------------------------------------------------------------------
# every zoo network family exports
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('name', ['scratch_ssd_256', 'ssd_512_resnet50_v1_voc',
                                  'ssd_300_mobilenet1.0_lite_coco'])
def test_zoo_network_exports(name, shared_data):
    """head_norms (scratch), a ResNet body, the lite anchors with 1x1 predictors: one photo,
    ONNX Runtime (tiny_ssd, VGG16 and MobileNet-512 are covered above on both runtimes)."""
    size = get_model(name, classes=CLASSES[:2]).im_size[0]
    _, x = _photos(shared_data, size, count=1)
    net = _net(name, x, classes=CLASSES[:2])
    net.hybridize(static_alloc=True, static_shape=True)
    ref = _numpy(net(x))
    assert (ref[0][..., 0] >= 0).sum() >= 20
    model = onnx_model(net, make_meta(name, CLASSES[:2]))
    onnx.checker.check_model(model)
    assert_same_detections(_numpy(OnnxRuntimeDetector(model)(x)), ref)


@pytest.mark.parametrize('nms_thresh', [1 / 3, 0.3333])
def test_nms_iou_boundary(nms_thresh):
    """Two boxes of IoU exactly 50/150 (float32 1/3): MXNet's box_nms suppresses only when
    IoU > nms_thresh, and so does ONNX Runtime. OpenVINO's CPU NMS suppresses at IoU >=
    nms_thresh, so it agrees everywhere but at exact equality (checked off the boundary)."""
    anchors = np.array([[5, 5, 10, 10], [10, 5, 10, 10]], np.float32)  # -> [0,0,10,10], [5,0,15,10]
    cls = np.array([[[0, 2, 0], [0, 1, 0]]], np.float32)  # class 0, first box first
    box = np.zeros((1, 2, 4), np.float32)
    settings = dict(decoder='argmax', nms_thresh=nms_thresh, nms_topk=400, post_nms=100)
    ref = _numpy(DetectionHead(2, **settings)(mx.nd.array(cls), mx.nd.array(box),
                                              mx.nd.array(anchors[None])))
    assert (ref[0][0, :, 0] >= 0).sum() == (2 if nms_thresh == 1 / 3 else 1)
    model = _tail_model(anchors, 2, **settings)
    for backend in (['onnxruntime'] if nms_thresh == 1 / 3 else list(BACKENDS)):
        got = _run_tail(model, backend, cls, box)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_allclose(got[1], ref[1], atol=1e-6)
        np.testing.assert_array_equal(got[2], ref[2])

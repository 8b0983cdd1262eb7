"""Deployment benchmark: whole-detector inference (network + decoding + NMS) of SSD300-VGG16 and
SSD512-MobileNet1.0 through every deployable path, against GluonCV in MXNet float32.

Paths (``impl`` names of the entries): ``gluoncv_fp32`` (the reference), ``ours_mxnet_fp32``,
``ours_mxnet_bf16`` (``set_precision('bfloat16')``, forced), ``ours_mxnet_int8``
(:func:`~gluon_ssd.deploy.quantize.quantize_mxnet`, naive calibration), ``gluoncv_int8``
(GluonCV's own recipe: ``quantize_net`` with the ``flatten``/``concat`` layers float32, naive
calibration on the same photos), ``ours_ort_fp32`` / ``ours_ov_fp32`` (the exported ONNX detector
in ONNX Runtime / OpenVINO), ``ours_ort_int8`` / ``ours_ov_int8`` (NNCF's QDQ ONNX) and
``ours_ov_int8_ir`` (NNCF's OpenVINO IR).

Weights are random but identical in ours and GluonCV's net, and every convolution is rescaled
so that its output has unit standard deviation on a real photo (without that, random VGG/MobileNet
activations grow layer after layer, the class scores saturate at 1 and int8 calibration would see
nothing like a trained network). Inputs and calibration images are raccoon photos
(``$GLUON_SSD_SHARED_DATA/raccoon``, the tests' data; random images when absent).

The post-processing share of the exported model is ``1 - body / whole``: the same ONNX graph (or
OpenVINO IR) cut at the predictions ``cls_preds``/``box_preds`` against the whole graph, timed in
the same runtime. Accuracy comes from a trained model (a run directory, see :func:`raccoon_run`):
VOC07 mAP on the raccoon test photos through each path.
"""
import hashlib
import os
import tempfile

import mxnet as mx
import numpy as np

from bench.timing import interleaved, summary

__all__ = ['NETWORKS', 'ROWS', 'FLOAT_ROWS', 'raccoon_root', 'raccoon_run', 'build_pair',
           'bench_deploy', 'bench_network', 'bench_post_share', 'evaluate_paths', 'render']

#: key -> (zoo name, input size, title)
NETWORKS = {'ssd300': ('ssd_300_vgg16_atrous_voc', 300, 'SSD300-VGG16'),
            'mobilenet512': ('ssd_512_mobilenet1.0_voc', 512, 'SSD512-MobileNet1.0')}
#: timed paths, in table order
ROWS = ('gluoncv_fp32', 'ours_mxnet_fp32', 'ours_mxnet_bf16', 'ours_mxnet_int8', 'gluoncv_int8',
        'ours_ort_fp32', 'ours_ort_int8', 'ours_ov_fp32', 'ours_ov_int8', 'ours_ov_int8_ir')
#: paths that compute what ours_mxnet_fp32 computes: their scores must agree with it
FLOAT_ROWS = ('gluoncv_fp32', 'ours_ort_fp32', 'ours_ov_fp32')
REFERENCE, REFERENCE_INT8, OURS = 'gluoncv_fp32', 'gluoncv_int8', 'ours_mxnet_fp32'
#: GluonCV's SSD evaluation script keeps layers whose names contain these in float32
GLUONCV_EXCLUDE_MATCH = ('flatten', 'concat')
SPEED_TARGET = 4.0      # best deployable path vs GluonCV float32 at batch 8
MAP_LOSS_LIMIT = 0.01   # at most 1 mAP point (VOC07 mAP on a 0-1 scale) below ours float32
POST_SHARE_LIMIT = 0.05
SCORE_TOL = 1e-3        # float paths: top scores within this of ours float32
TOP = 10                # detections per image compared
BODY_OUTPUTS = ('cls_preds', 'box_preds')   # the exported graph's prediction tensors
RUN_ENV = 'GLUON_SSD_BENCH_RACCOON_RUN'
DATA_ENV = 'GLUON_SSD_SHARED_DATA'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def raccoon_root():
    """The raccoon photos (VOC layout): ``$GLUON_SSD_SHARED_DATA/raccoon``, default
    ``../shared/data/raccoon`` beside the repository (as the tests); ``None`` when absent."""
    shared = os.environ.get(DATA_ENV) or os.path.join(os.path.dirname(ROOT), 'shared', 'data')
    root = os.path.join(shared, 'raccoon')
    return root if os.path.isdir(os.path.join(root, 'Annotations')) else None


def raccoon_run(default=None):
    """The trained raccoon run directory for the mAP table: ``$GLUON_SSD_BENCH_RACCOON_RUN``,
    else ``default`` (relative paths from the repository root); ``None`` when neither names a
    directory with ``model.json`` and ``last.params``."""
    path = os.environ.get(RUN_ENV) or default
    if not path:
        return None
    path = path if os.path.isabs(path) else os.path.join(ROOT, path)
    ok = all(os.path.isfile(os.path.join(path, f)) for f in ('model.json', 'last.params'))
    return path if ok else None


def photos(meta, split, count, batch_size):
    """``count`` raccoon photos of ``split`` spread over it, through the model's input transform:
    a list of float32 ``(b, 3, S, S)`` NDArrays (``b <= batch_size``), and a word on the source.
    Without the photos: seeded normal noise of the same shapes."""
    from gluon_ssd.data.build import open_split
    from gluon_ssd.deploy.quantize import calibration_batches
    root = raccoon_root()
    if root is None:
        size = int(meta['data_shape'])
        rng = np.random.RandomState(count)
        batches = [mx.nd.array(rng.normal(0, 1, (min(batch_size, count - i), 3, size, size)))
                   for i in range(0, count, batch_size)]
        return batches, 'random normal images (raccoon photos not found)'
    dataset = open_split('voc', root, split, classes=['raccoon'])
    batches, _ = calibration_batches(dataset, meta, count, batch_size)
    return batches, f'raccoon {split} photos'


# ----------------------------------------------------------------------------------------------
# the networks
# ----------------------------------------------------------------------------------------------
def _random_weights(net):
    """Give ``net`` fresh trainable-network-like values: every weight (conv/dense, ndim > 1)
    drawn by ``Xavier()`` (seeded by ``mx.random``), BatchNorm gamma 1, beta 0, running mean 0,
    running variance 1, biases 0. (GluonCV's symbol-built layers, e.g. MobileNet's extra
    layers, take the global initializer for all of these: a uniform draw, negative variances
    included, which ONNX Runtime turns into NaN where MXNet does not.)"""
    init = mx.init.Xavier()
    constants = {'gamma': 1.0, 'beta': 0.0, 'mean': 0.0, 'var': 1.0, 'bias': 0.0}
    for param in net.collect_params().values():
        data = param.data()
        if param.name.endswith('weight') and len(param.shape) > 1:
            init(mx.init.InitDesc(param.name), data)
        else:
            value = next((v for k, v in constants.items() if param.name.endswith(k)), None)
            if value is None:
                continue        # GluonCV's anchor constants and the L2Norm scale stay
            data[:] = value
        param.set_data(data)


def _twins(ours, ref):
    """``[(our param, GluonCV param)]`` holding the same random values (matched by value: the
    weights of both nets were loaded from one file); constant-initialised parameters (BatchNorm,
    biases, the L2Norm scale) are left out: they are equal and stay so."""
    def digest(param):
        return hashlib.sha1(param.data().asnumpy().tobytes()).hexdigest()

    by_value = {}
    for q in ref.collect_params().values():
        if q.name.endswith('weight') and len(q.shape) > 1:
            by_value.setdefault(digest(q), []).append(q)
    pairs = []
    for p in ours.collect_params().values():
        match = by_value.get(digest(p), []) if p.name.endswith('weight') else []
        if len(match) == 1:
            pairs.append((p, match[0]))
    return pairs


def _unit_outputs(net, x, class_std=2.0):
    """Scale each convolution of ``net`` (weight and bias together, so its output scales exactly)
    so that its output on ``x`` has standard deviation 1, the class predictors ``class_std``
    (scores from near 0 to near 1, as a trained detector's). One imperative forward pass; each
    convolution sees the already rescaled ones before it. Returns how many were rescaled."""
    from mxnet import autograd
    from mxnet.gluon import nn
    convs = []
    net.apply(lambda block: convs.append(block) if isinstance(block, nn.Conv2D) else None)
    classifiers = {id(p.predictor) for p in net.class_predictors}

    def rescale(block, _inputs, output):
        want = class_std if id(block) in classifiers else 1.0
        factor = want / max(float(output.asnumpy().std()), 1e-12)
        for param in block.params.values():
            param.set_data(param.data() * factor)
        output[:] = output * factor

    hooks = [conv.register_forward_hook(rescale) for conv in convs]
    with autograd.predict_mode():
        net.raw_outputs(mx.nd, x)
    for hook in hooks:
        hook.detach()
    return len(convs)


def build_pair(name, x, seed=0):
    """``(ours, gluoncv)``: the zoo detector ``name`` (VOC classes) in ours and GluonCV's
    implementation with identical random weights, convolutions rescaled on ``x`` ``(b, 3, S, S)``
    normalised photos (:func:`_unit_outputs`), both hybridized with static_alloc/static_shape.
    Outputs of both: ``ids (B, K, 1)``, ``scores (B, K, 1)``, ``bboxes (B, K, 4)`` corner pixels.

    GluonCV's random weights go to ours through a GluonCV-layout file (the project's weight
    loader maps the names); the rescaled values come back by value-matched pairs."""
    import gluoncv

    from gluon_ssd.model.zoo import get_model
    mx.random.seed(seed)
    ref = gluoncv.model_zoo.get_model(name, pretrained=False, pretrained_base=False)
    ref.initialize()
    ref(x[:1])                        # materialise deferred shapes
    _random_weights(ref)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'gluoncv.params')
        ref.save_parameters(path)
        ours = get_model(name, pretrained=path)
    pairs = _twins(ours, ref)
    _unit_outputs(ours, x)
    for p, q in pairs:
        q.set_data(p.data())
    for net in (ours, ref):
        net.hybridize(static_alloc=True, static_shape=True)
    return ours, ref


def _bf16_twin(ours, name, x):
    """A second ``ours`` with the same weights in bfloat16 mixed precision (forced, whatever the
    ``--amp`` probe says)."""
    from gluon_ssd.model.zoo import get_model
    twin = get_model(name)
    twin.initialize()
    twin(x[:1])
    for p, q in zip(ours.collect_params().values(), twin.collect_params().values()):
        q.set_data(p.data())
    twin.set_precision('bfloat16')
    twin.hybridize(static_alloc=True, static_shape=True)
    return twin


class _CalibBatches:
    """Re-iterable ``[batch]`` items, the form ``quantize_net`` reads (it iterates twice)."""

    def __init__(self, batches):
        self._batches = batches

    def __iter__(self):
        return iter([b] for b in self._batches)


def gluoncv_int8(ref, calib):
    """GluonCV's recipe (its ``scripts/detection/ssd/eval_ssd.py --calibration``): MXNet's
    ``quantize_net`` on the GluonCV detector, ``quantized_dtype='auto'``, the layers whose names
    match :data:`GLUONCV_EXCLUDE_MATCH` float32, naive calibration on ``calib`` (equal-size
    float32 batches). Returns the int8 ``SymbolBlock`` (static_alloc/static_shape); ``ref`` is
    hybridized again with static_alloc/static_shape (quantize_net re-hybridizes it plainly)."""
    from mxnet.contrib.quantization import quantize_net
    size = calib[0].shape[0]
    calib = [b for b in calib if b.shape[0] == size]   # the calibration module binds one shape
    qnet = quantize_net(ref, quantized_dtype='auto', quantize_mode='full', exclude_layers=[],
                        exclude_layers_match=list(GLUONCV_EXCLUDE_MATCH),
                        calib_data=_CalibBatches(calib), calib_mode='naive',
                        num_calib_examples=size * len(calib), ctx=mx.cpu())
    qnet.hybridize(static_alloc=True, static_shape=True)
    ref.hybridize(static_alloc=True, static_shape=True)
    return qnet


def _artifacts(net, meta, calib, folder, ir=True):
    """The deployable forms of ``net``: ``{'onnx': fp32 ModelProto, 'mxnet_int8': {symbol,
    params}, 'onnx_int8': path, 'ir_int8': path or None}`` (NNCF and MXNet calibrated on
    ``calib``, every image)."""
    from gluon_ssd.deploy.quantize import quantize_mxnet, quantize_nncf
    from gluon_ssd.model.onnx_export import onnx_model
    count = sum(b.shape[0] for b in calib)
    out = {'onnx': onnx_model(net, meta),
           'mxnet_int8': quantize_mxnet(net, meta, calib, os.path.join(folder, 'mx_int8'),
                                        calib_mode='naive'),
           'onnx_int8': quantize_nncf(net, meta, calib, os.path.join(folder, 'nncf_int8'),
                                      fmt='onnx', subset_size=count)['model'],
           'ir_int8': None}
    if ir:
        out['ir_int8'] = quantize_nncf(net, meta, calib, os.path.join(folder, 'nncf_ir_int8'),
                                       fmt='openvino', subset_size=count)['model']
    return out


def _top_scores(out, top=TOP):
    """The ``top`` highest scores of each image, descending: ``(B, top)`` numpy (rows of
    different runtimes may come in another order within near-ties, so scores are compared
    sorted)."""
    scores = out[1].asnumpy()[..., 0]
    return -np.sort(-scores, axis=1)[:, :top]


def _check(outputs):
    """Each path's detections against ours_mxnet_fp32 on the same input: ``{impl: {'max_top_
    score_diff', 'detections', 'detections_ours'}}``. Float32 paths must agree within
    :data:`SCORE_TOL` (AssertionError otherwise); reduced-precision paths are reported only."""
    ref = outputs[OURS]
    ref_top, ref_count = _top_scores(ref), int((ref[0].asnumpy() >= 0).sum())
    checks = {}
    for impl, out in outputs.items():
        top = _top_scores(out)
        width = min(top.shape[1], ref_top.shape[1])
        diff = float(np.abs(top[:, :width] - ref_top[:, :width]).max())
        if impl in FLOAT_ROWS:
            assert diff <= SCORE_TOL, f'{impl}: top scores differ from {OURS} by {diff:.2e}'
        checks[impl] = {'max_top_score_diff': round(diff, 5),
                        'detections': int((out[0].asnumpy() >= 0).sum()),
                        'detections_ours': ref_count}
    return checks


# ----------------------------------------------------------------------------------------------
# speed
# ----------------------------------------------------------------------------------------------
def _paths(key, ours, ref, arts, calib, x_one):
    """``{impl: detector}``: every timed path of one network (see :data:`ROWS`); bfloat16 only
    where MKL-DNN can run it (AVX-512)."""
    from gluon_ssd.model.runtime import OnnxRuntimeDetector, OpenVINODetector, load_symbol
    from gluon_ssd.precision import cpu_bf16_support
    name = NETWORKS[key][0]
    paths = {REFERENCE: ref, OURS: ours}
    if cpu_bf16_support() is not None:
        paths['ours_mxnet_bf16'] = _bf16_twin(ours, name, x_one)
    paths['ours_mxnet_int8'] = load_symbol(arts['mxnet_int8']['symbol'],
                                           arts['mxnet_int8']['params'], int8=True)
    paths[REFERENCE_INT8] = gluoncv_int8(ref, calib)
    paths['ours_ort_fp32'] = OnnxRuntimeDetector(arts['onnx'])
    paths['ours_ort_int8'] = OnnxRuntimeDetector(arts['onnx_int8'])
    paths['ours_ov_fp32'] = OpenVINODetector(arts['onnx'])
    paths['ours_ov_int8'] = OpenVINODetector(arts['onnx_int8'])
    if arts['ir_int8']:
        paths['ours_ov_int8_ir'] = OpenVINODetector(arts['ir_int8'])
    return {impl: paths[impl] for impl in ROWS if impl in paths}


def _is_runtime(impl):
    return '_ort_' in impl or '_ov_' in impl


def _time_paths(paths, x, repeat, warmup):
    """Interleaved timing of every path on ``x``; the runtimes get it as numpy (what a
    deployment feeds them), the MXNet nets as an NDArray."""
    x_np = x.asnumpy()
    fns = {impl: (lambda d=det: d(x_np)) if _is_runtime(impl) else (lambda d=det: d(x))
           for impl, det in paths.items()}
    return interleaved(fns, repeat=repeat, warmup=warmup)


def best_path(images_per_s, map_delta):
    """The fastest of our paths whose mAP is at most :data:`MAP_LOSS_LIMIT` below ours float32
    (paths without an mAP count as unverified but eligible). Returns ``(impl, checked)``:
    ``checked`` says whether that path's mAP was measured."""
    ok = [impl for impl in images_per_s if impl.startswith('ours_')
          and (map_delta.get(impl) is None or map_delta[impl] >= -MAP_LOSS_LIMIT)]
    best = max(ok, key=lambda impl: images_per_s[impl])
    return best, map_delta.get(best) is not None


def _speed_entry(key, batch, times, checks, params, map_delta):
    """The entry of one network and batch from the paths' ``times`` (seconds per call)."""
    _, size, title = NETWORKS[key]
    med = {impl: summary(t)['median'] for impl, t in times.items()}
    ips = {impl: batch / m for impl, m in med.items()}
    speedups = {impl: med[REFERENCE] / m for impl, m in med.items()}
    int8_vs = {impl: med[REFERENCE_INT8] / m for impl, m in med.items() if 'int8' in impl}
    best, checked = best_path(ips, map_delta)
    suffix = best[len('ours_'):]
    ratios = {f'{suffix} vs {REFERENCE}': speedups[best],
              f'mxnet_int8 vs {REFERENCE_INT8}': int8_vs['ours_mxnet_int8']}
    kind = 'latency' if batch == 1 else 'throughput'
    entry = {'name': f'deploy_{key}_b{batch}',
             'title': f'{title} deployment incl. NMS, batch {batch} ({kind})',
             'unit': 'ms/batch', 'params': dict(params, batch=batch, input_size=size),
             'times': {impl: {s: (v * 1e3 if s != 'n' else v) for s, v in summary(t).items()}
                       for impl, t in times.items()},
             'images_per_s': ips, 'speedups': speedups, 'int8_speedups': int8_vs,
             'checks': checks, 'best': best, 'best_map_checked': checked,
             'ratios': ratios}
    if batch >= 8:
        # met: fast enough with its mAP measured; None: fast enough, mAP not measured here
        fast = bool(speedups[best] >= SPEED_TARGET)
        entry.update(target=SPEED_TARGET, target_vs=[f'{suffix} vs {REFERENCE}'],
                     target_met=(fast if checked or not fast else None))
    return entry


# ----------------------------------------------------------------------------------------------
# post-processing share
# ----------------------------------------------------------------------------------------------
def _onnx_body(model):
    """The ONNX graph ``model`` (ModelProto, whole detector) cut at the predictions: input
    ``data`` ``(B, 3, S, S)`` -> ``cls_preds (B, N, C+1)``, ``box_preds (B, N, 4)``; nothing of the
    decoding/NMS is left."""
    import onnx
    return onnx.utils.Extractor(model).extract_model(['data'], list(BODY_OUTPUTS))


def _onnx_tail(model):
    """The rest of ``model``: ``cls_preds``, ``box_preds`` -> ``ids (B, K, 1)``, ``scores (B, K,
    1)``, ``bboxes (B, K, 4)`` corner pixels (softmax, decoding, candidate selection, NMS)."""
    import onnx
    outputs = [o.name for o in model.graph.output]
    return onnx.utils.Extractor(model).extract_model(list(BODY_OUTPUTS), outputs)


def _ir_body(model):
    """The OpenVINO model ``model`` cut at its ``cls_preds``/``box_preds`` tensors."""
    import openvino as ov
    by_name = {n: out for op in model.get_ordered_ops() for out in op.outputs()
               for n in out.get_names()}
    return ov.Model([by_name[n] for n in BODY_OUTPUTS], model.get_parameters(), 'body')


def _runner(backend, model):
    """``fn(feed {input name: numpy}) -> outputs``: ``model`` (ModelProto, or ``ov.Model`` for
    OpenVINO) in a plain session, configured as :mod:`gluon_ssd.model.runtime` configures its
    detectors (ONNX Runtime's CPU provider, default threads; OpenVINO CPU, f32 precision hint)."""
    if backend == 'ort':
        import onnxruntime as ort
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=['CPUExecutionProvider'])
        return lambda feed: session.run(None, feed)
    import openvino as ov
    core = ov.Core()
    if not isinstance(model, ov.Model):
        model = core.read_model(model.SerializeToString(), b'')
    request = core.compile_model(model, 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'}) \
        .create_infer_request()
    return lambda feed: request.infer(feed)


def share_models(arts):
    """``{label: (backend, whole, body, tail or None)}``: the exported detector, its body and
    its post-processing alone in each runtime and precision (QDQ ONNX int8; the OpenVINO IR int8
    when there is one, without a separate tail)."""
    import onnx
    fp32, int8 = arts['onnx'], onnx.load(arts['onnx_int8'])
    parts = {id(m): (_onnx_body(m), _onnx_tail(m)) for m in (fp32, int8)}
    models = {label: (backend, m) + parts[id(m)]
              for label, backend, m in (('ort_fp32', 'ort', fp32), ('ort_int8', 'ort', int8),
                                        ('ov_fp32', 'ov', fp32), ('ov_int8', 'ov', int8))}
    if arts.get('ir_int8'):
        import openvino as ov
        ir = ov.Core().read_model(arts['ir_int8'])
        models['ov_int8_ir'] = ('ov', ir, _ir_body(ir), None)
    return models


def bench_post_share(key, models, x, batch, repeat, warmup=1):
    """Time each whole exported detector, its body and its post-processing alone on ``x``
    ``(B, 3, S, S)`` (interleaved; the tail is fed the body's outputs on ``x``). The entry's
    ``post_share[label] = 1 - body / whole`` and ``post_alone_share[label] = tail / whole``
    (median times)."""
    feed = {'data': x.asnumpy()}
    fns = {}
    for label, (backend, whole, body, tail) in models.items():
        whole_fn, body_fn = _runner(backend, whole), _runner(backend, body)
        fns[f'{label}_whole'] = lambda f=whole_fn: f(feed)
        fns[f'{label}_body'] = lambda f=body_fn: f(feed)
        if tail is not None:
            preds = [np.array(a) for a in (body_fn(feed).values() if backend == 'ov'
                                           else body_fn(feed))]
            tail_feed = dict(zip(BODY_OUTPUTS, preds))
            tail_fn = _runner(backend, tail)
            fns[f'{label}_post'] = lambda f=tail_fn, t=tail_feed: f(t)
    times = interleaved(fns, repeat=repeat, warmup=warmup)
    med = {k: summary(t)['median'] for k, t in times.items()}
    share = {label: 1 - med[f'{label}_body'] / med[f'{label}_whole'] for label in models}
    alone = {label: med[f'{label}_post'] / med[f'{label}_whole'] for label in models
             if f'{label}_post' in med}
    title = NETWORKS[key][2]
    return {'name': f'deploy_{key}_post_b{batch}',
            'title': f'{title} exported: post-processing share, batch {batch}',
            'unit': 'ms/batch', 'params': {'batch': batch, 'input_size': NETWORKS[key][1],
                                           'body': 'same graph cut at cls_preds/box_preds'},
            'times': {k: {s: (v * 1e3 if s != 'n' else v) for s, v in summary(t).items()}
                      for k, t in times.items()},
            'post_share': share, 'post_alone_share': alone, 'post_share_limit': POST_SHARE_LIMIT,
            'post_share_met': {label: bool(s <= POST_SHARE_LIMIT) for label, s in share.items()}}


# ----------------------------------------------------------------------------------------------
# one network, all batches
# ----------------------------------------------------------------------------------------------
def bench_network(key, batches, repeats, calib_images, map_delta=None, ir=True, warmup=1):
    """Speed entries (one per batch) and post-processing-share entries of network ``key``.

    ``repeats``: rounds per batch (dict batch -> int); ``calib_images``: raccoon train photos
    for every calibration (MXNet ours and GluonCV, NNCF); ``map_delta``: ``{impl: mAP - mAP of
    ours float32}`` from :func:`evaluate_paths` (decides the best deployable path).
    """
    from gluon_ssd.model.io import make_meta
    from gluon_ssd.precision import MIN_BF16_SPEEDUP, bf16_speedup, cpu_bf16_support
    name, size, _ = NETWORKS[key]
    entries = []
    with tempfile.TemporaryDirectory() as folder:
        # photos need the input size/normalisation only; the nets have the preset's VOC classes
        calib, calib_source = photos(make_meta(name, []), 'train', calib_images,
                                     min(8, calib_images))
        ours, ref = build_pair(name, calib[0][:2])
        meta = make_meta(name, ours.classes)
        arts = _artifacts(ours, meta, calib, folder, ir=ir)
        paths = _paths(key, ours, ref, arts, calib, calib[0][:1])
        probe = bf16_speedup() if cpu_bf16_support() is not None else None
        params = {'weights': 'random, identical (ours and GluonCV), convolutions rescaled to unit '
                             'output std on a photo',
                  'calibration': f'{sum(b.shape[0] for b in calib)} {calib_source}, naive '
                                 '(MXNet) / NNCF performance preset',
                  'hybridize': 'static_alloc, static_shape',
                  'runtime_threads': 'ONNX Runtime / OpenVINO defaults; MXNet OMP_NUM_THREADS='
                                     + os.environ.get('OMP_NUM_THREADS', 'unset'),
                  'amp_probe_bf16_speedup': probe and probe['speedup'],
                  'amp_uses_bf16': bool(probe and probe['speedup'] > MIN_BF16_SPEEDUP)}
        for batch in batches:
            x, source = photos(meta, 'test', batch, batch)
            x = x[0]
            checks = _check({impl: det(x) for impl, det in paths.items()})
            times = _time_paths(paths, x, repeats[batch], warmup)
            entries.append(_speed_entry(key, batch, times, checks,
                                        dict(params, inputs=source), map_delta or {}))
        del paths, ours, ref
        models = share_models(arts)
        for batch in batches:
            x = photos(meta, 'test', batch, batch)[0][0]
            entries.append(bench_post_share(key, models, x, batch, repeats[batch], warmup))
    return entries


# ----------------------------------------------------------------------------------------------
# accuracy: one trained model through every path
# ----------------------------------------------------------------------------------------------
#: mAP-table path -> the timed row it stands for
MAP_ROWS = {'mxnet_fp32': 'ours_mxnet_fp32', 'mxnet_bf16': 'ours_mxnet_bf16',
            'mxnet_int8': 'ours_mxnet_int8', 'mxnet_int8_entropy': None,
            'ort_fp32': 'ours_ort_fp32', 'ort_int8': 'ours_ort_int8',
            'ov_fp32': 'ours_ov_fp32', 'ov_int8': 'ours_ov_int8',
            'ov_int8_ir': 'ours_ov_int8_ir'}


def evaluate_paths(run_dir, calib_images, num_test=0, entropy=True, ir=True):
    """VOC07 mAP on the raccoon test photos of the trained model in ``run_dir`` (its
    ``last.params``, the final epoch) through every path of :data:`MAP_ROWS`; int8 paths
    calibrated on ``calib_images`` raccoon train photos. ``num_test``: evaluate the first so
    many test images only (0: all). Returns the ``deploy_map`` entry."""
    from gluon_ssd.data.build import Subset, open_split
    from gluon_ssd.deploy.quantize import quantize_mxnet, quantize_nncf
    from gluon_ssd.evaluate import evaluate
    from gluon_ssd.model.io import load_model
    from gluon_ssd.model.onnx_export import onnx_model
    from gluon_ssd.model.runtime import OnnxRuntimeDetector, OpenVINODetector, load_symbol
    from gluon_ssd.precision import cpu_bf16_support
    root = raccoon_root()
    if root is None:
        raise RuntimeError('the mAP table needs the raccoon photos ($GLUON_SSD_SHARED_DATA)')
    params = os.path.join(run_dir, 'last.params')
    net, meta = load_model(params=params)
    test = Subset.first(open_split('voc', root, 'test', classes=meta['classes']), num_test)
    calib, _ = photos(meta, 'train', calib_images, min(8, calib_images))
    results = {}

    def measure(label, detector):
        results[label] = float(evaluate(detector, meta, test)['voc07']['map'])

    with tempfile.TemporaryDirectory() as folder:
        measure('mxnet_fp32', net)
        if cpu_bf16_support() is not None:      # MKL-DNN runs bfloat16 with AVX-512 only
            bf16, _ = load_model(params=params, hybridize=False)
            bf16.set_precision('bfloat16')
            bf16.hybridize(static_alloc=True, static_shape=True)
            measure('mxnet_bf16', bf16)
        for mode in ('naive', 'entropy') if entropy else ('naive',):
            files = quantize_mxnet(net, meta, calib, os.path.join(folder, mode),
                                   calib_mode=mode)
            measure('mxnet_int8' if mode == 'naive' else 'mxnet_int8_entropy',
                    load_symbol(files['symbol'], files['params'], int8=True))
        fp32 = onnx_model(net, meta)
        measure('ort_fp32', OnnxRuntimeDetector(fp32))
        measure('ov_fp32', OpenVINODetector(fp32))
        count = sum(b.shape[0] for b in calib)
        qdq = quantize_nncf(net, meta, calib, os.path.join(folder, 'qdq'), fmt='onnx',
                            subset_size=count)['model']
        measure('ort_int8', OnnxRuntimeDetector(qdq))
        measure('ov_int8', OpenVINODetector(qdq))
        if ir:
            xml = quantize_nncf(net, meta, calib, os.path.join(folder, 'ir'), fmt='openvino',
                                subset_size=count)['model']
            measure('ov_int8_ir', OpenVINODetector(xml))
    base = results['mxnet_fp32']
    return {'name': 'deploy_map', 'title': 'Same trained model through every path',
            'params': {'run_dir': run_dir, 'weights': 'last.params', 'model': meta['model'],
                       'test_images': len(test), 'calibration_images': count,
                       'metric': 'VOC07 mAP, raccoon test split'},
            'map': results, 'delta': {k: v - base for k, v in results.items()}}


def row_map_delta(map_entry):
    """``{timed impl: mAP delta}`` from the ``deploy_map`` entry (``{}`` without one)."""
    if not map_entry:
        return {}
    return {row: map_entry['delta'][path] for path, row in MAP_ROWS.items()
            if row and path in map_entry['delta']}


def bench_deploy(cfg):
    """All deployment entries for one :data:`bench.run.CONFIG` setting: the mAP table (when a
    trained run directory is found, see :func:`raccoon_run`), then per network the speed and
    post-processing-share entries."""
    run_dir = raccoon_run(cfg.get('raccoon_run'))
    entries = []
    if run_dir:
        entries.append(evaluate_paths(run_dir, cfg['calib_images'], cfg.get('map_images', 0),
                                      entropy=cfg.get('entropy', True), ir=cfg.get('ir', True)))
    else:
        entries.append({'name': 'deploy_map', 'title': 'Same trained model through every path',
                        'skipped': f'no trained run directory (set {RUN_ENV})'})
    delta = row_map_delta(entries[0] if 'map' in entries[0] else None)
    for key in cfg['networks']:
        repeats = {b: cfg['repeat'] if b == 1 else cfg.get('repeat_b8', cfg['repeat'])
                   for b in cfg['batches']}
        entries += bench_network(key, cfg['batches'], repeats, cfg['calib_images'], delta,
                                 ir=cfg.get('ir', True))
    return entries


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------
def _ms(entry, impl):
    return f"{entry['times'][impl]['median']:,.1f}"


INTRO = ('Whole detector (network, decoding, NMS) per path, against GluonCV in MXNet float32 at '
         'the same network and batch, all timed interleaved in one process (`bench/deploy.py`). '
         'Weights are random but identical between ours and GluonCV (convolutions rescaled to '
         "unit output std on a photo, so activations and scores look like a trained network's); "
         'inputs and calibration images are raccoon photos. int8 rows are also compared with '
         'GluonCV quantized by its own recipe (`gluoncv_int8`: `quantize_net`, layers matching '
         '`flatten`/`concat` float32, naive calibration on the same photos). mAP (Δ): the trained '
         'raccoon model of the last table through the same path (GluonCV rows: another network, '
         'n/a). Δscore: the largest difference of the top-10 scores per image from '
         '`ours_mxnet_fp32` on the same photos (float32 rows are asserted ≤ 1e-3). Bold: the best '
         f'deployable path (fastest of ours within {100 * MAP_LOSS_LIMIT:g} mAP point of '
         'float32).')


def _speed_lines(e, maps, delta):
    """The table and verdict of one speed entry."""
    lines = [f"### {e['title']}", '',
             '| Path | ms/batch | img/s | × gluoncv_fp32 | × gluoncv_int8 | Δscore top-10 | '
             'mAP (Δ) |', '|---|---|---|---|---|---|---|']
    for impl in e['times']:
        mark = '**' if impl == e['best'] else ''
        if impl.startswith('gluoncv'):
            acc = 'n/a'
        else:
            acc = '—' if maps.get(impl) is None else f'{maps[impl]:.3f} ({delta[impl]:+.3f})'
        int8 = e['int8_speedups'].get(impl)
        lines.append(f"| {mark}{impl}{mark} | {_ms(e, impl)} | {e['images_per_s'][impl]:,.2f} | "
                     f"{e['speedups'][impl]:.2f}× | {'' if int8 is None else f'{int8:.2f}×'} | "
                     f"{e['checks'][impl]['max_top_score_diff']:.4f} | {acc} |")
    best = e['best']
    verdict = f"Best deployable path: **{best}**, {e['speedups'][best]:.2f}× GluonCV float32"
    if not e['best_map_checked']:
        verdict += ' (its mAP was not measured in this run)'
    if 'target' in e:
        met = {True: 'met', False: 'not met', None: 'speed met, mAP not measured'}
        verdict += (f"; target ≥ {e['target']:g}× with ≤ {100 * MAP_LOSS_LIMIT:g} mAP point "
                    f"lost: **{met[e['target_met']]}**")
    speedup = e['params'].get('amp_probe_bf16_speedup')
    probe = ('this CPU cannot run bfloat16 (no AVX-512)' if speedup is None else
             f"the `--amp` probe (`bf16_speedup()`) measured {speedup}× on this CPU, so `--amp` "
             f"{'uses bfloat16' if e['params']['amp_uses_bf16'] else 'runs float32'} here")
    return lines + ['', verdict + '.', '', f'ours_mxnet_bf16 is forced; {probe}.', '']


def _alone(entry, label):
    """``'ms | share'`` cells of the post-processing timed alone (blank where not measured)."""
    share = entry.get('post_alone_share', {}).get(label)
    return ' | ' if share is None else f"{_ms(entry, label + '_post')} | {100 * share:.1f} %"


def _share_lines(shares):
    """The post-processing share table of all share entries."""
    lines = ['### Post-processing share of the exported model', '',
             'The same exported graph cut at the predictions (`cls_preds`, `box_preds`) against '
             'the whole detector in the same runtime: share = 1 − body / whole (target ≤ '
             f'{100 * POST_SHARE_LIMIT:g} %). "Alone": the post-processing subgraph timed by '
             "itself on the body's outputs, over the whole (a check on the difference of two "
             'larger times).', '',
             '| Model | Path | whole ms | body ms | post share | ≤ 5 % | alone ms | alone share |',
             '|---|---|---|---|---|---|---|---|']
    for e in shares:
        model = f"{e['title'].split(' exported')[0]}, batch {e['params']['batch']}"
        for label, share in e['post_share'].items():
            met = 'yes' if e['post_share_met'][label] else '**no**'
            lines.append(f"| {model} | {label} | {_ms(e, label + '_whole')} | "
                         f"{_ms(e, label + '_body')} | {100 * share:.1f} % | {met} | "
                         f'{_alone(e, label)} |')
    return lines + ['']


def _map_lines(mp):
    """The mAP table of the ``deploy_map`` entry (or why it was skipped)."""
    lines = ['### Same trained model through every path', '']
    if 'map' not in mp:
        return lines + [f"Skipped: {mp['skipped']}.", '']
    p = mp['params']
    lines += [f"`{p['model']}` trained on the raccoon photos (`{p['run_dir']}`, "
              f"{p['weights']}); {p['metric']} ({p['test_images']} images); int8 calibrated on "
              f"{p['calibration_images']} raccoon train photos.", '',
              '| Path | VOC07 mAP | Δ vs mxnet_fp32 |', '|---|---|---|']
    lines += [f"| {path} | {value:.4f} | {mp['delta'][path]:+.4f} |"
              for path, value in mp['map'].items()]
    return lines + ['']


def render(entries):
    """The Markdown lines of the deployment entries (``[]`` when there are none)."""
    order = {key: i for i, key in enumerate(NETWORKS)}
    deploy = sorted((e for e in entries if e['name'].startswith('deploy_')),
                    key=lambda e: (order.get(e['name'].split('_')[1], -1), e['name']))
    if not deploy:
        return []
    mp = next((e for e in deploy if e['name'] == 'deploy_map'), None)
    measured = mp if mp and 'map' in mp else None
    delta = row_map_delta(measured)
    maps = {row: measured['map'][path] for path, row in MAP_ROWS.items()
            if row and measured and path in measured['map']}
    lines = ['## Deployment', '', INTRO, '']
    for e in deploy:
        if 'speedups' in e:
            lines += _speed_lines(e, maps, delta)
    shares = [e for e in deploy if 'post_share' in e]
    if shares:
        lines += _share_lines(shares)
    if mp:
        lines += _map_lines(mp)
    return lines

"""INT8 post-training quantization of a trained SSD.

Two routes, both calibrated on a few normalised images ``(B, 3, S, S)``:

* :func:`quantize_mxnet`: MXNet's own oneDNN (MKL-DNN) quantization, the route of GluonCV's
  ``*_int8`` models. Convolutions (fused with their BatchNorm/ReLU) and poolings run in int8;
  the post-processing (softmax, box decoding, anchors, NMS) always stays float32. Writes an
  MXNet symbol + params pair that :func:`gluon_ssd.model.runtime.load_symbol` loads (what
  ``load_model`` does with it).
* :func:`quantize_onnx`: NNCF post-training quantization of the exported ONNX detector (QDQ
  ONNX for ONNX Runtime / OpenVINO, or an OpenVINO IR), the post-processing subgraph excluded.

Which layers stay float32 (``exclude``): the post-processing always; ``'first_conv'`` (the
convolutions reading the image) and ``'predictors'`` (the class/box prediction convolutions) on
request, or layer names of :func:`layer_groups`.
"""
import contextlib
import json
import logging
import os
import sys
import tempfile

import numpy as np

from gluon_ssd.errors import UserError

__all__ = ['ARTIFACT_MXNET', 'ARTIFACT_ONNX', 'ARTIFACT_OPENVINO', 'CALIB_MODES',
           'EXCLUDE_GROUPS', 'DEFAULT_EXCLUDE', 'NNCF_PRESETS', 'calibration_batches',
           'layer_groups', 'quantize_mxnet', 'quantize_onnx',
           'quantize_nncf']

ARTIFACT_MXNET = 'mxnet-int8'
ARTIFACT_ONNX = 'onnx-int8'
ARTIFACT_OPENVINO = 'openvino-int8'
CALIB_MODES = ('naive', 'entropy')
#: Min/max thresholds by default (GluonCV's choice too). On two weaker raccoon models
#: (scratch_ssd_256, 8 epochs; VOC07 mAP on all 200 photos, float32 0.524 / 0.538) the INT8 mAP
#: moved with the calibration: naive -0.024 / +0.002 with 32 images, +0.010 / +0.002 with 64;
#: entropy +0.008 / -0.013 with 32, -0.023 / -0.002 with 64 (channel-wise weights: the same).
#: Calibrate on 64 images or more; NNCF was within +-0.003 on both.
DEFAULT_CALIB_MODE = 'naive'
#: Groups of layers ``exclude`` may name (besides layer names of :func:`layer_groups`).
EXCLUDE_GROUPS = ('first_conv', 'predictors')
#: What stays float32 unless told otherwise. Measured on the raccoon photos (scratch_ssd_256
#: trained 40 epochs, 64 calibration images; VOC07 mAP on the 160 train images, float32 0.562):
#: int8 everything 0.558 (naive) / 0.551 (entropy), first convolution float 0.557 / 0.565,
#: predictors float 0.572 / 0.561: every choice is within the noise (+-0.01), as GluonCV found
#: quantizing all its SSDs' convolutions. Speed decides (SSD300-VGG16, 1 thread, AVX512-VNNI):
#: a float first convolution (3 input channels, where int8 gains nothing and the whole input
#: must be quantized first) was as fast or faster, float predictors ~10 % slower.
DEFAULT_EXCLUDE = ('first_conv',)

_CONV_OPS = ('Convolution', '_sg_mkldnn_conv')
_INPUT = 'data'


# ----------------------------------------------------------------------------------------------
# calibration data
# ----------------------------------------------------------------------------------------------
def calibration_batches(dataset, meta, num_images, batch_size=8):
    """Calibration input from a raw dataset split (items ``(image (H,W,3) uint8, label)``).

    Takes ``num_images`` images spread evenly over the split (deterministic), resized and
    normalised by the model's transform (:func:`gluon_ssd.model.io.input_transform`); images
    nothing can decode are skipped as the data layer does (the next ones stand in, so fewer
    images are used only when the split runs out). Returns ``(batches, skipped)``: a list of
    float32 NDArrays ``(B, 3, S, S)`` (``B <= batch_size``, only the last one shorter) and the
    number of images skipped. Raises :class:`UserError` when no image could be read.
    """
    import mxnet as mx
    from gluon_ssd.data import ImageDecodeError
    from gluon_ssd.evaluate import EvalItems
    from gluon_ssd.model.io import input_transform
    if num_images < 1:
        raise UserError(f"--num-calib: must be positive, got {num_images}")
    items = EvalItems(dataset, input_transform(meta))
    total = len(items)
    # evenly spaced first, then the remaining indices in order as stand-ins for skipped images
    spread = np.unique(np.linspace(0, total - 1, min(num_images, total)).round().astype(int))
    chosen = set(spread.tolist())
    order = list(spread) + [i for i in range(total) if i not in chosen]
    images, skipped = [], 0
    for index in order:
        if len(images) == num_images:
            break
        try:
            images.append(items[int(index)][0])
        except ImageDecodeError:
            skipped += 1
    if not images:
        raise UserError(f"no calibration image could be read ({skipped} skipped of {total})")
    batches = [mx.nd.stack(*images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    return batches, skipped


# ----------------------------------------------------------------------------------------------
# MXNet (oneDNN) route
# ----------------------------------------------------------------------------------------------
def _export_float(net, folder):
    """The float32 inference graph and weights of ``net`` as a ``SymbolBlock`` (input ``data``),
    exported through ``folder``. ``net`` keeps its weights and graphs (``SSD.export``
    hybridizes it if it was not); quantize_net then works on this copy."""
    import mxnet as mx
    symbol_file, params_file = net.export(os.path.join(folder, 'float'))
    block = mx.gluon.SymbolBlock.imports(symbol_file, [_INPUT], params_file, ctx=mx.cpu())
    return block, mx.sym.load(symbol_file)


def _predictor_weights(net):
    """Names of the weights of the class and box prediction convolutions of an SSD."""
    names = set()
    for pred in list(net.class_predictors) + list(net.box_predictors):
        names.update(p.name for p in pred.collect_params().values() if p.name.endswith('weight'))
    return names


def _graph_groups(symbol, predictor_weights):
    """Op-node names of the oneDNN-fused graph of ``symbol`` by role (see :func:`layer_groups`)."""
    fused = symbol.get_backend_symbol('MKLDNN_QUANTIZE')
    nodes = json.loads(fused.tojson())['nodes']
    inputs = [[src for src, *_ in node['inputs']] for node in nodes]

    def var_inputs(i):
        return {nodes[j]['name'] for j in inputs[i] if nodes[j]['op'] == 'null'}

    is_conv = [node['op'] in _CONV_OPS for node in nodes]
    predictors = [i for i, node in enumerate(nodes)
                  if is_conv[i] and var_inputs(i) & predictor_weights]
    if not predictors:
        raise ValueError("no prediction convolution found in the graph")
    # The network proper = everything the predictors read; every other op is post-processing
    # (flatten/concat of the predictions, softmax, anchors, box decoding, NMS).
    network, stack = set(), list(predictors)
    while stack:
        i = stack.pop()
        if i not in network:
            network.add(i)
            stack.extend(inputs[i])
    # first convolutions: convolutions with no convolution upstream (they read the image)
    conv_above = [False] * len(nodes)
    for i in range(len(nodes)):      # the JSON lists nodes in topological order
        conv_above[i] = any(conv_above[j] or is_conv[j] for j in inputs[i])
    ops = [i for i, node in enumerate(nodes) if node['op'] != 'null']
    name = [node['name'] for node in nodes]
    return {
        'first_conv': [name[i] for i in ops if is_conv[i] and not conv_above[i]],
        'predictors': [name[i] for i in predictors],
        'network': [name[i] for i in ops if i in network],
        'post': [name[i] for i in ops if i not in network],
    }


def layer_groups(net):
    """The layers of ``net`` (an :class:`~gluon_ssd.model.ssd.SSD`) as MXNet's quantization
    names them (after oneDNN fused convolution + BatchNorm + activation):
    ``{'first_conv': [...], 'predictors': [...], 'network': [...], 'post': [...]}``
    (``network``: every layer the predictors depend on, ``post``: all the others, i.e. the
    post-processing, never quantized)."""
    with tempfile.TemporaryDirectory() as folder:
        _, symbol = _export_float(net, folder)
    return _graph_groups(symbol, _predictor_weights(net))


def _excluded_layers(groups, exclude):
    """Network layer names to keep float32 for ``exclude`` (group names and/or layer names)."""
    layers = []
    for item in exclude:
        if item in EXCLUDE_GROUPS:
            layers.extend(groups[item])
        elif item in groups['network']:
            layers.append(item)
        else:
            raise UserError(f"--exclude {item}: not a layer group ({', '.join(EXCLUDE_GROUPS)}) "
                            f"or quantizable layer name of this model (e.g. "
                            f"{groups['network'][0]})")
    return sorted(set(layers))


class _Calibration:
    """Re-iterable ``[batch]`` lists over the calibration batches, the form
    ``quantize_net`` reads (it iterates twice: once for the shapes, once to calibrate)."""

    def __init__(self, batches):
        self._batches = batches

    def __iter__(self):
        return iter([b] for b in self._batches)


def _calibration_set(calib_images, data_shape, num_calib):
    """The first ``num_calib`` (default all) calibration images, re-batched into equal float32
    CPU batches of the first batch's size: quantize_net binds its calibration module to the
    first shape and would not see the statistics of a shorter last batch. The images beyond
    the last whole batch are left out (unless they are all there is)."""
    import mxnet as mx
    batches = [b if isinstance(b, mx.nd.NDArray) else mx.nd.array(b) for b in calib_images]
    if not batches:
        raise UserError("no calibration images")
    want = (3, data_shape, data_shape)
    for b in batches:
        if b.ndim != 4 or tuple(b.shape[1:]) != want:
            raise UserError(f"calibration batches must be (B, {', '.join(map(str, want))}) "
                            f"normalised images, got {tuple(b.shape)}")
    images = mx.nd.concat(*[b.astype('float32').as_in_context(mx.cpu()) for b in batches],
                          dim=0)
    count = images.shape[0] if num_calib is None else min(num_calib, images.shape[0])
    size = min(batches[0].shape[0], count)
    return [images[i:i + size] for i in range(0, count - size + 1, size)]


def quantize_mxnet(net, meta, calib_images, prefix, calib_mode=DEFAULT_CALIB_MODE,
                   num_calib=None, exclude=DEFAULT_EXCLUDE, quantized_dtype='auto'):
    """Quantize a trained SSD to INT8 with MXNet's oneDNN backend and save it.

    Parameters
    ----------
    net : :class:`~gluon_ssd.model.ssd.SSD` in inference mode (``load_model``), on any context
        (quantization runs on the CPU; ``net`` is not modified).
    meta : its meta dict (``load_model``).
    calib_images : iterable of float32 ``(B, 3, S, S)`` NDArrays normalised with
        :func:`gluon_ssd.model.io.input_transform` (e.g. :func:`calibration_batches`); held in
        memory during calibration.
    prefix : output path prefix.
    calib_mode : ``'naive'`` (min/max of each layer output, default: see
        :data:`DEFAULT_CALIB_MODE`) or ``'entropy'`` (KL-optimal thresholds; slower to
        calibrate).
    num_calib : use at most this many images (default all; only whole batches of the first
        batch's size are used).
    exclude : layers kept float32 besides the post-processing: ``'first_conv'``,
        ``'predictors'`` and/or layer names of :func:`layer_groups` (``()``: none).
    quantized_dtype : ``'auto'`` (uint8 after ReLU, else int8), ``'int8'`` or ``'uint8'``.

    Writes ``PREFIX-symbol.json``, ``PREFIX-0000.params`` (see
    :func:`gluon_ssd.model.runtime.load_symbol`) and ``PREFIX.meta.json``
    (:func:`gluon_ssd.model.io.exported_meta` with ``artifact: 'mxnet-int8'``, plus
    ``calib_mode``, ``num_calib`` (images used), ``exclude`` and ``excluded`` (layer names kept
    float32)). Returns ``{'symbol', 'params', 'meta'}`` paths.
    Raises :class:`UserError` for a bad mode, count, exclusion or calibration batch.
    """
    import mxnet as mx
    from mxnet.contrib.quantization import quantize_net
    from gluon_ssd.model.io import exported_meta, save_meta
    if calib_mode not in CALIB_MODES:
        raise UserError(f"--calib-mode: choose {' or '.join(CALIB_MODES)}, got {calib_mode!r}")
    if num_calib is not None and num_calib < 1:
        raise UserError(f"--num-calib: must be positive, got {num_calib}")
    if quantized_dtype not in ('auto', 'int8', 'uint8'):
        raise UserError(f"quantized_dtype: choose auto, int8 or uint8, got {quantized_dtype!r}")
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    batches = _calibration_set(calib_images, int(meta['data_shape']), num_calib)
    used = sum(b.shape[0] for b in batches)
    with tempfile.TemporaryDirectory() as folder:
        block, symbol = _export_float(net, folder)
    groups = _graph_groups(symbol, _predictor_weights(net))
    excluded = _excluded_layers(groups, exclude)
    qnet = quantize_net(block, quantized_dtype=quantized_dtype, quantize_mode='full',
                        exclude_layers=groups['post'] + excluded,
                        calib_data=_Calibration(batches), calib_mode=calib_mode,
                        num_calib_examples=used, ctx=mx.cpu())
    qnet.hybridize()
    qnet(batches[0][:1])      # export saves the weights of the graph a forward pass built
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    qnet.export(prefix, epoch=0)
    _check_exclusions(f'{prefix}-symbol.json', groups['post'] + excluded)
    # the float32 weights it was made from become its ``source_params``
    info = exported_meta(net, meta, ARTIFACT_MXNET, net.post_nms)
    meta_path = save_meta(dict(info, calib_mode=calib_mode, num_calib=int(used), exclude=exclude,
                               excluded=excluded, quantized_dtype=quantized_dtype),
                          prefix + '.meta.json')
    return {'symbol': f'{prefix}-symbol.json', 'params': f'{prefix}-0000.params',
            'meta': meta_path}


def _check_exclusions(symbol_file, excluded):
    """Every layer meant to stay float32 is still in the written graph under its own name (the
    names come from our own fusion of the graph: this catches a drift from quantize_net's)."""
    with open(symbol_file) as f:
        names = {node['name'] for node in json.load(f)['nodes']}
    quantized = [n for n in excluded if n not in names and 'quantized_' + n in names]
    missing = [n for n in excluded if n not in names and 'quantized_' + n not in names]
    if quantized or missing:
        raise RuntimeError(f"quantize_net did not keep these layers float32: "
                           f"{(quantized + missing)[:5]}")


# ----------------------------------------------------------------------------------------------
# NNCF route: the exported ONNX detector
# ----------------------------------------------------------------------------------------------
NNCF_PRESETS = ('performance', 'mixed')
_ONNX_CONV = ('Conv', 'ConvTranspose')
_OV_CONV = ('Convolution', 'GroupConvolution', 'ConvolutionBackpropData')


def _require_nncf():
    """Import NNCF; it logs to stdout, where the CLI prints its JSON: its import message goes
    to stderr. A missing package is a :class:`UserError`."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            import nncf
            import onnx  # noqa: F401  (both backends read the ONNX file)
    except ImportError:
        raise UserError("--method nncf needs nncf, onnx and openvino: "
                        "pip install gluon-ssd[deploy]") from None
    return nncf


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF's INFO lines (one per node it leaves alone) silenced and its progress bars sent to
    stderr for the duration."""
    logger = logging.getLogger('nncf')
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logger.setLevel(level)


def _network_part(names, kinds, inputs, conv_kinds):
    """Names of the nodes between the first and the last convolutions: every node that is a
    convolution or has one upstream, and is a convolution or feeds one. The others are the
    pre-processing (if any) and the post-processing, which NNCF must leave float32.

    ``names``, ``kinds``: per node in topological order; ``inputs``: per node the indices of the
    nodes it reads."""
    below = [False] * len(names)     # a convolution at or above the node
    for i, srcs in enumerate(inputs):
        below[i] = kinds[i] in conv_kinds or any(below[j] for j in srcs)
    above = [False] * len(names)     # a convolution at or below the node
    for i in reversed(range(len(names))):
        if kinds[i] in conv_kinds:
            above[i] = True
        if above[i]:
            for j in inputs[i]:
                above[j] = True
    return {names[i] for i in range(len(names)) if below[i] and above[i]}


def _onnx_nodes(model):
    """``(names, kinds, inputs, outputs)`` of an ``onnx.ModelProto``'s nodes (in the file's
    order, which ONNX requires to be topological; ``outputs``: per node its tensor names)."""
    producer = {out: i for i, node in enumerate(model.graph.node) for out in node.output}
    nodes = model.graph.node
    return ([n.name for n in nodes], [n.op_type for n in nodes],
            [[producer[t] for t in n.input if t in producer] for n in nodes],
            [set(n.output) for n in nodes])


def _name_nodes(model):
    """Give every unnamed node of ``model`` a unique name (NNCF addresses nodes by name)."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f'{node.op_type}_{i}'
            while name in taken:
                name += '_'
            node.name = name
            taken.add(name)


def _ov_nodes(ov_model):
    """``(names, kinds, inputs, outputs)`` of an OpenVINO model's operations (topological
    order; ``outputs``: per operation the tensor names it produces, kept from the ONNX file)."""
    ops = list(ov_model.get_ordered_ops())
    index = {op.get_name(): i for i, op in enumerate(ops)}     # unique, unlike friendly names
    inputs = [[index[src.get_source_output().get_node().get_name()] for src in op.inputs()]
              for op in ops]
    outputs = [set().union(*(out.get_names() for out in op.outputs())) for op in ops]
    return ([op.get_friendly_name() for op in ops], [op.get_type_name() for op in ops], inputs,
            outputs)


def _class_predictors(kinds, inputs, outputs, conv_kinds):
    """Indices of the convolutions that compute the class logits: those reached from the node
    producing ``cls_preds`` (the exported body's class output) through non-convolutions."""
    start = next((i for i, outs in enumerate(outputs) if 'cls_preds' in outs), None)
    found, seen, stack = set(), set(), [] if start is None else [start]
    while stack:
        for j in inputs[stack.pop()]:
            if j not in seen:
                seen.add(j)
                (found.add if kinds[j] in conv_kinds else stack.append)(j)
    return found


def _ignored(nodes, conv_kinds):
    """Node names NNCF leaves float32 (``nodes`` as :func:`_onnx_nodes`): everything outside
    :func:`_network_part`, and the class predictors. Quantizing those cost a raccoon
    scratch_ssd_256 2.5 VOC07 mAP points on 200 photos (0.538 -> 0.513); float32, it kept them
    (+0.005), while the first convolution made no difference."""
    names, kinds, inputs, outputs = nodes
    keep = _network_part(names, kinds, inputs, conv_kinds)
    if not any(k in conv_kinds for k in kinds):
        raise UserError("the model has no convolution to quantize")
    classes = _class_predictors(kinds, inputs, outputs, conv_kinds)
    return [n for i, n in enumerate(names) if n not in keep or i in classes]


def _nncf_dataset(nncf, calib_images, input_name):
    """One image per calibration item, as NNCF counts ``subset_size`` in items."""
    images = []
    for batch in calib_images:
        batch = batch.asnumpy() if hasattr(batch, 'asnumpy') else np.asarray(batch)
        images.extend(np.ascontiguousarray(batch[i:i + 1], dtype=np.float32)
                      for i in range(batch.shape[0]))
    if not images:
        raise UserError("no calibration images")
    return nncf.Dataset(images, lambda x: {input_name: x}), len(images)


def quantize_onnx(onnx_path, meta, calib_images, out_path, preset='performance',
                  subset_size=300, source=None):
    """Post-training INT8 quantization of an exported ONNX detector with NNCF.

    Parameters
    ----------
    onnx_path : the float32 detector (``export_onnx``; input ``'data'`` ``(B, 3, S, S)``
        normalised float32, outputs ids/scores/bboxes; not the ``bake_preprocess`` variant).
    meta : its meta (the ``STEM.meta.json`` ``export_onnx`` wrote, or the model's).
    calib_images : iterable of float32 ``(B, 3, S, S)`` normalised images (NDArray or numpy).
    out_path : ``*.onnx``: NNCF's ONNX backend writes a QDQ model (QuantizeLinear /
        DequantizeLinear pairs around the convolutions), run by ONNX Runtime and OpenVINO;
        ``*.xml``: the model is converted to OpenVINO and quantized by NNCF's OpenVINO backend,
        written as an IR (``.xml`` + ``.bin``).
    preset : ``'performance'`` (symmetric activations) or ``'mixed'`` (asymmetric).
    subset_size : calibration images used (at most those given).
    source : what the meta file names as the model's origin (default ``onnx_path``).

    Only the nodes between the first and the last convolutions are quantized: the
    post-processing (flatten/concat of the predictions, softmax, decoding, NMS, TopK) is an
    NNCF ``ignored_scope``. Writes the model and ``STEM.meta.json`` (``meta`` plus
    ``artifact``: ``'onnx-int8'`` or ``'openvino-int8'``, ``preset``, ``num_calib``,
    ``nncf_version``). Returns ``{'model', 'meta'}`` (and ``'weights'`` for an IR).
    The outputs keep the float detector's contract: ``ids (B, K, 1)``, ``scores (B, K, 1)``,
    ``bboxes (B, K, 4)`` corner pixels of the input, -1 padding rows.
    """
    nncf = _require_nncf()
    import onnx
    from gluon_ssd.model.io import save_meta
    if preset not in NNCF_PRESETS:
        raise UserError(f"--preset: choose {' or '.join(NNCF_PRESETS)}, got {preset!r}")
    if subset_size < 1:
        raise UserError(f"--num-calib: must be positive, got {subset_size}")
    out_path = str(out_path)
    kind = 'onnx' if out_path.endswith('.onnx') else 'openvino' if out_path.endswith('.xml') \
        else None
    if kind is None:
        raise UserError(f"{out_path}: the output name must end with .onnx (QDQ ONNX) or .xml "
                        "(OpenVINO IR)")
    if not os.path.isfile(onnx_path):
        raise UserError(f"{onnx_path}: file not found")
    if meta.get('input', {}).get('name', _INPUT) != _INPUT:
        raise UserError(f"{onnx_path}: quantize the model exported without --bake-preprocess "
                        "(calibration feeds normalised float32 images)")
    dataset, count = _nncf_dataset(nncf, calib_images, _INPUT)
    settings = dict(preset=getattr(nncf.QuantizationPreset, preset.upper()),
                    subset_size=min(subset_size, count))
    stem = out_path[:-len('.onnx')] if kind == 'onnx' else out_path[:-len('.xml')]
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if kind == 'onnx':
        model = onnx.load(onnx_path)
        _name_nodes(model)
        ignored = _ignored(_onnx_nodes(model), _ONNX_CONV)
        with _quiet_nncf():
            quantized = nncf.quantize(model, dataset, ignored_scope=nncf.IgnoredScope(
                names=ignored), **settings)
        onnx.save(quantized, out_path)
        files = {'model': out_path}
    else:
        import openvino as ov
        model = ov.convert_model(onnx_path)
        ignored = _ignored(_ov_nodes(model), _OV_CONV)
        with _quiet_nncf():
            quantized = nncf.quantize(model, dataset, ignored_scope=nncf.IgnoredScope(
                names=ignored), **settings)
        ov.save_model(quantized, out_path)
        files = {'model': out_path, 'weights': stem + '.bin'}
    artifact = ARTIFACT_ONNX if kind == 'onnx' else ARTIFACT_OPENVINO
    info = {k: v for k, v in meta.items() if k != 'params'}
    files['meta'] = save_meta(dict(info, artifact=artifact, source=source or str(onnx_path),
                                   preset=preset, num_calib=settings['subset_size'],
                                   nncf_version=nncf.__version__), stem + '.meta.json')
    return files


def quantize_nncf(net, meta, calib_images, prefix, fmt='onnx', preset='performance',
                  subset_size=300):
    """:func:`quantize_onnx` of ``net`` (an SSD with ``meta`` from ``load_model``) exported to
    ONNX on the way (a temporary file): writes ``PREFIX.onnx`` (``fmt='onnx'``) or
    ``PREFIX.xml`` + ``PREFIX.bin`` (``fmt='openvino'``) and ``PREFIX.meta.json``."""
    from gluon_ssd.model.onnx_export import export_onnx
    from gluon_ssd.model.io import read_json
    if fmt not in ('onnx', 'openvino'):
        raise UserError(f"--nncf-format: choose onnx or openvino, got {fmt!r}")
    with tempfile.TemporaryDirectory() as folder:
        exported = export_onnx(net, meta, os.path.join(folder, 'float.onnx'))
        return quantize_onnx(exported['onnx'], read_json(exported['meta'], 'model meta file'),
                             calib_images, prefix + ('.onnx' if fmt == 'onnx' else '.xml'),
                             preset=preset, subset_size=subset_size, source=meta.get('params'))

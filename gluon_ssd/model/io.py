"""Trained detectors on disk: weights plus the meta file that travels with them, and the model's
own pre- and post-processing.

A trained model is a ``.params`` file and a small JSON **meta** file: the zoo preset it was built
from (``model``, e.g. ``ssd_300_vgg16_atrous_coco``), ``network``, ``data_shape`` (square input
size S in pixels), ``classes``, the input normalisation ``mean``/``std`` and the ``decoder``. The
training engine writes ``model.json`` into its run directory (it describes every ``.params`` file
there); a single file may carry its own ``<stem>.meta.json``. Loading never guesses: the network,
size and classes come from the meta file, or, for a bare ``.params`` file, from the caller.
"""
import json
import os
import re

import numpy as np

from gluon_ssd.errors import UserError

__all__ = ['RUN_META', 'BACKENDS', 'make_meta', 'exported_meta', 'artifact_stem', 'save_meta',
           'read_json', 'read_meta', 'find_meta',
           'resolve_source', 'is_zoo_detector', 'load_model', 'load_params', 'input_transform',
           'map_boxes_to_original', 'finite_detections']

RUN_META = 'model.json'          # in a run directory: describes every .params file there
_FILE_META_SUFFIX = '.meta.json'  # beside one file: best.params -> best.meta.json
_FORMAT = 'gluon-ssd-model/1'
#: Runtimes a model can run in (``--backend``); exported files name theirs in ``meta['artifact']``.
BACKENDS = ('mxnet', 'onnxruntime', 'openvino')
#: What each kind of exported file runs in (the first is its default).
ARTIFACT_BACKENDS = {'onnx': ('onnxruntime', 'openvino'), 'onnx-int8': ('onnxruntime', 'openvino'),
                     'openvino-int8': ('openvino',), 'mxnet-int8': ('mxnet',),
                     'mxnet-symbol': ('mxnet',)}


def make_meta(name, classes, decoder='per_class'):
    """The meta dict of zoo model ``name`` trained for ``classes`` (list of str)."""
    from gluon_ssd.model.zoo import get_preset
    preset = get_preset(name)
    network = _network_of(name)
    return {'format': _FORMAT, 'model': name, 'network': network,
            'data_shape': int(preset['data_size']), 'classes': [str(c) for c in classes],
            'mean': list(preset['mean']), 'std': list(preset['std']), 'decoder': decoder}


def exported_meta(net, meta, artifact, rows, *, bake_preprocess=False, dynamic_batch=True):
    """The meta file of an exported model: the model ``meta`` plus ``artifact`` (its kind, see
    :data:`ARTIFACT_BACKENDS`), the NMS settings and decoder baked into the graph of ``net``,
    and what a consumer needs without this package: ``input`` (name, shape, dtype, layout,
    normalisation) and ``outputs`` (``rows`` = K detections per image). ``bake_preprocess``: the
    input is a uint8 ``(B, S, S, 3)`` RGB image (ONNX only); ``dynamic_batch``: any ``B``."""
    size = int(meta['data_shape'])
    mean, std = list(meta['mean']), list(meta['std'])
    batch = 'B' if dynamic_batch else 1
    if bake_preprocess:
        inp = {'name': 'image', 'shape': [batch, size, size, 3], 'dtype': 'uint8',
               'layout': 'NHWC', 'color': 'RGB', 'resized_to': [size, size],
               'preprocess': 'in the graph: x / 255, then (x - mean) / std, then NCHW',
               'mean': mean, 'std': std}
    else:
        inp = {'name': 'data', 'shape': [batch, 3, size, size], 'dtype': 'float32',
               'layout': 'NCHW', 'color': 'RGB', 'scale': 1.0 / 255, 'mean': mean, 'std': std}
    meta = dict(meta)
    # the loaded model's weight file and runtime are not this file's: keep the source by name
    if 'params' in meta:
        meta['source_params'] = meta.pop('params')
    meta.pop('backend', None)
    return dict(meta, artifact=artifact, nms_thresh=net.nms_thresh, nms_topk=net.nms_topk,
                post_nms=net.post_nms, decoder=net.decoder, input=inp, outputs=[
                    {'name': 'ids', 'shape': [batch, rows, 1], 'dtype': 'float32',
                     'meaning': 'class id 0..C-1 (float), -1 = padding row'},
                    {'name': 'scores', 'shape': [batch, rows, 1], 'dtype': 'float32',
                     'meaning': 'confidence, rows sorted best first, -1 = padding row'},
                    {'name': 'bboxes', 'shape': [batch, rows, 4], 'dtype': 'float32',
                     'meaning': 'corner xmin, ymin, xmax, ymax in pixels of the S x S input, '
                                '-1 = padding row'}])


def _network_of(name):
    """train_ssd.py's ``--network`` of a zoo name (``ssd_300_vgg16_atrous_voc`` -> vgg16_atrous)."""
    if name.startswith('tiny_ssd'):
        return 'tiny_ssd'
    parts = name[:-len('_int8')].split('_') if name.endswith('_int8') else name.split('_')
    return '_'.join(parts[2:-1]) if parts[0] == 'ssd' and len(parts) > 3 else name


def save_meta(meta, path):
    """Write ``meta`` to ``path`` atomically (temp file + rename)."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'w') as f:
            json.dump(meta, f, indent=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_json(path, what):
    """The JSON object in ``path``; :class:`UserError` naming the file and ``what`` it should
    be when it is unreadable or not an object."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable {what} ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a {what} (expected a JSON object)")
    return value


def read_meta(path):
    """Read and check a meta file; raises :class:`UserError` naming the file."""
    meta = read_json(path, 'model meta file')
    missing = [k for k in ('model', 'data_shape', 'classes') if not meta.get(k)]
    if missing:
        raise UserError(f"{path}: not a gluon-ssd model meta file (missing {', '.join(missing)})")
    from gluon_ssd.model.zoo import get_preset
    try:
        preset = get_preset(meta['model'])
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    meta.setdefault('network', _network_of(meta['model']))
    meta.setdefault('mean', list(preset['mean']))
    meta.setdefault('std', list(preset['std']))
    meta.setdefault('decoder', 'per_class')
    return meta


def _legacy_run_meta(run_dir):
    """Meta of a run directory written before meta files existed (its ``config.json``)."""
    path = os.path.join(run_dir, 'config.json')
    if not os.path.isfile(path):
        return None
    cfg = read_json(path, 'run configuration')
    if not cfg.get('classes') or not cfg.get('network'):
        return None
    from gluon_ssd.model.zoo import model_name
    name = model_name(cfg['network'], cfg.get('data_shape'), cfg.get('dataset', 'voc'))
    return make_meta(name, cfg['classes'], cfg.get('decoder') or 'per_class')


def artifact_stem(path):
    """``STEM`` of an exported model file, whose meta file is ``STEM.meta.json``:
    ``STEM.onnx``, ``STEM.xml`` (OpenVINO IR), ``STEM-symbol.json`` / ``STEM-0000.params`` (an
    MXNet symbol export); ``None`` for any other file."""
    for suffix in ('.onnx', '.xml', '-symbol.json'):
        if path.endswith(suffix):
            return path[:-len(suffix)]
    match = re.fullmatch(r'(.+)-\d{4}\.params', path)
    return match.group(1) if match else None


#: File endings of each kind of model file (``artifact`` None: trained ``.params`` weights).
_ARTIFACT_FILES = {None: ('.params',), 'onnx': ('.onnx',), 'onnx-int8': ('.onnx',),
                   'openvino-int8': ('.xml',), 'mxnet-symbol': ('-symbol.json', '.params'),
                   'mxnet-int8': ('-symbol.json', '.params')}


def _describes(meta, path):
    """Whether ``meta`` can describe the file ``path``: ``best.params`` and ``best.onnx`` share
    the stem ``best`` but not the kind (the ONNX file's meta names its ``artifact``)."""
    kind = meta.get('artifact')
    if path.endswith('.params') and artifact_stem(path) is None:    # trained weights
        return kind is None
    return path.endswith(_ARTIFACT_FILES.get(kind, ()))


def find_meta(params):
    """The meta dict describing the model file ``params``, or ``None``: its own
    ``<stem>.meta.json`` (for an exported file, :func:`artifact_stem`), else the run directory's
    ``model.json`` (or, for runs older than meta files, the run's ``config.json``)."""
    stem = params[:-len('.params')] if params.endswith('.params') else params
    candidates = [stem + _FILE_META_SUFFIX]
    exported = artifact_stem(params)
    if exported is not None:
        candidates[:0] = [exported + _FILE_META_SUFFIX, exported + '-meta.json']
        if not params.endswith('.params'):
            candidates = candidates[:2]   # an exported graph never belongs to a run's model.json
    else:
        candidates.append(os.path.join(os.path.dirname(params), RUN_META))
    for path in candidates:
        if os.path.isfile(path):
            meta = read_meta(path)
            if _describes(meta, params):
                return meta
    if exported is not None and not params.endswith('.params'):
        return None
    return _legacy_run_meta(os.path.dirname(os.path.abspath(params)))


def resolve_source(run_dir=None, params=None):
    """``(params_path, meta or None)`` from ``--run-dir`` and/or ``--params``.

    ``--params`` may be a run directory; a run directory gives ``best.params`` (else
    ``last.params``). Raises :class:`UserError` for missing files.
    """
    if params and os.path.isdir(params) and not run_dir:
        run_dir, params = params, None
    if run_dir is not None and not os.path.isdir(run_dir):
        raise UserError(f"--run-dir {run_dir}: directory not found")
    if not run_dir and not params:
        raise UserError("give --params FILE or --run-dir DIR")
    if params is None:
        for name in ('best.params', 'last.params'):
            if os.path.isfile(os.path.join(run_dir, name)):
                params = os.path.join(run_dir, name)
                break
        else:
            raise UserError(f"--run-dir {run_dir}: no best.params or last.params")
    elif not os.path.isfile(params):
        raise UserError(f"--params {params}: file not found")
    return params, find_meta(params)


def _meta_with_flags(meta, params, network, data_shape, classes, decoder):
    """The meta of the model to build: the file's, checked against the flags, or (a bare
    ``.params``) made from the flags."""
    from gluon_ssd.model.zoo import model_name
    if meta is None:
        name = model_name(network or 'tiny_ssd', data_shape)
        if not classes:
            raise UserError(f"--classes is required: {params} has no meta file "
                            f"({RUN_META} or <name>{_FILE_META_SUFFIX}) naming its classes")
        return make_meta(name, classes, decoder or 'per_class')
    meta = dict(meta)
    for flag, value, key in (('--network', network, 'network'),
                             ('--data-shape', data_shape, 'data_shape')):
        if value is not None and value != meta[key]:
            raise UserError(f"{flag} {value} contradicts the model: {params} is a "
                            f"{meta['model']} ({key} {meta[key]}); drop {flag}")
    if classes:
        if len(classes) != len(meta['classes']):
            raise UserError(f"--classes: {len(classes)} names given, but {params} was trained "
                            f"for {len(meta['classes'])} classes ({', '.join(meta['classes'])})")
        meta['classes'] = list(classes)
    if decoder:
        meta['decoder'] = decoder
    return meta


def is_zoo_detector(spec):
    """Whether ``spec`` names a zoo detector with trained weights in GluonCV's model store
    (e.g. ``ssd_300_vgg16_atrous_voc``) rather than a file."""
    from gluon_ssd.model.store import is_store_name
    from gluon_ssd.model.zoo import INT8_MODELS, list_models
    if not isinstance(spec, str) or os.path.exists(spec):
        return False
    return spec in INT8_MODELS or (spec in list_models() and is_store_name(spec))


def load_model(params=None, run_dir=None, network=None, data_shape=None, classes=None,
               decoder=None, nms_thresh=None, nms_topk=None, post_nms=None, ctx=None,
               hybridize=True, amp=False, pretrained=None, backend=None, **kwargs):
    """Build a trained SSD and load its weights: the one way every tool loads a model.

    Parameters
    ----------
    params, run_dir : see :func:`resolve_source` (one of them, or ``pretrained``).
    pretrained : a zoo detector name (:func:`is_zoo_detector`: GluonCV's trained weights from
        the model store, downloaded when absent) or a ``.params`` file (as ``params``).
    network, data_shape : only for a ``.params`` file without a meta file (else they must agree
        with it); defaults tiny_ssd and the network's default size.
    classes : list of str: required without a meta file; with one, renames its classes (same
        count). decoder : ``'per_class'`` or ``'argmax'`` (default: the meta's).
    nms_thresh, nms_topk, post_nms : the inference NMS (defaults 0.45, 400, 100); an exported
        file has its own baked in, and a different value is an error.
    ctx : list of ``mx.Context`` (default CPU). amp : bfloat16 mixed precision (CPU only).
    backend : ``'mxnet'``, ``'onnxruntime'`` or ``'openvino'`` (:data:`BACKENDS`): the runtime of
        an exported file (``.onnx``: ONNX Runtime by default, or OpenVINO; ``.xml``: OpenVINO;
        ``-symbol.json`` / ``-0000.params`` of an MXNet export or INT8 model: MXNet). ``.params``
        weights (and zoo detectors) run in MXNet by default; with ``'onnxruntime'`` or
        ``'openvino'`` they are exported to ONNX in memory first (needs the ``deploy`` extra).

    Returns ``(net, meta)``: the SSD in inference mode (hybridized with ``static_alloc``/
    ``static_shape`` unless ``hybridize=False``) taking ``(B, 3, S, S)`` images normalised with
    ``meta['mean']``/``meta['std']``; ``meta`` as :func:`make_meta` plus ``params`` (the file).
    An exported file gives a runtime detector instead (:mod:`gluon_ssd.model.runtime`): called
    the same way, same outputs. Raises :class:`UserError` (one line) for a missing or corrupt file
    or weights that do not fit.
    """
    import mxnet as mx
    from gluon_ssd.model.zoo import INT8_MODELS, get_model
    ctx = ctx or [mx.cpu()]
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend {backend}: expected one of {', '.join(BACKENDS)}")
    nms = {'nms_thresh': nms_thresh, 'nms_topk': nms_topk, 'post_nms': post_nms}
    zoo = is_zoo_detector(pretrained)
    if zoo and (params or run_dir):
        raise UserError("--pretrained NAME and --params/--run-dir are alternatives; pick one")
    if not zoo:
        params, meta = resolve_source(run_dir, params or pretrained)
        if meta is not None and meta.get('artifact'):
            return _load_artifact(params, meta, backend, ctx, nms, network, data_shape, classes,
                                  decoder, amp)
        if artifact_stem(params) and not params.endswith('.params'):
            raise UserError(f"--params {params}: no meta file {artifact_stem(params)}.meta.json "
                            "beside it (gluon_ssd.export and gluon_ssd.quantize write one)")
    if amp and backend not in (None, 'mxnet'):
        raise UserError(f"--amp: the {backend} backend runs the float32 graph; drop --amp")
    if amp:
        amp = _check_amp(ctx, hybridize)
    settings = dict({k: v for k, v in nms.items() if v is not None}, **kwargs)
    if zoo and pretrained in INT8_MODELS:       # GluonCV's quantized graph: fixed like a file
        net = get_model(pretrained, pretrained=True, ctx=ctx)
        meta = _check_baked(net.meta, pretrained, backend, nms, decoder, amp)
        return net, dict(_meta_with_flags(meta, pretrained, network, data_shape, classes, None),
                         params=pretrained)
    if zoo:
        net = get_model(pretrained, pretrained=True, decoder=decoder or 'per_class', **settings)
        meta = _meta_with_flags(make_meta(pretrained, net.classes, decoder or 'per_class'),
                                pretrained, network, data_shape, classes, decoder)
        if classes:
            net.reset_class(meta['classes'], reuse_weights={i: i for i in range(len(classes))})
        net.collect_params().reset_ctx(ctx)
        params = pretrained
    else:
        meta = _meta_with_flags(meta, params, network, data_shape, classes, decoder)
        net = get_model(meta['model'], classes=meta['classes'], decoder=meta['decoder'],
                        **settings)
        load_params(net, params, ctx, meta['model'])
    if backend not in (None, 'mxnet'):
        return _in_runtime(net, dict(meta, params=params), backend, ctx)
    if amp:
        net.set_precision('bfloat16')
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net, dict(meta, params=params, backend='mxnet')


def _in_runtime(net, meta, backend, ctx):
    """``(detector, meta)``: the SSD ``net`` exported to ONNX in memory (post-processing
    included, :func:`gluon_ssd.model.onnx_export.onnx_model`) and opened in ``backend``."""
    from gluon_ssd.model.onnx_export import onnx_model
    from gluon_ssd.model.runtime import open_runtime
    model = onnx_model(net, meta)
    meta = dict(meta, backend=backend, nms_thresh=net.nms_thresh, nms_topk=net.nms_topk,
                post_nms=net.post_nms)
    return open_runtime(model, backend, ctx), meta


def _load_artifact(path, meta, backend, ctx, nms, network, data_shape, classes, decoder, amp):
    """``(detector, meta)`` of an exported file (``meta['artifact']`` says which kind): its
    runtime per ``backend``; flags that contradict what is baked into the file are one line."""
    meta = _check_baked(meta, path, backend, nms, decoder, amp)
    meta = _meta_with_flags(meta, path, network, data_shape, classes, None)
    from gluon_ssd.model.runtime import open_artifact
    return open_artifact(path, meta, meta['backend'], ctx), dict(meta, params=path)


def _check_baked(meta, path, backend, nms, decoder, amp):
    """``meta`` plus its ``backend``, after checking that the flags agree with what an exported
    model (``meta['artifact']``) has built in: its runtimes, precision, NMS and decoder."""
    kind = meta['artifact']
    allowed = ARTIFACT_BACKENDS.get(kind)
    if allowed is None:
        raise UserError(f"{path}: unknown exported model kind {kind!r} in its meta file")
    backend = backend or allowed[0]
    if backend not in allowed:
        raise UserError(f"--backend {backend}: {path} is a {kind} model, which runs in "
                        f"{' or '.join(allowed)}")
    if amp:
        raise UserError(f"--amp: {path} is an exported {kind} model; its precision is fixed")
    for flag, value in (('--nms-thresh', nms['nms_thresh']), ('--nms-topk', nms['nms_topk']),
                        ('--post-nms', nms['post_nms'])):
        key = flag[2:].replace('-', '_')
        if value is not None and key in meta and value != meta[key]:
            raise UserError(f"{flag} {value}: {path} has {key} {meta[key]} built in; drop "
                            f"{flag} or export again")
    if decoder and decoder != meta.get('decoder'):
        raise UserError(f"--decoder {decoder}: {path} has the {meta.get('decoder')} decoder "
                        "built in; drop --decoder or export again")
    return dict(meta, backend=backend)


def load_params(net, path, ctx, model, flag='--params', hint=''):
    """``net.load_parameters(path, ctx)``; weights that do not fit ``net`` (zoo preset
    ``model``) are one :class:`UserError` naming ``flag`` and the file (``hint`` appended)."""
    import mxnet as mx
    try:
        net.load_parameters(path, ctx=ctx)
    except (AssertionError, mx.base.MXNetError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(', which contains')[0][:200]
        raise UserError(f"{flag} {path}: its weights do not fit {model} with "
                        f"{len(net.classes)} classes ({first}){hint}") from None


def _check_amp(ctx, hybridize):
    if any(c.device_type == 'gpu' for c in ctx):
        raise UserError("--amp for inference is bfloat16 on CPU; drop --gpus or --amp")
    if not hybridize:
        raise UserError("--amp works on hybridized graphs; load with hybridize=True")
    from gluon_ssd.precision import resolve_amp
    return resolve_amp('--amp')


# ----------------------------------------------------------------------------------------------
# the model's pre- and post-processing
# ----------------------------------------------------------------------------------------------
def input_transform(meta):
    """The model's input transform ``(image (H,W,3) uint8, label (M,6) pixels) -> (image (3,S,S)
    float32 normalised with the meta's mean/std, label (M,6) pixels of the S x S input)``."""
    from gluon_ssd.data.transforms import SSDValTransform
    size = int(meta['data_shape'])
    return SSDValTransform(size, size, mean=tuple(meta['mean']), std=tuple(meta['std']))


def map_boxes_to_original(bboxes, input_size, orig_size, clip=True):
    """Map corner boxes from network-input pixels to original-image pixels.

    Parameters
    ----------
    bboxes : (K, 4) corner ``(xmin, ymin, xmax, ymax)``, pixels of the network input.
    input_size : ``(width, height)`` of the network input the image was resized to.
    orig_size : ``(width, height)`` of the original image.
    clip : clip to ``[0, width - 1] x [0, height - 1]`` (the datasets' 0-based pixel convention:
        ``xmax`` of an object touching the right edge is ``width - 1``).

    Returns a float32 ``(K, 4)`` array, corner format, original pixels: the inverse of the
    input transform's box resize (``x * in_w / orig_w``).
    """
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4).copy()
    in_w, in_h = input_size
    w, h = orig_size
    boxes[:, (0, 2)] *= w / float(in_w)
    boxes[:, (1, 3)] *= h / float(in_h)
    if clip:
        boxes[:, (0, 2)] = np.clip(boxes[:, (0, 2)], 0, w - 1)
        boxes[:, (1, 3)] = np.clip(boxes[:, (1, 3)], 0, h - 1)
    return boxes.astype(np.float32)


def finite_detections(ids, scores, bboxes):
    """The one NaN policy: numpy ``ids (B,K,1)``, ``scores (B,K,1)``, ``bboxes (B,K,4)`` with
    every detection whose box or score is NaN/inf (a diverged model) turned into a padding row
    (id -1, score 0, box 0), in place. Returns how many real (id >= 0) detections were dropped."""
    bad = ~(np.isfinite(bboxes).all(axis=-1) & np.isfinite(scores[..., 0]))
    count = int((bad & (ids[..., 0] >= 0)).sum())
    ids[bad] = -1
    scores[bad] = 0
    bboxes[bad] = 0
    return count

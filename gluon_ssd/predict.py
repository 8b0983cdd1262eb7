"""Run a trained SSD on image files: detections as JSON and one annotated PNG per image.

    python -m gluon_ssd.predict IMG [IMG ...] --run-dir runs/tiny_ssd_synthetic_X
    python -m gluon_ssd.predict IMG --params best.params --network tiny_ssd --classes cat,dog \\
        --thresh 0.3 --out-dir predictions

Each image is resized to the network input (``S x S``, as the validation transform does), the
network's detections (corner pixels of the input) are mapped back to the **original image
pixels** with :func:`map_boxes_to_original`, and those with ``score >= --thresh`` are reported:

    [{"image": path, "width": W, "height": H,
      "detections": [{"class_id": 0, "class": "cat", "score": 0.91,
                      "bbox": [xmin, ymin, xmax, ymax]}, ...]}, ...]

printed on stdout; ``--out-dir`` receives ``<stem>.json`` and ``<stem>.png`` per image.

This module also holds the model-loading helpers shared by the ``eval`` and ``export`` CLIs:
:func:`add_model_args`, :func:`load_trained`, :class:`CLIError`. Exit codes: 0 success, 2 a
problem the user can fix (one line on stderr naming the file or flag, no traceback).
"""
import argparse
import json
import os
import re
import sys

import numpy as np

__all__ = ['CLIError', 'EXIT_USAGE', 'add_model_args', 'parse_classes', 'read_run_config',
           'resolve_model_source', 'params_num_classes', 'load_trained', 'map_boxes_to_original',
           'detect', 'predict_images', 'main']

EXIT_USAGE = 2
_CLASS_KEY = 'class_predictors.0.predictor.weight'


class CLIError(Exception):
    """A problem the user can fix; ``str(exc)`` is one line naming the flag or file."""


def fail(prog, exc):
    """Write ``prog: error: <message>`` to stderr and return :data:`EXIT_USAGE`."""
    sys.stderr.write(f"{prog}: error: {exc}\n")
    return EXIT_USAGE


# ----------------------------------------------------------------------------------------------
# model source: --run-dir / --params / --network / --data-shape / --classes
# ----------------------------------------------------------------------------------------------
def add_model_args(parser):
    """Add the flags naming a trained model (shared by predict, eval and export)."""
    a = parser.add_argument
    a('--run-dir', help='training run directory (config.json + best.params/last.params); '
                        'network, data shape and classes are read from it')
    a('--params', help='.params file of the network (default with --run-dir: best.params, '
                       'else last.params); a run directory is also accepted')
    a('--network', help='base network: tiny_ssd, vgg16_atrous, resnet50_v1, mobilenet1.0 '
                        '(default: from the run directory, else tiny_ssd)')
    a('--data-shape', type=int, help='input size in pixels (default: from the run directory, '
                                     'else the network preset)')
    a('--classes', help='class names, comma-separated or a text file with one per line '
                        '(default: from the run directory)')
    a('--decoder', choices=('per_class', 'argmax'),
      help='detection decoding (default: from the run directory, else per_class)')
    a('--nms-thresh', type=float, default=0.45, help='NMS IoU threshold (default 0.45)')
    a('--nms-topk', type=int, default=400, help='candidates per image before NMS (default 400)')
    a('--post-nms', type=int, default=100, help='detections kept per image (default 100)')
    a('--gpus', default='', help='GPU ids, e.g. "0,1"; empty (default) runs on CPU')
    a('--amp', action='store_true',
      help='bfloat16 mixed precision on CPU (gluon_ssd.precision; ~2x faster convolutions on '
           'CPUs with AVX512-BF16/AMX, scores within ~1e-2 of float32); exported graphs are '
           'always float32')


def parse_classes(text):
    """``'a,b'`` or a path to a file with one name per line -> list of str (CLIError if empty)."""
    if text is None:
        return None
    if os.path.isfile(text):
        with open(text) as f:
            names = [line.strip() for line in f if line.strip()]
        where = f"--classes file {text}"
    else:
        names = [t.strip() for t in text.split(',') if t.strip()]
        where = f"--classes {text!r}"
    if not names:
        raise CLIError(f"{where}: no class names")
    if len(set(names)) != len(names):
        raise CLIError(f"{where}: duplicate class names")
    return names


def read_run_config(run_dir):
    """The run's settings as a dict (``network``, ``data_shape``, ``classes``, ``dataset``...):
    ``config.json``, with keys it lacks filled from the checkpoint record ``last.json``."""
    merged, found = {}, False
    for name in ('last.json', 'config.json'):         # config.json wins
        path = os.path.join(run_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                merged.update(json.load(f))
        except (OSError, ValueError) as exc:
            raise CLIError(f"{path}: unreadable run configuration ({exc})") from None
        found = True
    if not found:
        raise CLIError(f"--run-dir {run_dir}: no config.json or last.json (not a training run "
                       "directory?)")
    return merged


def resolve_model_source(run_dir=None, params=None):
    """``(params_path, run_config dict)`` from ``--run-dir``/``--params``.

    ``--params`` may be a run directory; a ``.params`` file whose directory holds a
    ``config.json`` takes its settings from it. Raises :class:`CLIError` for missing files.
    """
    if params and os.path.isdir(params) and not run_dir:
        run_dir, params = params, None
    if run_dir is not None and not os.path.isdir(run_dir):
        raise CLIError(f"--run-dir {run_dir}: directory not found")
    if not run_dir and not params:
        raise CLIError("give --params FILE or --run-dir DIR")
    if params is None:
        for name in ('best.params', 'last.params'):
            if os.path.isfile(os.path.join(run_dir, name)):
                params = os.path.join(run_dir, name)
                break
        else:
            raise CLIError(f"--run-dir {run_dir}: no best.params or last.params")
    elif not os.path.isfile(params):
        raise CLIError(f"--params {params}: file not found")
    if run_dir:
        return params, read_run_config(run_dir)
    sibling = os.path.dirname(os.path.abspath(params))
    if os.path.isfile(os.path.join(sibling, 'config.json')):
        return params, read_run_config(sibling)
    return params, {}


def _model_name(network, data_shape):
    """Zoo name for ``--network``/``--data-shape`` (CLIError naming the flag when unknown)."""
    from gluon_ssd.config import NETWORK_PRESETS, model_name
    if network not in NETWORK_PRESETS:
        raise CLIError(f"--network: unknown network {network!r}; choose one of "
                       f"{', '.join(NETWORK_PRESETS)}")
    shapes = NETWORK_PRESETS[network]['data_shapes']
    if data_shape is None:
        data_shape = NETWORK_PRESETS[network]['data_shape']
    if data_shape not in shapes:
        raise CLIError(f"--data-shape: {network} supports {', '.join(map(str, shapes))}, "
                       f"got {data_shape}")
    return model_name(network, data_shape), data_shape


def _load_params_file(path):
    """``{name: NDArray}`` of a .params file (CLIError if it is not one)."""
    import mxnet as mx
    try:
        arrays = mx.nd.load(path)
    except mx.base.MXNetError:
        raise CLIError(f"--params {path}: not an MXNet .params file (corrupt or wrong "
                       "format)") from None
    if not isinstance(arrays, dict) or not arrays:
        raise CLIError(f"--params {path}: holds no named parameters (not saved with "
                       "save_parameters?)")
    return arrays


def params_num_classes(arrays, name):
    """Foreground classes of the SSD whose parameters are ``arrays`` (dict), for zoo model
    ``name``; ``None`` if the file has no recognisable class predictor."""
    from gluon_ssd.model.zoo import anchor_sizes, get_preset
    weight = arrays.get(_CLASS_KEY)
    if weight is None:
        keys = [k for k in arrays if re.search(r'class_predictors\.0\..*weight$', k)]
        weight = arrays[keys[0]] if keys else None
    if weight is None or weight.ndim != 4:
        return None
    preset = get_preset(name)
    per_position = len(anchor_sizes(preset)[0]) + len(preset['ratios'][0]) - 1
    rows = weight.shape[0]
    if rows % per_position:
        return None
    return rows // per_position - 1


def _contexts(gpus):
    import mxnet as mx
    from gluon_ssd.config import ConfigError, parse_gpus
    try:
        ids = parse_gpus(gpus)
    except ConfigError as exc:
        raise CLIError(str(exc)) from None
    return [mx.gpu(i) for i in ids] if ids else [mx.cpu()]


def load_trained(params=None, run_dir=None, network=None, data_shape=None, classes=None,
                 decoder=None, nms_thresh=0.45, nms_topk=400, post_nms=100, ctx=None,
                 default_classes=None, hybridize=True, amp=False):
    """Build the SSD described by a run directory and/or flags and load its trained weights.

    Parameters
    ----------
    params, run_dir : see :func:`resolve_model_source` (at least one).
    network, data_shape, decoder : override the run's settings (defaults tiny_ssd / preset
        shape / per_class without a run).
    classes : list of str overriding the run's classes; else the run's, else
        ``default_classes`` (e.g. the dataset's), else ``class0..`` numbered from the file.
    ctx : list of ``mx.Context`` (default CPU).
    amp : bfloat16 mixed precision (CPU contexts only; see :mod:`gluon_ssd.precision`).

    Returns ``(net, info)``: the SSD in inference mode, hybridized (``static_alloc``,
    ``static_shape``), taking ``(B, 3, S, S)`` normalised images; ``info`` = ``{'params',
    'network', 'data_shape' (S, pixels), 'classes', 'decoder', 'model'}``. Raises
    :class:`CLIError` (one line) for a missing/corrupt file, an unknown network or parameters
    that do not fit the network or the number of classes.
    """
    import mxnet as mx
    from gluon_ssd.model.zoo import get_model
    params, run_cfg = resolve_model_source(run_dir, params)
    network = network or run_cfg.get('network') or 'tiny_ssd'
    name, data_shape = _model_name(network, data_shape or run_cfg.get('data_shape'))
    arrays = _load_params_file(params)
    file_classes = params_num_classes(arrays, name)
    classes, source = _pick_classes(classes, run_cfg, default_classes, file_classes)
    if file_classes is not None and file_classes != len(classes):
        raise CLIError(f"--params {params}: holds a {file_classes}-class {network} but "
                       f"{len(classes)} classes come from {source}")
    decoder = decoder or run_cfg.get('decoder') or 'per_class'
    net = get_model(name, classes=classes, pretrained_base=False, decoder=decoder,
                    nms_thresh=nms_thresh, nms_topk=nms_topk, post_nms=post_nms)
    ctx = ctx or [mx.cpu()]
    if amp:
        if any(c.device_type == 'gpu' for c in ctx):
            raise CLIError("--amp for inference is bfloat16 on CPU; drop --gpus or --amp")
        if not hybridize:
            raise CLIError("--amp works on hybridized graphs; load with hybridize=True")
        from gluon_ssd.precision import check_bf16_support
        try:
            check_bf16_support('--amp')
        except RuntimeError as exc:
            raise CLIError(str(exc)) from None
    try:
        net.load_parameters(params, ctx=ctx)
    except (AssertionError, mx.base.MXNetError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(', which contains')[0][:200]
        raise CLIError(f"--params {params}: does not fit {name} with {len(classes)} classes "
                       f"({first}); check --network/--data-shape") from None
    if amp:
        net.set_precision('bfloat16')
    if hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    info = {'params': params, 'network': network, 'data_shape': data_shape,
            'classes': list(classes), 'decoder': decoder, 'model': name}
    return net, info


def _pick_classes(classes, run_cfg, default_classes, file_classes):
    """``(classes, where they came from)`` by precedence flag > run > default > numbered."""
    if classes:
        return list(classes), '--classes'
    if run_cfg.get('classes'):
        return list(run_cfg['classes']), 'the run directory'
    if default_classes:
        return list(default_classes), 'the dataset'
    if file_classes:
        sys.stderr.write(f"warning: no class names given (--classes or --run-dir); using "
                         f"class0..class{file_classes - 1}\n")
        return [f'class{i}' for i in range(file_classes)], 'the parameters file'
    raise CLIError("--classes is required: the class names are not in the parameters file")


def model_from_args(args, default_classes=None):
    """:func:`load_trained` driven by the :func:`add_model_args` flags of ``args``."""
    return load_trained(params=args.params, run_dir=args.run_dir, network=args.network,
                        data_shape=args.data_shape, classes=parse_classes(args.classes),
                        decoder=args.decoder, nms_thresh=args.nms_thresh,
                        nms_topk=args.nms_topk, post_nms=args.post_nms,
                        ctx=_contexts(args.gpus), default_classes=default_classes,
                        amp=getattr(args, 'amp', False))


# ----------------------------------------------------------------------------------------------
# inference on one image
# ----------------------------------------------------------------------------------------------
def map_boxes_to_original(bboxes, input_size, orig_size, clip=True):
    """Map corner boxes from network-input pixels to original-image pixels.

    Parameters
    ----------
    bboxes : (K, 4) corner ``(xmin, ymin, xmax, ymax)``, pixels of the network input.
    input_size : ``(width, height)`` of the network input the image was resized to.
    orig_size : ``(width, height)`` of the original image.
    clip : clip to ``[0, width - 1] x [0, height - 1]`` (the datasets' 0-based pixel convention:
        ``xmax`` of an object touching the right edge is ``width - 1``).

    Returns a float32 ``(K, 4)`` numpy array, corner format, original pixels: the inverse of the
    validation transform's box resize (``x * in_w / orig_w``).
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


def val_transform(data_shape):
    """The validation transform ``(img (H,W,3) uint8, label (M,6)) -> (img (3,S,S) float32
    normalised, label (M,6) pixels of the input)`` with the training run's mean/std."""
    from gluon_ssd.data.transforms import SSDValTransform
    from gluon_ssd.engine import MEAN, STD
    return SSDValTransform(data_shape, data_shape, mean=MEAN, std=STD)


def detect(net, image, data_shape, ctx=None, transform=None):
    """Detections of ``net`` on one image, in the image's own pixels.

    ``image``: (H, W, 3) uint8 RGB NDArray. Returns ``(bboxes (K,4) float32 corner pixels of the
    original image, scores (K,), class_ids (K,) int)`` with padding rows (and rows with NaN/inf
    values, from a diverged model) removed, best first.
    """
    import mxnet as mx
    ctx = ctx or mx.cpu()
    transform = transform or val_transform(data_shape)
    height, width = image.shape[:2]
    x, _ = transform(image, np.zeros((0, 6), np.float32))
    ids, scores, bboxes = net(x.expand_dims(0).as_in_context(ctx))
    ids, scores, bboxes = ids[0, :, 0].asnumpy(), scores[0, :, 0].asnumpy(), bboxes[0].asnumpy()
    keep = (ids >= 0) & np.isfinite(scores) & np.isfinite(bboxes).all(axis=-1)
    boxes = map_boxes_to_original(bboxes[keep], (data_shape, data_shape),
                                  (width, height))
    return boxes, scores[keep], ids[keep].astype(int)


def detections_record(path, image, boxes, scores, ids, classes, thresh):
    """The JSON-ready record of one image (detections with ``score >= thresh``)."""
    dets = []
    for box, score, cid in zip(boxes, scores, ids):
        if score < thresh:
            continue
        dets.append({'class_id': int(cid), 'class': classes[cid], 'score': round(float(score), 6),
                     'bbox': [round(float(v), 3) for v in box]})
    return {'image': path, 'width': int(image.shape[1]), 'height': int(image.shape[0]),
            'detections': dets}


def _unique_stem(path, used):
    stem = os.path.splitext(os.path.basename(path))[0] or 'image'
    name, k = stem, 1
    while name in used:
        name, k = f'{stem}_{k}', k + 1
    used.add(name)
    return name


def _decode(path):
    from gluon_ssd.data import ImageDecodeError, decode_image
    try:
        return decode_image(path)
    except ImageDecodeError as exc:
        raise CLIError(str(exc)) from None


def predict_images(net, info, paths, thresh=0.3, out_dir=None, ctx=None):
    """Run :func:`detect` on each image file; write ``<stem>.json``/``<stem>.png`` into
    ``out_dir`` when given. Returns the list of per-image records (see the module docstring).
    Every path is checked to exist before the network runs (CLIError otherwise)."""
    from gluon_ssd.viz import save_detections
    for path in paths:
        if not os.path.isfile(path):
            raise CLIError(f"{path}: image file not found")
    transform = val_transform(info['data_shape'])
    records, used = [], set()
    for path in paths:
        image = _decode(path)
        boxes, scores, ids = detect(net, image, info['data_shape'], ctx, transform)
        record = detections_record(path, image, boxes, scores, ids, info['classes'], thresh)
        records.append(record)
        if out_dir:
            stem = os.path.join(out_dir, _unique_stem(path, used))
            os.makedirs(out_dir, exist_ok=True)
            with open(stem + '.json', 'w') as f:
                json.dump(record, f, indent=1)
            save_detections(image.asnumpy(), boxes, scores, ids, info['classes'], stem + '.png',
                            thresh=thresh)
    return records


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def build_parser():
    """The ``python -m gluon_ssd.predict`` argument parser."""
    p = argparse.ArgumentParser(
        prog='python -m gluon_ssd.predict',
        description='Detect objects in images with a trained SSD: JSON on stdout (boxes in '
                    'original image pixels, corner format) and an annotated PNG per image.')
    p.add_argument('images', nargs='+', help='image files (JPEG, PNG, ...)')
    add_model_args(p)
    p.add_argument('--thresh', type=float, default=0.3,
                   help='report detections with score >= this (default 0.3)')
    p.add_argument('--out-dir', default='predictions',
                   help='folder for <stem>.json and <stem>.png per image (default predictions; '
                        'empty string: none)')
    return p


def main(argv=None):
    """Parse flags, predict, print the JSON. Returns the exit code."""
    args = build_parser().parse_args(argv)
    prog = 'python -m gluon_ssd.predict'
    try:
        if not 0 <= args.thresh <= 1:
            raise CLIError(f"--thresh: must be in [0, 1], got {args.thresh}")
        for path in args.images:
            if not os.path.isfile(path):
                raise CLIError(f"{path}: image file not found")
        net, info = model_from_args(args)
        ctx = _contexts(args.gpus)[0]
        records = predict_images(net, info, args.images, args.thresh, args.out_dir or None, ctx)
    except CLIError as exc:
        return fail(prog, exc)
    json.dump(records, sys.stdout, indent=1)
    sys.stdout.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

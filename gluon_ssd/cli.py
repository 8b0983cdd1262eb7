"""What the ``predict``, ``eval`` and ``export`` command lines share: the flags naming a trained
model, turned into :func:`gluon_ssd.model.io.load_model` calls."""
import os

from gluon_ssd.errors import UserError

__all__ = ['add_model_args', 'parse_classes', 'model_from_args', 'contexts_from_args']


def add_model_args(parser):
    """Add the flags naming a trained model (shared by predict, eval and export)."""
    a = parser.add_argument
    a('--run-dir', help='training run directory (model.json + best.params/last.params): '
                        'network, input size and classes come from it')
    a('--params', help='.params file of the network (default with --run-dir: best.params, '
                       'else last.params); a run directory is also accepted')
    a('--pretrained', help="a zoo detector with GluonCV's trained weights, e.g. "
                           "ssd_512_mobilenet1.0_voc (downloaded into $MXNET_HOME/models when "
                           "absent), instead of --run-dir/--params")
    a('--network', help='base network of a bare .params file without a meta file: tiny_ssd, '
                        'vgg16_atrous, resnet50_v1, mobilenet1.0 (default tiny_ssd)')
    a('--data-shape', type=int, help='input size of a bare .params file (default: the '
                                     "network's default size)")
    a('--classes', help='class names, comma-separated or a text file with one per line '
                        '(required for a bare .params file; otherwise renames the classes)')
    a('--decoder', choices=('per_class', 'argmax'),
      help="detection decoding (default: the model's, per_class)")
    a('--nms-thresh', type=float, help='NMS IoU threshold (default 0.45; an exported model '
                                        'has its own)')
    a('--nms-topk', type=int, help='candidates per image before NMS (default 400)')
    a('--post-nms', type=int, help='detections kept per image (default 100)')
    a('--backend', choices=('mxnet', 'onnxruntime', 'openvino'),
      help='runtime: mxnet (default for .params weights), onnxruntime (default for .onnx) or '
           'openvino (default for .xml); MXNet weights are exported to ONNX in memory for the '
           'other two (needs pip install gluon-ssd[deploy])')
    a('--gpus', default='', help='GPU ids, e.g. "0,1"; empty (default) runs on CPU (with '
                                 '--backend onnxruntime: the CUDA provider of onnxruntime-gpu)')
    a('--amp', action='store_true',
      help='bfloat16 mixed precision on CPU where a short probe (cached per machine) measures '
           'it faster than float32, else float32 and one line (GLUON_SSD_BF16=on|off '
           'overrides); scores within ~1e-2 of float32; exported graphs are always float32')


def parse_classes(text):
    """``'a,b'`` or a path to a file with one name per line -> list of str (UserError if empty
    or duplicated); ``None`` stays ``None``."""
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
        raise UserError(f"{where}: no class names")
    if len(set(names)) != len(names):
        raise UserError(f"{where}: duplicate class names")
    return names


def contexts_from_args(args):
    """The contexts of ``--gpus`` (CPU when empty)."""
    from gluon_ssd.devices import make_contexts
    return make_contexts(args.gpus)


def model_from_args(args, default_classes=None):
    """``(net, meta)`` of :func:`gluon_ssd.model.io.load_model` driven by the
    :func:`add_model_args` flags of ``args``; ``default_classes`` (e.g. the evaluated dataset's)
    stand in for ``--classes`` when it is not given."""
    from gluon_ssd.model.io import load_model
    for flag, value in (('--nms-topk', args.nms_topk), ('--post-nms', args.post_nms)):
        if value is not None and value < 1:
            raise UserError(f"{flag}: must be positive, got {value}")
    if args.nms_thresh is not None and not 0 < args.nms_thresh <= 1:
        raise UserError(f"--nms-thresh: must be in (0, 1], got {args.nms_thresh}")
    return load_model(params=args.params, run_dir=args.run_dir, network=args.network,
                      data_shape=args.data_shape,
                      classes=parse_classes(args.classes) or default_classes,
                      decoder=args.decoder, nms_thresh=args.nms_thresh,
                      nms_topk=args.nms_topk, post_nms=args.post_nms,
                      ctx=contexts_from_args(args),
                      amp=getattr(args, 'amp', False), pretrained=args.pretrained,
                      backend=getattr(args, 'backend', None))

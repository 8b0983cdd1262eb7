"""Quantize a trained SSD to INT8, calibrated on images of a dataset split.

    python -m gluon_ssd.quantize --run-dir runs/X --dataset voc --data-root data/raccoon \\
        --split train --num-calib 64 --calib-mode entropy --out deploy/raccoon_int8
    python -m gluon_ssd.quantize --run-dir runs/X --method nncf --dataset voc \\
        --data-root data/raccoon --out deploy/raccoon_int8

``--method mxnet`` (default) writes ``PREFIX-symbol.json``, ``PREFIX-0000.params`` and
``PREFIX.meta.json``: MXNet's oneDNN int8 graph (CPU only; load it with
``gluon_ssd.deploy.quantize.load_mxnet_int8``). ``--method nncf`` exports the model to ONNX and
quantizes that with NNCF (``pip install gluon-ssd[deploy]``), see ``--nncf-format``. Either way
the post-processing (softmax, box decoding, NMS) stays float32 and the written files are printed
as JSON.

Exit codes: 0 success, 2 a problem the user can fix (one line on stderr, no traceback).
"""
import argparse
import json
import os
import sys

from gluon_ssd.cli import add_model_args, model_from_args
from gluon_ssd.errors import UserError, fail, one_line_warnings

__all__ = ['build_parser', 'run', 'main']

PROG = 'python -m gluon_ssd.quantize'
METHODS = ('mxnet', 'nncf')
NNCF_FORMATS = ('onnx', 'openvino')


def build_parser():
    """The ``python -m gluon_ssd.quantize`` argument parser."""
    from gluon_ssd.deploy.quantize import (CALIB_MODES, DEFAULT_CALIB_MODE, DEFAULT_EXCLUDE,
                                          EXCLUDE_GROUPS)
    p = argparse.ArgumentParser(prog=PROG, description='Quantize a trained SSD to INT8 '
                                '(post-training, calibrated on a dataset split).')
    add_model_args(p)
    a = p.add_argument
    a('--method', choices=METHODS, default='mxnet',
      help="mxnet: MXNet's oneDNN int8 graph (CPU); nncf: NNCF on the exported ONNX model")
    a('--calib-mode', choices=CALIB_MODES, default=DEFAULT_CALIB_MODE,
      help='mxnet: thresholds from the min/max of each layer (naive, default) or minimising '
           'the KL divergence (entropy, slower)')
    a('--num-calib', type=int, default=64, help='calibration images (default 64)')
    a('--exclude', default=','.join(DEFAULT_EXCLUDE),
      help=f"mxnet: comma-separated layers kept float32 besides the post-processing: "
           f"{', '.join(EXCLUDE_GROUPS)} or layer names; 'none' for none (default "
           f"{','.join(DEFAULT_EXCLUDE)})")
    a('--nncf-format', choices=NNCF_FORMATS, default='onnx',
      help='nncf: a QDQ ONNX model for ONNX Runtime and OpenVINO (default) or an OpenVINO IR')
    a('--preset', choices=('performance', 'mixed'), default='performance',
      help='nncf: symmetric (performance, default) or asymmetric activations (mixed)')
    a('--dataset', default='voc', help='calibration data: synthetic | voc | coco | rec '
                                       '(default voc)')
    a('--data-root', '--dataset-root', dest='data_root',
      help='dataset folder (VOC folder, COCO root, .rec folder)')
    a('--split', help="split to calibrate on (default: the dataset's training split)")
    a('--batch-size', type=int, default=8, help='calibration batch size (default 8)')
    a('--out', required=True, help='output prefix, e.g. deploy/raccoon_int8')
    return p


def _check_args(args):
    """Flag problems found before loading anything (:class:`UserError`)."""
    if not args.out.strip() or os.path.basename(args.out) in ('', '.', '..'):
        raise UserError(f"--out {args.out!r}: give a file prefix such as deploy/ssd_int8")
    for flag, value in (('--num-calib', args.num_calib), ('--batch-size', args.batch_size)):
        if value < 1:
            raise UserError(f"{flag}: must be positive, got {value}")
    if args.amp:
        raise UserError("--amp: quantization starts from the float32 model; drop --amp")
    if args.gpus.strip():
        raise UserError("--gpus: quantization and int8 inference run on the CPU; drop --gpus")
    if args.method != 'mxnet' and args.exclude != build_parser().get_default('exclude'):
        raise UserError("--exclude: only with --method mxnet")


def _exclusions(text):
    items = [t.strip() for t in text.split(',') if t.strip()]
    return [] if items == ['none'] else items


def _calibration(args, meta):
    """``(batches, skipped)`` of the calibration split (see ``calibration_batches``)."""
    from gluon_ssd.data.build import DEFAULT_SPLITS, check_dataset, open_split
    from gluon_ssd.deploy.quantize import calibration_batches
    check_dataset(args.dataset, args.data_root)
    split = args.split or DEFAULT_SPLITS[args.dataset][0]
    # the images are all calibration needs: objects of other classes are simply dropped
    classes = None if args.dataset == 'coco' else meta['classes']
    dataset = open_split(args.dataset, args.data_root, split, classes=classes)
    if len(dataset) == 0:
        raise UserError(f"--split {split}: no images in --dataset {args.dataset}")
    return calibration_batches(dataset, meta, args.num_calib, args.batch_size)


def run(args):
    """Quantize according to parsed ``args``; returns the dict :func:`main` prints (the
    written files plus what was done)."""
    from gluon_ssd.deploy import quantize as q
    _check_args(args)
    net, meta = model_from_args(args)
    if meta.get('artifact'):
        raise UserError(f"--params {meta['params']}: already an exported model; quantize the "
                        ".params weights it came from")
    batches, skipped = _calibration(args, meta)
    if args.method == 'mxnet':
        files = q.quantize_mxnet(net, meta, batches, args.out, calib_mode=args.calib_mode,
                                 num_calib=args.num_calib, exclude=_exclusions(args.exclude))
    else:
        files = q.quantize_nncf(net, meta, batches, args.out, fmt=args.nncf_format,
                                      preset=args.preset, subset_size=args.num_calib)
    with open(files['meta']) as f:
        written = json.load(f)
    return dict(files, method=args.method, artifact=written['artifact'],
                num_calib=written.get('num_calib'), skipped_images=skipped,
                excluded=written.get('excluded'))


def main(argv=None):
    """Parse flags, quantize, print the written files as JSON. Returns the exit code."""
    args = build_parser().parse_args(argv)
    one_line_warnings(PROG)
    try:
        result = run(args)
    except UserError as exc:
        return fail(PROG, exc)
    sys.stdout.write(json.dumps(result, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

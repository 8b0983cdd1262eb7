"""Export a trained SSD for deployment without this package: an MXNet symbol graph + weights,
or one ONNX file (decoding and NMS included) for ONNX Runtime, OpenVINO, TensorRT, OpenCV...

    python -m gluon_ssd.export --run-dir runs/tiny_ssd_synthetic_X --out deploy/tiny_ssd
    python -m gluon_ssd.export --run-dir runs/X --format onnx --out deploy/tiny_ssd
    python -m gluon_ssd.export --params best.params --network vgg16_atrous --data-shape 300 \\
        --classes classes.txt --out deploy/ssd300

``--format mxnet`` (default) writes

* ``PREFIX-symbol.json``: the hybridized **inference** graph (decoding and NMS included);
* ``PREFIX-0000.params``: its weights;
* ``PREFIX-meta.json``: what a consumer needs to use them: class names, input name/shape,
  normalisation, outputs.

``--format onnx`` writes ``PREFIX.onnx`` (the whole detector: network, anchors as constants, box
decoding, the model's class decoder, per-class ``NonMaxSuppression``, top-k; same outputs as
below; any batch size) and ``PREFIX.meta.json``; ``--bake-preprocess`` makes its input a uint8
``(B, S, S, 3)`` RGB image already resized to ``S x S`` (scaling and mean/std in the graph).
Both kinds load back with ``predict``/``eval`` (``--params PREFIX.onnx --backend onnxruntime`` or
``openvino``; ``--params PREFIX-symbol.json``).

The exported graph
------------------
Input ``'data'``: ``(B, 3, S, S)`` float32, RGB, ``S`` the model's input size, pixel values
scaled to 0-1 then normalised with the model's ``mean`` and ``std`` (both in the meta file): what
:func:`gluon_ssd.model.io.input_transform` produces. Any batch size ``B`` works.

Outputs (in this order):

1. ``ids (B, K, 1)``: class id ``0..C-1``, ``-1`` for padding rows;
2. ``scores (B, K, 1)``: confidence, rows sorted best first;
3. ``bboxes (B, K, 4)``: corner ``(xmin, ymin, xmax, ymax)`` in pixels of the ``S x S`` input
   (scale x by ``W / S`` and y by ``H / S`` for an original ``W x H`` image).

``K = --post-nms`` (100). Reload with::

    net = mx.gluon.SymbolBlock.imports('PREFIX-symbol.json', ['data'], 'PREFIX-0000.params')
    ids, scores, bboxes = net(x)

Exit codes: 0 success, 2 a problem the user can fix (one line on stderr, no traceback).
"""
import argparse
import json
import os
import sys

from gluon_ssd.cli import add_model_args, model_from_args
from gluon_ssd.errors import UserError, fail, one_line_warnings
from gluon_ssd.model.io import exported_meta

__all__ = ['export_model', 'build_parser', 'main']

PROG = 'python -m gluon_ssd.export'
INPUT_NAME = 'data'
FORMATS = ('mxnet', 'onnx')


def export_model(net, info, prefix):
    """Export ``net`` (an SSD with weights loaded) to ``prefix``; returns ``{'symbol', 'params',
    'meta'}`` file paths. Raises :class:`UserError` if the files cannot be written."""
    parent = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(parent, exist_ok=True)
        symbol, params = net.export(prefix)
        meta = f'{prefix}-meta.json'
        with open(meta, 'w') as f:
            json.dump(exported_meta(net, info, 'mxnet-symbol', net.post_nms), f, indent=1)
    except OSError as exc:
        raise UserError(f"--out {prefix}: cannot write ({exc.strerror or exc})") from None
    return {'symbol': symbol, 'params': params, 'meta': meta}


def build_parser():
    """The ``python -m gluon_ssd.export`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG, description='Export a trained SSD to PREFIX-symbol.json + PREFIX-0000.params '
                               '(+ PREFIX-meta.json) for mx.gluon.SymbolBlock.imports.')
    add_model_args(p)
    p.add_argument('--out', required=True, help='output prefix, e.g. deploy/tiny_ssd')
    p.add_argument('--format', choices=FORMATS, default='mxnet',
                   help='mxnet: PREFIX-symbol.json + PREFIX-0000.params; onnx: PREFIX.onnx '
                        '(needs pip install gluon-ssd[deploy]); both with a meta file')
    p.add_argument('--bake-preprocess', action='store_true',
                   help='onnx only: the graph takes uint8 (B, S, S, 3) RGB images resized to the '
                        'input size and normalises them itself')
    return p


def main(argv=None):
    """Parse flags, export, print the written files as JSON. Returns the exit code."""
    args = build_parser().parse_args(argv)
    one_line_warnings(PROG)
    try:
        if not args.out.strip() or os.path.basename(args.out) in ('', '.', '..'):
            raise UserError(f"--out {args.out!r}: give a file prefix such as deploy/tiny_ssd")
        if args.bake_preprocess and args.format != 'onnx':
            raise UserError("--bake-preprocess: only with --format onnx")
        if getattr(args, 'backend', None) not in (None, 'mxnet'):
            raise UserError("--backend: export reads MXNet weights; choose the file kind with "
                            "--format")
        net, info = model_from_args(args)
        if info.get('artifact'):
            raise UserError(f"--params {info['params']}: already an exported model; export the "
                            ".params weights it came from")
        if args.format == 'onnx':
            from gluon_ssd.model.onnx_export import export_onnx
            files = export_onnx(net, info, args.out + '.onnx',
                                bake_preprocess=args.bake_preprocess)
        else:
            files = export_model(net, info, args.out)
    except UserError as exc:
        return fail(PROG, exc)
    size = info['data_shape']
    shape = [1, size, size, 3] if args.bake_preprocess else [1, 3, size, size]
    sys.stdout.write(json.dumps(dict(files, format=args.format,
                                     input_name='image' if args.bake_preprocess else INPUT_NAME,
                                     input_shape=shape), indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Export a trained SSD as a symbol graph + weights for deployment without this package.

    python -m gluon_ssd.export --run-dir runs/tiny_ssd_synthetic_X --out deploy/tiny_ssd
    python -m gluon_ssd.export --params best.params --network vgg16_atrous --data-shape 300 \\
        --classes classes.txt --out deploy/ssd300

Writes

* ``PREFIX-symbol.json``: the hybridized **inference** graph (decoding and NMS included);
* ``PREFIX-0000.params``: its weights;
* ``PREFIX-meta.json``: what a consumer needs to use them: class names, input name/shape,
  normalisation, outputs.

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
from gluon_ssd.errors import UserError, fail

__all__ = ['export_model', 'export_meta', 'build_parser', 'main']

PROG = 'python -m gluon_ssd.export'
INPUT_NAME = 'data'


def export_meta(info, net):
    """JSON-ready description of an exported SSD (classes, input, normalisation, outputs);
    ``info`` is the model's meta (:func:`gluon_ssd.model.io.load_model`)."""
    size = int(info['data_shape'])
    return {
        'model': info['model'], 'network': info['network'], 'classes': list(info['classes']),
        'data_shape': size, 'mean': list(info['mean']), 'std': list(info['std']),
        'input': {'name': INPUT_NAME, 'shape': ['B', 3, size, size], 'dtype': 'float32',
                  'layout': 'NCHW', 'color': 'RGB', 'scale': 1.0 / 255,
                  'mean': list(info['mean']), 'std': list(info['std'])},
        'outputs': [
            {'name': 'ids', 'shape': ['B', net.post_nms, 1],
             'meaning': 'class id 0..C-1, -1 = padding'},
            {'name': 'scores', 'shape': ['B', net.post_nms, 1], 'meaning': 'confidence'},
            {'name': 'bboxes', 'shape': ['B', net.post_nms, 4],
             'meaning': 'corner xmin, ymin, xmax, ymax in pixels of the S x S input'}],
        'decoder': info['decoder'], 'nms_thresh': net.nms_thresh, 'nms_topk': net.nms_topk,
        'post_nms': net.post_nms, 'source_params': info['params'],
    }


def export_model(net, info, prefix):
    """Export ``net`` (an SSD with weights loaded) to ``prefix``; returns ``{'symbol', 'params',
    'meta'}`` file paths. Raises :class:`UserError` if the files cannot be written."""
    parent = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(parent, exist_ok=True)
        symbol, params = net.export(prefix)
        meta = f'{prefix}-meta.json'
        with open(meta, 'w') as f:
            json.dump(export_meta(info, net), f, indent=1)
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
    return p


def main(argv=None):
    """Parse flags, export, print the written files as JSON. Returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if not args.out.strip() or os.path.basename(args.out) in ('', '.', '..'):
            raise UserError(f"--out {args.out!r}: give a file prefix such as deploy/tiny_ssd")
        net, info = model_from_args(args)
        files = export_model(net, info, args.out)
    except UserError as exc:
        return fail(PROG, exc)
    sys.stdout.write(json.dumps(dict(files, input_name=INPUT_NAME,
                                     input_shape=[1, 3, info['data_shape'], info['data_shape']]),
                                indent=1) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""The whole SSD detector as one ONNX file: network, anchors, decoding and NMS.

The network body (features, optional ``head_norms``, class and box predictors) is converted by
MXNet 1.9.1's mx2onnx; the anchors become a constant; the inference tail is an ONNX graph built
here (:mod:`gluon_ssd.model.onnx_post`). The outputs equal the MXNet SSD's in inference mode:
``ids (B, K, 1)``, ``scores (B, K, 1)``, ``bboxes (B, K, 4)`` corner pixels, same rows, same
order, -1 padding rows.
"""
import json
import os

import numpy as np

from gluon_ssd.errors import UserError

__all__ = ['export_onnx', 'onnx_model', 'require_onnx', 'INPUT_NAME',
           'IMAGE_INPUT_NAME', 'OUTPUT_NAMES', 'OPSETS']

INPUT_NAME = 'data'          # (B, 3, S, S) float32, normalised
IMAGE_INPUT_NAME = 'image'   # (B, S, S, 3) uint8 RGB, with bake_preprocess
OUTPUT_NAMES = ('ids', 'scores', 'bboxes')
#: Opsets the graph is valid for: ``Split`` without sizes and ``ReduceMax`` with an ``axes``
#: attribute need 13..17.
OPSETS = range(13, 18)
_BODY_OUTPUTS = ('cls_preds', 'box_preds')


def require_onnx():
    """Import and return ``onnx``; a missing package is a :class:`UserError`."""
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install gluon-ssd[deploy]") \
            from None
    return onnx


def onnx_model(net, meta=None, *, opset=13, dynamic_batch=True, bake_preprocess=False):
    """The detector ``net`` (an :class:`~gluon_ssd.model.ssd.SSD` with weights) as an in-memory
    ``onnx.ModelProto`` (nothing is written).

    Parameters
    ----------
    net : SSD with initialised weights (any context; its NMS settings and decoder are baked in).
    meta : model meta dict (:func:`gluon_ssd.model.io.make_meta`); ``mean``/``std`` are read
        with ``bake_preprocess``; ``classes`` (JSON) and ``model`` go into the ONNX metadata.
    opset : ONNX opset, 13..17.
    dynamic_batch : ``True``: any batch size ``B``; ``False``: ``B = 1``.
    bake_preprocess : ``False``: input ``'data'`` ``(B, 3, S, S)`` float32 RGB scaled to 0-1 and
        normalised with the meta's mean/std. ``True``: input ``'image'`` ``(B, S, S, 3)`` uint8
        RGB already resized to ``S x S``; casting, scaling, normalisation and the transpose to
        NCHW are part of the graph.

    Outputs ``ids (B, K, 1)`` float class id or -1, ``scores (B, K, 1)``, ``bboxes (B, K, 4)``
    corner ``(xmin, ymin, xmax, ymax)`` pixels of the ``S x S`` input; -1 rows are padding;
    ``K`` as the MXNet SSD (``min(post_nms, candidates)``).
    """
    onnx = require_onnx()
    from onnx import TensorProto, helper
    from gluon_ssd.model.onnx_post import GraphBuilder, detection_tail, output_rows
    if opset not in OPSETS:
        raise UserError(f"opset {opset}: the exported graph needs an ONNX opset in 13..17")
    if bake_preprocess and not meta:
        raise ValueError("bake_preprocess=True needs the model meta (mean/std)")
    size_h, size_w = net.im_size
    batch = 'B' if dynamic_batch else 1
    body, anchors = _body_graph(net, opset, dynamic_batch)
    post = GraphBuilder('post')
    cls_preds, box_preds = (o.name for o in body.output)
    outputs = detection_tail(post, cls_preds, box_preds, anchors, num_classes=net.num_classes,
                             # the stds the inference tail really decodes with
                             stds=net.detection_head.box_decoder._stds, decoder=net.decoder,
                             nms_thresh=net.nms_thresh, nms_topk=net.nms_topk,
                             post_nms=net.post_nms,
                             score_thresh=net.detection_head.score_thresh, names=OUTPUT_NAMES)
    num_cand = anchors.shape[0] * (net.num_classes if net.decoder == 'per_class' else 1)
    rows = output_rows(num_cand, net.nms_thresh, net.post_nms)
    nodes, inits = list(body.node), list(body.initializer)
    if bake_preprocess:
        pre = GraphBuilder('pre')
        _preprocess(pre, meta)
        nodes, inits = pre.nodes + nodes, pre.initializers + inits
        graph_input = helper.make_tensor_value_info(IMAGE_INPUT_NAME, TensorProto.UINT8,
                                                    [batch, size_h, size_w, 3])
    else:
        graph_input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                    [batch, 3, size_h, size_w])
    graph_outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, rows, width])
                     for name, width in zip(outputs, (1, 1, 4))]
    graph = helper.make_graph(nodes + post.nodes, 'gluon_ssd', [graph_input], graph_outputs,
                              initializer=inits + post.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)],
                              producer_name='gluon-ssd')
    if meta:
        helper.set_model_props(model, {'classes': json.dumps(list(meta.get('classes', ()))),
                                       'model': str(meta.get('model', ''))})
    onnx.checker.check_model(model)
    return model


def export_onnx(net, meta, path, *, opset=13, dynamic_batch=True, bake_preprocess=False):
    """Write the detector to ``path`` (``.onnx``) and ``STEM.meta.json`` beside it.

    ``net``, ``opset``, ``dynamic_batch``, ``bake_preprocess``: see :func:`onnx_model`. ``meta``:
    the model meta (``model``, ``network``, ``classes``, ``data_shape``, ``mean``, ``std``,
    ``decoder``); the meta file is :func:`gluon_ssd.model.io.exported_meta` of it. Returns ``{'onnx': path,
    'meta': meta_path}``. A path that cannot be written is a :class:`UserError`.
    """
    from gluon_ssd.model.io import exported_meta, save_meta
    if not str(path).endswith('.onnx'):
        raise UserError(f"{path}: the ONNX file name must end with .onnx")
    model = onnx_model(net, meta, opset=opset, dynamic_batch=dynamic_batch,
                       bake_preprocess=bake_preprocess)
    meta_path = str(path)[:-len('.onnx')] + '.meta.json'
    rows = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    info = exported_meta(net, meta, 'onnx', rows, bake_preprocess=bake_preprocess,
                         dynamic_batch=dynamic_batch)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, 'wb') as f:
            f.write(model.SerializeToString())
        save_meta(info, meta_path)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return {'onnx': str(path), 'meta': meta_path}


# ----------------------------------------------------------------------------------------------
# the network body through mx2onnx
# ----------------------------------------------------------------------------------------------
def _body_graph(net, opset, dynamic_batch):
    """``(GraphProto, anchors (N, 4) center px)``: mx2onnx's graph of ``net.raw_outputs``
    without the anchors, input ``'data'`` ``(B, 3, S, S)``, outputs ``cls_preds (B, N, C+1)``
    and ``box_preds (B, N, 4)``; every weight an initializer (none is a graph input)."""
    import mxnet as mx
    from onnx import TensorProto, numpy_helper
    from mxnet.onnx.mx2onnx._export_onnx import MXNetGraph
    anchors = _anchors(net)  # a forward pass: also completes any deferred initialisation
    data = mx.sym.var(INPUT_NAME)
    cls_preds, box_preds, _ = net.raw_outputs(mx.sym, data)
    sym = mx.sym.Group([cls_preds, box_preds])
    weights = {name: param.data() for name, param in net.collect_params().items()
               if param._data is not None}
    # Weights are handed to mx2onnx as graph inputs (shape only) and become initializers here:
    # mx2onnx stores every weight as a Python list of floats, which with protobuf's pure-Python
    # backend (protobuf 3.20 on Python 3.11) takes over a minute for VGG16; from_array keeps the
    # raw bytes. mx.onnx.export_model would also stamp the onnx package's newest opset on
    # whatever converters it used; MXNetGraph (its engine) takes the opset we ask for.
    inputs = [n for n in sym.list_inputs() if n != INPUT_NAME]
    missing = [n for n in inputs if n not in weights]
    if missing:
        raise ValueError(f"ONNX export needs initialised weights; {missing[0]} has none "
                         "(call net.initialize() or load weights first)")
    size = tuple(net.im_size)
    in_shapes = [(1, 3) + size] + [weights[n].shape for n in inputs]
    in_types = [TensorProto.FLOAT] * len(in_shapes)
    dynamic = [('B', 3) + size] + [weights[n].shape for n in inputs] if dynamic_batch else None
    graph = MXNetGraph().create_onnx_graph_proto(
        sym, {}, in_shapes, in_types, opset_version=opset, dynamic=dynamic_batch,
        dynamic_input_shapes=dynamic)
    order = [INPUT_NAME] + inputs
    if [i.name for i in graph.input] != order:
        raise RuntimeError(f"mx2onnx changed the graph inputs: {[i.name for i in graph.input]}")
    graph.initializer.extend(numpy_helper.from_array(weights[n].asnumpy().astype(np.float32), n)
                             for n in inputs)
    del graph.input[1:]
    for out, name in zip(graph.output, _BODY_OUTPUTS):
        _rename(graph, out.name, name)
    return graph, anchors


def _rename(graph, old, new):
    """Rename tensor ``old`` to ``new`` everywhere in ``graph``."""
    for node in graph.node:
        node.input[:] = [new if i == old else i for i in node.input]
        node.output[:] = [new if o == old else o for o in node.output]
    for value in list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


def _anchors(net):
    """The SSD's anchors ``(N, 4)`` float32, center ``(cx, cy, w, h)`` pixels: its anchor
    generators run once on the feature maps of a zero image."""
    import mxnet as mx
    from mxnet import autograd
    weight = next(iter(net.collect_params().values()))
    ctx = weight.list_ctx()[0]
    with autograd.predict_mode():
        _, _, anchors = net.raw_outputs(mx.nd, mx.nd.zeros((1, 3) + tuple(net.im_size), ctx=ctx))
    return anchors.asnumpy().reshape(-1, 4).astype(np.float32)


def _preprocess(g, meta):
    """Nodes turning ``'image'`` (B, S, S, 3) uint8 RGB into ``'data'`` (B, 3, S, S) float32
    normalised as :func:`gluon_ssd.model.io.input_transform` (``x / 255``, ``(x - mean) / std``)."""
    mean = np.asarray(meta['mean'], np.float32).reshape(1, 1, 1, 3)
    std = np.asarray(meta['std'], np.float32).reshape(1, 1, 1, 3)
    x = g.op('Div', [g.op('Cast', [IMAGE_INPUT_NAME], to=1), g.const(255.0)])
    x = g.op('Div', [g.op('Sub', [x, g.const(mean)]), g.const(std)])
    g.op('Transpose', [x], perm=[0, 3, 1, 2], name=INPUT_NAME)

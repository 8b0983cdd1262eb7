"""Count the multiply-accumulates of a hybridizable network's convolutions and dense layers
from its symbol (shapes by ``infer_shape``)."""
import json

import mxnet as mx

__all__ = ['count_macs']


def count_macs(net, input_shape):
    """Multiply-accumulates of one forward pass of ``net`` on ``input_shape`` (conv + dense)."""
    sym = net(mx.sym.var('data'))
    if isinstance(sym, (list, tuple)):
        sym = mx.sym.Group(list(sym))
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape_partial(data=input_shape)
    shapes = dict(zip(internals.list_outputs(), out_shapes))
    nodes = json.loads(sym.tojson())['nodes']
    total = 0
    for node in nodes:
        if node['op'] not in ('Convolution', 'FullyConnected'):
            continue
        out = shapes.get(node['name'] + '_output')
        weight = shapes.get(nodes[node['inputs'][1][0]]['name'])
        if not out or not weight:
            continue
        out_elems = 1
        for d in out:
            out_elems *= d
        per_out = 1
        for d in weight[1:]:
            per_out *= d
        total += out_elems * per_out
    return total

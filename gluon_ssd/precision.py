"""bfloat16 mixed precision for hybridized graphs on CPU.

CPUs with AVX512-BF16 (or AMX) run MKL-DNN's bfloat16 convolutions about twice as fast as float32
ones (measured in ``BENCHMARKS.md``). :func:`to_bfloat16` rewrites a traced graph so that

* ``Convolution`` / ``FullyConnected`` compute in bfloat16: their inputs (data, weight, bias) are
  cast with ``amp_cast``; the parameters themselves stay float32 (*master weights*), so the
  optimizer updates float32 values and gradients arrive in float32 through the cast's backward.
  The exception is the first layer (a convolution with no convolution upstream: it reads the
  3-channel image), which stays float32;
* ``Pooling``, ReLU ``Activation`` and ``BatchNorm`` (its statistics and affine parameters in
  float32) keep bfloat16 data as it comes, so a conv → BN → ReLU → pool chain never leaves
  bfloat16;
* every other operator (L2Normalization, softmax, box decoding, NMS, the target generator, the
  loss) gets float32 inputs, and the graph's outputs are float32.

bfloat16 has float32's exponent range, so no loss scaling is needed (unlike float16 on GPUs);
it keeps 8 mantissa bits, so activations are rounded to ~3 significant digits.

:class:`PrecisionMixin` gives a HybridBlock ``set_precision('bfloat16' | 'float32')``: the next
traced graph (each mode's, for :class:`~gluon_ssd.model.ssd.SSD`) is rewritten before MXNet
builds its cached op. Only the block that is called from Python needs it (a child's operators
are part of its parent's graph).
"""
import json
import warnings

import mxnet as mx

from gluon_ssd.errors import UserError

__all__ = ['to_bfloat16', 'PrecisionMixin', 'PRECISIONS', 'cpu_bf16_support',
           'check_bf16_support']

PRECISIONS = ('float32', 'bfloat16')

#: operators computed in bfloat16 (every input cast)
_LOW_PRECISION_OPS = frozenset(['Convolution', 'FullyConnected'])


def _keeps_input_dtype(node):
    """Does the operator run in whatever precision its data input has?"""
    op = node['op']
    if op in ('Pooling', 'BatchNorm'):
        return True
    return op == 'Activation' and node.get('attrs', {}).get('act_type') == 'relu'


def to_bfloat16(sym, first_layer_float32=True):
    """A copy of ``sym`` (float32 graph) with bfloat16 compute as described in the module
    docstring; ``first_layer_float32=False`` casts the first layer too. Argument names, their
    order and the outputs are unchanged (outputs are float32)."""
    graph = json.loads(sym.tojson())
    nodes = graph['nodes']
    new_nodes, new_index = [], {}
    dtypes = {}  # (new node index, output index) -> 'float32' | 'bfloat16'
    casts = {}   # (new node index, output index, dtype) -> new node index of the amp_cast

    def cast(entry, dtype):
        """The entry ``[node, output, version]`` (new indices) as ``dtype``."""
        src, out = entry[0], entry[1]
        if dtypes.get((src, out), 'float32') == dtype:
            return entry
        key = (src, out, dtype)
        if key not in casts:
            casts[key] = len(new_nodes)
            new_nodes.append({'op': 'amp_cast', 'name': f"{new_nodes[src]['name']}_{out}_to_{dtype}",
                              'attrs': {'dtype': dtype}, 'inputs': [[src, out, 0]]})
            dtypes[(casts[key], 0)] = dtype
        return [casts[key], 0, 0]

    after_conv = set()  # old node indices with a convolution upstream (or themselves one)
    for old, node in enumerate(nodes):
        node = dict(node)
        inputs = [[new_index[i], o, v] for i, o, v in node['inputs']]
        conv_upstream = any(i in after_conv for i, _, _ in node['inputs'])
        if node['op'] in _LOW_PRECISION_OPS or conv_upstream:
            after_conv.add(old)
        if node['op'] == 'null':
            out_dtype = 'float32'
        elif first_layer_float32 and node['op'] in _LOW_PRECISION_OPS and not conv_upstream:
            # the first layer (reads the image, 3 channels) stays float32: bfloat16 gains nothing
            # there and MKL-DNN gives its bfloat16 output a layout that makes the next
            # BatchNorm ~7x slower (measured on TinySSD's first block)
            out_dtype = 'float32'
        elif node['op'] in _LOW_PRECISION_OPS:
            inputs = [cast(e, 'bfloat16') for e in inputs]
            out_dtype = 'bfloat16'
        elif _keeps_input_dtype(node) and inputs:
            out_dtype = dtypes.get((inputs[0][0], inputs[0][1]), 'float32')
            inputs = inputs[:1] + [cast(e, 'float32') for e in inputs[1:]]
        else:
            inputs = [cast(e, 'float32') for e in inputs]
            out_dtype = 'float32'
        node['inputs'] = inputs
        new_index[old] = len(new_nodes)
        new_nodes.append(node)
        dtypes[(new_index[old], 0)] = out_dtype  # other outputs (BatchNorm's mean/var) float32

    heads = [cast([new_index[i], o, v], 'float32') for i, o, v in graph['heads']]
    out = {'nodes': new_nodes, 'heads': heads,
           'arg_nodes': [i for i, n in enumerate(new_nodes) if n['op'] == 'null'],
           'attrs': graph.get('attrs', {})}
    return mx.sym.load_json(json.dumps(out))


def cpu_bf16_support(cpuinfo='/proc/cpuinfo'):
    """How this CPU runs MKL-DNN's bfloat16 convolutions: ``'native'`` (``avx512_bf16`` or AMX
    dot products), ``'emulated'`` (AVX-512 without them: works, slower than float32) or ``None``
    (no AVX-512: MKL-DNN cannot build bfloat16 convolutions at all, the first forward raises)."""
    try:
        with open(cpuinfo, encoding='ascii', errors='replace') as f:
            flags = set(f.read().split())
    except OSError:
        return None
    if {'avx512_bf16', 'amx_bf16'} & flags:
        return 'native'
    if {'avx512f', 'avx512bw'} <= flags:
        return 'emulated'
    return None


def check_bf16_support(flag='--amp'):
    """Raise :class:`~gluon_ssd.errors.UserError` naming ``flag`` when this CPU cannot run
    bfloat16 convolutions;
    warn when it can only emulate them."""
    support = cpu_bf16_support()
    if support is None:
        raise UserError(f"{flag}: bfloat16 on CPU needs AVX-512 (MKL-DNN has no bfloat16 "
                           f"convolution without it); this CPU has none, run without {flag}")
    if support == 'emulated':
        warnings.warn(f"{flag}: this CPU has no AVX512-BF16/AMX; MKL-DNN emulates bfloat16, "
                      f"which is slower than float32 here")


class PrecisionMixin:
    """Mixin for a ``HybridBlock``: ``set_precision('bfloat16')`` makes every graph traced from
    then on bfloat16 mixed precision (:func:`to_bfloat16`); ``'float32'`` (the default) leaves
    graphs as traced. Changing the precision drops the cached graphs. Parameters are untouched
    (float32) either way."""

    _precision = 'float32'
    #: keep the first layer float32 (see :func:`to_bfloat16`)
    _first_layer_float32 = True

    @property
    def precision(self):
        """``'float32'`` or ``'bfloat16'``."""
        return self._precision

    def set_precision(self, precision):
        """Choose the compute precision of this block's hybridized graphs (see class doc)."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision != self._precision:
            self._precision = precision
            self._clear_cached_op()

    def _get_graph(self, *args):
        if not self._cached_graph:
            inputs, out = super()._get_graph(*args)
            if self._precision == 'bfloat16':
                self._cached_graph = inputs, to_bfloat16(out, self._first_layer_float32)
        return self._cached_graph

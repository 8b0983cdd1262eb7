"""bfloat16 mixed precision for hybridized graphs on CPU.

Some CPUs with AVX512-BF16 (or AMX) run MKL-DNN's bfloat16 convolutions about twice as fast as
float32 ones (measured in ``BENCHMARKS.md``), others with the same flag about half as fast (see
the end of this docstring). :func:`to_bfloat16` rewrites a traced graph so that

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

Whether bfloat16 is *faster* is measured, not read from CPU flags: the same AVX512-BF16 flag
comes with fast bfloat16 convolutions on some CPUs and slow ones on others. :func:`bf16_speedup`
times a small conv workload in both precisions once per machine (cached), and :func:`resolve_amp`
turns ``--amp`` into bfloat16 only where that probe measured it faster.
"""
import datetime
import json
import logging
import os
import tempfile
import time
import warnings

import mxnet as mx

from gluon_ssd.errors import UserError

__all__ = ['to_bfloat16', 'PrecisionMixin', 'PRECISIONS', 'cpu_bf16_support',
           'check_bf16_support', 'AmpWarning', 'bf16_speedup', 'resolve_amp',
           'MIN_BF16_SPEEDUP']

LOG = logging.getLogger(__name__)

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


class AmpWarning(UserWarning):
    """``--amp`` on CPU will not give the speed it promises (bfloat16 emulated, or measured no
    faster than float32 and so not used)."""


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
                      f"which is slower than float32 here", AmpWarning, stacklevel=2)


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


# ----------------------------------------------------------------------------------------------
# --amp on CPU: measure, then decide

#: bfloat16 is used only where the probe measured it more than this many times float32's speed.
#: The probe times convolutions, BatchNorm and ReLU only; in SSD300 about 85 % of the time is
#: such layers, the rest (first layer, L2Norm, heads, NMS) stays float32 and the casts between
#: the two cost extra, so a 5 % gain in the probe is roughly break-even on the real network.
#: Below it bfloat16 would round activations to ~3 digits for nothing; the margin also covers
#: the probe's noise on a busy machine (a few percent between runs).
MIN_BF16_SPEEDUP = 1.05

_BF16_ENV = 'GLUON_SSD_BF16'      # on | off | probe (default)
_CACHE_ENV = 'GLUON_SSD_CACHE'    # directory of the probe's cache file
_CACHE_FILE = 'bf16_probe.json'
#: CPU flags that pick MKL-DNN's bfloat16 kernels: part of the cache key and of the result
_PROBE_FLAGS = ('avx512f', 'avx512bw', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16', 'amx_tile',
                'amx_bf16')
#: the probe's input (B, C, H, W) and its layers after a float32 stem: (channels, pool before);
#: SSD300-VGG16's widths at half its map sizes (75, 38, 19 px), ~7.6 GFLOP per forward
_PROBE_INPUT = (1, 3, 150, 150)
_PROBE_LAYERS = ((128, True), (128, False), (256, True), (256, False), (512, True),
                 (512, False))
_PROBE_SECONDS = 1.0              # timed calls after warm-up (plus ~0.5 s of graph building)


def _cpu_identity(cpuinfo='/proc/cpuinfo'):
    """``(model name, flags)`` of this CPU: the first ``model name`` of ``cpuinfo`` (str,
    ``'unknown'`` when unreadable) and the :data:`_PROBE_FLAGS` it has (sorted list of str)."""
    model, flags = 'unknown', set()
    try:
        with open(cpuinfo, encoding='ascii', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                key = key.strip()
                if key == 'model name' and model == 'unknown':
                    model = value.strip() or 'unknown'
                elif key == 'flags' and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, sorted(flags & set(_PROBE_FLAGS))


def _cache_path():
    """The probe's cache file: in ``$GLUON_SSD_CACHE``, else ``$MXNET_HOME``, else
    ``~/.cache/gluon_ssd``."""
    folder = (os.environ.get(_CACHE_ENV) or os.environ.get('MXNET_HOME')
              or os.path.join(os.path.expanduser('~'), '.cache', 'gluon_ssd'))
    return os.path.join(folder, _CACHE_FILE)


def _read_cache(path):
    """The cache's entries ``{key: probe result}``; ``{}`` for a missing, unreadable or malformed
    file (it is then measured again and rewritten, never an error)."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        entries = data['entries']
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _valid_result(result):
    """Is ``result`` a complete probe result with a positive, finite speedup?"""
    if not isinstance(result, dict) or not {'speedup', 'cpu', 'flags', 'mxnet', 'measured'} <= \
            set(result):
        return False
    speedup = result['speedup']
    return isinstance(speedup, (int, float)) and 0 < speedup < float('inf')


def _write_cache(path, entries):
    """Write ``entries`` to ``path`` atomically (temporary file + rename, so a reader never sees
    half a file); a folder that cannot be written only costs a new probe next time."""
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix='.bf16_probe.', suffix='.tmp')
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            json.dump({'entries': entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        LOG.debug('bf16 probe: cannot write %s (%s)', path, exc)
        if tmp and os.path.exists(tmp):
            os.remove(tmp)


def _probe_net():
    """The probe's network: a float32 3x3 stem (64 channels, as SSD's first layer stays float32)
    then 3x3 conv + BatchNorm + ReLU layers of :data:`_PROBE_LAYERS`, with 2x2 max pooling
    (ceil) where marked. ``(B, 3, H, W) -> (B, 512, ceil(H/8), ceil(W/8))``."""
    from mxnet.gluon import nn

    class _ProbeNet(PrecisionMixin, nn.HybridSequential):
        pass

    net = _ProbeNet(prefix='bf16probe_')
    with net.name_scope():
        net.add(nn.Conv2D(64, 3, padding=1), nn.Activation('relu'))
        for channels, pool in _PROBE_LAYERS:
            if pool:
                net.add(nn.MaxPool2D(2, 2, ceil_mode=True))
            net.add(nn.Conv2D(channels, 3, padding=1), nn.BatchNorm(), nn.Activation('relu'))
    return net


def _measure(seconds=None):
    """Time the probe network's inference forward in float32 and in bfloat16 (the
    :class:`PrecisionMixin` rewrite, as ``--amp`` runs it). Returns ``(float32_s, bfloat16_s)``,
    the fastest call of each, in seconds. Calls alternate between the two precisions, so a busy
    neighbour slows both alike; the minimum is the least disturbed call. ``seconds``: time spent
    in timed calls (default :data:`_PROBE_SECONDS`), at least 3 calls of each."""
    seconds = _PROBE_SECONDS if seconds is None else seconds
    x = mx.nd.random.uniform(shape=_PROBE_INPUT)
    nets = {}
    for precision in PRECISIONS:
        net = _probe_net()
        net.initialize(mx.init.Xavier())
        net.set_precision(precision)
        net.hybridize(static_alloc=True, static_shape=True)
        for _ in range(2):  # builds the graph and MKL-DNN's primitives and weight layouts
            net(x).wait_to_read()
        nets[precision] = net
    best = dict.fromkeys(PRECISIONS, float('inf'))
    start, rounds = time.perf_counter(), 0
    while rounds < 3 or (time.perf_counter() - start < seconds and rounds < 100):
        for precision, net in nets.items():
            tic = time.perf_counter()
            net(x).wait_to_read()
            best[precision] = min(best[precision], time.perf_counter() - tic)
        rounds += 1
    return best['float32'], best['bfloat16']


def bf16_speedup(refresh=False):
    """How much faster this CPU runs the probe network (SSD-like 3x3 conv + BatchNorm + ReLU,
    input (1, 3, 150, 150), hybridized) in bfloat16 than in float32.

    Measured once per machine (~1-3 s) and cached in ``bf16_probe.json`` (see
    :func:`_cache_path`) under the CPU's model name, its bfloat16-related flags and the MXNet
    version; ``refresh=True`` measures again. Returns a dict: ``speedup`` (float32 time /
    bfloat16 time; > 1 means bfloat16 is faster), ``cpu`` (model name from /proc/cpuinfo),
    ``flags`` (list of str), ``mxnet`` (version), ``measured`` (ISO 8601 UTC time),
    ``float32_ms`` and ``bfloat16_ms`` (the fastest forward of each, milliseconds)."""
    cpu, flags = _cpu_identity()
    key = f"{cpu} | {' '.join(flags)} | mxnet {mx.__version__}"
    path = _cache_path()
    entries = _read_cache(path)
    if not refresh and _valid_result(entries.get(key)):
        return dict(entries[key])
    float32_s, bfloat16_s = _measure()
    result = {'speedup': round(float32_s / bfloat16_s, 3), 'cpu': cpu, 'flags': flags,
              'mxnet': mx.__version__,
              'measured': datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec='seconds'),
              'float32_ms': round(float32_s * 1e3, 2), 'bfloat16_ms': round(bfloat16_s * 1e3, 2)}
    entries[key] = result
    _write_cache(path, entries)
    return dict(result)


def _bf16_mode():
    """``$GLUON_SSD_BF16``: ``'on'``, ``'off'`` or ``'probe'`` (unset or empty); anything else is
    a :class:`UserError`."""
    mode = os.environ.get(_BF16_ENV, '').strip().lower() or 'probe'
    if mode not in ('on', 'off', 'probe'):
        raise UserError(f"{_BF16_ENV}={os.environ[_BF16_ENV]!r}: expected on, off or probe")
    return mode


def resolve_amp(flag='--amp'):
    """Decide whether ``flag`` (mixed precision on CPU) computes in bfloat16 here.

    Returns ``True`` (use bfloat16: ``set_precision('bfloat16')``) or ``False`` (run float32).
    A CPU without AVX-512 is a :class:`UserError` naming ``flag`` (MKL-DNN cannot run bfloat16
    convolutions there). Otherwise ``$GLUON_SSD_BF16`` decides: ``on`` -> True, ``off`` ->
    False, ``probe`` (default) -> True only when :func:`bf16_speedup` measured more than
    :data:`MIN_BF16_SPEEDUP`. Running float32 despite ``flag`` is said in one
    :class:`AmpWarning` line with the measured factor."""
    support = cpu_bf16_support()
    if support is None:
        check_bf16_support(flag)  # raises the UserError
    mode = _bf16_mode()
    if mode == 'on':
        if support == 'emulated':
            check_bf16_support(flag)  # warns that emulation is slow
        return True
    if mode == 'off':
        warnings.warn(f"{flag}: {_BF16_ENV}=off; running float32", AmpWarning, stacklevel=2)
        return False
    try:
        probe = bf16_speedup()
    except mx.base.MXNetError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        warnings.warn(f"{flag}: the bfloat16 probe failed on this CPU ({first}); running float32 "
                      f"(set {_BF16_ENV}=on to force)", AmpWarning, stacklevel=2)
        return False
    where = probe['cpu'] + (', bfloat16 emulated' if support == 'emulated' else '')
    if probe['speedup'] > MIN_BF16_SPEEDUP:
        LOG.info("%s: bfloat16 measured %.2fx float32 speed on this CPU (%s); using bfloat16",
                 flag, probe['speedup'], where)
        return True
    warnings.warn(f"{flag}: bfloat16 measured {probe['speedup']:.2f}x float32 speed on this CPU "
                  f"({where}); running float32 (set {_BF16_ENV}=on to force)", AmpWarning,
                  stacklevel=2)
    return False

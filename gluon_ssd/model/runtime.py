"""Run an exported detector (ONNX, OpenVINO IR, MXNet symbol + params) in ONNX Runtime,
OpenVINO or MXNet, called like the MXNet SSD in inference mode.

``detector(x)`` takes ``x (B, 3, S, S)`` float32 normalised as the model's meta says (an
``mx.nd.NDArray`` or numpy array; ``(B, S, S, 3)`` uint8 RGB for a model exported with
``bake_preprocess``) and returns ``ids (B, K, 1)``, ``scores (B, K, 1)``, ``bboxes (B, K, 4)``
``mx.nd.NDArray``s (corner pixels of the input, -1 padding rows) on ``x``'s context (CPU for
numpy input). ``onnxruntime`` and ``openvino`` are imported only when a detector is made; a
missing one is a :class:`~gluon_ssd.errors.UserError`.
"""
import os

import numpy as np

from gluon_ssd.errors import UserError

__all__ = ['OnnxRuntimeDetector', 'OpenVINODetector', 'load_symbol', 'open_runtime',
           'open_artifact', 'RUNTIME_BACKENDS']

RUNTIME_BACKENDS = ('onnxruntime', 'openvino')
_OUTPUTS = ('ids', 'scores', 'bboxes')
_INSTALL = 'pip install gluon-ssd[deploy]'


def _import(package):
    try:
        return __import__(package)
    except ImportError:
        raise UserError(f"the {package} backend needs the {package} package: {_INSTALL}") \
            from None


def _model_source(model, what):
    """``(path or None, bytes or None)`` of ``model`` (a path, bytes or an onnx ModelProto)."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found")
        return path, None
    if isinstance(model, (bytes, bytearray)):
        return None, bytes(model)
    if hasattr(model, 'SerializeToString'):
        return None, model.SerializeToString()
    raise TypeError(f"{what}: model must be a file path, bytes or an onnx.ModelProto, "
                    f"got {type(model).__name__}")


def _first_line(exc):
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class _Detector:
    """What both runtimes share: input checking and NDArray outputs."""
    backend = None

    def _prepare(self, x):
        """``x`` -> ``(numpy array of the model's input dtype, mx context for the outputs)``."""
        import mxnet as mx
        if isinstance(x, mx.nd.NDArray):
            ctx, x = x.context, x.asnumpy()
        else:
            ctx, x = mx.cpu(), np.asarray(x)
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        shape = self.input_shape
        if x.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, x.shape)):
            want = tuple('B' if d is None else d for d in shape)
            raise ValueError(f"{self.backend} detector: input {self.input_name!r} must have shape "
                             f"{want}, got {x.shape}")
        return x, ctx

    @staticmethod
    def _wrap(arrays, ctx):
        import mxnet as mx
        return tuple(mx.nd.array(a, ctx=ctx, dtype='float32') for a in arrays)

    def __repr__(self):
        return f"{type(self).__name__}(input={self.input_name!r} {self.input_shape})"


class OnnxRuntimeDetector(_Detector):
    """An exported detector in ONNX Runtime.

    Parameters
    ----------
    model : path of a ``.onnx`` file, its bytes, or an ``onnx.ModelProto``.
    providers : ONNX Runtime execution providers (list of names or ``(name, options)``);
        ``None``: ``CUDAExecutionProvider`` with ``{'device_id': gpu_id}`` then
        ``CPUExecutionProvider`` when ``gpu_id`` is given (needs ``onnxruntime-gpu``), else the
        CPU provider alone. Thread settings are ONNX Runtime's defaults.
    gpu_id : int or None.

    Call: ``x (B, 3, S, S)`` float32 (``(B, S, S, 3)`` uint8 for a ``bake_preprocess`` model)
    -> ``ids (B, K, 1)``, ``scores (B, K, 1)``, ``bboxes (B, K, 4)`` NDArrays, corner pixels.
    """
    backend = 'onnxruntime'

    def __init__(self, model, providers=None, gpu_id=None):
        ort = _import('onnxruntime')
        path, data = _model_source(model, 'OnnxRuntimeDetector')
        if providers is None:
            providers = ['CPUExecutionProvider']
            if gpu_id is not None:
                if 'CUDAExecutionProvider' not in ort.get_available_providers():
                    raise UserError(f"--gpus {gpu_id}: this onnxruntime has no CUDA provider "
                                    "(pip install onnxruntime-gpu, or run on the CPU)")
                providers = [('CUDAExecutionProvider', {'device_id': int(gpu_id)})] + providers
        try:
            self._session = ort.InferenceSession(path or data, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise UserError(f"{path or 'ONNX model'}: ONNX Runtime cannot load it "
                            f"({_first_line(exc)})") from None
        inp = self._session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.input_dtype = np.uint8 if inp.type == 'tensor(uint8)' else np.float32
        names = [o.name for o in self._session.get_outputs()]
        self._outputs = list(_OUTPUTS) if set(_OUTPUTS) <= set(names) else names[:3]
        self.providers = self._session.get_providers()

    def __call__(self, x):
        x, ctx = self._prepare(x)
        return self._wrap(self._session.run(self._outputs, {self.input_name: x}), ctx)


class OpenVINODetector(_Detector):
    """An exported detector in OpenVINO.

    Parameters
    ----------
    model : path of a ``.onnx`` or OpenVINO IR ``.xml`` file (its ``.bin`` beside it), ONNX
        bytes, or an ``onnx.ModelProto``.
    device : OpenVINO device name (``'CPU'``).
    precision : inference precision hint, default ``'f32'`` so results match MXNet (OpenVINO
        would otherwise run in bfloat16 on CPUs that have it); ``None`` keeps the device's own.

    The model is compiled with ``ov.Core().compile_model`` and run through one infer request (so
    one detector must not be called from several threads at once); any batch size works when
    the model's batch axis is dynamic. Call: as :class:`OnnxRuntimeDetector`.
    """
    backend = 'openvino'

    def __init__(self, model, device='CPU', precision='f32'):
        ov = _import('openvino')
        path, data = _model_source(model, 'OpenVINODetector')
        core = ov.Core()
        config = {'INFERENCE_PRECISION_HINT': precision} if precision else {}
        try:
            source = core.read_model(path) if path else core.read_model(data, b'')
            self._compiled = core.compile_model(source, device, config)
        except Exception as exc:  # openvino raises RuntimeError and its own types
            raise UserError(f"{path or 'ONNX model'}: OpenVINO cannot load it on {device} "
                            f"({_first_line(exc)})") from None
        inp = self._compiled.inputs[0]
        self.input_name = inp.get_any_name()
        self.input_shape = [None if d.is_dynamic else d.get_length()
                            for d in inp.get_partial_shape()]
        self.input_dtype = np.uint8 if inp.get_element_type().get_type_name() == 'u8' \
            else np.float32
        by_name = {}
        for out in self._compiled.outputs:
            for name in out.get_names():
                by_name[name] = out
        self._outputs = ([by_name[n] for n in _OUTPUTS] if set(_OUTPUTS) <= set(by_name)
                         else list(self._compiled.outputs)[:3])
        self._request = self._compiled.create_infer_request()
        self.device = device

    def __call__(self, x):
        x, ctx = self._prepare(x)
        results = self._request.infer({self.input_name: x})
        # the request reuses its output buffers: copy before the next call
        return self._wrap([np.array(results[o]) for o in self._outputs], ctx)


def _gpu_id(ctx):
    """The GPU index of the first of ``ctx`` (an mx.Context or a list of them), else None."""
    if isinstance(ctx, (list, tuple)):
        ctx = ctx[0] if ctx else None
    if ctx is not None and getattr(ctx, 'device_type', 'cpu') == 'gpu':
        return ctx.device_id
    return None


def open_runtime(model, backend, ctx=None):
    """A detector for ``model`` (path, bytes or ModelProto) in ``backend`` (``'onnxruntime'``
    or ``'openvino'``) on ``ctx`` (mx.Context or list; a GPU context means ONNX Runtime's CUDA
    provider on that GPU; OpenVINO runs on its CPU device)."""
    gpu = _gpu_id(ctx)
    if backend == 'onnxruntime':
        return OnnxRuntimeDetector(model, gpu_id=gpu)
    if backend == 'openvino':
        if gpu is not None:
            raise UserError("--gpus: the openvino backend runs on the CPU here; drop --gpus or "
                            "use --backend onnxruntime")
        return OpenVINODetector(model)
    raise UserError(f"--backend {backend}: expected one of {', '.join(RUNTIME_BACKENDS)}")


def load_symbol(symbol_file, params_file, ctx=None, int8=False):
    """An MXNet export (``PREFIX-symbol.json`` + ``PREFIX-0000.params``: ``gluon_ssd.export`` or
    an INT8 model of ``gluon_ssd.quantize``) as a hybridized ``gluon.SymbolBlock``.

    Call: ``x (B, 3, S, S)`` float32 normalised (any ``B``; a new ``B`` re-plans the graph once)
    -> ``ids (B, K, 1)`` (class id or -1), ``scores (B, K, 1)``, ``bboxes (B, K, 4)`` corner
    pixels of the input, as the SSD. ``int8``: oneDNN INT8 kernels run on CPUs only, so a GPU
    ``ctx`` is a :class:`UserError`; so are missing or unloadable files.
    """
    import mxnet as mx
    ctx = ctx or mx.cpu()
    ctx = ctx[0] if isinstance(ctx, (list, tuple)) else ctx
    if int8 and ctx.device_type != 'cpu':
        raise UserError("MXNet int8 models run on the CPU only (oneDNN); drop --gpus")
    for path in (symbol_file, params_file):
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found (an MXNet export is a PREFIX-symbol.json "
                            "and a PREFIX-0000.params file)")
    try:
        block = mx.gluon.SymbolBlock.imports(symbol_file, ['data'], params_file, ctx=ctx)
    except (mx.base.MXNetError, AssertionError, ValueError) as exc:
        raise UserError(f"{symbol_file}: not a loadable MXNet model ({_first_line(exc)[:200]})") \
            from None
    block.hybridize(static_alloc=True, static_shape=True)
    return block


def open_artifact(path, meta, backend, ctx=None):
    """The detector of an exported file ``path`` (``.onnx``, ``.xml`` for OpenVINO, or either
    file of an MXNet export) described by ``meta`` (its meta file), in ``backend``; see
    :func:`open_runtime` and :func:`load_symbol`. The detector gets the ``meta`` as attribute
    ``meta``."""
    if backend == 'mxnet':
        from gluon_ssd.model.io import artifact_stem
        stem = artifact_stem(str(path))
        block = load_symbol(f'{stem}-symbol.json', f'{stem}-0000.params', ctx,
                            int8=meta.get('artifact') == 'mxnet-int8')
        block.meta = meta
        return block
    if str(path).endswith('.xml') and backend != 'openvino':
        raise UserError(f"--backend {backend}: {path} is an OpenVINO IR; use --backend openvino")
    detector = open_runtime(path, backend, ctx)
    expected = (meta or {}).get('input', {}).get('name')
    if expected and expected != detector.input_name:
        raise UserError(f"{path}: its input is {detector.input_name!r} but its meta file says "
                        f"{expected!r}; export it again")
    detector.meta = meta
    return detector

"""The SSD detector block: a feature extractor, per-map predictors and anchors, and the
inference tail (decoding + NMS).

Training mode (``autograd.is_training()``) returns what the loss needs; inference mode returns
detections. A hybridized ``SSD`` keeps one cached graph per mode, so switching between training
and evaluation never replays the other mode's graph.
"""
import math
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import HybridBlock, nn

from gluon_ssd.anchors import AnchorGenerator
from gluon_ssd.coder import DetectionHead
from gluon_ssd.model.blocks import ConvPredictor, concat_preds
from gluon_ssd.precision import PrecisionMixin

__all__ = ['SSD', 'INITIALIZERS', 'LiteAnchorGenerator']

#: Initializers for the layers SSD adds (predictors and extra feature layers), by name.
INITIALIZERS = {
    'xavier': lambda: mx.init.Xavier(rnd_type='gaussian', factor_type='out', magnitude=2),
    'uniform': lambda: mx.init.Uniform(),
    'normal': lambda: mx.init.Normal(0.01),
}

# Attributes of HybridBlock that together make up one cached graph.
_CACHE_ATTRS = ('_cached_graph', '_cached_op', '_cached_op_args', '_in_format', '_out_format')


def _make_initializer(init):
    """Initializer object for ``init`` (a name of :data:`INITIALIZERS` or an Initializer)."""
    if isinstance(init, mx.init.Initializer):
        return init
    if init not in INITIALIZERS:
        raise ValueError(f"init must be one of {sorted(INITIALIZERS)} (or an mx.init.Initializer), "
                         f"got {init!r}")
    return INITIALIZERS[init]()


def _per_layer(values, num_layers, name):
    """Check that ``values`` has one entry per feature map and return it as a list."""
    values = list(values)
    if len(values) != num_layers:
        raise ValueError(f"{name} must have one entry per feature map ({num_layers}), "
                         f"got {len(values)}: {values}")
    return values


def _reuse_mapping(reuse_weights, old_classes, new_classes):
    """Normalise ``reuse_weights`` to ``{new_index: old_index}`` (GluonCV's semantics).

    A dict maps new -> old classes by name or by index (mixed allowed); unknown names or
    out-of-range indices raise ``ValueError``. A list names classes kept under the same name;
    names missing on either side are skipped with a warning. ``None`` means no reuse.
    """
    if reuse_weights is None:
        return {}
    if isinstance(reuse_weights, dict):
        mapping = {}
        for new, old in reuse_weights.items():
            mapping[_class_index(new, new_classes, 'new')] = _class_index(old, old_classes, 'old')
        return mapping
    if isinstance(reuse_weights, (list, tuple)):
        mapping = {}
        for name in reuse_weights:
            if name in new_classes and name in old_classes:
                mapping[new_classes.index(name)] = old_classes.index(name)
            else:
                warnings.warn(f"reuse_weights: {name!r} is not in both the old classes "
                              f"{old_classes} and the new classes {new_classes}; skipped")
        return mapping
    raise ValueError("reuse_weights must be None, a dict {new: old} (names or indices) or a "
                     f"list of class names, got {type(reuse_weights).__name__}")


def _norm_head(channels, initializer, momentum):
    """3x3 conv (no bias) -> BatchNorm (running statistics' ``momentum``) -> ReLU,
    ``(B, C, h, w) -> (B, C, h, w)``."""
    if not channels:
        raise ValueError("head_norm=True needs the channels of every feature map")
    block = nn.HybridSequential(prefix='')
    with block.name_scope():
        block.add(nn.Conv2D(channels, 3, padding=1, use_bias=False, in_channels=channels,
                            weight_initializer=initializer))
        block.add(nn.BatchNorm(in_channels=channels, momentum=momentum))
        block.add(nn.Activation('relu'))
    return block


def _class_index(key, classes, which):
    """Index of class ``key`` (a name or an int) in ``classes``; ``which`` names the list."""
    if isinstance(key, str):
        if key not in classes:
            raise ValueError(f"reuse_weights: {key!r} not found in {which} class names {classes}")
        return classes.index(key)
    if not 0 <= int(key) < len(classes):
        raise ValueError(f"reuse_weights: index {key} out of range for {which} class names "
                         f"({len(classes)} classes)")
    return int(key)


class LiteAnchorGenerator(AnchorGenerator):
    """The anchors of GluonCV's ``ssd_300_mobilenet1.0_lite_coco`` (TensorFlow's SSD-MobileNet
    layout), bit-identical to GluonCV's ``LiteAnchorGenerator``.

    Same arguments and output as :class:`~gluon_ssd.anchors.AnchorGenerator`; per cell the
    ``A = len(sizes) + len(ratios) - 1`` anchors are: ``sizes[0] / 2`` with ``ratios[0]``, then
    ``sizes[0]`` with each of ``ratios[1:]``, then each of ``sizes[1:]`` with ``ratios[0]``.
    GluonCV's first map has no second size, so its ``sizes`` is ``(s_0,)`` (``ratios`` [1, 2, 0.5]:
    3 anchors) and every other map's is ``(s_k, sqrt(s_k * s_{k+1}))``.
    """

    def _widths_heights(self):
        """Per anchor of a cell ``(w, h)`` in pixels (float64, then float32, as the parent)."""
        sizes, ratios = self._sizes, self._ratios
        shapes = [(sizes[0] / 2, math.sqrt(ratios[0]))]
        shapes += [(sizes[0], math.sqrt(r)) for r in ratios[1:]]
        shapes += [(s, math.sqrt(ratios[0])) for s in sizes[1:]]
        wh = np.array([(s * sr, s / sr) for s, sr in shapes], dtype=np.float64).astype(np.float32)
        if self._clip:
            height, width = self._im_size
            wh = np.clip(wh, np.float32(0), np.array([width, height], dtype=np.float32))
        return tuple((float(w), float(h)) for w, h in wh)


class SSD(PrecisionMixin, HybridBlock):
    """Single Shot MultiBox Detector.

    Parameters
    ----------
    features : HybridBlock
        Feature extractor: ``x (B, 3, H, W) -> list of L maps (B, C_k, h_k, w_k)``; if it has
        ``added_blocks()`` (see ``backbones.py``), those blocks get the ``init`` initializer.
    num_filters_per_map : list of int or None
        Channels ``C_k`` of each feature map (the predictors' input channels). ``None`` uses
        ``features.channels`` when present, else defers the predictor shapes to the first call.
    sizes : list of L lists of float
        Per map, the ratio-1 anchor sizes in **pixels** (``AnchorGenerator`` semantics; for SSD
        ``(s_k, sqrt(s_k * s_{k+1}))``, see ``anchors.ssd_sizes``).
    ratios : list of L lists of float, or one flat list used for every map
        Anchor aspect ratios (w / h) per map.
    steps : list of L floats
        Anchor spacing per map in pixels.
    classes : sequence of str
        Foreground class names ``C``; index 0 of the predictions is the background.
    im_size : int or (H, W)
        Input size the anchors are laid out for, pixels.
    stds : 4 floats
        Box coding stds (means 0).
    nms_thresh, nms_topk, post_nms : see :meth:`set_nms`.
    decoder : 'per_class' or 'argmax'
        Class decoder of the inference tail (see :meth:`set_decoder`).
    anchor_generator : class or None
        Anchor block per map, called as ``anchor_generator(sizes, ratios, step, im_size)``;
        ``None`` is :class:`~gluon_ssd.anchors.AnchorGenerator` (``LiteAnchorGenerator`` for
        GluonCV's lite preset).
    predictor_kernel, predictor_pad : int or (int, int)
        Geometry of the class and box predictor convolutions (3x3 pad 1; GluonCV's lite preset
        uses 1x1 pad 0).
    head_norm : bool
        ``False`` (default, SSD/GluonCV): each predictor is one 3x3 convolution on the feature
        map. ``True`` (for training from scratch, as ScratchDet): every map first goes through a
        3x3 conv (no bias) -> BatchNorm -> ReLU of ``C_k`` channels that both predictors read
        (attribute ``head_norms``). Needs ``num_filters_per_map``.
    bn_momentum : float
        Momentum of the running statistics of the ``head_norm`` BatchNorms (MXNet's 0.9).
    init : 'xavier', 'uniform', 'normal' or an ``mx.init.Initializer``
        Initializer of the weights of the *added* layers (predictors and extra feature layers):
        ``xavier`` = ``Xavier(rnd_type='gaussian', factor_type='out', magnitude=2)``,
        ``uniform`` = ``Uniform()`` (U(-0.07, 0.07)), ``normal`` = ``Normal(0.01)``. Biases are
        zeros. A pretrained base is never touched. Parameters are created on
        ``net.initialize()`` as usual.

    Forward
    -------
    x : (B, 3, H, W) normalised image batch.

    Training mode (under ``autograd.record()``, train_mode) returns
        ``cls_preds (B, N, C+1)`` raw logits, ``box_preds (B, N, 4)`` encoded offsets,
        ``anchors (1, N, 4)`` center format ``(cx, cy, w, h)``, pixels.
    Inference mode returns
        ``ids (B, K, 1)`` (-1 = padding), ``scores (B, K, 1)``, ``bboxes (B, K, 4)`` corner
        format, pixels; ``K = post_nms`` (100) by default.
    """

    def __init__(self, features, num_filters_per_map, sizes, ratios, steps, classes, im_size,
                 stds=(0.1, 0.1, 0.2, 0.2), nms_thresh=0.45, nms_topk=400, post_nms=100,
                 decoder='per_class', init='xavier', anchor_generator=None,
                 predictor_kernel=(3, 3), predictor_pad=(1, 1), head_norm=False, bn_momentum=0.9,
                 **kwargs):
        super().__init__(**kwargs)
        num_layers = len(sizes)
        if num_layers == 0:
            raise ValueError("sizes must have one entry per feature map, got an empty list")
        sizes = _per_layer(sizes, num_layers, 'sizes')
        if len(ratios) > 0 and not isinstance(ratios[0], (list, tuple)):
            ratios = [list(ratios)] * num_layers  # one list for every map
        ratios = _per_layer(ratios, num_layers, 'ratios')
        steps = _per_layer(steps, num_layers, 'steps')
        if num_filters_per_map is None:
            num_filters_per_map = getattr(features, 'channels', None) or [0] * num_layers
        num_filters_per_map = _per_layer(num_filters_per_map, num_layers, 'num_filters_per_map')
        if isinstance(im_size, int):
            im_size = (im_size, im_size)
        self._im_size = tuple(int(v) for v in im_size)
        classes = tuple(classes)
        if len(classes) == 0:
            raise ValueError("classes must name at least one foreground class")
        self._classes = classes
        self._stds = tuple(stds)
        self._init_name = init
        self._initializer = _make_initializer(init)
        self._graph_mode = None
        self._mode_graphs = {}
        self._predictor_geometry = {'kernel': predictor_kernel, 'pad': predictor_pad}
        anchor_generator = anchor_generator or AnchorGenerator

        with self.name_scope():
            self.features = features
            self.class_predictors = nn.HybridSequential()
            self.box_predictors = nn.HybridSequential()
            self.anchor_generators = nn.HybridSequential()
            self.head_norms = nn.HybridSequential() if head_norm else None
            for size, ratio, step, in_channels in zip(sizes, ratios, steps,
                                                      num_filters_per_map):
                anchors = anchor_generator(size, ratio, step, self._im_size)
                self.anchor_generators.add(anchors)
                if head_norm:
                    self.head_norms.add(_norm_head(in_channels, self._initializer, bn_momentum))
                self.class_predictors.add(ConvPredictor(
                    anchors.num_anchors * (len(classes) + 1), in_channels=in_channels,
                    weight_initializer=self._initializer, **self._predictor_geometry))
                self.box_predictors.add(ConvPredictor(
                    anchors.num_anchors * 4, in_channels=in_channels,
                    weight_initializer=self._initializer, **self._predictor_geometry))
            self.detection_head = DetectionHead(len(classes), stds=self._stds, decoder=decoder,
                                                nms_thresh=nms_thresh, nms_topk=nms_topk,
                                                post_nms=post_nms)
        self._init_added_layers()

    # ----------------------------------------------------------------------------- properties
    @property
    def classes(self):
        """Foreground class names (tuple of str)."""
        return self._classes

    @property
    def num_classes(self):
        """Number of foreground classes ``C``."""
        return len(self._classes)

    @property
    def im_size(self):
        """``(H, W)`` the anchors are laid out for, pixels."""
        return self._im_size

    @property
    def num_anchors(self):
        """Anchors per position of each feature map (list of int)."""
        return [ag.num_anchors for ag in self.anchor_generators]

    @property
    def nms_thresh(self):
        """IoU threshold of NMS in inference mode."""
        return self.detection_head.nms_thresh

    @property
    def nms_topk(self):
        """Candidates per image considered by NMS."""
        return self.detection_head.nms_topk

    @property
    def post_nms(self):
        """Detections kept per image after NMS."""
        return self.detection_head.post_nms

    @property
    def decoder(self):
        """Class decoder name: 'per_class' or 'argmax'."""
        return self.detection_head.decoder

    # -------------------------------------------------------------------------------- setters
    def set_nms(self, nms_thresh=0.45, nms_topk=400, post_nms=100):
        """Set the inference NMS: IoU threshold ``nms_thresh`` (outside (0, 1) disables NMS),
        ``nms_topk`` candidates per image (-1 = all), keep ``post_nms`` rows (<= 0 = all)."""
        self.detection_head.set_nms(nms_thresh, nms_topk, post_nms)
        self._clear_cached_op()

    def set_decoder(self, decoder):
        """Choose the class decoder: ``'per_class'`` (every class above 0.01 per anchor, as
        GluonCV) or ``'argmax'`` (the best foreground class per anchor)."""
        self.detection_head.set_decoder(decoder)
        self._clear_cached_op()

    def _init_added_layers(self):
        """Give the weights of the added layers (extra feature layers) the ``init`` initializer.

        Already-initialised weights (e.g. extras initialised while loading a pretrained base)
        are re-initialised now; the others get it when ``initialize()`` is called.
        """
        added = getattr(self.features, 'added_blocks', lambda: [])()
        for block in added:
            for name, param in block.collect_params().items():
                if not name.endswith('weight'):
                    continue
                param.init = self._initializer
                if param._data is not None:  # already initialised
                    param.initialize(init=self._initializer, ctx=param.list_ctx(),
                                     force_reinit=True)

    def reset_class(self, classes, reuse_weights=None, keep_background=None):
        """Replace the class predictors for new ``classes`` (fine-tuning), GluonCV's semantics.

        Parameters
        ----------
        classes : sequence of str
            New foreground class names.
        reuse_weights : None, dict or list
            ``{new: old}`` with class names or indices, or a list of names present in both;
            those classes (and the background) keep their trained predictor rows. ``None``
            reuses nothing.
        keep_background : None or bool
            Keep the trained background rows; ``None`` (GluonCV's behaviour): only when some
            class is reused. Fine-tuning to unrelated classes keeps them (``True``): "no object
            here" is what the detector learnt best.

        New predictors are initialised at once on the old predictors' contexts (with the
        ``init`` initializer); box predictors and the features are unchanged.
        """
        old_classes = list(self._classes)
        new_classes = list(classes)
        if not new_classes:
            raise ValueError("classes must name at least one foreground class")
        mapping = _reuse_mapping(reuse_weights, old_classes, new_classes)
        keep_background = bool(mapping) if keep_background is None else keep_background
        old_k, new_k = len(old_classes) + 1, len(new_classes) + 1
        predictors = nn.HybridSequential(prefix=self.class_predictors.prefix)
        for old_pred, anchors in zip(self.class_predictors, self.anchor_generators):
            old_weight = old_pred.predictor.weight
            if (mapping or keep_background) and old_weight._data is None:
                raise RuntimeError("reset_class: reuse_weights needs initialised predictors; "
                                   "call initialize() and run one forward pass first")
            in_channels = old_weight.shape[1] if old_weight.shape else 0
            new_pred = ConvPredictor(anchors.num_anchors * new_k, in_channels=in_channels,
                                     weight_initializer=self._initializer,
                                     prefix=old_pred.prefix, **self._predictor_geometry)
            if old_weight._data is not None:
                new_pred.initialize(ctx=old_weight.list_ctx())
            if mapping or keep_background:
                for old_param, new_param in zip(old_pred.predictor.params.values(),
                                                new_pred.predictor.params.values()):
                    old_data, new_data = old_param.data(), new_param.data().copy()
                    # channel a * K + c holds class c of anchor a; column 0 is the background
                    if keep_background:
                        new_data[0::new_k] = old_data[0::old_k]
                    for new_i, old_i in mapping.items():
                        new_data[new_i + 1::new_k] = old_data[old_i + 1::old_k]
                    new_param.set_data(new_data)
            predictors.add(new_pred)
        head = self.detection_head
        self._classes = tuple(new_classes)
        with self.name_scope():
            self.class_predictors = predictors
            self.detection_head = DetectionHead(
                len(new_classes), stds=self._stds, decoder=head.decoder,
                nms_thresh=head.nms_thresh, nms_topk=head.nms_topk, post_nms=head.post_nms)
        self._clear_cached_op()

    # ------------------------------------------------------------- one cached graph per mode
    def _clear_cached_op(self):
        super()._clear_cached_op()
        self._graph_mode = None
        self._mode_graphs = {}

    def _use_graph_for_mode(self, training):
        """Make the cached graph of mode ``training`` current, stashing the other one."""
        if self._graph_mode == training:
            return
        if self._graph_mode is not None:
            self._mode_graphs[self._graph_mode] = {a: getattr(self, a) for a in _CACHE_ATTRS}
        saved = self._mode_graphs.pop(training, None)
        if saved is None:
            super()._clear_cached_op()
        else:
            for attr, value in saved.items():
                setattr(self, attr, value)
        self._graph_mode = training

    def forward(self, x, *args):
        """Run the network; see the class docstring for inputs/outputs of each mode."""
        if isinstance(x, mx.nd.NDArray):
            self._use_graph_for_mode(autograd.is_training())
        return super().forward(x, *args)

    def hybrid_forward(self, F, x):
        """``x (B, 3, H, W)`` -> training or inference outputs (class docstring)."""
        cls_preds, box_preds, anchors = self.raw_outputs(F, x)
        if autograd.is_training():
            return cls_preds, box_preds, anchors
        return self.detection_head(cls_preds, box_preds, anchors)

    def raw_outputs(self, F, x):
        """The network before its inference tail: ``x (B, 3, H, W)`` -> ``cls_preds (B, N, C+1)``
        raw logits, ``box_preds (B, N, 4)`` encoded offsets, ``anchors (1, N, 4)`` center format
        ``(cx, cy, w, h)``, pixels. ``F`` is ``mx.nd`` or ``mx.sym`` (ONNX export builds its
        symbol from here)."""
        feats = self.features(x)
        if len(feats) != len(self.class_predictors):
            raise ValueError(f"the feature extractor returned {len(feats)} maps but the SSD has "
                             f"{len(self.class_predictors)} predictor layers")
        if self.head_norms is not None:
            feats = [norm(f) for norm, f in zip(self.head_norms, feats)]
        cls_maps = [pred(f) for pred, f in zip(self.class_predictors, feats)]
        box_maps = [pred(f) for pred, f in zip(self.box_predictors, feats)]
        anchors = [gen(f) for gen, f in zip(self.anchor_generators, feats)]
        cls_preds = F.reshape(concat_preds(F, cls_maps), (0, -1, self.num_classes + 1))
        box_preds = F.reshape(concat_preds(F, box_maps), (0, -1, 4))
        anchors = F.concat(*anchors, dim=1)
        return cls_preds, box_preds, anchors

    # --------------------------------------------------------------------------------- export
    def export(self, path, epoch=0, remove_amp_cast=True):
        """Save the **inference** graph and weights for ``gluon.SymbolBlock.imports``.

        Writes ``path-symbol.json`` and ``path-%04d.params`` (input name ``'data'``; outputs
        ids, scores, bboxes as in inference mode) and returns the two file names. The block is
        hybridized if needed; when no inference graph is cached yet, one forward pass on a zero
        image of ``im_size`` builds it. The training-mode graph is kept.
        """
        if not self._active:
            self.hybridize()
        self._use_graph_for_mode(False)
        if not self._cached_graph:
            weight = self.class_predictors[0].predictor.weight
            ctx = weight.list_ctx()[0] if weight._data is not None else mx.cpu()
            with autograd.predict_mode():
                self(mx.nd.zeros((1, 3) + self._im_size, ctx=ctx))
        super().export(path, epoch=epoch, remove_amp_cast=remove_amp_cast)
        return f'{path}-symbol.json', f'{path}-{epoch:04d}.params'

"""Box coding for SSD: encode matched ground truth as regression targets, decode predictions.

Conventions (see docs/DESIGN.md): *corner* boxes are ``(xmin, ymin, xmax, ymax)``, *center* boxes
``(cx, cy, w, h)``, both in pixels of the network input. An encoded box relative to an anchor ``a``
is ``((gcx - acx) / aw, (gcy - acy) / ah, log(gw / aw), log(gh / ah))``, minus ``means``, divided
by ``stds`` (default means 0, stds (0.1, 0.1, 0.2, 0.2)); the same maths as GluonCV's
``NormalizedBoxCenterEncoder`` / ``NormalizedBoxCenterDecoder``.

Every block here is a ``HybridBlock``; :class:`DetectionHead` is the inference tail of SSD
(softmax, decode, per-class NMS).
"""
from mxnet import gluon

__all__ = ['corner_to_center', 'center_to_corner', 'BoxEncoder', 'BoxDecoder',
           'MultiClassDecoder', 'MultiPerClassDecoder', 'DetectionHead', 'DECODERS']

DECODERS = ('per_class', 'argmax')


def corner_to_center(F, boxes):
    """Corner boxes ``(..., 4)`` ``(xmin, ymin, xmax, ymax)`` -> center boxes ``(..., 4)``
    ``(cx, cy, w, h)``, same unit. ``F`` is ``mx.nd`` or ``mx.sym``."""
    xmin, ymin, xmax, ymax = F.split(boxes, axis=-1, num_outputs=4)
    w = xmax - xmin
    h = ymax - ymin
    return F.concat(xmin + w * 0.5, ymin + h * 0.5, w, h, dim=-1)


def center_to_corner(F, boxes):
    """Center boxes ``(..., 4)`` ``(cx, cy, w, h)`` -> corner boxes ``(..., 4)``
    ``(xmin, ymin, xmax, ymax)``, same unit. ``F`` is ``mx.nd`` or ``mx.sym``."""
    cx, cy, w, h = F.split(boxes, axis=-1, num_outputs=4)
    half_w = w * 0.5
    half_h = h * 0.5
    return F.concat(cx - half_w, cy - half_h, cx + half_w, cy + half_h, dim=-1)


def _four(values, name):
    values = tuple(float(v) for v in values)
    if len(values) != 4:
        raise ValueError(f"{name} must have 4 values (one per box coordinate), got {values}")
    return values


def _flag(value, name):
    """A GluonCV on/off argument, read by truth value as GluonCV does. A sequence is refused: it
    is ``means`` passed by position into the slot GluonCV's order gives to this flag."""
    if isinstance(value, (str, bytes)) or hasattr(value, '__len__'):
        raise TypeError(f"{name} must be a bool, got {value!r}; BoxDecoder takes GluonCV's "
                        "(stds, convert_anchor, clip, minimal_opset) by position, pass means= "
                        "by keyword")
    return bool(value)


class BoxEncoder(gluon.HybridBlock):
    """Encode the ground-truth box matched to each anchor as a regression target.

    Parameters
    ----------
    stds, means : 4 floats each
        ``target = (raw_offset - mean) / std`` per coordinate.

    Forward
    -------
    samples : (B, N) ; > 0.5 marks a positive anchor (usually +1 pos, -1 neg, 0 ignore).
    matches : (B, N) ; index in ``[0, M)`` of the ref box matched to each anchor (any value,
        e.g. -1, is fine where the anchor is not positive).
    anchors : (B, N, 4) corner format, pixels.
    refs : (B, M, 4) ground-truth boxes, corner format, pixels.

    Returns
    -------
    targets : (B, N, 4) encoded boxes on positive anchors, 0 elsewhere.
    masks : (B, N, 4) 1 on positive anchors (all 4 coordinates), 0 elsewhere.
    """

    def __init__(self, stds=(0.1, 0.1, 0.2, 0.2), means=(0., 0., 0., 0.), **kwargs):
        super().__init__(**kwargs)
        self._stds = _four(stds, 'stds')
        self._means = _four(means, 'means')

    def hybrid_forward(self, F, samples, matches, anchors, refs):  # pylint: disable=arguments-differ
        # Gather refs[b, matches[b, n]] -> (B, N, 4); negative matches read ref 0 (masked below).
        batch_index = F.broadcast_like(
            F.reshape(F.contrib.arange_like(matches, axis=0), (-1, 1)), matches)
        matched = F.gather_nd(refs, F.stack(batch_index, F.relu(matches)))
        gx, gy, gw, gh = F.split(corner_to_center(F, matched), axis=-1, num_outputs=4)
        ax, ay, aw, ah = F.split(corner_to_center(F, anchors), axis=-1, num_outputs=4)
        raw = ((gx - ax) / aw, (gy - ay) / ah, F.log(gw / aw), F.log(gh / ah))
        codes = F.concat(*[(r - m) / s for r, m, s in zip(raw, self._means, self._stds)], dim=-1)
        positive = F.broadcast_like(F.expand_dims(samples > 0.5, axis=-1), codes)
        targets = F.where(positive, codes, F.zeros_like(codes))
        masks = F.where(positive, F.ones_like(codes), F.zeros_like(codes))
        return targets, masks


class BoxDecoder(gluon.HybridBlock):
    """Decode regression outputs back to boxes (inverse of :class:`BoxEncoder`).

    The positional parameters are GluonCV's ``NormalizedBoxCenterDecoder``'s, in its order;
    ``means`` (which GluonCV's decoder lacks, its means being 0) is keyword-only.

    Parameters
    ----------
    stds : 4 floats, default (0.1, 0.1, 0.2, 0.2)
        Must equal the encoder's.
    convert_anchor : bool, default False
        ``False``: ``anchors`` are center format ``(cx, cy, w, h)``. ``True``: they are corner
        format ``(xmin, ymin, xmax, ymax)`` and are converted first (as GluonCV).
    clip : float or None, default None
        If a positive number, the scaled log-size terms ``t_w * std_w`` and ``t_h * std_h`` are
        capped at ``clip`` before ``exp`` (limits how much a box can grow). ``None`` or a value
        ``<= 0`` disables it (GluonCV's behaviour).
    minimal_opset : bool, default False
        Accepted for GluonCV compatibility, where it avoids the fused ``contrib.box_decode``
        operator. This block only ever uses common operators, so it changes nothing.
    means : 4 floats, keyword-only, default (0, 0, 0, 0)
        Must equal the encoder's.

    Forward
    -------
    box_preds : (B, N, 4) encoded offsets.
    anchors : (1, N, 4) or (B, N, 4), pixels; center format (corner if ``convert_anchor``).

    Returns ``(B, N, 4)`` corner format, pixels.
    """

    def __init__(self, stds=(0.1, 0.1, 0.2, 0.2), convert_anchor=False, clip=None,
                 minimal_opset=False, *, means=(0., 0., 0., 0.), **kwargs):
        super().__init__(**kwargs)
        self._stds = _four(stds, 'stds')
        self._means = _four(means, 'means')
        self._convert_anchor = _flag(convert_anchor, 'convert_anchor')
        self._minimal_opset = _flag(minimal_opset, 'minimal_opset')
        self._clip = float(clip) if clip is not None and clip > 0 else None

    def hybrid_forward(self, F, box_preds, anchors):  # pylint: disable=arguments-differ
        if self._convert_anchor:
            anchors = corner_to_center(F, anchors)
        ax, ay, aw, ah = F.split(anchors, axis=-1, num_outputs=4)
        tx, ty, tw, th = [t * s + m for t, s, m in zip(
            F.split(box_preds, axis=-1, num_outputs=4), self._stds, self._means)]
        cx = F.broadcast_add(F.broadcast_mul(tx, aw), ax)
        cy = F.broadcast_add(F.broadcast_mul(ty, ah), ay)
        if self._clip is not None:
            tw = F.minimum(tw, self._clip)
            th = F.minimum(th, self._clip)
        half_w = F.broadcast_mul(F.exp(tw), aw) * 0.5
        half_h = F.broadcast_mul(F.exp(th), ah) * 0.5
        return F.concat(cx - half_w, cy - half_h, cx + half_w, cy + half_h, dim=-1)


class _ClassDecoder(gluon.HybridBlock):
    """What both class decoders hold: class axis and score threshold."""

    def __init__(self, axis=-1, thresh=0.01, **kwargs):
        super().__init__(**kwargs)
        self._axis = axis
        self._thresh = thresh


class MultiClassDecoder(_ClassDecoder):
    """Keep only the best foreground class of each anchor ("argmax" decoding).

    Same parameters, in the same order, as GluonCV's ``MultiClassDecoder``; the number of classes
    is read from the input.

    Parameters
    ----------
    axis : int, default -1
        Class axis of the input.
    thresh : float, default 0.01
        A score must be ``> thresh`` to be kept; otherwise id is -1 and score 0.

    Forward
    -------
    scores : (B, N, C+1) probabilities (after softmax), class 0 = background.

    Returns
    -------
    cls_id : (B, N, 1) float foreground class id in ``[0, C)``, or -1.
    score : (B, N, 1) its probability, or 0.
    (GluonCV's ``MultiClassDecoder`` returns the same values with shape (B, N).)
    """

    def hybrid_forward(self, F, scores):  # pylint: disable=arguments-differ
        foreground = F.slice_axis(scores, axis=self._axis, begin=1, end=None)
        cls_id = F.argmax(foreground, axis=self._axis, keepdims=True)
        score = F.pick(foreground, cls_id, axis=self._axis, keepdims=True)
        keep = score > self._thresh
        cls_id = F.where(keep, cls_id, F.ones_like(cls_id) * -1)
        score = F.where(keep, score, F.zeros_like(score))
        return cls_id, score


class MultiPerClassDecoder(_ClassDecoder):
    """Keep every foreground class of each anchor ("per-class" decoding, GluonCV's SSD default).

    Same parameters, in the same order, as GluonCV's ``MultiPerClassDecoder``.

    Parameters
    ----------
    num_class : int
        Number of classes **including** background (as in GluonCV).
    axis : int, default -1
        Class axis of the input.
    thresh : float, default 0.01
        A score must be ``> thresh`` to be kept; otherwise id is -1 and score 0.

    Forward
    -------
    scores : (B, N, num_class) probabilities (after softmax), class 0 = background.

    Returns
    -------
    cls_ids : (B, N, num_class - 1) float: the class index ``c`` at position ``c``, or -1.
    scores : (B, N, num_class - 1) the foreground probabilities, or 0.
    """

    def __init__(self, num_class, axis=-1, thresh=0.01, **kwargs):
        super().__init__(axis=axis, thresh=thresh, **kwargs)
        if int(num_class) < 2:
            raise ValueError(f"num_class counts background and must be >= 2, got {num_class}")
        self._num_class = int(num_class)

    def hybrid_forward(self, F, scores):  # pylint: disable=arguments-differ
        foreground = F.slice_axis(scores, axis=self._axis, begin=1, end=None)
        # the id of each score is its position along the class axis
        positions = F.squeeze(F.contrib.index_array(foreground, axes=(self._axis,)), axis=-1)
        cls_ids = F.cast(positions, 'float32')
        keep = foreground > self._thresh
        cls_ids = F.where(keep, cls_ids, F.ones_like(cls_ids) * -1)
        foreground = F.where(keep, foreground, F.zeros_like(foreground))
        return cls_ids, foreground


class DetectionHead(gluon.HybridBlock):
    """SSD's inference tail: softmax, box decoding, class decoding and per-class NMS.

    Parameters
    ----------
    num_classes : int
        Number of **foreground** classes ``C`` (``cls_preds`` has ``C + 1`` columns).
    stds : 4 floats, default (0.1, 0.1, 0.2, 0.2)
        Box coding stds (means are 0).
    decoder : 'per_class' or 'argmax', default 'per_class'
        ``'per_class'`` (GluonCV's SSD) lets one anchor give a detection for every class scoring
        above ``score_thresh``; ``'argmax'`` keeps only its best foreground class.
    nms_thresh : float, default 0.45
        IoU threshold of NMS (per class). A value outside ``(0, 1)`` disables NMS *and* the
        ``post_nms`` cut, returning every candidate unsorted (as GluonCV).
    nms_topk : int, default 400
        NMS only considers the ``nms_topk`` best candidates of each image; -1 = all.
    post_nms : int, default 100
        Keep the first ``post_nms`` rows after NMS; ``<= 0`` keeps all. When fewer candidates
        exist, all are returned (GluonCV would raise instead).
    score_thresh : float, default 0.01
        Scores ``<= score_thresh`` are dropped by the class decoder, and NMS ignores scores
        ``< score_thresh`` (its ``valid_thresh``); GluonCV uses 0.01 for both.

    Forward
    -------
    cls_preds : (B, N, C+1) raw logits, column 0 = background.
    box_preds : (B, N, 4) encoded box offsets.
    anchors : (1, N, 4) center format, pixels.

    Returns
    -------
    ids : (B, K, 1) float class id in ``[0, C)``; -1 marks padding / suppressed rows.
    scores : (B, K, 1) probabilities.
    bboxes : (B, K, 4) corner format, pixels.
    ``K = min(post_nms, candidates)`` with NMS on, else ``candidates``, where candidates is
    ``N * C`` for 'per_class' and ``N`` for 'argmax'.
    """

    def __init__(self, num_classes, stds=(0.1, 0.1, 0.2, 0.2), decoder='per_class',
                 nms_thresh=0.45, nms_topk=400, post_nms=100, score_thresh=0.01, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes (foreground classes) must be >= 1, got {num_classes}")
        self._num_classes = int(num_classes)
        self._score_thresh = float(score_thresh)
        self.nms_thresh = nms_thresh
        self.nms_topk = nms_topk
        self.post_nms = post_nms
        with self.name_scope():
            self.box_decoder = BoxDecoder(stds=stds)
            # both decoders are parameter-free; set_decoder() only picks one
            self.per_class_decoder = MultiPerClassDecoder(num_classes + 1, thresh=score_thresh)
            self.argmax_decoder = MultiClassDecoder(thresh=score_thresh)
        self._decoder = None
        self.set_decoder(decoder)

    @property
    def decoder(self):
        """Name of the class decoder in use: 'per_class' or 'argmax'."""
        return self._decoder

    @property
    def score_thresh(self):
        """Score threshold of the class decoder and of NMS (``valid_thresh``)."""
        return self._score_thresh

    def set_decoder(self, decoder):
        """Switch the class decoder ('per_class' or 'argmax'); clears any cached graph."""
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self._decoder = decoder
        self._clear_cached_op()

    def set_nms(self, nms_thresh=0.45, nms_topk=400, post_nms=100):
        """Change the NMS settings (see the class docstring); clears any cached graph."""
        self.nms_thresh = nms_thresh
        self.nms_topk = nms_topk
        self.post_nms = post_nms
        self._clear_cached_op()

    def hybrid_forward(self, F, cls_preds, box_preds, anchors):  # pylint: disable=arguments-differ
        bboxes = self.box_decoder(box_preds, anchors)                  # (B, N, 4)
        probs = F.softmax(cls_preds, axis=-1)
        if self._decoder == 'argmax':
            cls_ids, scores = self.argmax_decoder(probs)                 # (B, N, 1) each
        else:
            cls_ids, scores = self.per_class_decoder(probs)              # (B, N, C) each
            # (B, N, C) -> (B, C*N, 1), class-major like GluonCV, each with its anchor's box
            cls_ids = F.reshape(F.transpose(cls_ids, (0, 2, 1)), (0, -1, 1))
            scores = F.reshape(F.transpose(scores, (0, 2, 1)), (0, -1, 1))
        nms_on = 0 < self.nms_thresh < 1
        fast = nms_on and 0 < self.post_nms <= self.nms_topk
        if fast:
            result = self._top_candidates(F, cls_ids, scores, bboxes)   # (B, nms_topk, 6)
        else:
            if self._decoder != 'argmax':
                bboxes = F.broadcast_axis(F.expand_dims(bboxes, axis=1), axis=1,
                                          size=self._num_classes)
                bboxes = F.reshape(bboxes, (0, -3, 4))
            # rows: [id, score, xmin, ymin, xmax, ymax]
            result = F.concat(cls_ids, scores, bboxes, dim=-1)
        if nms_on:
            result = F.contrib.box_nms(
                result, overlap_thresh=self.nms_thresh, topk=self.nms_topk,
                valid_thresh=self._score_thresh, id_index=0, score_index=1, coord_start=2,
                force_suppress=False)
            if self.post_nms > 0:
                result = F.slice(result, begin=(None, 0, None), end=(None, self.post_nms, None))
                if fast:
                    # as many rows as the full candidate list would give: min(post_nms, C*N)
                    rows = F.slice(F.reshape(scores, (0, -1)), begin=(None, 0),
                                   end=(None, self.post_nms))
                    result = F.slice_like(result, F.expand_dims(rows, axis=-1), axes=(1,))
        ids = F.slice_axis(result, axis=-1, begin=0, end=1)
        scores = F.slice_axis(result, axis=-1, begin=1, end=2)
        bboxes = F.slice_axis(result, axis=-1, begin=2, end=6)
        return ids, scores, bboxes

    def _top_candidates(self, F, cls_ids, scores, bboxes):
        """The ``nms_topk`` candidates ``box_nms`` would keep, in its order, as (B, K, 6) rows.

        ``box_nms`` sorts the candidates of each image by score, descending, ties by position
        (a stable sort), and only looks at the first ``nms_topk``; sorting every one of the
        ``C*N`` candidates dominates its cost. Here ``topk`` on a float64 key
        ``score * (1 - position * 2**-50)`` (equal scores ordered by position; different float32
        scores never swap) picks exactly those rows in exactly that order, so ``box_nms`` on them
        gives the same detections. Rows are gathered, never materialised for all candidates.
        """
        k = self.nms_topk
        ids = F.reshape(cls_ids, (0, -1))                               # (B, R)
        scores = F.reshape(scores, (0, -1))                             # (B, R)
        # k padding rows (score -1, id -1: invalid for box_nms) so that k <= R + k always
        pad = F.broadcast_axis(F.ones_like(F.slice_axis(scores, axis=1, begin=0, end=1)) * -1,
                               axis=1, size=k)
        ids = F.concat(ids, pad, dim=1)
        scores = F.concat(scores, pad, dim=1)
        position = F.cast(F.contrib.arange_like(scores, axis=1), 'float64')
        key = F.broadcast_mul(F.cast(scores, 'float64'),
                              F.reshape(1 - position * 2.0 ** -50, (1, -1)))
        chosen = F.topk(key, axis=1, k=k, ret_typ='indices', dtype='float64')  # (B, K)
        batch = F.broadcast_like(F.reshape(F.contrib.arange_like(chosen, axis=0), (-1, 1)),
                                 chosen)
        where = F.stack(F.cast(batch, 'float32'), F.cast(chosen, 'float32'))
        top_ids = F.gather_nd(ids, where)                              # (B, K)
        top_scores = F.gather_nd(scores, where)                        # (B, K)
        # anchor of a candidate: its position modulo N (class-major layout)
        num_anchors = F.cast(F.slice_axis(F.shape_array(bboxes), axis=0, begin=1, end=2),
                             'float64')                                # (1,)
        anchor = F.broadcast_sub(chosen, F.broadcast_mul(
            F.floor(F.broadcast_div(chosen, num_anchors)), num_anchors))
        anchor = F.where(top_scores >= 0, F.cast(anchor, 'float32'), F.zeros_like(top_scores))
        boxes = F.gather_nd(bboxes, F.stack(F.cast(batch, 'float32'), anchor))  # (B, K, 4)
        return F.concat(F.expand_dims(top_ids, axis=-1), F.expand_dims(top_scores, axis=-1),
                        boxes, dim=-1)

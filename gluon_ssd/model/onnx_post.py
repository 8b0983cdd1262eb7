"""The SSD inference tail (softmax, box decoding, class decoding, per-class NMS, final sort) as
ONNX nodes, reproducing :class:`gluon_ssd.coder.DetectionHead` and MXNet's ``box_nms``.

MXNet sorts candidates by score with ties in position order. ONNX Runtime's ``TopK`` does the
same (as the ONNX spec asks), OpenVINO's does not; so up to :data:`EXACT_RANK_LIMIT` candidates
the graph gives ``TopK`` and ``NonMaxSuppression`` only unique keys and resolves ties by
counting, and the result is the same in every runtime.

``onnx`` is imported when a :class:`GraphBuilder` is made, never at import time.
"""
import numpy as np

__all__ = ['GraphBuilder', 'detection_tail', 'output_rows', 'EXACT_RANK_LIMIT']

#: Up to this many NMS candidates per image the candidates are ranked exactly by (score, then
#: position) with a (T, T) comparison; above it (``nms_topk`` -1 or huge), ``TopK``'s own tie
#: rule is relied on (the ONNX spec's: lower index first; ONNX Runtime follows it).
EXACT_RANK_LIMIT = 2048


class GraphBuilder:
    """Collects ONNX nodes and constant initializers with unique names.

    ``op(op_type, inputs, **attrs)`` adds one node and returns its output name (or names, with
    ``outputs=n``); ``const(value, dtype)`` adds an initializer and returns its name.
    """

    def __init__(self, prefix):
        from onnx import helper, numpy_helper
        self._helper, self._numpy_helper = helper, numpy_helper
        self._prefix = prefix
        self._count = 0
        self.nodes = []
        self.initializers = []

    def _name(self, hint):
        self._count += 1
        return f'{self._prefix}/{hint}_{self._count}'

    def const(self, value, dtype=np.float32, hint='const'):
        """An initializer holding ``np.asarray(value, dtype)``; returns its name."""
        name = self._name(hint)
        self.initializers.append(self._numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type, inputs, outputs=1, name=None, **attrs):
        """Add node ``op_type(inputs)``; returns its output name, or a list when ``outputs > 1``.
        ``name`` forces the (single) output's name."""
        outs = [name] if name else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(self._helper.make_node(op_type, list(inputs), outs,
                                                 name=self._name(op_type), **attrs))
        return outs if outputs > 1 else outs[0]


def output_rows(num_candidates, nms_thresh, post_nms):
    """Rows ``K`` of the detection outputs, as :class:`~gluon_ssd.coder.DetectionHead`:
    ``min(post_nms, R)`` with NMS on and ``post_nms > 0``, else ``R`` (the candidates)."""
    if 0 < nms_thresh < 1 and post_nms > 0:
        return min(int(post_nms), num_candidates)
    return num_candidates


def detection_tail(g, cls_preds, box_preds, anchors, *, num_classes, stds, decoder,
                   nms_thresh, nms_topk, post_nms, score_thresh=0.01, names=('ids', 'scores',
                                                                             'bboxes')):
    """Append the inference tail to builder ``g``.

    Parameters
    ----------
    g : GraphBuilder
    cls_preds : name of a (B, N, C+1) float32 tensor of raw logits (column 0 = background).
    box_preds : name of a (B, N, 4) float32 tensor of encoded offsets.
    anchors : (N, 4) numpy array, center format ``(cx, cy, w, h)``, pixels.
    num_classes, stds, decoder, nms_thresh, nms_topk, post_nms, score_thresh :
        as :class:`~gluon_ssd.coder.DetectionHead`.
    names : output tensor names.

    Returns the names of ``ids (B, K, 1)``, ``scores (B, K, 1)``, ``bboxes (B, K, 4)`` corner
    pixels, ``K`` = :func:`output_rows`; padding rows are -1 in all six fields.
    """
    anchors = np.asarray(anchors, np.float32).reshape(-1, 4)
    num_anchors = anchors.shape[0]
    boxes = _decode_boxes(g, box_preds, anchors, stds)                       # (B, N, 4)
    probs = g.op('Softmax', [cls_preds], axis=-1)
    fg = g.op('Slice', [probs, g.const([1], np.int64), g.const([num_classes + 1], np.int64),
                        g.const([2], np.int64)])                              # (B, N, C)
    if decoder == 'argmax':
        num_cand = num_anchors
        best = g.op('ArgMax', [fg], axis=2, keepdims=0)                      # (B, N) int64
        score = g.op('ReduceMax', [fg], axes=[2], keepdims=0)                # (B, N)
    elif decoder == 'per_class':
        # class-major flattening, as DetectionHead: candidate r = c * N + anchor
        num_cand = num_anchors * num_classes
        best = None
        score = g.op('Reshape', [g.op('Transpose', [fg], perm=[0, 2, 1]),
                                 g.const([0, -1], np.int64)])                # (B, C*N)
    else:
        raise ValueError(f"decoder must be 'per_class' or 'argmax', got {decoder!r}")
    valid = g.op('Greater', [score, g.const(score_thresh)])
    rows = output_rows(num_cand, nms_thresh, post_nms)
    if not 0 < nms_thresh < 1:
        return _all_candidates(g, score, valid, best, boxes, num_anchors, num_classes, names)
    # invalid candidates get -1: below every valid score and ignored by NMS below
    masked = g.op('Where', [valid, score, g.const(-1.0)])                    # (B, R)
    if nms_topk == 0:  # box_nms would skip NMS and sorting altogether: not worth a graph
        raise ValueError("nms_topk must be positive or -1 (all candidates) for ONNX export")
    topk = num_cand if nms_topk is None or nms_topk < 0 else min(int(nms_topk), num_cand)
    if topk <= EXACT_RANK_LIMIT:
        idx, cand_score, rank = _exact_top(g, masked, topk, num_cand)
    else:
        cand_score, idx = g.op('TopK', [masked, g.const([topk], np.int64)], outputs=2, axis=1)
        rank = g.op('Cast', [g.op('Range', [g.const(0, np.int64), g.const(topk, np.int64),
                                            g.const(1, np.int64)])], to=_FLOAT)
    # candidate -> anchor and class
    if best is None:
        cls = g.op('Div', [idx, g.const(num_anchors, np.int64)])
        anchor = g.op('Sub', [idx, g.op('Mul', [cls, g.const(num_anchors, np.int64)])])
    else:
        anchor = idx
        cls = g.op('GatherElements', [best, idx], axis=1)
    cand_ids = g.op('Cast', [cls], to=_FLOAT)                                # (B, T)
    cand_boxes = g.op('GatherND', [boxes, g.op('Unsqueeze', [anchor, g.const([2], np.int64)])],
                      batch_dims=1)                                          # (B, T, 4)
    cand_valid = g.op('Greater', [cand_score, g.const(0.0)])
    # rank r -> NMS score T - r: unique, so every runtime visits candidates in MXNet's order
    order = g.op('Sub', [g.const(float(topk)), rank])
    kept = _per_class_nms(g, cand_boxes, cand_ids, g.op('Where', [cand_valid, order,
                                                                 g.const(-1.0)]),
                          num_classes, nms_thresh)
    final_key = g.op('Where', [kept, order, g.const(-1.0)])
    return _final_rows(g, final_key, cand_ids, cand_score, cand_boxes, min(rows, topk), rows,
                       names)


_FLOAT = 1  # onnx.TensorProto.FLOAT


def _decode_boxes(g, box_preds, anchors, stds):
    """``(B, N, 4)`` encoded offsets -> ``(B, N, 4)`` corner pixels, in BoxDecoder's op order."""
    ax, ay, aw, ah = (g.const(anchors[:, i:i + 1], hint='anchor') for i in range(4))
    tx, ty, tw, th = (g.op('Mul', [t, g.const(float(s))]) for t, s in zip(
        g.op('Split', [box_preds], outputs=4, axis=2), stds))
    cx = g.op('Add', [g.op('Mul', [tx, aw]), ax])
    cy = g.op('Add', [g.op('Mul', [ty, ah]), ay])
    half_w = g.op('Mul', [g.op('Mul', [g.op('Exp', [tw]), aw]), g.const(0.5)])
    half_h = g.op('Mul', [g.op('Mul', [g.op('Exp', [th]), ah]), g.const(0.5)])
    return g.op('Concat', [g.op('Sub', [cx, half_w]), g.op('Sub', [cy, half_h]),
                           g.op('Add', [cx, half_w]), g.op('Add', [cy, half_h])], axis=2)


def _exact_top(g, masked, topk, num_cand):
    """The ``topk`` best candidates by (score desc, position asc), exactly, whatever a runtime's
    TopK does with ties: ``masked (B, R)`` -> ``idx (B, T)`` int64 candidate positions (in
    ascending position order), their scores ``(B, T)`` and ranks ``(B, T)`` float 0..T-1.

    MXNet's ``box_nms`` stable-sorts by score, so among equal scores the lower position wins.
    Every key given to TopK here is unique, and ties are resolved by counting.
    """
    # 1. the T-th best score (values of TopK do not depend on tie handling)
    values = g.op('TopK', [masked, g.const([topk], np.int64)], outputs=2, axis=1)[0]
    kth = g.op('Slice', [values, g.const([topk - 1], np.int64), g.const([topk], np.int64),
                         g.const([1], np.int64)])                            # (B, 1)
    # 2. everything above it, plus the first (T - #above) equal to it by position
    above = g.op('Greater', [masked, kth])
    equal = g.op('Equal', [masked, kth])
    n_above = g.op('ReduceSum', [g.op('Cast', [above], to=_FLOAT), g.const([1], np.int64)],
                   keepdims=1)
    # counts are exact in float32 below 2**24 candidates
    equal_seen = g.op('CumSum', [g.op('Cast', [equal], to=_FLOAT), g.const(1, np.int32)])
    take_equal = g.op('And', [equal, g.op('LessOrEqual', [
        equal_seen, g.op('Sub', [g.const(float(topk)), n_above])])])
    chosen = g.op('Or', [above, take_equal])                                 # T per image
    # 3. their positions, ascending (keys -position are unique)
    position = g.op('Range', [g.const(0.0), g.const(float(num_cand)), g.const(1.0)])
    key = g.op('Where', [chosen, g.op('Neg', [position]), g.const(-float(num_cand) - 1)])
    idx = g.op('TopK', [key, g.const([topk], np.int64)], outputs=2, axis=1)[1]
    scores = g.op('GatherElements', [masked, idx], axis=1)                   # (B, T)
    # 4. rank = #(better score) + #(same score at a lower position)
    mine = g.op('Unsqueeze', [scores, g.const([2], np.int64)])              # (B, T, 1)
    other = g.op('Unsqueeze', [scores, g.const([1], np.int64)])             # (B, 1, T)
    earlier = g.const(np.tril(np.ones((topk, topk), bool), k=-1), np.bool_)  # [t, u]: u < t
    before = g.op('Or', [g.op('Greater', [other, mine]),
                         g.op('And', [g.op('Equal', [other, mine]), earlier])])
    rank = g.op('ReduceSum', [g.op('Cast', [before], to=_FLOAT), g.const([2], np.int64)],
                keepdims=0)
    return idx, scores, rank


def _per_class_nms(g, boxes, ids, nms_scores, num_classes, nms_thresh):
    """Greedy per-class NMS of the T candidates: ``boxes (B, T, 4)`` corner, ``ids (B, T)`` float
    class, ``nms_scores (B, T)`` (unique, > 0 for valid candidates, -1 otherwise) -> ``kept
    (B, T)`` bool.

    ``NonMaxSuppression`` gets a (B, C, T) score tensor where a candidate's score sits only in its
    own class row (-1 elsewhere, under the score threshold 0), so each class is suppressed on its
    own, like ``box_nms(force_suppress=False)``. IoU > ``nms_thresh`` suppresses (as MXNet and
    ONNX Runtime; OpenVINO's CPU plugin suppresses at >=, which only differs at exact equality).
    Boxes are given as (x1, y1, x2, y2): the IoU is the same as for the spec's (y1, x1, y2, x2).
    """
    classes = g.const(np.arange(num_classes, dtype=np.float32).reshape(1, -1, 1))
    own_row = g.op('Equal', [g.op('Unsqueeze', [ids, g.const([1], np.int64)]), classes])
    per_class = g.op('Where', [own_row, g.op('Unsqueeze', [nms_scores, g.const([1], np.int64)]),
                               g.const(-1.0)])                               # (B, C, T)
    topk = g.op('Shape', [nms_scores])
    max_out = g.op('Slice', [topk, g.const([1], np.int64), g.const([2], np.int64)])
    selected = g.op('NonMaxSuppression', [boxes, per_class, max_out,
                                          g.const([float(nms_thresh)]), g.const([0.0])],
                    center_point_box=0)                                      # (S, 3)
    where = g.op('Gather', [selected, g.const([0, 2], np.int64)], axis=1)    # (S, 2)
    ones = g.op('ConstantOfShape', [g.op('Slice', [g.op('Shape', [selected]),
                                                   g.const([0], np.int64),
                                                   g.const([1], np.int64)])],
                value=_tensor(1.0))
    zeros = g.op('ConstantOfShape', [g.op('Shape', [nms_scores])], value=_tensor(0.0))
    mask = g.op('ScatterND', [zeros, where, ones])
    return g.op('Greater', [mask, g.const(0.5)])


def _final_rows(g, key, ids, scores, boxes, take, rows, names):
    """Kept candidates best first (``key`` (B, T): unique positive for kept, -1 otherwise), the
    first ``take`` rows, -1 rows for the rest and up to ``rows``."""
    top, order = g.op('TopK', [key, g.const([take], np.int64)], outputs=2, axis=1)
    keep = g.op('Greater', [top, g.const(0.0)])                              # (B, take)
    keep3 = g.op('Unsqueeze', [keep, g.const([2], np.int64)])
    out_ids = g.op('Where', [keep3, g.op('Unsqueeze', [
        g.op('GatherElements', [ids, order], axis=1), g.const([2], np.int64)]), g.const(-1.0)])
    out_scores = g.op('Where', [keep3, g.op('Unsqueeze', [
        g.op('GatherElements', [scores, order], axis=1), g.const([2], np.int64)]),
        g.const(-1.0)])
    out_boxes = g.op('Where', [keep3, g.op('GatherND', [
        boxes, g.op('Unsqueeze', [order, g.const([2], np.int64)])], batch_dims=1),
        g.const(-1.0)])
    outputs = []
    for name, tensor in zip(names, (out_ids, out_scores, out_boxes)):
        if rows > take:  # box_nms pads with -1 rows up to the candidate count
            pads = g.const([0, 0, 0, 0, rows - take, 0], np.int64)
            outputs.append(g.op('Pad', [tensor, pads, g.const(-1.0)], name=name))
        else:
            outputs.append(g.op('Identity', [tensor], name=name))
    return outputs


def _all_candidates(g, score, valid, best, boxes, num_anchors, num_classes, names):
    """NMS off: every candidate, unsorted (DetectionHead's behaviour): id -1 and score 0 for
    those under the threshold, boxes always given."""
    if best is None:  # per_class: ids are the class index c of row c * N + anchor
        ids = g.const(np.repeat(np.arange(num_classes, dtype=np.float32), num_anchors)
                      .reshape(1, -1))
        cand_boxes = g.op('Tile', [boxes, g.const([1, num_classes, 1], np.int64)])
    else:
        ids = g.op('Cast', [best], to=_FLOAT)
        cand_boxes = boxes
    ids = g.op('Where', [valid, ids, g.const(-1.0)])
    score = g.op('Where', [valid, score, g.const(0.0)])
    unsq = g.const([2], np.int64)
    return [g.op('Unsqueeze', [ids, unsq], name=names[0]),
            g.op('Unsqueeze', [score, unsq], name=names[1]),
            g.op('Identity', [cand_boxes], name=names[2])]


def _tensor(value):
    """A one-element float32 TensorProto (ConstantOfShape's ``value``)."""
    from onnx import numpy_helper
    return numpy_helper.from_array(np.array([value], np.float32))

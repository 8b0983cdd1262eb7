"""SSD training targets: match anchors to ground truth, then encode classes and boxes.

Matching, per image:

1. IoU between every anchor and every ground-truth box (``contrib.box_iou``).
2. Bipartite matching (``contrib.bipartite_matching``, greedy on descending IoU) gives every
   ground truth its best still-free anchor. An anchor left over by that step still takes its
   best ground truth ``g`` when its IoU with ``g`` equals ``g``'s best IoU over all anchors
   (a tie with the anchor the bipartite step chose).
3. Every anchor still unmatched takes its best ground truth if that IoU is ``>= iou_thresh``.

Matched anchors are positives (class ``gt_id + 1``, box target encoded against the matched box);
every other anchor is a negative (class 0). Choosing *which* negatives to train on (hard negative
mining) is done by the loss, :class:`gluon_ssd.loss.SSDMultiBoxLoss`.

Speed. The greedy bipartite step is the expensive one: MXNet's ``contrib.bipartite_matching``
sorts all ``N * M`` IoUs of each image (three stable sorts), which dominates GluonCV's generator.
Here it runs on a small exact sub-problem instead. A ground truth ``g`` can only lose an anchor to
another ground truth, so the anchor the greedy pass gives ``g`` is among ``g``'s first ``V``
anchors in the order (IoU descending, anchor index ascending), ``V`` being the number of real
ground truths of the image; and a pair outside every such top list is never matched. So
``topk`` (exact order through a float64 tie-break key) picks ``K = M`` candidates per ground
truth, the union of candidates (sorted by anchor index, duplicates zeroed) forms a
``(B, M*K, M)`` IoU matrix, and ``bipartite_matching`` on it makes exactly the choices it makes
on the full matrix, ties included. ``M``, the label padding, is read from the inputs when called
with NDArrays, or is ``max_objects`` when traced inside a bigger graph; without either the full
matrix is used. MXNet's axis reductions (``max``/``argmax``) are slow on CPU, so the per-anchor
best ground truth is a running maximum over the ``M`` rows (small ``M``) or two global poolings
of the ``(B, N, M)`` matrix, and the other reductions use global pooling or the ``topk`` result.

Many objects per image (issue 13). The reduced matrix has ``M**3`` entries per image (plus
``(3, B, M*K, M)`` gather indices), and the running maximum unrolls ``3*M`` ops into the graph:
at ``M = 200-300`` that was gigabytes and seconds per image. Both are now bounded by ``O(N*M)``:
the reduced problem is only used while ``M*M`` is at most about ``N`` (else the full ``(B, N, M)``
matrix, whose greedy pass makes the same choices by definition), and the running maximum only
for ``M <= 32`` (else the poolings). The outputs are unchanged, bit for bit.

This reproduces GluonCV's ``SSDTargetGenerator(negative_mining_ratio=-1)`` on the same inputs,
ties included, with one deliberate difference: an anchor is never matched to a padding row
(``gt_id == -1``) nor to a ground truth it does not overlap at all (IoU 0). GluonCV matches such
pairs in two degenerate cases, an image with no boxes (all padding) or a padding row placed
before a real box: every anchor overlapping nothing then becomes a "positive" of class 0 with
``-inf`` box targets. Here those anchors are plain negatives with zero box targets and masks.
"""
import mxnet as mx
from mxnet import gluon

from gluon_ssd.coder import center_to_corner, corner_to_center

__all__ = ['SSDTargetGenerator']

# Bipartite matching only pairs an anchor and a ground truth whose IoU exceeds this, and the tie
# test of step 2 allows this slack (the same values as GluonCV's BipartiteMatcher defaults).
_MATCH_EPS = 1e-12
# Candidate ranking key: IoU (float64) * (1 - n * 2**-50) for anchor n. Equal IoUs are ordered by
# ascending anchor index; two different float32 IoUs differ by >= 2**-24 relative, far more than
# the key's shift (< 2**-26 for n < 2**24) plus float64 rounding, so they never swap.
_TIE_SCALE = 2.0 ** -50


class SSDTargetGenerator(gluon.HybridBlock):
    """Training targets for SSD (see the module docstring for the matching rules).

    Parameters
    ----------
    iou_thresh : float, default 0.5
        Minimum IoU for the maximum-matching step (step 3).
    neg_thresh : float, default 0.5
        Accepted for GluonCV compatibility. It only mattered for GluonCV's in-generator hard
        negative mining; with ``negative_mining_ratio=-1`` every unmatched anchor is a negative
        whatever its IoU, exactly as in GluonCV, so it has no effect.
    negative_mining_ratio : float, default -1
        Must be -1 (or any value <= 0): hard negative mining belongs to the loss.
    stds : 4 floats, default (0.1, 0.1, 0.2, 0.2)
        Box encoding standard deviations (means are 0).
    max_objects : int or None, default None
        Only used when this block is traced inside a bigger hybridized graph (where it cannot
        see the label shape): the label padding ``M`` of the inputs, enabling the fast bipartite
        step (see the module docstring); labels must then have exactly ``max_objects`` rows
        (another count fails with a shape error, never silently). Called directly with
        NDArrays, the block reads ``M`` from ``gt_boxes`` and ignores this.

    Forward
    -------
    anchors : (1, N, 4) center format ``(cx, cy, w, h)``, pixels.
    cls_preds : (B, N, C+1) class logits. Only their shape is used (they give the targets a
        ``(B, N)`` layout); the values are ignored.
    gt_boxes : (B, M, 4) corner format ``(xmin, ymin, xmax, ymax)``, pixels; padding rows -1.
    gt_ids : (B, M, 1) class ids ``0..C-1``; padding rows -1.

    Returns
    -------
    cls_targets : (B, N) float, ``gt_id + 1`` on positive anchors, 0 on negatives.
    box_targets : (B, N, 4) encoded offsets (see ``docs/DESIGN.md``) on positives, 0 elsewhere.
    box_masks : (B, N, 4) 1 on positive anchors, 0 elsewhere.
    """

    def __init__(self, iou_thresh=0.5, neg_thresh=0.5, negative_mining_ratio=-1,
                 stds=(0.1, 0.1, 0.2, 0.2), max_objects=None, **kwargs):
        super().__init__(**kwargs)
        if negative_mining_ratio > 0:
            raise ValueError(
                f"negative_mining_ratio={negative_mining_ratio!r} is not supported: "
                "SSDTargetGenerator marks every unmatched anchor as a negative and hard negative "
                "mining is done by the loss (gluon_ssd.loss.SSDMultiBoxLoss / MultiBoxLossTerms, "
                "option negative_mining_ratio). Use negative_mining_ratio=-1.")
        if not 0 < iou_thresh <= 1:
            raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh!r}")
        if max_objects is not None and int(max_objects) < 1:
            raise ValueError(f"max_objects must be None or >= 1, got {max_objects!r}")
        self._iou_thresh = float(iou_thresh)
        self._neg_thresh = float(neg_thresh)
        self._max_objects = None if max_objects is None else int(max_objects)
        # label rows M and candidates per ground truth K of the graph to trace (None: unknown)
        self._num_gt, self._topk = self._max_objects, _candidates(self._max_objects)
        self._stds = tuple(float(v) for v in stds)
        self._means = (0.0, 0.0, 0.0, 0.0)
        if len(self._stds) != 4:
            raise ValueError(f"stds must have 4 values, got {stds!r}")

    @property
    def max_objects(self):
        """Label padding assumed when traced inside a bigger graph (or None)."""
        return self._max_objects

    @max_objects.setter
    def max_objects(self, value):
        if value is not None and int(value) < 1:
            raise ValueError(f"max_objects must be None or >= 1, got {value!r}")
        self._max_objects = None if value is None else int(value)
        self._num_gt, self._topk = self._max_objects, _candidates(self._max_objects)
        self._clear_cached_op()

    def forward(self, anchors, *args):  # pylint: disable=arguments-differ
        """Read the label padding ``M`` when called with NDArrays (the traced graph depends on
        it: a new ``M`` rebuilds the cached graph)."""
        if isinstance(anchors, mx.nd.NDArray) and len(args) == 3:
            num_gt, num_anchors = args[1].shape[1], anchors.shape[1]
            topk = _candidates(num_gt, num_anchors)
            if num_gt != self._num_gt or topk != self._topk:
                self._num_gt, self._topk = num_gt, topk
                self._clear_cached_op()
        return super().forward(anchors, *args)

    # pylint: disable=arguments-differ
    def hybrid_forward(self, F, anchors, cls_preds, gt_boxes, gt_ids):
        """Compute targets; see the class docstring for shapes."""
        anchors = center_to_corner(F, F.reshape(anchors, (-1, 4)))        # (N, 4) corner
        gt_ids = F.reshape(gt_ids, (0, -1))                                 # (B, M)
        valid_gt = gt_ids >= 0                                              # (B, M)
        # (B, M, N); padding rows get IoU 0 even if their box is not all -1. box_iou is
        # symmetric bit for bit, so these equal GluonCV's (N, B, M) IoUs.
        ious = F.broadcast_mul(F.contrib.box_iou(gt_boxes, anchors),
                               F.expand_dims(valid_gt, axis=-1))

        matches = self._match(F, ious)                                      # (B, N), -1 = none
        positive = matches >= 0
        batch_index = F.broadcast_like(
            F.reshape(F.contrib.arange_like(matches, axis=0), (-1, 1)), matches)   # (B, N)

        # Class targets: id of the matched ground truth + 1, background 0.
        matched_ids = F.gather_nd(gt_ids, F.stack(batch_index, F.relu(matches)))  # (B, N)
        background = F.zeros_like(F.reshape(
            F.slice_axis(cls_preds, axis=-1, begin=0, end=1), (0, -1)))    # (B, N) from shape
        cls_targets = F.where(positive, matched_ids + 1, background)

        box_targets, box_masks = self._encode(F, anchors, gt_boxes, matches, batch_index,
                                              positive)
        return cls_targets, box_targets, box_masks

    def _encode(self, F, anchors, gt_boxes, matches, batch_index, positive):
        """Box targets and masks (B, N, 4) of the matched ground truth: bit for bit the float
        operations of :class:`~gluon_ssd.coder.BoxEncoder` on ``(corner anchors, matched corner
        boxes)``, but on (N, 4) anchors and (B, M, 4) boxes instead of (B, N, 4) copies."""
        anchors = F.expand_dims(corner_to_center(F, anchors), axis=0)       # (1, N, 4) center
        boxes = corner_to_center(F, gt_boxes)                               # (B, M, 4) center
        matched = F.gather_nd(boxes, F.stack(batch_index, F.relu(matches)))  # (B, N, 4)
        ax, ay, aw, ah = F.split(anchors, axis=-1, num_outputs=4)
        zero = F.zeros_like(ax)
        # [(gx - ax) / aw, (gy - ay) / ah, gw / aw, gh / ah] (gw - 0 is exactly gw) ...
        ratio = F.broadcast_div(F.broadcast_sub(matched, F.concat(ax, ay, zero, zero, dim=-1)),
                                F.concat(aw, ah, aw, ah, dim=-1))
        # ... then log of the last two, minus means, over stds (per-coordinate constants built
        # exactly as float32(value) from a 0..3 index)
        coord = F.reshape(F.contrib.arange_like(ratio, axis=-1), (1, 1, -1))   # (1, 1, 4)
        raw = F.where(F.broadcast_like(coord >= 2, ratio), F.log(ratio), ratio)
        means = sum((coord == i) * m for i, m in enumerate(self._means))
        stds = sum((coord == i) * sd for i, sd in enumerate(self._stds))
        codes = F.broadcast_div(F.broadcast_sub(raw, means), stds)
        masks = F.broadcast_like(F.expand_dims(positive, axis=-1), codes)
        return F.where(masks, codes, F.zeros_like(codes)), masks

    def _bipartite(self, F, ious):
        """(B, M, N) IoU -> ((B, N) ground truth given to each anchor by greedy bipartite
        matching (IoU descending, ties by anchor then ground truth index) or -1,
        (B, M) best IoU of each ground truth)."""
        anchor_index = F.contrib.arange_like(ious, axis=-1)                 # (N,)
        gt_index = F.reshape(F.contrib.arange_like(ious, axis=1), (1, -1, 1))    # (1, M, 1)
        if self._topk is None:
            # whole matrix: (B, N, M) as the operator wants rows = anchors
            full = F.transpose(ious, axes=(0, 2, 1))
            assigned = F.contrib.bipartite_matching(full, threshold=_MATCH_EPS,
                                                    is_ascend=False)[0]
            return assigned, _max_last(F, ious)
        # first topk anchors of every ground truth, in exact (IoU desc, index asc) order
        scale = 1 - F.cast(anchor_index, 'float64') * _TIE_SCALE
        key = F.broadcast_mul(F.cast(ious, 'float64'), F.reshape(scale, (1, 1, -1)))
        cand = F.topk(key, axis=-1, k=self._topk, ret_typ='indices', dtype='float32')
        # the first candidate of a ground truth is its best anchor
        gt_best = F.pick(ious, F.reshape(F.slice_axis(cand, axis=-1, begin=0, end=1), (0, -1)),
                         axis=-1)                                           # (B, M)
        cand = F.sort(F.reshape(cand, (0, -1)), axis=-1)                   # (B, R) ascending
        first = F.slice_axis(cand, axis=1, begin=0, end=1) * 0 - 1
        if self._num_gt * self._topk > 1:                                  # R known here
            previous = F.concat(first, F.slice_axis(cand, axis=1, begin=0, end=-1), dim=1)
        else:                                                               # R == 1
            previous = first
        fresh = cand != previous                                            # (B, R) 0 on repeats
        # reduced (B, R, M) IoU matrix of the candidate anchors, repeats zeroed
        rows = F.broadcast_add(F.expand_dims(cand, axis=-1), F.reshape(gt_index, (1, 1, -1)) * 0)
        cols = F.broadcast_like(F.reshape(gt_index, (1, 1, -1)), rows)
        batch = F.broadcast_like(F.reshape(F.contrib.arange_like(ious, axis=0), (-1, 1, 1)),
                                 rows)
        reduced = F.gather_nd(ious, F.stack(batch, cols, rows))
        reduced = F.broadcast_mul(reduced, F.expand_dims(fresh, axis=-1))
        taken = F.contrib.bipartite_matching(reduced, threshold=_MATCH_EPS,
                                             is_ascend=False)[1]            # (B, M) row or -1
        gt_batch = F.broadcast_like(F.reshape(F.contrib.arange_like(taken, axis=0), (-1, 1)),
                                    taken)
        anchor_of_gt = F.gather_nd(cand, F.stack(gt_batch, F.relu(taken)))  # (B, M)
        # scatter: per-anchor (B, N) ground truth index; every unmatched ground truth writes -1
        # into one spare slot at the end, so writes never collide with real ones
        flat = F.contrib.arange_like(F.slice_axis(ious, axis=1, begin=0, end=1))  # (B, 1, N)
        offset = F.reshape(F.slice_axis(flat, axis=-1, begin=0, end=1), (-1, 1))   # (B, 1) b*N
        spare = F.slice_axis(F.reshape(flat, (-1,)), axis=0, begin=-1, end=None) + 1  # (1,)
        target = F.broadcast_add(offset, anchor_of_gt)
        target = F.where(taken >= 0, target, F.broadcast_like(F.reshape(spare, (1, 1)), taken))
        value = F.where(taken >= 0, F.broadcast_like(F.reshape(gt_index, (1, -1)), taken),
                        F.ones_like(taken) * -1)
        blank = F.ones_like(F.concat(F.reshape(flat, (-1, 1)), F.reshape(spare, (1, 1)),
                                     dim=0)) * -1                           # (B*N + 1, 1)
        owner = F.contrib.index_copy(blank, F.reshape(target, (-1,)), F.reshape(value, (-1, 1)))
        owner = F.slice_axis(owner, axis=0, begin=0, end=-1)
        return F.reshape_like(owner, F.reshape(flat, (0, -1))), gt_best     # (B, N), (B, M)

    def _match(self, F, ious):
        """(B, M, N) IoU -> (B, N) index of the matched ground truth, or -1."""
        if self._num_gt is not None and self._num_gt <= _RUNNING_MAX_ROWS:
            best_iou, best_gt = _best_over_rows(F, ious, self._num_gt)      # (B, N) each
        else:
            per_anchor = F.transpose(ious, axes=(0, 2, 1))                  # (B, N, M)
            best_iou = _max_last(F, per_anchor)                             # (B, N)
            best_gt = _first_argmax_last(F, per_anchor, best_iou)           # (B, N)
        none = F.ones_like(best_iou) * -1

        # Step 2: bipartite matching, plus anchors tying with their ground truth's best anchor.
        bipartite, gt_best = self._bipartite(F, ious)                       # (B, N), (B, M)
        batch_index = F.broadcast_like(
            F.reshape(F.contrib.arange_like(best_gt, axis=0), (-1, 1)), best_gt)
        best_of_my_gt = F.gather_nd(gt_best, F.stack(batch_index, best_gt))  # (B, N)
        ties = (best_iou + _MATCH_EPS) >= best_of_my_gt
        matches = F.where(bipartite >= 0, bipartite, F.where(ties, best_gt, none))

        # Step 3: maximum matching above the IoU threshold.
        above = F.where(best_iou >= self._iou_thresh, best_gt, none)
        matches = F.where(matches >= 0, matches, above)

        # Never keep a pair that does not overlap (padding rows, degenerate ground truth).
        overlaps = F.pick(ious, F.relu(matches), axis=1) > 0
        return F.where(overlaps * (matches >= 0), matches, none)


# The reduced bipartite problem (K = min(M, N) candidates per ground truth) sorts a (B, M*K, M)
# matrix, O(M**3) per image; the full one a (B, N, M) matrix, O(N*M). The reduced one is used
# while it is not much bigger: M*M <= N * 5/4 (measured crossover, TinySSD 256 px: M ~ 80 for
# N = 5444) when the anchor count N is known (called with NDArrays), else (traced inside a
# bigger graph) M <= _REDUCED_MAX_OBJECTS, which suits N ~ 3,000-25,000 (the zoo's models).
_REDUCED_MAX_OBJECTS = 64
# Label paddings M up to this take the per-anchor best ground truth as a running maximum over
# the M rows (3 small (B, N) ops per row, unrolled into the graph: 3*M graph nodes and buffers);
# above it as two global poolings over the (B, N, M) matrix (a constant number of ops).
_RUNNING_MAX_ROWS = 32


def _candidates(num_gt, num_anchors=None):
    """Candidates per ground truth K of the reduced bipartite step, or None (full matrix)."""
    if num_gt is None:
        return None
    if num_anchors is None:
        return num_gt if num_gt <= _REDUCED_MAX_OBJECTS else None
    return min(num_gt, num_anchors) if num_gt * num_gt * 4 <= num_anchors * 5 else None


# MXNet's generic reductions (max/argmax/sum over an axis) are an order of magnitude slower on
# CPU than a global pooling over the same values, so the matching reduces with Pooling.
_INDEX_BASE = float(2 ** 24)   # > any axis length; integers below it are exact in float32


def _max_last(F, x):
    """(B, P, Q) -> (B, P): maximum over the last axis."""
    pooled = F.Pooling(F.expand_dims(x, axis=-1), kernel=(1, 1), pool_type='max',
                       global_pool=True)                                    # (B, P, 1, 1)
    return F.reshape(pooled, (0, 0))


def _best_over_rows(F, x, rows):
    """(B, rows, N) -> ((B, N) maximum over axis 1, (B, N) float index of its first
    occurrence, as argmax): a running max over the ``rows`` slices, cheap when ``rows`` is
    small (the number of ground-truth boxes)."""
    slices = F.split(x, num_outputs=rows, axis=1, squeeze_axis=True) if rows > 1 else \
        [F.reshape(x, (0, -1))]
    best = slices[0]
    index = F.zeros_like(best)
    for m in range(1, rows):
        better = slices[m] > best            # strict: the first maximum wins ties
        best = F.maximum(best, slices[m])
        index = F.where(better, better * m, index)
    return best, index


def _first_argmax_last(F, x, x_max):
    """(B, P, Q), its (B, P) maximum -> (B, P) float index of the first maximum (as argmax)."""
    index = F.reshape(F.contrib.arange_like(x, axis=-1), (1, 1, -1))
    at_max = F.broadcast_equal(x, F.expand_dims(x_max, axis=-1))
    # the first maximum has the largest (BASE - index) among the maxima
    return _INDEX_BASE - _max_last(F, F.broadcast_mul(at_max, _INDEX_BASE - index))

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

This reproduces GluonCV's ``SSDTargetGenerator(negative_mining_ratio=-1)`` on the same inputs,
ties included, with one deliberate difference: an anchor is never matched to a padding row
(``gt_id == -1``) nor to a ground truth it does not overlap at all (IoU 0). GluonCV matches such
pairs in two degenerate cases, an image with no boxes (all padding) or a padding row placed
before a real box: every anchor overlapping nothing then becomes a "positive" of class 0 with
``-inf`` box targets. Here those anchors are plain negatives with zero box targets and masks.
"""
from mxnet import gluon

from gluon_ssd.coder import BoxEncoder, center_to_corner

__all__ = ['SSDTargetGenerator']

# Bipartite matching only pairs an anchor and a ground truth whose IoU exceeds this, and the tie
# test of step 2 allows this slack (the same values as GluonCV's BipartiteMatcher defaults).
_MATCH_EPS = 1e-12


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
                 stds=(0.1, 0.1, 0.2, 0.2), **kwargs):
        super().__init__(**kwargs)
        if negative_mining_ratio > 0:
            raise ValueError(
                f"negative_mining_ratio={negative_mining_ratio!r} is not supported: "
                "SSDTargetGenerator marks every unmatched anchor as a negative and hard negative "
                "mining is done by the loss (gluon_ssd.loss.SSDMultiBoxLoss / MultiBoxLossTerms, "
                "option negative_mining_ratio). Use negative_mining_ratio=-1.")
        if not 0 < iou_thresh <= 1:
            raise ValueError(f"iou_thresh must be in (0, 1], got {iou_thresh!r}")
        self._iou_thresh = float(iou_thresh)
        self._neg_thresh = float(neg_thresh)
        with self.name_scope():
            self.box_encoder = BoxEncoder(stds=stds)

    # pylint: disable=arguments-differ
    def hybrid_forward(self, F, anchors, cls_preds, gt_boxes, gt_ids):
        """Compute targets; see the class docstring for shapes."""
        anchors = center_to_corner(F, F.reshape(anchors, (-1, 4)))        # (N, 4) corner
        # (N, B, M) -> (B, N, M); padding rows get IoU 0 even if their box is not all -1.
        ious = F.transpose(F.contrib.box_iou(anchors, gt_boxes), axes=(1, 0, 2))
        valid_gt = F.reshape(gt_ids, (0, 1, -1)) >= 0                      # (B, 1, M)
        ious = F.broadcast_mul(ious, valid_gt)

        matches = self._match(F, ious)                                      # (B, N), -1 = none
        positive = matches >= 0

        # Class targets: id of the matched ground truth + 1, background 0.
        ids = F.broadcast_like(F.reshape(gt_ids, (0, 1, -1)), ious)         # (B, N, M)
        matched_ids = F.pick(ids, F.relu(matches), axis=-1)                 # (B, N)
        background = F.zeros_like(F.reshape(
            F.slice_axis(cls_preds, axis=-1, begin=0, end=1), (0, -1)))    # (B, N) from shape
        cls_targets = F.where(positive, matched_ids + 1, background)

        samples = positive * 2 - 1                                          # +1 pos, -1 neg
        anchors = F.broadcast_like(F.expand_dims(anchors, axis=0), gt_boxes,
                                   lhs_axes=(0,), rhs_axes=(0,))            # (B, N, 4)
        box_targets, box_masks = self.box_encoder(samples, matches, anchors, gt_boxes)
        return cls_targets, box_targets, box_masks

    def _match(self, F, ious):
        """(B, N, M) IoU -> (B, N) index of the matched ground truth, or -1."""
        best_gt = F.argmax(ious, axis=-1)                                   # (B, N)
        best_iou = F.pick(ious, best_gt, axis=-1)                           # (B, N)
        none = F.ones_like(best_iou) * -1

        # Step 2: bipartite matching, plus anchors tying with their ground truth's best anchor.
        bipartite = F.contrib.bipartite_matching(ious, threshold=_MATCH_EPS, is_ascend=False)[0]
        gt_best = F.max(ious, axis=1, keepdims=True)                        # (B, 1, M)
        reaches_best = F.broadcast_greater_equal(
            F.expand_dims(best_iou, axis=-1) + _MATCH_EPS, gt_best)         # (B, N, M)
        ties = F.pick(reaches_best, best_gt, axis=-1)                       # (B, N)
        matches = F.where(bipartite >= 0, bipartite, F.where(ties > 0, best_gt, none))

        # Step 3: maximum matching above the IoU threshold.
        above = F.where(best_iou >= self._iou_thresh, best_gt, none)
        matches = F.where(matches >= 0, matches, above)

        # Never keep a pair that does not overlap (padding rows, degenerate ground truth).
        overlaps = F.pick(ious, F.relu(matches), axis=-1) > 0
        return F.where(overlaps * (matches >= 0), matches, none)

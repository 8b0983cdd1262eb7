"""SSD multibox loss: classification with hard negative mining plus box regression.

The work is split in two so the expensive part can live inside a hybridized training graph:

* :class:`MultiBoxLossTerms` (HybridBlock) turns one device's predictions and targets into
  per-image, **un-normalised** sums: classification loss, box loss and number of positives.
* :class:`SSDMultiBoxLoss` (Block) keeps GluonCV's call convention (arrays or per-device lists
  in, ``(sum_losses, cls_losses, box_losses)`` lists out) and divides the terms by the number
  of positives, either over the whole batch on all devices (``'batch'``, GluonCV's behaviour)
  or per image (``'sample'``). The division is done with NDArray operations only, so it never
  waits for the device.

Anchor classes follow the project convention: ``cls_target`` is ``0`` for background,
``1..C`` for objects and ``-1`` for ignored anchors, which never contribute to any term.
"""
from mxnet import gluon, nd

__all__ = ['MultiBoxLossTerms', 'SSDMultiBoxLoss', 'BOX_LOSSES', 'CLS_LOSSES', 'NORMALIZATIONS']

BOX_LOSSES = ('smooth_l1', 'l1')
CLS_LOSSES = ('softmax', 'focal')
NORMALIZATIONS = ('batch', 'sample')


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


class MultiBoxLossTerms(gluon.HybridBlock):
    """Per-image, un-normalised SSD loss terms.

    Classification (``cls_loss``):

    * ``'softmax'``: softmax cross-entropy on every positive anchor (``cls_target > 0``) and on
      the hardest negatives (``cls_target == 0``) of each image. Negatives are ranked by their
      cross-entropy, highest first, and the first ``max(min_hard_negatives,
      negative_mining_ratio * positives_of_the_image)`` are kept. The ranking is the same as
      GluonCV's ``SSDMultiBoxLoss`` (a stable double ``argsort``), ties included.
    * ``'focal'``: softmax focal loss ``-alpha_t * (1 - p_t)**gamma * log(p_t)`` summed over
      **every** positive and negative anchor, without hard negative mining: the focal term
      exists to down-weight the many easy negatives, which is the job mining does for plain
      cross-entropy, so doing both would discount easy negatives twice (RetinaNet drops mining
      for the same reason). ``alpha_t`` is ``focal_alpha`` on positives and ``1 - focal_alpha``
      on negatives; ``focal_alpha=None`` turns the weighting off. With ``focal_gamma=0`` and
      ``focal_alpha=None`` it is exactly the cross-entropy summed over all anchors.
      ``negative_mining_ratio`` and ``min_hard_negatives`` are not used by this variant.

    Box regression (``box_loss``) on positive anchors only, summed over the 4 coordinates:
    ``'smooth_l1'`` is ``|x| - 0.5 * rho`` when ``|x| > rho`` else ``0.5 / rho * x**2``;
    ``'l1'`` is ``|x|``.

    Anchors with ``cls_target == -1`` (ignored) contribute to neither term, are never mined as
    negatives and do not count as positives.

    Parameters
    ----------
    negative_mining_ratio : float, default 3
        Hard negatives kept per positive (values below 0 count as 0, as in GluonCV).
    rho : float, default 1.0
        Smooth-L1 transition point (> 0).
    min_hard_negatives : int, default 0
        Negatives kept per image even when it has few or no positives.
    box_loss : {'smooth_l1', 'l1'}
    cls_loss : {'softmax', 'focal'}
    focal_alpha : float in [0, 1] or None, default 0.25
    focal_gamma : float >= 0, default 2.0

    Inputs
    ------
    cls_pred : (B, N, C+1) raw logits, index 0 = background.
    box_pred : (B, N, 4) encoded box offsets (any shape with B*N*4 elements is reshaped like
        ``box_target``).
    cls_target : (B, N) float, -1 ignored, 0 background, 1..C objects.
    box_target : (B, N, 4) encoded box offsets (see ``docs/DESIGN.md``); only rows of positive
        anchors are read.

    Outputs
    -------
    cls_loss : (B,) sum of the classification loss of the selected anchors of each image.
    box_loss : (B,) sum of the box loss of the positive anchors of each image.
    num_pos : (B,) number of positive anchors of each image (float, no gradient).
    """

    def __init__(self, negative_mining_ratio=3, rho=1.0, min_hard_negatives=0,
                 box_loss='smooth_l1', cls_loss='softmax', focal_alpha=0.25, focal_gamma=2.0,
                 **kwargs):
        super().__init__(**kwargs)
        _check_choice('box_loss', box_loss, BOX_LOSSES)
        _check_choice('cls_loss', cls_loss, CLS_LOSSES)
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho!r}")
        if focal_alpha is not None and not 0 <= focal_alpha <= 1:
            raise ValueError(f"focal_alpha must be in [0, 1] or None, got {focal_alpha!r}")
        if not focal_gamma >= 0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma!r}")
        self._ratio = max(0.0, float(negative_mining_ratio))
        self._min_hard_negatives = max(0, int(min_hard_negatives))
        self._rho = float(rho)
        self._box_loss = box_loss
        self._cls_loss = cls_loss
        self._alpha = None if focal_alpha is None else float(focal_alpha)
        self._gamma = float(focal_gamma)

    def hybrid_forward(self, F, cls_pred, box_pred, cls_target, box_target):
        """Compute the terms; see the class docstring for shapes."""
        pos = cls_target > 0                              # (B, N) 1/0
        neg = cls_target == 0                             # (B, N) 1/0, ignored anchors excluded
        num_pos = F.BlockGrad(F.sum(pos, axis=1))         # (B,)

        # -log p(target class) of every anchor; ignored anchors pick class 0, then are masked.
        log_prob = F.pick(F.log_softmax(cls_pred, axis=-1), F.relu(cls_target), axis=-1)
        if self._cls_loss == 'softmax':
            ce = -log_prob
            selected = pos + self._hard_negatives(F, ce, pos, neg, num_pos)
            cls_loss = F.where(selected > 0, ce, F.zeros_like(ce))
        else:
            cls_loss = self._focal(F, log_prob, pos)
            cls_loss = F.where((pos + neg) > 0, cls_loss, F.zeros_like(cls_loss))
        cls_loss = F.sum(cls_loss, axis=1)

        diff = F.abs(F.reshape_like(box_pred, box_target) - box_target)
        if self._box_loss == 'smooth_l1':
            rho = self._rho
            diff = F.where(diff > rho, diff - 0.5 * rho, (0.5 / rho) * F.square(diff))
        # `where`, not a product, so non-finite targets of non-positive anchors cannot leak.
        pos4 = F.broadcast_like(F.expand_dims(pos, axis=-1), diff)
        box_loss = F.sum(F.where(pos4 > 0, diff, F.zeros_like(diff)), axis=(1, 2))
        return cls_loss, box_loss, num_pos

    def _hard_negatives(self, F, ce, pos, neg, num_pos):
        """(B, N) 1 on the negatives kept by hard negative mining, else 0."""
        # Sort key: negatives by descending loss first, then positives (0), then ignored (1).
        # For targets without ignored anchors this is exactly GluonCV's key `ce * (pos - 1)`.
        key = F.where(neg > 0, -ce, F.where(pos > 0, F.zeros_like(ce), F.ones_like(ce)))
        rank = F.argsort(F.argsort(key, axis=1), axis=1)  # position of each anchor in the order
        keep = F.maximum(num_pos * self._ratio, self._min_hard_negatives)  # (B,)
        in_top = F.broadcast_lesser(rank, F.expand_dims(keep, axis=-1))
        return F.BlockGrad(in_top * neg)

    def _focal(self, F, log_prob, pos):
        """(B, N) softmax focal loss of every anchor (masking is done by the caller)."""
        loss = -log_prob
        if self._gamma != 0:
            # Clip 1 - p_t away from 0 so the gradient of (1 - p_t)**gamma stays finite.
            one_minus_p = F.maximum(1 - F.exp(log_prob), 1e-12)
            loss = loss * F.power(one_minus_p, self._gamma)
        if self._alpha is not None:
            alpha_t = F.where(pos > 0, F.ones_like(pos) * self._alpha,
                              F.ones_like(pos) * (1 - self._alpha))
            loss = loss * alpha_t
        return loss


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class SSDMultiBoxLoss(gluon.Block):
    """SSD loss with GluonCV's call convention and a choice of normalisation.

    ``loss = cls_loss + lambd * box_loss``, each image's terms (from :class:`MultiBoxLossTerms`)
    divided by:

    * ``'batch'`` (default, GluonCV): ``max(1, positives of the whole batch on all devices)``.
      With the default options the results equal GluonCV's ``SSDMultiBoxLoss``.
    * ``'sample'``: ``max(1, positives of that image)``.

    Parameters
    ----------
    negative_mining_ratio, rho, min_hard_negatives, box_loss, cls_loss, focal_alpha, focal_gamma
        Passed to :class:`MultiBoxLossTerms`.
    lambd : float, default 1.0
        Weight of the box loss in the sum.
    normalization : {'batch', 'sample'}, default 'batch'

    Inputs (each an NDArray or a list with one NDArray per device)
    ------
    cls_pred : (B_i, N, C+1) logits; box_pred : (B_i, N, 4) encoded;
    cls_target : (B_i, N) with -1 ignored, 0 background, 1..C objects;
    box_target : (B_i, N, 4) encoded.

    Outputs
    -------
    sum_losses, cls_losses, box_losses : lists (one per device) of (B_i,) NDArrays.
    """

    def __init__(self, negative_mining_ratio=3, rho=1.0, lambd=1.0, min_hard_negatives=0,
                 normalization='batch', box_loss='smooth_l1', cls_loss='softmax',
                 focal_alpha=0.25, focal_gamma=2.0, **kwargs):
        super().__init__(**kwargs)
        _check_choice('normalization', normalization, NORMALIZATIONS)
        self._lambd = float(lambd)
        self._normalization = normalization
        with self.name_scope():
            self.terms = MultiBoxLossTerms(
                negative_mining_ratio=negative_mining_ratio, rho=rho,
                min_hard_negatives=min_hard_negatives, box_loss=box_loss, cls_loss=cls_loss,
                focal_alpha=focal_alpha, focal_gamma=focal_gamma)

    def forward(self, cls_pred, box_pred, cls_target, box_target):
        """Compute the normalised losses; see the class docstring for shapes."""
        inputs = [_as_list(x) for x in (cls_pred, box_pred, cls_target, box_target)]
        if len({len(x) for x in inputs}) != 1:
            raise ValueError("cls_pred, box_pred, cls_target and box_target must have the same "
                             f"number of devices, got {[len(x) for x in inputs]}")
        cls_terms, box_terms, num_pos = [], [], []
        for cp, bp, ct, bt in zip(*inputs):
            c, b, n = self.terms(cp, bp, ct, bt)
            cls_terms.append(c)
            box_terms.append(b)
            num_pos.append(n)
        return self.normalize(cls_terms, box_terms, num_pos)

    def normalize(self, cls_terms, box_terms, num_pos):
        """Divide per-image terms by the positive count chosen by ``normalization``.

        Parameters
        ----------
        cls_terms, box_terms, num_pos : lists (one per device) of (B_i,) NDArrays, as returned
            by :class:`MultiBoxLossTerms`.

        Returns
        -------
        sum_losses, cls_losses, box_losses : lists of (B_i,) NDArrays on the inputs' devices.
        """
        cls_terms, box_terms, num_pos = (_as_list(x) for x in (cls_terms, box_terms, num_pos))
        if not len(cls_terms) == len(box_terms) == len(num_pos):
            raise ValueError("cls_terms, box_terms and num_pos must have the same length, got "
                             f"{len(cls_terms)}, {len(box_terms)}, {len(num_pos)}")
        if self._normalization == 'batch':
            sums = [n.sum() for n in num_pos]  # (1,) per device, still on its device
            divisors = []
            for c in cls_terms:
                total = nd.add_n(*[s.as_in_context(c.context) for s in sums])
                divisors.append(nd.maximum(total, 1))
        else:
            divisors = [nd.maximum(n, 1) for n in num_pos]
        sum_losses, cls_losses, box_losses = [], [], []
        for c, b, d in zip(cls_terms, box_terms, divisors):
            cls_losses.append(nd.broadcast_div(c, d))
            box_losses.append(nd.broadcast_div(b, d))
            sum_losses.append(cls_losses[-1] + self._lambd * box_losses[-1])
        return sum_losses, cls_losses, box_losses

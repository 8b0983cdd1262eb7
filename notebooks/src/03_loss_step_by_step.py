# %% [markdown]
# # 3 · The SSD loss, step by step
#
# The [ssd.pytorch](https://github.com/amdegroot/ssd.pytorch) implementation and the write-ups
# explaining its `MultiBoxLoss` break SSD training into four steps: **match** default boxes
# (anchors) to ground truth, **encode** the matched boxes as offsets, pick the **hard negatives**
# at 3 negatives per positive, and add the classification and localisation **loss terms**,
# divided by the number of positives. At test time, **NMS** at IoU 0.45 keeps at most 200
# detections. This notebook performs each step with `gluon_ssd`'s blocks on one image and draws
# what happens (our text and code; ssd.pytorch is the reference being reproduced).
#
# We use TinySSD (256×256 input, 5444 anchors) trained for a few epochs on the synthetic set, so
# that its class scores — which hard negative mining and NMS depend on — are not random.
# With `GLUON_SSD_QUICK=1` the training is a single step: the pictures then show an untrained
# network.

# %%
import os
import sys
import time
from pathlib import Path

try:
    import gluon_ssd
except ImportError:  # a clone without `pip install -e .`: the repository is the parent folder
    sys.path.insert(0, str(Path.cwd().resolve().parent))
    import gluon_ssd

import matplotlib.pyplot as plt
import mxnet as mx
import numpy as np
from IPython.display import Markdown, display
from mxnet import autograd, gluon

from gluon_ssd import (BoxDecoder, MultiBoxLossTerms, SSDMultiBoxLoss, SSDTargetGenerator,
                       center_to_corner, get_model)
from gluon_ssd.data import SSDValTransform, batchify_fn, synthetic_voc
from gluon_ssd.data.build import open_datasets
from gluon_ssd.model.zoo import anchor_sizes, get_preset
from gluon_ssd.viz import class_color, draw_detections

QUICK = os.environ.get('GLUON_SSD_QUICK', '0') == '1'
RESULTS = {'quick': QUICK}
mx.random.seed(0)
np.random.seed(0)


def rect(ax, box, colour, lw=1.0, ls='-', alpha=1.0):
    """Draw a corner-format box."""
    ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                               lw=lw, ls=ls, edgecolor=colour, alpha=alpha))

# %% [markdown]
# ## 0. A briefly trained TinySSD
#
# A plain training loop (no augmentation) with the package's `SSDMultiBoxLoss`, i.e. exactly the
# loss this notebook takes apart.

# %%
if QUICK:
    root = synthetic_voc(num_train=64, num_val=32)
    NUM_TRAIN, EPOCHS, BATCH = 16, 1, 16
else:
    root = synthetic_voc(num_train=256, num_val=64)
    NUM_TRAIN, EPOCHS, BATCH = 256, 8, 32
train_raw, val_raw, classes = open_datasets('voc', root, 'train', 'val')
transform = SSDValTransform(256, 256)
train_items = gluon.data.SimpleDataset([transform(*train_raw[i]) for i in range(NUM_TRAIN)])
loader = gluon.data.DataLoader(train_items, BATCH, shuffle=True, batchify_fn=batchify_fn(),
                               last_batch='rollover')

net = get_model('tiny_ssd', classes=classes)
net.initialize()
net.hybridize(static_alloc=True, static_shape=True)
target_generator = SSDTargetGenerator()
ssd_loss = SSDMultiBoxLoss()
trainer = gluon.Trainer(net.collect_params(), 'sgd',
                        {'learning_rate': 0.1, 'momentum': 0.9, 'wd': 5e-4})
tic = time.time()
for epoch in range(EPOCHS):
    for images, labels in loader:
        images, labels = images.as_in_context(mx.cpu()), labels.as_in_context(mx.cpu())
        with autograd.record():
            cls_preds, box_preds, anchors = net(images)
            with autograd.pause():
                cls_t, box_t, _ = target_generator(anchors, cls_preds, labels[:, :, :4],
                                                   labels[:, :, 4:5])
            losses, _, _ = ssd_loss(cls_preds, box_preds, cls_t, box_t)
        autograd.backward(losses)
        trainer.step(1)   # 'batch' normalisation already averages over the batch's positives
    print(f'epoch {epoch + 1}: loss {sum(l.sum().asscalar() for l in losses):.3f} '
          f'({time.time() - tic:.0f} s)')

# %% [markdown]
# ## 1. Matching
#
# For one image, `SSDTargetGenerator` decides which anchors are *positives*:
#
# 1. **bipartite step** — every ground-truth box takes the anchor it overlaps most (greedily, so
#    two boxes never take the same anchor). This guarantees every object at least one positive,
#    even a small or oddly shaped one that no anchor covers with IoU ≥ 0.5;
# 2. **threshold step** — every other anchor whose best IoU with some ground truth is ≥ 0.5 is
#    matched to that box.
#
# Everything else is background (class 0). We pick the first validation image with an object
# whose best IoU is between 0.3 and 0.5, so both steps show up.
#
# One subtlety of the bipartite step (GluonCV's rule, which this package reproduces): when
# several anchors tie at exactly the object's best IoU, all of them are matched. That happens for
# objects much smaller than the smallest anchor — every same-sized anchor that contains the whole
# object has the same IoU (object area / anchor area) — so a tiny object can get a dozen
# low-IoU positives.

# %%
with autograd.train_mode():
    _, _, anchors = net(mx.nd.zeros((1, 3, 256, 256)))
corner = center_to_corner(mx.nd, anchors)[0]                       # (N, 4) corner px


def best_ious(label):
    return mx.nd.contrib.box_iou(corner, mx.nd.array(label[:, :4])).max(axis=0).asnumpy()


def first_image(low):
    """First image with >= 3 objects, one of them with best IoU in [low, 0.5)."""
    for i in range(len(val_raw)):
        lab = val_raw[i][1]
        if len(lab) >= 3:
            best = best_ious(lab)
            if ((best >= low) & (best < 0.5)).any():
                return i
    return None


pick = first_image(0.3)
pick = first_image(0.0) if pick is None else pick   # fall back to any object below 0.5
pick = 0 if pick is None else pick
image, label = val_raw[pick]
x, _ = transform(image, label)
x = x.expand_dims(0)
gt_boxes, gt_ids = mx.nd.array(label[None, :, :4]), mx.nd.array(label[None, :, 4:5])
with autograd.train_mode():
    cls_preds, box_preds, _ = net(x)
cls_t, box_t, box_m = target_generator(anchors, cls_preds, gt_boxes, gt_ids)
cls_np = cls_t[0].asnumpy()
pos = np.nonzero(cls_np > 0)[0]
iou = mx.nd.contrib.box_iou(corner, gt_boxes[0]).asnumpy()          # (N, M)
# the box each positive was matched to: decode its target offsets back to a box
matched_boxes = BoxDecoder()(box_t, anchors)[0].asnumpy()
owner = np.array([np.abs(label[:, :4] - matched_boxes[n]).sum(axis=1).argmin() for n in pos])
print(f'validation image {pick}: {len(label)} objects, {len(pos)} positive anchors of '
      f'{anchors.shape[1]}')
rows = []
for g in range(len(label)):
    mine = pos[owner == g]
    by_threshold = int((iou[mine, g] >= 0.5).sum())
    rows.append((g, classes[int(label[g, 4])], f'{iou[:, g].max():.2f}', len(mine),
                 len(mine) - by_threshold, by_threshold))
display(Markdown('| gt | class | best IoU | positives | from bipartite only (IoU < 0.5) | '
                 'IoU ≥ 0.5 |\n|---|---|---|---|---|---|\n'
                 + '\n'.join('| ' + ' | '.join(map(str, r)) + ' |' for r in rows)))
RESULTS.update(image=pick, objects=len(label), positives=int(len(pos)),
               min_best_iou=float(iou.max(axis=0).min()),
               every_object_matched=bool(all(r[3] >= 1 for r in rows)))

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
for ax in axes:
    ax.imshow(image.asnumpy())
    ax.axis('off')
for g, b in enumerate(label):
    colour = class_color(b[4])
    for ax in axes:
        rect(ax, b, 'white', lw=2.5, ls='--')
    mine = pos[owner == g]
    for n in mine:
        weak = iou[n, g] < 0.5
        rect(axes[0], corner[n].asnumpy(), colour, lw=2.5 if weak else 1.0, alpha=0.9)
    axes[1].plot(*np.array([[(corner[n][0] + corner[n][2]).asscalar() / 2,
                             (corner[n][1] + corner[n][3]).asscalar() / 2] for n in mine]).T,
                 'o', color=colour, ms=6, mec='k')
axes[0].set_title('matched anchors per object (thick: IoU < 0.5, kept by the bipartite step)',
                  fontsize=9)
axes[1].set_title('their centres: positives sit on the objects, at several scales', fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Encoding
#
# Each positive anchor's regression target is its matched box expressed relative to the anchor:
# centre shifts divided by the anchor size and by 0.1, log size ratios divided by 0.2
# (`BoxEncoder`, the "variances" of ssd.pytorch). Decoding the targets with `BoxDecoder` returns
# the ground-truth boxes exactly, which is how we found each anchor's object above.

# %%
n = pos[0]
print('anchor (cx, cy, w, h):     ', np.round(anchors[0, n].asnumpy(), 2))
print('matched gt (corner):       ', label[owner[0], :4])
print('target offsets:            ', np.round(box_t[0, n].asnumpy(), 3))
print('decoded back (corner):     ', np.round(matched_boxes[n], 3))
RESULTS['decode_error'] = float(np.abs(matched_boxes[pos] - label[owner, :4]).max())

# %% [markdown]
# ## 3. Hard negative mining at 3:1
#
# With ~5400 anchors and a dozen positives, the cross-entropy over all anchors would be almost
# entirely background. SSD ranks the negatives by their cross-entropy (how confidently the
# network *wrongly* sees an object there) and keeps only the `3 × positives` worst ones.
#
# `MultiBoxLossTerms` does this inside the loss. To *see* which anchors it kept we ask autograd:
# only the anchors that enter the class loss receive a gradient on their logits.

# %%
terms = MultiBoxLossTerms(negative_mining_ratio=3)
logits = cls_preds.copy()
logits.attach_grad()
with autograd.record():
    cls_sum, box_sum, num_pos = terms(logits, box_preds, cls_t, box_t)
cls_sum.backward()
used = np.abs(logits.grad[0].asnumpy()).sum(axis=1) > 0
kept_neg = np.nonzero(used & (cls_np == 0))[0]
ce = -mx.nd.pick(mx.nd.log_softmax(cls_preds[0]), mx.nd.array(cls_np)).asnumpy()
neg = np.nonzero(cls_np == 0)[0]
order = neg[np.argsort(-ce[neg], kind='stable')]
P = int(num_pos.asscalar())
print(f'{P} positives, {len(neg)} negatives, {len(kept_neg)} negatives kept '
      f'(3 × {P} = {3 * P})')
RESULTS.update(num_pos=P, kept_negatives=int(len(kept_neg)), num_negatives=int(len(neg)),
               kept_are_hardest=bool(set(kept_neg) == set(order[:len(kept_neg)])))

sizes_per_map = [32, 16, 8, 4, 1]
bounds = np.cumsum([s * s * 4 for s in sizes_per_map])
fig, axes = plt.subplots(1, 3, figsize=(17, 5.3), gridspec_kw={'width_ratios': [1, 1.1, 0.9]})
axes[0].imshow(image.asnumpy())


def centre(idx):
    boxes = corner.asnumpy()[idx]
    return (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2


for k in order[:8]:
    rect(axes[0], corner[k].asnumpy(), 'red', lw=1.2, alpha=0.8)
axes[0].plot(*centre(kept_neg), 'x', color='red', ms=6, mew=2)
axes[0].plot(*centre(pos), 'o', color='lime', ms=6, mec='k')
axes[0].set_title(f'centres of the {P} positives (green) and {len(kept_neg)} kept negatives (red);'
                  '\nboxes: the 8 hardest negatives', fontsize=9)
axes[0].axis('off')
axes[1].semilogy(np.arange(len(order)), ce[order] + 1e-8, color='grey')
axes[1].axvspan(0, len(kept_neg), color='red', alpha=0.2, label=f'kept: top {len(kept_neg)}')
axes[1].set_xscale('symlog', linthresh=10)
axes[1].set_xlabel('negative anchors, hardest first')
axes[1].set_ylabel('cross-entropy (background)')
axes[1].legend()
axes[1].set_title('ranking of the negatives', fontsize=9)
maps = [f'{s}×{s}' for s in sizes_per_map]
layer = lambda idx: np.searchsorted(bounds, idx, side='right')  # noqa: E731
w = 0.4
axes[2].bar(np.arange(5) - w / 2, np.bincount(layer(pos), minlength=5), w, color='lime',
            edgecolor='k', label='positives')
axes[2].bar(np.arange(5) + w / 2, np.bincount(layer(kept_neg), minlength=5), w, color='red',
            edgecolor='k', label='hard negatives')
axes[2].set_xticks(range(5), maps)
axes[2].set_title('which feature maps they come from', fontsize=9)
axes[2].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. The loss terms
#
# * **confidence loss** `L_conf`: softmax cross-entropy over the positives and the kept negatives;
# * **localisation loss** `L_loc`: smooth L1 between predicted and target offsets, positives only;
# * total `L = (L_conf + α · L_loc) / N`, `N` = number of positives, `α = 1`.
#
# `MultiBoxLossTerms` returns the per-image sums and `N`; `SSDMultiBoxLoss` divides (by the
# batch's positives by default, GluonCV's choice — notebook 2 compares with per-image division).

# %%
sum_l, cls_l, box_l = ssd_loss(cls_preds, box_preds, cls_t, box_t)
all_neg_ce = float(ce[neg].sum())
c, b = cls_sum.asscalar(), box_sum.asscalar()
print(f'L_conf sum = {c:.3f} (positives {ce[pos].sum():.3f} + kept negatives '
      f'{ce[kept_neg].sum():.3f})')
print(f'L_loc  sum = {b:.3f},  N = {P}')
print(f'(L_conf + L_loc) / N = {(c + b) / P:.4f};  SSDMultiBoxLoss: {sum_l[0].asscalar():.4f}')
print(f'without mining the class sum would add {all_neg_ce - ce[kept_neg].sum():.1f} from '
      f'{len(neg) - len(kept_neg)} easy negatives')
RESULTS.update(loss=float(sum_l[0].asscalar()), loss_by_hand=float((c + b) / P))

# %% [markdown]
# ## 5. Non-maximum suppression
#
# At test time every anchor yields a box and a score per class; many overlap on the same object.
# Per class, NMS keeps the best-scoring box and drops every other box overlapping it with
# IoU > 0.45, then repeats; at most 200 boxes per image are kept (ssd.pytorch's `top_k=200`).
# Disabling NMS (`set_nms(nms_thresh=-1)`) shows the raw candidates.

# %%
net.set_nms(nms_thresh=-1)                        # no NMS: every (anchor, class) candidate
ids_raw, scores_raw, boxes_raw = net(x)
net.set_nms(nms_thresh=0.45, nms_topk=400, post_nms=200)
ids, scores, boxes = net(x)
raw_valid = int((scores_raw[0] > 0.01).sum().asscalar())
kept = int((ids[0] >= 0).sum().asscalar())
print(f'candidates with score > 0.01: {raw_valid}; after NMS: {kept} (at most 200: '
      f'{ids.shape[1]} rows)')
RESULTS.update(candidates=raw_valid, after_nms=kept, nms_rows=int(ids.shape[1]))

finite = np.isfinite(boxes_raw[0].asnumpy()).all(axis=1)      # an untrained net can overflow
top = np.argsort(-np.where(finite, scores_raw[0, :, 0].asnumpy(), -1))[:60]
thresh = float(np.sort(scores[0, :, 0].asnumpy())[::-1][min(9, kept - 1)]) if kept else 1.0
fig, axes = plt.subplots(1, 2, figsize=(12, 6))
draw_detections(image, boxes_raw[0].asnumpy()[top], scores_raw[0].asnumpy()[top],
                ids_raw[0].asnumpy()[top], classes, thresh=0, ax=axes[0])
axes[0].set_title('before NMS: the 60 best candidates', fontsize=10)
draw_detections(image, boxes[0], scores[0], ids[0], classes, thresh=thresh, ax=axes[1])
axes[1].set_title(f'after NMS (0.45): the 10 best of {kept}', fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 6. Measured vs. the write-up

# %%
ssd300 = get_preset('ssd_300_vgg16_atrous_voc')
n300 = sum(s * s * (len(sz) + len(r) - 1) for s, sz, r in
           zip((38, 19, 10, 5, 3, 1), anchor_sizes(ssd300), ssd300['ratios']))
claims = [
    ('default boxes (SSD300 / TinySSD)', '8732 (SSD300)', f'{n300} / {anchors.shape[1]}'),
    ('every object gets ≥ 1 positive', 'yes (best prior forced)',
     f"{RESULTS['every_object_matched']} (lowest best IoU {RESULTS['min_best_iou']:.2f})"),
    ('positive IoU threshold', '0.5', '0.5'),
    ('negatives : positives', '3 : 1', f"{RESULTS['kept_negatives']} : {RESULTS['num_pos']}"),
    ('kept negatives are the highest-loss ones', 'yes', str(RESULTS['kept_are_hardest'])),
    ('loss = (L_conf + L_loc) / N', 'N = positives',
     f"{RESULTS['loss']:.4f} = {RESULTS['loss_by_hand']:.4f} by hand"),
    ('NMS IoU / max detections', '0.45 / 200',
     f"0.45 / {RESULTS['nms_rows']} rows, {RESULTS['after_nms']} kept of "
     f"{RESULTS['candidates']} candidates"),
]
display(Markdown('| step | ssd.pytorch | this run |\n|---|---|---|\n' + '\n'.join(
    f'| {a} | {b} | {c} |' for a, b, c in claims)))

if os.environ.get('GLUON_SSD_NB_RESULTS'):   # a folder, set by the test suite
    import json
    Path(os.environ['GLUON_SSD_NB_RESULTS'], 'nb03_results.json').write_text(
        json.dumps(RESULTS, indent=1))

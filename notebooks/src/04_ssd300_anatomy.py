# %% [markdown]
# # 4 · Anatomy of SSD300
#
# The PyTorch blog post [*Everything You Need To Know About Torchvision's SSD
# Implementation*](https://pytorch.org/blog/torchvision-ssd-implementation/) dissects the SSD300
# VGG16 detector: the atrous VGG16 backbone, the six feature maps it predicts from, the L2
# normalisation of `conv4_3`, the default boxes and how ground truth is matched to them. This
# notebook takes the same walk through `gluon_ssd`'s `ssd_300_vgg16_atrous_voc`, measuring each
# claim on the network itself (our words and code; the post is the reference).
#
# The network has random weights here (no download: the ImageNet-pretrained VGG16 is optional),
# which is enough for every shape, box and matching below; only the feature *magnitudes* in
# section 3 would look different with pretrained weights, and we say where.
#
# `GLUON_SSD_QUICK=1` changes nothing of substance here (no training); it is accepted for
# uniformity with the other notebooks.

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

from gluon_ssd import SSDTargetGenerator, center_to_corner, get_model
from gluon_ssd.data import SSDValTransform, render_sample
from gluon_ssd.data.synthetic import SYNTHETIC_CLASSES
from gluon_ssd.model.zoo import anchor_sizes, get_preset
from gluon_ssd.viz import class_color, draw_detections

QUICK = os.environ.get('GLUON_SSD_QUICK', '0') == '1'
RESULTS = {'quick': QUICK}
mx.random.seed(0)
NAME = 'ssd_300_vgg16_atrous_voc'

# %% [markdown]
# ## 1. The network and an input image
#
# SSD300 takes a 300×300 image normalised with the ImageNet mean and standard deviation. As input
# we render an image of the package's synthetic dataset directly at 300×300 (one with objects of
# very different sizes, picked deterministically).

# %%
net = get_model(NAME)
net.initialize()
preset = get_preset(NAME)


def pick_image(min_objects=4, size=300):
    """First validation image (seed 0) with >= min_objects objects spanning a wide size range."""
    for index in range(200):
        img, label, _ = render_sample(0, index, size=size, split='val')
        if len(label) >= min_objects:
            sides = np.sqrt((label[:, 2] - label[:, 0]) * (label[:, 3] - label[:, 1]))
            if sides.max() / sides.min() > 4:
                return index, img, label
    raise RuntimeError('no suitable image found')


index, image, label = pick_image()
x, _ = SSDValTransform(300, 300)(mx.nd.array(image, dtype='uint8'), label)
x = x.expand_dims(0)
print(f'val image {index}: {len(label)} objects, input {x.shape}')
fig, ax = plt.subplots(figsize=(4.5, 4.5))
draw_detections(image, np.zeros((0, 4)), np.zeros(0), np.zeros(0), SYNTHETIC_CLASSES,
                gt_bboxes=label[:, :4], gt_labels=label[:, 4], ax=ax)
plt.show()

# %% [markdown]
# ## 2. Six feature maps: 38, 19, 10, 5, 3, 1
#
# VGG16 is cut after its fifth block; `pool5` becomes 3×3 with stride 1 (so the map stays 19×19),
# and the fully connected `fc6`/`fc7` become convolutions — `fc6` a 3×3 convolution with dilation 6
# ("atrous"), which sees a wide window without extra parameters. SSD predicts from `conv4_3`
# (38×38, after L2 normalisation) and `fc7` (19×19), then from four extra blocks (1×1 then 3×3
# convolutions) that shrink the map to 10, 5, 3 and 1. `net.features(x)` returns the six maps.

# %%
tic = time.time()
feats = net.features(x)
mx.nd.waitall()
print(f'backbone forward: {time.time() - tic:.2f} s')
map_sizes = [f.shape[2] for f in feats]
anchor_layers = [gen(f) for gen, f in zip(net.anchor_generators, feats)]
sizes = anchor_sizes(preset)
rows = []
for k, (f, anc) in enumerate(zip(feats, anchor_layers)):
    rows.append((k, f.shape[1], f.shape[2], net.num_anchors[k], anc.shape[1],
                 f'{sizes[k][0]:.0f}, {sizes[k][1]:.0f}', preset['steps'][k],
                 ', '.join(f'{r:g}' for r in preset['ratios'][k])))
total = sum(r[4] for r in rows)
table = ('| map | channels | size | boxes / location | boxes | ratio-1 sizes (px) | step (px) | '
         'aspect ratios |\n|---|---|---|---|---|---|---|---|\n')
table += '\n'.join('| ' + ' | '.join(str(v) for v in r) + ' |' for r in rows)
table += f'\n| **total** | | | | **{total}** | | | |'
display(Markdown(table))
RESULTS.update(map_sizes=map_sizes, boxes_per_location=list(net.num_anchors), num_anchors=total,
               channels=[int(f.shape[1]) for f in feats])

# %% [markdown]
# The feature maps themselves, for the one image (the mean activation over channels; random
# weights, so only the resolution matters): each map is a coarser grid over the same image.

# %%
fig, axes = plt.subplots(1, 7, figsize=(17, 2.8))
axes[0].imshow(image)
axes[0].set_title('input 300×300')
for ax, f, s in zip(axes[1:], feats, map_sizes):
    ax.imshow(f[0].mean(axis=0).asnumpy(), cmap='viridis')
    ax.set_title(f'{s}×{s}, {f.shape[1]} ch')
for ax in axes:
    ax.axis('off')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 3. L2 normalisation of conv4_3
#
# `conv4_3` sits early in the network and its activations have a different scale from the deeper
# maps; the SSD paper (and the post) rescale it: every spatial position's 512-channel vector is
# divided by its L2 norm, then multiplied by a learnable per-channel scale initialised to 20
# (`gluon_ssd.L2Normalization(512, initial=20)`). Below we rebuild `conv4_3` from the backbone's
# own stages and compare per-position norms before and after the normalisation, and with `fc7`.
#
# With random weights the raw norms are whatever the initialisation gives; with ImageNet-trained
# VGG weights (the setting of the paper) the raw `conv4_3` norms are far larger than those of
# later layers, which is why the paper added the layer. The *after* picture — every position at
# norm 20 exactly, until training changes the scales — holds in both cases.

# %%
feat = net.features
h = mx.nd.broadcast_mul(x, feat.init_scale.data())   # undo the std normalisation (VGG's input)
for stage in feat.stages[:3]:
    h = mx.nd.Pooling(stage(h), pool_type='max', kernel=(2, 2), stride=(2, 2),
                      pooling_convention='full')
conv4_3 = feat.stages[3](h)
normed = feat.norm4(conv4_3)
norm_raw = mx.nd.norm(conv4_3, axis=1)[0].asnumpy()
norm_l2 = mx.nd.norm(normed, axis=1)[0].asnumpy()
norm_fc7 = mx.nd.norm(feats[1], axis=1)[0].asnumpy()
assert np.allclose(normed.asnumpy(), feats[0].asnumpy(), atol=1e-5)  # the map SSD predicts from

fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
vmax = max(norm_raw.max(), norm_fc7.max())     # one colour scale for the three maps
for ax, m, title in zip(axes[:3], (norm_raw, norm_l2, norm_fc7),
                        ('conv4_3 raw', 'conv4_3 after L2Normalization', 'fc7')):
    im = ax.imshow(m, cmap='magma', vmin=0, vmax=vmax)
    ax.set_title(f'{title}\nper-position norm, mean {m.mean():.3g}')
    ax.axis('off')
    fig.colorbar(im, ax=ax, fraction=0.046)
axes[3].hist(np.log10(norm_raw.ravel() + 1e-12), bins=40, alpha=0.6, density=True,
             label='conv4_3 raw')
axes[3].hist(np.log10(norm_fc7.ravel() + 1e-12), bins=40, alpha=0.6, density=True, label='fc7')
axes[3].axvline(np.log10(20), color='k', ls='--', label='after L2Norm (20)')
axes[3].set_xlabel('log10 of per-position L2 norm')
axes[3].legend(fontsize=8)
plt.tight_layout()
plt.show()
print(f'conv4_3 norms: raw mean {norm_raw.mean():.4g}, after L2Norm min {norm_l2.min():.4f} '
      f'max {norm_l2.max():.4f}; fc7 mean {norm_fc7.mean():.4g}')
RESULTS.update(l2_norm_min=float(norm_l2.min()), l2_norm_max=float(norm_l2.max()),
               conv4_3_raw_mean=float(norm_raw.mean()), fc7_mean=float(norm_fc7.mean()),
               l2_scale_init=float(feat.norm4.scale.data().mean().asscalar()))

# %% [markdown]
# ## 4. Default boxes, layer by layer
#
# Each map gets its own boxes: at every location, a box of size `s_k` and one of
# `sqrt(s_k · s_{k+1})` with aspect ratio 1, then `s_k` with the other ratios (2 and ½ everywhere,
# 3 and ⅓ on the middle maps). The sizes grow from 30 px on the 38×38 map to 264 px on the 1×1 map,
# so each map specialises in a range of object sizes. Drawn: the boxes of the location nearest the
# image centre (colours), and the grid of all box centres of that map (dots).

# %%
fig, axes = plt.subplots(2, 3, figsize=(14, 9.5))
for k, (ax, anc, s) in enumerate(zip(axes.ravel(), anchor_layers, map_sizes)):
    a = anc[0].asnumpy()
    A = net.num_anchors[k]
    cell = (s // 2) * s + s // 2
    ax.imshow(image)
    centres = a[::A, :2]
    ax.plot(centres[:, 0], centres[:, 1], '.', ms=1.5 if s > 10 else 4, color='white', alpha=0.7)
    for j, (cx, cy, w, hh) in enumerate(a[cell * A:(cell + 1) * A]):
        ax.add_patch(plt.Rectangle((cx - w / 2, cy - hh / 2), w, hh, fill=False, lw=2,
                                   edgecolor=plt.cm.tab10(j)))
    ax.set_xlim(-60, 360)
    ax.set_ylim(360, -60)
    ax.set_title(f'{s}×{s} map: {A} boxes/location, {anc.shape[1]} boxes', fontsize=10)
    ax.axis('off')
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. Ground truth matched to default boxes
#
# Training targets come from matching (`SSDTargetGenerator`, notebook 3 has the details): each
# ground-truth box first takes its best-overlapping default box, then every default box with
# IoU ≥ 0.5 with some ground truth is matched to it. Drawn: each object's matched default boxes in
# its colour, and on the right which feature map they come from. Small objects are matched on the
# high-resolution maps, large ones on the coarse maps — the multi-scale design at work.

# %%
anchors = mx.nd.concat(*anchor_layers, dim=1)
gt_boxes = mx.nd.array(label[None, :, :4])
gt_ids = mx.nd.array(label[None, :, 4:5])
placeholder = mx.nd.zeros((1, anchors.shape[1], net.num_classes + 1))
cls_t, box_t, _ = SSDTargetGenerator()(anchors, placeholder, gt_boxes, gt_ids)
pos = np.nonzero(cls_t[0].asnumpy() > 0)[0]
# which ground truth each positive anchor was matched to: its best IoU among the boxes of its class
corner = center_to_corner(mx.nd, anchors)[0]
iou = mx.nd.contrib.box_iou(corner, gt_boxes[0]).asnumpy()           # (N, M)
same_class = (cls_t[0].asnumpy()[:, None] - 1) == label[None, :, 4]
owner = np.where(same_class, iou, -1).argmax(axis=1)
layer_of = np.searchsorted(np.cumsum([a.shape[1] for a in anchor_layers]), np.arange(len(owner)),
                           side='right')

fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 6), gridspec_kw={'width_ratios': [1, 1.1]})
ax.imshow(image)
for n in pos:
    cx, cy, w, hh = anchors[0, n].asnumpy()
    cls = label[owner[n], 4]
    ax.add_patch(plt.Rectangle((cx - w / 2, cy - hh / 2), w, hh, fill=False, lw=1,
                               edgecolor=class_color(cls), alpha=0.8))
for g, b in enumerate(label):
    ax.add_patch(plt.Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, lw=2.5,
                               ls='--', edgecolor='white'))
    ax.text(b[0], b[1] - 2, f'gt {g}', color='white', fontsize=8, va='bottom',
            bbox=dict(facecolor=class_color(b[4]), alpha=0.8, pad=1, edgecolor='none'))
ax.set_title(f'{len(pos)} of {anchors.shape[1]} default boxes matched (solid), '
             'ground truth dashed', fontsize=10)
ax.axis('off')

counts = np.zeros((len(label), len(anchor_layers)), int)
for n in pos:
    counts[owner[n], layer_of[n]] += 1
bottom = np.zeros(len(anchor_layers))
for g in range(len(label)):
    side = np.sqrt((label[g, 2] - label[g, 0]) * (label[g, 3] - label[g, 1]))
    bx.bar([f'{s}×{s}' for s in map_sizes], counts[g], bottom=bottom, color=class_color(label[g, 4]),
           edgecolor='k', label=f'gt {g}: {SYNTHETIC_CLASSES[int(label[g, 4])]}, ~{side:.0f}px')
    bottom += counts[g]
bx.set_xlabel('feature map')
bx.set_ylabel('matched default boxes')
bx.legend(fontsize=8)
plt.tight_layout()
plt.show()
RESULTS.update(num_positives=int(len(pos)), positives_per_map=counts.sum(axis=0).tolist(),
               objects=len(label))

# %% [markdown]
# ## 6. Measured vs. the post

# %%
claims = [
    ('feature map sizes', '38, 19, 10, 5, 3, 1', ', '.join(map(str, RESULTS['map_sizes']))),
    ('boxes per location', '4, 6, 6, 6, 4, 4', ', '.join(map(str, RESULTS['boxes_per_location']))),
    ('default boxes in total', '8732', RESULTS['num_anchors']),
    ('channels of the six maps', '512, 1024, 512, 256, 256, 256',
     ', '.join(map(str, RESULTS['channels']))),
    ('conv4_3 L2 norm scale (initial)', '20', f"{RESULTS['l2_scale_init']:g}"),
    ('per-position norm after L2Norm', '= the scale (20)',
     f"{RESULTS['l2_norm_min']:.3f} – {RESULTS['l2_norm_max']:.3f}"),
    ('positives for this image', 'every object ≥ 1 box',
     f"{RESULTS['num_positives']} boxes for {RESULTS['objects']} objects"),
]
display(Markdown('| quantity | post / paper | this run |\n|---|---|---|\n' + '\n'.join(
    f'| {a} | {b} | {c} |' for a, b, c in claims)))
print('Note: torchvision chooses its default-box sizes from scales 0.07–1.05 of the image; this '
      'package follows GluonCV (30, 60, 111, 162, 213, 264, 315 px), so the box counts agree but '
      'the sizes differ slightly.')

if os.environ.get('GLUON_SSD_NB_RESULTS'):   # a folder, set by the test suite
    import json
    Path(os.environ['GLUON_SSD_NB_RESULTS'], 'nb04_results.json').write_text(
        json.dumps(RESULTS, indent=1))

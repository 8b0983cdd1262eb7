# %% [markdown]
# # 5 · Your own data: train, evaluate, predict, export
#
# The end-to-end workflow on a VOC-format folder, with the package's command-line tools exactly as
# you would type them in a shell:
#
# 1. look at the data;
# 2. `train_ssd.py` — train the from-scratch SSD on it (the default network and recipe);
# 3. `eval_ssd.py` — VOC07 mAP of the trained model's final epoch;
# 4. `python -m gluon_ssd.predict` — detections on image files (JSON + pictures);
# 5. `python -m gluon_ssd.export` — a self-contained symbol graph + weights, reloaded with plain
#    MXNet and checked against the trained network.
#
# **The data.** A VOC-format folder is `Annotations/*.xml`, `JPEGImages/*.jpg` and
# `ImageSets/Main/<split>.txt` (one image id per line); class names are read from the XML files
# (or from `classes.txt` if present). We use the 200 raccoon photos in `../shared/data/raccoon`
# beside the repository when they are there (160 train / 40 test), else the built-in synthetic
# set, which has the same layout. Point `DATA` at your own folder to train on your data.
#
# Quick mode (`GLUON_SSD_QUICK=1`) trains on 8 images for one epoch: every step runs, the numbers
# are meaningless. Full mode trains with the default recipe: `scratch_ssd` at 192 px for 1040
# optimizer steps, which is 104 epochs of the 160 raccoon photos, validated six times (measured on
# 2 CPU cores: 279 s of training, 291 s for the whole notebook; final-epoch VOC07 mAP 0.742 on the
# 40 test photos, 0.782 with the VOC area metric).

# %%
import json
import os
import subprocess
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
from IPython.display import Image, Markdown, display

from gluon_ssd.data import synthetic_voc
from gluon_ssd.data.build import open_datasets
from gluon_ssd.viz import draw_detections

QUICK = os.environ.get('GLUON_SSD_QUICK', '0') == '1'
RESULTS = {'quick': QUICK}
REPO = Path(gluon_ssd.__file__).resolve().parents[1]
SHARED = Path(os.environ.get('GLUON_SSD_SHARED_DATA', REPO.parent / 'shared' / 'data'))

if (SHARED / 'raccoon' / 'Annotations').is_dir():
    DATA, TRAIN_SPLIT, VAL_SPLIT = SHARED / 'raccoon', 'train', 'test'
else:
    DATA = synthetic_voc(num_train=64, num_val=32) if QUICK else synthetic_voc(num_train=256,
                                                                               num_val=64)
    TRAIN_SPLIT, VAL_SPLIT = 'train', 'val'
RUN = Path('runs') / ('nb05_quick' if QUICK else 'nb05_full')
print('data:', DATA)
print('run directory:', RUN)
RESULTS['dataset'] = DATA.name

# the command-line tools run in a child process that must find the package
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))


def shell(*args):
    """Run a command like a shell would, print it and its output, return its stdout."""
    cmd = [str(a) for a in args]
    shown = ' '.join(cmd).replace(sys.executable, 'python').replace(str(REPO) + '/', '')
    print('$', shown)
    tic = time.time()
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    tail = '\n'.join(out.stderr.strip().splitlines()[-8:])
    if tail:
        print(tail)
    if out.returncode != 0:
        raise RuntimeError(f'command failed with exit status {out.returncode}')
    print(f'({time.time() - tic:.0f} s)')
    return out.stdout

# %% [markdown]
# ## 1. The data

# %%
train_set, val_set, classes = open_datasets('voc', DATA, TRAIN_SPLIT, VAL_SPLIT)
sizes = np.array([train_set[i][0].shape[:2] for i in range(min(len(train_set), 40))])
print(f'{len(train_set)} training / {len(val_set)} validation images, classes {classes}')
print(f'image sizes (first 40): heights {sizes[:, 0].min()}–{sizes[:, 0].max()}, '
      f'widths {sizes[:, 1].min()}–{sizes[:, 1].max()}')
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
for ax, i in zip(axes, range(4)):
    img, label = train_set[i]
    draw_detections(img, np.zeros((0, 4)), np.zeros(0), np.zeros(0), classes,
                    gt_bboxes=label[:, :4], gt_labels=label[:, 4], ax=ax)
    ax.set_title(f'{train_set.ids[i] if hasattr(train_set, "ids") else i}: '
                 f'{img.shape[1]}×{img.shape[0]}', fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. Train
#
# Without `--network` and `--pretrained`, `train_ssd.py` trains `scratch_ssd`: BatchNorm after
# every convolution of the backbone, extra layers and heads, anchors from 6 % to 90 % of the
# image, Adam with a cosine schedule, the SSD paper's colour distortion, a length in optimizer
# steps (see the README's *Training from scratch*). `train_ssd.py` takes GluonCV's flags (`--network`, `--data-shape`, `--batch-size`,
# `--epochs`, `--lr`, ...). With `--dataset voc` and a single VOC folder as `--dataset-root`, the
# splits are the names of the `ImageSets/Main` files. The run directory receives `config.json`, `train.log`,
# `metrics.jsonl`, `best.params`/`last.params`, `curves.png` and `detections.png`. It trains on the
# CPU unless you pass `--gpus 0`.

# %%
args = [sys.executable, REPO / 'train_ssd.py', '--dataset', 'voc',
        '--dataset-root', DATA, '--train-split', TRAIN_SPLIT, '--val-split', VAL_SPLIT,
        '--out-dir', RUN, '--no-progress', '--num-workers', '0']
if QUICK:
    args += ['--epochs', '1', '--num-train', '8', '--num-val', '4', '--batch-size', '4']
tic = time.time()
shell(*args)
RESULTS['train_seconds'] = round(time.time() - tic, 1)
records = [json.loads(line) for line in (RUN / 'metrics.jsonl').read_text().splitlines()]
print('last epoch:', {k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in records[-1].items()})
display(Image(filename=str(RUN / 'curves.png'), width=900))
display(Image(filename=str(RUN / 'detections.png'), width=900))

# %% [markdown]
# ## 3. Evaluate
#
# `eval_ssd.py --run-dir RUN` rebuilds the network from the run's `config.json`, loads its
# `best.params` and evaluates on the run's validation split (override with `--dataset`,
# `--dataset-root`, `--val-split`). Here the validation split is also the test split, and picking
# the best of 104 epochs on it flatters the number, so we evaluate the **final** epoch's weights
# with `--params RUN/last.params`: the honest headline. Prediction and export below use the same
# weights (`--params`, default `best.params` with `--run-dir`).
# Boxes are compared in the original image pixels. The JSON result goes to stdout (and `--out`),
# a per-class AP table to stderr.

# %%
eval_args = ['--run-dir', RUN, '--params', RUN / 'last.params', '--metrics', 'voc07,voc',
             '--out', RUN / 'eval.json']
if QUICK:
    eval_args += ['--num-val', '4']
result = json.loads(shell(sys.executable, REPO / 'eval_ssd.py', *eval_args))
print(json.dumps(result['map'], indent=1))
RESULTS['map'] = result['map']
RESULTS['eval_images'] = result['num_images']

# %% [markdown]
# ## 4. Predict on image files
#
# `python -m gluon_ssd.predict IMAGES --run-dir RUN` resizes each image to the network input,
# detects, maps the boxes back to the original image and prints JSON; `--out-dir` also gets an
# annotated PNG per image. Here: three validation images.

# %%
val_ids = (DATA / 'ImageSets' / 'Main' / f'{VAL_SPLIT}.txt').read_text().split()[:3]
images = [next(p for p in (DATA / 'JPEGImages').glob(i + '.*')) for i in val_ids]
preds = json.loads(shell(sys.executable, '-m', 'gluon_ssd.predict', *images, '--run-dir', RUN,
                         '--params', RUN / 'last.params', '--thresh', '0.3',
                         '--out-dir', RUN / 'predictions'))
for p in preds:
    best = sorted(p['detections'], key=lambda d: -d['score'])[:3]
    print(Path(p['image']).name, f"{p['width']}x{p['height']}:",
          [(d['class'], round(d['score'], 2), [round(v) for v in d['bbox']]) for d in best])
fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 4.5))
for ax, path in zip(np.atleast_1d(axes), images):
    ax.imshow(plt.imread(RUN / 'predictions' / (path.stem + '.png')))
    ax.axis('off')
plt.tight_layout()
plt.show()
RESULTS['predicted_images'] = len(preds)

# %% [markdown]
# ## 5. Export and reload
#
# `python -m gluon_ssd.export --run-dir RUN --out PREFIX` writes the inference graph (decoding and
# NMS included) as `PREFIX-symbol.json`, its weights as `PREFIX-0000.params` and what a consumer
# needs (classes, input size, normalisation) as `PREFIX-meta.json`. Reloading needs only MXNet:
# `mx.gluon.SymbolBlock.imports`. We check that the reloaded graph gives the same detections as
# the trained network loaded by the package.

# %%
prefix = RUN / 'export' / 'detector'
files = json.loads(shell(sys.executable, '-m', 'gluon_ssd.export', '--run-dir', RUN,
                         '--params', RUN / 'last.params', '--out', prefix))
print(json.dumps(files, indent=1))
meta = json.loads(Path(f'{prefix}-meta.json').read_text())
print('meta:', json.dumps(meta)[:300])

deployed = mx.gluon.SymbolBlock.imports(f'{prefix}-symbol.json', ['data'], f'{prefix}-0000.params')
from gluon_ssd.model.io import input_transform, load_model   # noqa: E402

net, info = load_model(params=str(RUN / 'last.params'), run_dir=str(RUN))
img, label = val_set[0]
x, _ = input_transform(info)(img, label)
x = x.expand_dims(0)
ids_a, scores_a, boxes_a = net(x)
ids_b, scores_b, boxes_b = deployed(x)
keep = ids_a[0, :, 0].asnumpy() >= 0
diff = float(np.abs(boxes_a.asnumpy()[0][keep] - boxes_b.asnumpy()[0][keep]).max()) \
    if keep.any() else 0.0
same_ids = bool((ids_a.asnumpy() == ids_b.asnumpy()).all())
print(f'reloaded graph vs trained network: same ids {same_ids}, max box difference '
      f'{diff:.2e} px, max score difference '
      f'{float(np.abs(scores_a.asnumpy() - scores_b.asnumpy()).max()):.2e}')
RESULTS.update(export_same_ids=same_ids, export_max_box_diff=diff)

# %% [markdown]
# ## Summary of this run

# %%
maps = RESULTS['map']
display(Markdown(
    '| step | result |\n|---|---|\n'
    f"| data | {RESULTS['dataset']}: {len(train_set)} train / {len(val_set)} val images, "
    f"{len(classes)} class(es) |\n"
    f"| training | {records[-1]['epoch'] + 1} epoch(s) in {RESULTS['train_seconds']} s |\n"
    f"| VOC07 mAP ({RESULTS['eval_images']} images) | {maps.get('voc07', float('nan')):.3f} |\n"
    f"| VOC (area) mAP | {maps.get('voc', float('nan')):.3f} |\n"
    f"| predictions | {RESULTS['predicted_images']} images → JSON + PNG |\n"
    f"| export → reload | same ids: {same_ids}, max box difference {diff:.1e} px |\n"
    + ('\n*QUICK mode: trained on 8 images for one epoch — numbers are not meaningful.*'
       if QUICK else '')))

if os.environ.get('GLUON_SSD_NB_RESULTS'):   # a folder, set by the test suite
    Path(os.environ['GLUON_SSD_NB_RESULTS'], 'nb05_results.json').write_text(
        json.dumps(RESULTS, indent=1))

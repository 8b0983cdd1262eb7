# %% [markdown]
# # 6 · Fine-tune a pretrained detector on your data
#
# Training a detector from nothing needs many labelled images and many epochs. A detector that
# was already trained on a large set (Pascal VOC's 20 classes, say) has learnt features, box
# regressors and a notion of "object vs background" that carry over to new classes; starting from
# it and training briefly on a few hundred of your own images usually beats training the same
# network from scratch for the same time.
#
# **What `train_ssd.py --pretrained` does.** It builds the trained detector (its network and
# input size come with it, so `--network`/`--data-shape` are not needed), loads its weights and
# then *resets its classes* to the classes of your dataset: the class predictors are rebuilt for
# the new number of classes; the background and every class whose **name** is in both lists
# keep their trained predictors, the others start fresh. The features, the extra
# layers and the box predictors are kept as they are. Then it trains as usual. The source is
# either
#
# * a zoo name such as `ssd_512_mobilenet1.0_voc` — GluonCV's trained weights, downloaded into
#   `$MXNET_HOME/models` (default `~/.mxnet/models`) the first time; or
# * a `.params` file of a gluon-ssd model with its meta file (a run directory's `best.params`
#   has `model.json` beside it).
#
# **Two modes.** On your machine, online, this notebook fine-tunes GluonCV's
# `ssd_512_mobilenet1.0_voc` on the raccoon photos. When that detector cannot be downloaded
# (offline), and always in quick mode (`GLUON_SSD_QUICK=1`, what CI runs, without network), it
# first trains its own stand-in "pretrained" detector — TinySSD on the built-in synthetic shapes —
# and fine-tunes from that run's `best.params`. The mode is chosen in section 1 and printed.
# `GLUON_SSD_NB06_PRETRAINED=NAME_OR_PATH` picks another zoo detector or a `.params` file.
#
# The data: the raccoon photos in `../shared/data/raccoon` (VOC format, 160 train / 40 test) when
# they are there, else the built-in synthetic set.

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
import numpy as np
from IPython.display import Image, Markdown, display

from gluon_ssd.data import synthetic_voc
from gluon_ssd.data.build import open_datasets
from gluon_ssd.model.io import is_zoo_detector, load_model
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
RUNS = Path('runs') / ('nb06_quick' if QUICK else 'nb06_full')
train_set, val_set, classes = open_datasets('voc', DATA, TRAIN_SPLIT, VAL_SPLIT)
print(f'data: {DATA}  ({len(train_set)} {TRAIN_SPLIT} / {len(val_set)} {VAL_SPLIT} images, '
      f'classes {classes})')
print('runs go to:', RUNS)
RESULTS.update(dataset=DATA.name, classes=list(classes))

# the command-line tools run in a child process that must find the package
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))


def shell(*args, check=True):
    """Run a command like a shell would, print it and the end of its log, return its stdout
    (``None`` when it failed and ``check`` is false)."""
    cmd = [str(a) for a in args]
    shown = ' '.join(cmd).replace(sys.executable, 'python').replace(str(REPO) + '/', '')
    print('$', shown)
    tic = time.time()
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    tail = '\n'.join(out.stderr.strip().splitlines()[-8:])
    if tail:
        print(tail)
    print(f'({time.time() - tic:.0f} s)')
    if out.returncode != 0:
        if check:
            raise RuntimeError(f'command failed with exit status {out.returncode}')
        return None
    return out.stdout


def last_record(run):
    """The last line of a run's ``metrics.jsonl`` (the final epoch)."""
    return json.loads((Path(run) / 'metrics.jsonl').read_text().splitlines()[-1])

# %% [markdown]
# ## 1. The pretrained detector
#
# The default is GluonCV's `ssd_512_mobilenet1.0_voc` (MobileNet 1.0 base, 512 px input, trained
# on VOC07+12). In Python the same detector is one call; the weights are fetched into the model
# store on first use:
#
# ```python
# net = gluon_ssd.get_model('ssd_512_mobilenet1.0_voc', pretrained=True)   # 20 VOC classes
# net.reset_class(['raccoon'])                                             # 1 class, new predictor
# ```
#
# The next cell tries the first line (full mode). If it fails — no network, or quick mode, which
# never downloads — the notebook falls back to training its own stand-in detector.

# %%
DEFAULT_DETECTOR = 'ssd_512_mobilenet1.0_voc'
override = os.environ.get('GLUON_SSD_NB06_PRETRAINED', '').strip()
PRETRAINED = override or DEFAULT_DETECTOR
zoo_net = None
if is_zoo_detector(PRETRAINED):
    if QUICK and not override:
        MODE, why = 'self-trained', 'quick mode never downloads'
    else:
        try:
            zoo_net = gluon_ssd.get_model(PRETRAINED, pretrained=True)
            MODE, why = 'zoo', f"GluonCV's trained weights of {PRETRAINED}"
        except Exception as exc:   # offline, or the model store is unreachable
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f'could not get {PRETRAINED}: {type(exc).__name__}: {first[:300]}')
            MODE, why = 'self-trained', f'{PRETRAINED} is not available'
elif Path(PRETRAINED).expanduser().is_file():
    PRETRAINED = str(Path(PRETRAINED).expanduser())
    MODE, why = 'file', 'a .params file given in GLUON_SSD_NB06_PRETRAINED'
else:
    raise ValueError(f'GLUON_SSD_NB06_PRETRAINED={PRETRAINED}: neither a zoo detector name '
                     f'nor a file')
print(f'MODE = {MODE!r}  ({why})')
RESULTS['mode'] = MODE

# %% [markdown]
# ### The stand-in (self-trained mode only)
#
# TinySSD trained on the synthetic shapes (ellipse, rectangle, triangle, cross, ring, star) with
# `train_ssd.py --dataset synthetic`. Its run directory holds `best.params` and, beside it, the
# meta file `model.json` (network, input size, classes, normalisation), which is all
# `--pretrained` needs. It knows nothing about raccoons — its features have only seen coloured
# shapes — so expect a much smaller head start than from a real VOC detector.

# %%
PRE_RUN = RUNS / 'pretrain'
if MODE == 'self-trained':
    pre_args = [sys.executable, REPO / 'train_ssd.py', '--network', 'tiny_ssd',
                '--dataset', 'synthetic', '--out-dir', PRE_RUN, '--no-progress', '-j', '0']
    if QUICK:
        pre_args += ['--num-train', '32', '--num-val', '8', '--epochs', '2', '--batch-size', '8']
    else:
        pre_args += ['--num-train', '1000', '--num-val', '100', '--epochs', '12']
    tic = time.time()
    shell(*pre_args)
    RESULTS['pretrain_seconds'] = round(time.time() - tic, 1)
    RESULTS['pretrain_map'] = last_record(PRE_RUN)['map']
    PRETRAINED = str(PRE_RUN / 'best.params')
    print('the stand-in detector:', PRETRAINED)
    print((PRE_RUN / 'model.json').read_text())
else:
    print(f'not needed: MODE is {MODE!r}, fine-tuning {PRETRAINED}')
RESULTS['pretrained'] = PRETRAINED

# %% [markdown]
# ### What resetting the classes does, in Python
#
# Before training, look at the detector's class predictors and reset them to the dataset's
# classes the way `train_ssd.py --pretrained` does: `reset_class(new_classes, reuse_weights=...,
# keep_background=True)` with the names found in both lists. Each class predictor is a 3×3 convolution with
# `anchors × (classes + 1)` output channels (channel `a·K + c` scores class `c` of anchor `a`,
# `c = 0` the background), so its first dimension shrinks or grows. The rows of the shared names
# and of the background are copied. Even with no shared name at all (raccoons vs shapes) the
# background rows are kept: "no object here" is what a trained detector knows best. (GluonCV's
# `reset_class` without `reuse_weights` starts the whole class predictor fresh:
# `keep_background=None` gives that behaviour.)

# %%
if zoo_net is not None:
    net = zoo_net
else:
    net, _ = load_model(pretrained=PRETRAINED, hybridize=False)
old_classes = list(net.classes)
old_w = [p.predictor.weight.data().asnumpy() for p in net.class_predictors]
keep = [c for c in classes if c in old_classes]
net.reset_class(list(classes), reuse_weights=keep or None, keep_background=True)
new_w = [p.predictor.weight.data().asnumpy() for p in net.class_predictors]
old_k, new_k = len(old_classes) + 1, len(classes) + 1
background_kept = all(np.array_equal(a[0::old_k], b[0::new_k]) for a, b in zip(old_w, new_w))
print(f'classes: {len(old_classes)} {old_classes[:6]}{" ..." if len(old_classes) > 6 else ""}'
      f'\n      -> {len(classes)} {list(classes)}')
print(f'same-name classes keeping their predictors: {keep or "none"}')
print('class predictor weights per layer:',
      ', '.join(f'{a.shape[0]} -> {b.shape[0]}' for a, b in zip(old_w, new_w)))
print('background rows copied on every layer:', background_kept,
      '(expected' if background_kept else '(UNEXPECTED', 'with',
      f'{len(keep)} shared name(s))')
RESULTS.update(pretrained_classes=len(old_classes), reused_classes=keep,
               reset_background_kept=background_kept)
del net, zoo_net

# %% [markdown]
# ## 2. Fine-tune
#
# `--pretrained` with the usual data flags. The run directory is an ordinary training run:
# `config.json`, `train.log`, `metrics.jsonl`, `best.params`, `curves.png`, `detections.png` and
# `model.json`, whose classes are now the dataset's. Quick mode: 8 images, one epoch.

# %%
FT_RUN = RUNS / 'finetune'
if QUICK:
    schedule = ['--epochs', '1', '--num-train', '8', '--num-val', '4', '--batch-size', '4']
elif MODE == 'zoo':          # a 512 px MobileNet SSD on the CPU: a few short epochs
    schedule = ['--epochs', '4', '--batch-size', '8']
else:
    schedule = ['--epochs', '10']
data_args = ['--dataset', 'voc', '--dataset-root', DATA, '--train-split', TRAIN_SPLIT,
             '--val-split', VAL_SPLIT, '-j', '0', '--no-progress']
tic = time.time()
shell(sys.executable, REPO / 'train_ssd.py', '--pretrained', PRETRAINED, *data_args, *schedule,
      '--out-dir', FT_RUN)
RESULTS['finetune_seconds'] = round(time.time() - tic, 1)
ft_last = last_record(FT_RUN)
RESULTS['finetune_map'] = ft_last['map']
RESULTS['epochs'] = ft_last['epoch'] + 1
print(f"fine-tuned for {RESULTS['epochs']} epoch(s) in {RESULTS['finetune_seconds']} s, "
      f"final VOC07 mAP {ft_last['map']:.4f}")
ft_meta = json.loads((FT_RUN / 'model.json').read_text())
print('model.json:', json.dumps(ft_meta))
RESULTS['finetune_meta'] = ft_meta
display(Image(filename=str(FT_RUN / 'curves.png'), width=900))
display(Image(filename=str(FT_RUN / 'detections.png'), width=900))

# %% [markdown]
# ## 3. The same network from scratch
#
# The comparison: the same network, input size, data, schedule and hyperparameters, but without
# the detector's weights. For a zoo detector "scratch" means GluonCV's usual start — the ImageNet
# backbone (`--pretrained-base`, on by default for those networks) and fresh SSD layers; TinySSD
# has no ImageNet backbone and starts from random weights. The headline number is the final
# epoch's VOC07 mAP on the validation split (the last record of `metrics.jsonl`).
#
# What to expect: from a VOC detector (which has seen thousands of animals and photos) the
# fine-tuned run should be well ahead after a few epochs. From the synthetic stand-in the head
# start is small or nil on photos: its features only know flat coloured shapes, and with no class
# name in common its whole class predictor is replaced. It is the same mechanism with a weak
# source; on the synthetic fallback data (same classes) the stand-in does transfer.

# %%
SCRATCH_RUN = RUNS / 'scratch'
tic = time.time()
shell(sys.executable, REPO / 'train_ssd.py', '--network', ft_meta['network'],   # as fine-tuned
      '--data-shape', ft_meta['data_shape'], *data_args, *schedule, '--out-dir', SCRATCH_RUN)
RESULTS['scratch_seconds'] = round(time.time() - tic, 1)
RESULTS['scratch_map'] = last_record(SCRATCH_RUN)['map']

curves = {}
for label, run in (('fine-tuned', FT_RUN), ('from scratch', SCRATCH_RUN)):
    recs = [json.loads(line) for line in (run / 'metrics.jsonl').read_text().splitlines()]
    curves[label] = recs
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
for label, recs in curves.items():
    epochs = [r['epoch'] + 1 for r in recs]
    axes[0].plot(epochs, [r['loss'] for r in recs], 'o-', label=label)
    axes[1].plot(epochs, [r.get('map', np.nan) for r in recs], 'o-', label=label)
axes[0].set(xlabel='epoch', ylabel='training loss', title='loss')
axes[1].set(xlabel='epoch', ylabel='VOC07 mAP', title=f'validation mAP ({VAL_SPLIT})')
for ax in axes:
    ax.legend()
plt.tight_layout()
plt.show()
print(f"final VOC07 mAP after {RESULTS['epochs']} epoch(s): fine-tuned "
      f"{RESULTS['finetune_map']:.4f}, from scratch {RESULTS['scratch_map']:.4f}")

# %% [markdown]
# ## 4. Evaluate and predict
#
# The fine-tuned run is used like any run: `eval_ssd.py --run-dir` (VOC07 and area-based VOC mAP
# on the run's validation split), `python -m gluon_ssd.predict IMAGES --run-dir` (JSON on stdout,
# an annotated PNG per image with `--out-dir`).

# %%
eval_args = ['--run-dir', FT_RUN, '--metrics', 'voc07,voc', '--out', FT_RUN / 'eval.json']
if QUICK:
    eval_args += ['--num-val', '4']
result = json.loads(shell(sys.executable, REPO / 'eval_ssd.py', *eval_args))
print(json.dumps(result['map'], indent=1))
RESULTS['eval_map'] = result['map']
RESULTS['eval_images'] = result['num_images']

# %%
val_ids = (DATA / 'ImageSets' / 'Main' / f'{VAL_SPLIT}.txt').read_text().split()[:3]
images = [next(p for p in (DATA / 'JPEGImages').glob(i + '.*')) for i in val_ids]
preds = json.loads(shell(sys.executable, '-m', 'gluon_ssd.predict', *images, '--run-dir', FT_RUN,
                         '--thresh', '0.3', '--out-dir', FT_RUN / 'predictions'))
for p in preds:
    best = sorted(p['detections'], key=lambda d: -d['score'])[:3]
    print(Path(p['image']).name, f"{p['width']}x{p['height']}:",
          [(d['class'], round(d['score'], 2), [round(v) for v in d['bbox']]) for d in best])
fig, axes = plt.subplots(1, len(images), figsize=(5 * len(images), 4.5))
for ax, path in zip(np.atleast_1d(axes), images):
    ax.imshow(plt.imread(FT_RUN / 'predictions' / (path.stem + '.png')))
    ax.axis('off')
plt.tight_layout()
plt.show()
RESULTS['predicted_images'] = len(preds)
RESULTS['prediction_files'] = sum((FT_RUN / 'predictions' / (p.stem + ext)).is_file()
                                  for p in images for ext in ('.json', '.png'))

# %% [markdown]
# ### The same from Python
#
# `load_model(run_dir=...)` rebuilds the network from `model.json` and loads `best.params`;
# `gluon_ssd.predict.detect(net, meta, image)` takes a file path or an `(H, W, 3)` uint8 array and
# returns boxes in that image's pixels, scores and class ids, best first. Both inputs give the
# command line's detections.

# %%
from gluon_ssd.predict import detect   # noqa: E402

net, meta = load_model(run_dir=str(FT_RUN))
print('loaded', meta['model'], 'for classes', meta['classes'], 'from', meta['params'])
pixels = plt.imread(images[0])                     # a numpy (H, W, 3) uint8 array
boxes, scores, ids = detect(net, meta, pixels)
boxes_f, scores_f, ids_f = detect(net, meta, images[0])
cli = preds[0]['detections']
api = [(int(c), float(s)) for c, s in zip(ids_f, scores_f) if s >= 0.3]
same = len(api) == len(cli) and all(c == d['class_id'] and abs(s - d['score']) < 1e-4
                                    for (c, s), d in zip(api, cli))
print(f'{images[0].name}: {len(boxes)} detections from the array; '
      f'{len(api)} with score >= 0.3 from the file, as the CLI: {same}')
fig, ax = plt.subplots(figsize=(6, 5))
draw_detections(pixels, boxes, scores, ids, meta['classes'], thresh=0.3, ax=ax)
ax.set_title(f'{images[0].name}: detect(net, meta, array)')
ax.axis('off')
plt.show()
RESULTS['api_detections'] = int(len(boxes))
RESULTS['api_matches_cli'] = bool(same)

# %% [markdown]
# ## Summary of this run

# %%
mode_text = {'zoo': f"GluonCV's {RESULTS['pretrained']}",
             'file': f"the file {RESULTS['pretrained']}",
             'self-trained': 'a TinySSD trained here on the synthetic shapes '
                             f"({RESULTS.get('pretrain_seconds', 0)} s, synthetic mAP "
                             f"{RESULTS.get('pretrain_map', float('nan')):.3f})"}[MODE]
maps = RESULTS['eval_map']
display(Markdown(
    '| step | result |\n|---|---|\n'
    f"| data | {RESULTS['dataset']}: {len(train_set)} train / {len(val_set)} val images, "
    f"classes {', '.join(classes)} |\n"
    f"| pretrained detector (mode `{MODE}`) | {mode_text} |\n"
    f"| class reset | {RESULTS['pretrained_classes']} → {len(classes)} classes; trained "
    f"predictors kept: {', '.join(RESULTS['reused_classes'] + ['background'])}"
    ' |\n'
    f"| fine-tuning | {RESULTS['epochs']} epoch(s) in {RESULTS['finetune_seconds']} s → VOC07 mAP "
    f"**{RESULTS['finetune_map']:.3f}** |\n"
    f"| same network from scratch | {RESULTS['epochs']} epoch(s) in "
    f"{RESULTS['scratch_seconds']} s → VOC07 mAP **{RESULTS['scratch_map']:.3f}** |\n"
    f"| `eval_ssd.py` ({RESULTS['eval_images']} images) | "
    f"VOC07 {maps.get('voc07', float('nan')):.3f}, VOC {maps.get('voc', float('nan')):.3f} |\n"
    f"| predictions | {RESULTS['predicted_images']} images → JSON + PNG; Python API agrees: "
    f"{RESULTS['api_matches_cli']} |\n"
    + ('\n*QUICK mode: one epoch on 8 images (and, self-trained, a stand-in trained for '
       'seconds) — the numbers are not meaningful.*' if QUICK else '')))

if os.environ.get('GLUON_SSD_NB_RESULTS'):   # a folder, set by the test suite
    Path(os.environ['GLUON_SSD_NB_RESULTS'], 'nb06_results.json').write_text(
        json.dumps(RESULTS, indent=1))

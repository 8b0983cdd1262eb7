"""Training configuration: command-line flags, per-network training recipes and validation.

The flags follow GluonCV's ``scripts/detection/ssd/train_ssd.py`` (``--network vgg16_atrous
--data-shape 300`` trains the zoo's ``ssd_300_vgg16_atrous_voc``, or ``..._coco`` with ``--dataset
coco``: :func:`gluon_ssd.model.zoo.model_name` decides), plus this project's switches
(``--loss-norm``, ``--init``, ``--decoder``, ``--out-dir``). Flags left unset take their value from
the network's recipe in :data:`NETWORK_PRESETS`, then from :data:`COMMON_DEFAULTS`.

``--resume RUN`` restores the run's saved ``config.json``: a flag given with it must agree with
the saved value, except the few in :data:`RESUME_MUTABLE`; changes are recorded in the run's
``history``.

Everything here is cheap: :func:`parse_config` and :func:`validate` run before any model or
dataset is built, so a bad configuration fails in well under a second with a one-line
:class:`~gluon_ssd.errors.UserError`.
"""
import argparse
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields

from gluon_ssd.data.build import DATASETS, DEFAULT_SPLITS, check_dataset
from gluon_ssd.data.transforms import PHOTOMETRIC
from gluon_ssd.devices import parse_gpus
from gluon_ssd.errors import UserError
from gluon_ssd.model.io import find_meta, is_zoo_detector, make_meta
from gluon_ssd.model.zoo import NETWORKS, model_name
from gluon_ssd.precision import resolve_amp
from gluon_ssd.rundir import read_config, resume_source

__all__ = ['TrainConfig', 'NETWORK_PRESETS', 'DEFAULT_NETWORK', 'COMMON_DEFAULTS',
           'RESUME_MUTABLE', 'build_parser', 'parse_config', 'fill_defaults', 'validate',
           'restore_for_resume', 'scaled_steps', 'default_loader_workers']


# Per-network training recipes (flags override them); input sizes: gluon_ssd.model.zoo.NETWORKS.
# GluonCV's train_ssd.py defaults (SGD, step decay, full SSD augmentation).
_GLUONCV = dict(optimizer='sgd', lr_mode='step', batch_size=32, lr=0.001, epochs=240,
                lr_decay_epoch='160,200', warmup_epochs=0, wd=5e-4, max_expand=4,
                iou_thresh=0.5, photometric='gluoncv', pretrained_base=True)
NETWORK_PRESETS = {
    # tiny_ssd (from scratch, CPU, ~5 min on 1000 synthetic images): Adam converges far faster
    # than SGD here; no zoom-out (its smallest anchor is 20 % of the image). 128 px (zoo name
    # tiny_ssd_128) trains ~3x faster per image than d2l's 256 px and, at equal CPU time, reached
    # a higher synthetic mAP (0.42 in 14 epochs vs 0.21 in 6 epochs at 256 px).
    'tiny_ssd': dict(optimizer='adam', batch_size=16,
                     lr=0.003, lr_mode='cosine', epochs=16, lr_decay_epoch='12,14',
                     warmup_epochs=0.5, wd=5e-4, max_expand=1, iou_thresh=0.5,
                     photometric='gluoncv',
                     pretrained_base=False),
    # scratch_ssd (model/scratch.py: BatchNorm everywhere, anchors 6-90 %). Adam + cosine beat
    # SGD at equal epochs; zoom-out up to 2x. Its length is a number of optimizer steps, as
    # detection schedules are (epochs = ceil(steps / batches per epoch): engine.schedule_epochs),
    # at its default input of 192 px; another --data-shape scales them by the pixel count
    # (scaled_steps), so every size gets the same compute: 1040 steps at 192 px, 585 at 256.
    # 192 px because it measured the same raccoon mAP as 256 px at equal compute and trains 1.76x
    # as many images per second. Anchors match boxes from IoU 0.3, not 0.5: more positive anchors
    # per small or off-grid object (synthetic, 16 epochs: 0.412 at 0.5, 0.534 at 0.4, 0.641 at
    # 0.3); Adam 1e-2 (synthetic, 17 epochs, IoU 0.3: 0.774 at 6e-3, 0.795 at 1e-2, 0.786 at
    # 1.5e-2; 3e-3 -> 6e-3 had given +0.06). The SSD paper's colour distortion (hue within +-18
    # degrees) instead of GluonCV's, whose hue turns by any angle: synthetic 0.702 -> 0.774
    # (data.augment.photometric_matrix). Six validations per run instead of one per epoch (the
    # final epoch always): 17 on the synthetic set cost ~25 s, 104 on the raccoon photos more.
    # README: "Training from scratch" has the measured table.
    'scratch_ssd': dict(optimizer='adam', batch_size=16, lr=0.01, lr_mode='cosine', steps=1040,
                        lr_decay_epoch='', warmup_epochs=1, wd=5e-4, max_expand=2,
                        iou_thresh=0.3, photometric='paper', validations=6,
                        pretrained_base=False),
}
# Every network of the zoo with an ImageNet base trains with GluonCV's recipe.
NETWORK_PRESETS.update({name: dict(_GLUONCV) for name in NETWORKS if name not in NETWORK_PRESETS})
#: Networks without ImageNet weights (``--pretrained-base`` is an error for them).
NO_PRETRAINED_BASE = ('tiny_ssd', 'scratch_ssd')
#: ``--network`` when neither it nor ``--pretrained`` is given: training starts from random
#: weights, so the from-scratch design and recipe (d2l's TinySSD stays ``--network tiny_ssd``).
DEFAULT_NETWORK = 'scratch_ssd'


def default_loader_workers(cpus=None):
    """``-j`` by default: GluonCV's 4 data-loading workers, but at most one per two CPU cores,
    because the workers share the cores with the training step's threads (2 cores, the default
    first run: 52 images/s with 1 worker, 47 with 2 or 4)."""
    cpus = cpus or os.cpu_count() or 2
    return max(1, min(4, cpus // 2))


# Defaults shared by every network (GluonCV's script values where it has the flag).
COMMON_DEFAULTS = dict(lr_decay=0.1, momentum=0.9, log_interval=20,
                       save_interval=10, val_interval=1, seed=233,
                       num_workers=default_loader_workers())

#: Settings that ``--resume`` may change: they do not change what is computed, only how long,
#: how often it is logged or saved, and how fast the data is loaded (augmentation is seeded per
#: item, so the number of loader workers does not change the batches).
RESUME_MUTABLE = ('epochs', 'num_workers', 'log_interval', 'save_interval', 'val_interval',
                  'no_progress', 'num_samples_viz', 'strict_data')


@dataclass
class TrainConfig:
    """Every setting of a training run, as plain data (saved as the run's ``config.json``)."""
    network: str = None
    data_shape: int = None
    batch_size: int = None
    dataset: str = 'synthetic'
    dataset_root: str = None
    train_split: str = None
    val_split: str = None
    num_workers: int = None
    gpus: str = ''
    epochs: int = None
    # Length of a recipe given in optimizer steps (a preset key, no flag): when ``epochs`` is not
    # set, the engine derives it from the number of training images (engine.schedule_epochs).
    steps: int = None
    # How many times a run validates (a preset key, no flag): when ``val_interval`` is not given,
    # the engine spreads this many validations over the run, the last epoch always among them
    # (engine.schedule_epochs).
    validations: int = None
    resume: str = ''
    start_epoch: int = None
    optimizer: str = None
    lr: float = None
    lr_decay: float = None
    lr_decay_epoch: str = None
    lr_mode: str = None
    warmup_epochs: float = None
    momentum: float = None
    wd: float = None
    log_interval: int = None
    save_interval: int = None
    val_interval: int = None
    seed: int = None
    amp: bool = False
    kvstore: str = 'device'
    horovod: bool = False
    out_dir: str = None
    overwrite: bool = False
    loss_norm: str = 'batch'
    init: str = 'xavier'
    decoder: str = 'per_class'
    max_expand: float = None
    # Anchor matching: an anchor whose IoU with a box reaches this is a positive for it (besides
    # each box's best anchor); 0.5 in the SSD paper and GluonCV.
    iou_thresh: float = None
    # Colour distortion of the training augmentation (data.transforms.PHOTOMETRIC).
    photometric: str = None
    pretrained_base: bool = None
    pretrained: str = ''
    # The zoo preset trained (filled from network / data shape / dataset or --pretrained).
    model: str = None
    # Not in GluonCV: data size caps, fixed label padding and test hooks.
    max_objects: int = 0
    num_train: int = 0
    num_val: int = 0
    cpu_contexts: int = 1
    no_progress: bool = False
    num_samples_viz: int = 8
    # Every skipped or repaired image is an error instead of a counted warning (--strict-data).
    strict_data: bool = False
    # Every ``--resume`` of the run: ``{'time', 'from', 'changes': {key: [old, new]}}``.
    history: list = field(default_factory=list)

    def to_dict(self):
        """The configuration as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`UserError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown configuration keys: {', '.join(unknown)}")
        return cls(**values)

    @property
    def amp_dtype(self):
        """Mixed precision of the run: ``None`` (float32), ``'float16'`` (``--amp`` with GPUs:
        mxnet.contrib.amp with dynamic loss scaling) or ``'bfloat16'`` (``--amp`` on CPU:
        :mod:`gluon_ssd.precision` graphs)."""
        if not self.amp:
            return None
        return 'float16' if parse_gpus(self.gpus) else 'bfloat16'

    @property
    def lr_decay_epochs(self):
        """``--lr-decay-epoch`` as a sorted list of ints."""
        return parse_int_list(self.lr_decay_epoch, '--lr-decay-epoch')


def parse_int_list(text, flag):
    """``'160,200'`` -> ``[160, 200]``; an empty string gives ``[]``."""
    text = (text or '').strip()
    if not text:
        return []
    try:
        return sorted(int(t) for t in text.split(',') if t.strip())
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def build_parser():
    """The ``train_ssd.py`` argument parser (defaults ``None`` mean "take the network preset")."""
    p = argparse.ArgumentParser(
        prog='train_ssd.py',
        description='Train an SSD detector. With no arguments: the from-scratch scratch_ssd on the '
                    'built-in synthetic dataset, on CPU, in a few minutes.')
    a = p.add_argument
    a('--network', help=f"base network: {', '.join(NETWORKS)} (default {DEFAULT_NETWORK}; "
                          "with --pretrained: its network)")
    a('--data-shape', type=int, help='input size in pixels (default: the network preset)')
    a('--batch-size', type=int, help='global batch size, split across devices')
    a('--dataset', default='synthetic', help=f"{' | '.join(DATASETS)} (default synthetic)")
    a('--dataset-root', help='dataset folder (VOC-format folder, COCO root or .rec folder); for '
                             'synthetic, where to cache the generated images')
    a('--train-split', help='training split(s), comma-separated (VOC: e.g. "train" or '
                            '"2007_trainval,2012_trainval")')
    a('--val-split', help='validation split(s)')
    a('-j', '--num-workers', type=int, help='data-loading worker processes (0 = main process; '
                                            'default: 4, at most one per two CPU cores)')
    a('--gpus', default='', help='GPU ids, e.g. "0,1"; empty (default) trains on CPU')
    a('--epochs', type=int, help='number of training epochs (default: the network preset; '
                                 'scratch_ssd: 1040 steps at 192 px, scaled by the pixel count '
                                 'at other sizes: ceil(steps / batches per epoch))')
    a('--resume', default='', help='run directory or its last.params to continue from')
    a('--start-epoch', type=int, help='epoch to start from when --resume is a bare .params file')
    a('--optimizer', choices=('sgd', 'adam'),
      help='sgd (GluonCV, with --momentum) or adam; default: the network preset')
    a('--lr', type=float, help='base learning rate')
    a('--lr-decay', type=float, help='step decay factor (default 0.1)')
    a('--lr-decay-epoch', help='epochs at which to decay, e.g. "160,200"')
    a('--lr-mode', choices=('step', 'cosine'), help='learning-rate schedule (default step)')
    a('--warmup-epochs', type=float, help='linear warm-up length in epochs')
    a('--momentum', type=float, help='SGD momentum (default 0.9)')
    a('--wd', type=float, help='weight decay')
    a('--log-interval', type=int, help='batches between loss logs (the only host syncs)')
    a('--save-interval', type=int, help='epochs between epoch_XXXX.params snapshots')
    a('--val-interval', type=int, help='epochs between validations')
    a('--seed', type=int, help='random seed (default 233)')
    a('--amp', action='store_true',
      help='mixed precision: float16 with loss scaling on GPUs (mxnet.contrib.amp), bfloat16 '
           'convolutions with float32 weights on CPUs (gluon_ssd.precision) where a short probe, '
           'cached per machine, measures it faster than float32 (else float32 and one line; '
           'GLUON_SSD_BF16=on|off overrides); refused without AVX-512')
    a('--kvstore', default='device', help='device | local | dist_sync | dist_device_sync')
    a('--horovod', action='store_true', help='distributed training with Horovod')
    a('--out-dir', help='run directory (default runs/<network>_<dataset>_<timestamp>); a new '
                        'run refuses a non-empty one unless --resume or --overwrite')
    a('--overwrite', action='store_true',
      help='start a new run in a used --out-dir: the previous run\'s files there are deleted')
    a('--loss-norm', choices=('batch', 'sample'), default='batch',
      help='divide the loss by positives of the whole batch (GluonCV) or of each image')
    a('--pretrained-base', action=argparse.BooleanOptionalAction,
      help='start the base network from its ImageNet weights (GluonCV model store, downloaded '
           'into $MXNET_HOME/models when absent); default: on for every network but tiny_ssd '
           'and scratch_ssd')
    a('--pretrained', default='',
      help='fine-tune a trained detector: a zoo name (e.g. ssd_300_vgg16_atrous_coco, GluonCV\'s '
           'weights) or a .params file (a gluon-ssd model with its meta file, or a GluonCV file '
           'of the --network/--data-shape preset); its classes are reset to the dataset\'s, '
           'reusing those with the same name')
    a('--init', choices=('xavier', 'uniform', 'normal'), default='xavier',
      help='initialiser of the non-backbone layers')
    a('--decoder', choices=('per_class', 'argmax'), default='per_class',
      help='detection decoding: every class per anchor (GluonCV) or the best class only')
    a('--max-expand', type=float,
      help='largest zoom-out of the SSD augmentation (4 as the paper/GluonCV; 1 = off)')
    a('--iou-thresh', type=float,
      help='anchor-matching IoU: anchors overlapping a box at least this much learn it '
           '(besides each box\'s best anchor); 0.5 as the paper/GluonCV; default: the network preset')
    a('--photometric', choices=PHOTOMETRIC,
      help="colour distortion of the augmentation: GluonCV's (its hue turns by any angle), the "
           "SSD paper's (hue within +-18 degrees) or none; default: the network preset")
    a('--max-objects', type=int, default=0,
      help='pad labels to this many boxes (0 = the most in any training image)')
    a('--num-train', type=int, default=0, help='use only the first N training images (0 = all)')
    a('--num-val', type=int, default=0, help='use only the first N validation images (0 = all)')
    a('--no-progress', action='store_true', help='no tqdm progress bar')
    a('--num-samples-viz', type=int, default=8, help='validation images in detections.png')
    a('--strict-data', action='store_true',
      help='stop (exit 2, naming the file) at the first image that would be skipped or repaired '
           '(unreadable, truncated, wrong size) instead of counting it')
    # Hidden: CPU contexts standing in for GPUs (tests of the multi-device path).
    a('--cpu-contexts', type=int, default=1, help=argparse.SUPPRESS)
    return p


def parse_config(argv=None):
    """Parse ``argv`` into a validated :class:`TrainConfig` with presets filled in; with
    ``--resume`` the run's saved settings (see :func:`restore_for_resume`).

    Raises :class:`UserError` (never ``SystemExit`` for semantic problems).
    """
    parser = build_parser()
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    if cfg.resume:
        cfg = restore_for_resume(cfg, _explicit_flags(parser, argv))
    return validate(fill_defaults(cfg))


def _explicit_flags(parser, argv):
    """``{dest: value}`` of the flags actually typed in ``argv`` (defaults left out)."""
    for action in parser._actions:  # pylint: disable=protected-access
        action.default = argparse.SUPPRESS
    return vars(parser.parse_args(argv))


def _flag(key):
    return '-j/--num-workers' if key == 'num_workers' else '--' + key.replace('_', '-')


def restore_for_resume(cfg, explicit):
    """The configuration of the run ``cfg.resume`` continues.

    ``explicit``: the flags typed with ``--resume`` (``{dest: value}``). A run directory (or a
    checkpoint inside one) with a ``config.json`` gives every setting; a typed flag that
    contradicts it raises :class:`UserError` naming the flag, unless it is one of
    :data:`RESUME_MUTABLE` (then the change is recorded in ``history``). A bare ``.params``
    file outside a run directory only provides weights: ``cfg`` is returned unchanged.
    """
    if not os.path.exists(cfg.resume):
        raise UserError(f"--resume: {cfg.resume} does not exist")
    run_dir, _, _ = resume_source(cfg.resume)
    saved = read_config(run_dir)
    if saved is None:
        return cfg
    saved.pop('classes', None)
    # runs saved before --iou-thresh existed matched anchors at GluonCV's 0.5
    saved.setdefault('iou_thresh', 0.5)
    saved.setdefault('photometric', 'gluoncv')   # and distorted colours as GluonCV does
    try:
        restored = TrainConfig.from_dict(saved)
    except (UserError, TypeError) as exc:
        raise UserError(f"{os.path.join(run_dir, 'config.json')}: {exc}") from None
    changes = {}
    for key, value in explicit.items():
        if key in ('resume', 'start_epoch'):
            continue
        if key == 'overwrite':
            if value:
                raise UserError(f"--overwrite starts a new run; it contradicts --resume "
                                f"{cfg.resume} (drop one of them)")
            continue
        if key == 'out_dir':
            if os.path.abspath(value) != os.path.abspath(run_dir):
                raise UserError(f"--out-dir {value} contradicts --resume {cfg.resume}: a resumed "
                                f"run continues in {run_dir}")
            continue
        old = getattr(restored, key)
        if value == old:
            continue
        if key not in RESUME_MUTABLE:
            raise UserError(f"{_flag(key)} {value} contradicts the run being resumed ({old} in "
                            f"{os.path.join(run_dir, 'config.json')}); on --resume only "
                            f"{', '.join(_flag(k) for k in RESUME_MUTABLE)} may change")
        changes[key] = [old, value]
        setattr(restored, key, value)
    restored.resume, restored.out_dir, restored.overwrite = cfg.resume, run_dir, False
    restored.history = list(restored.history) + [
        {'time': time.strftime('%Y-%m-%d %H:%M:%S'), 'from': cfg.resume, 'changes': changes}]
    return restored


def _adopt_pretrained(cfg):
    """``--pretrained``: the run trains the trained detector's preset (its network and input
    size); a zoo name or a file with a meta file names it, a bare file is a GluonCV-format file
    of the ``--network``/``--data-shape`` preset."""
    spec = cfg.pretrained
    if is_zoo_detector(spec):
        name = spec
    elif os.path.isfile(os.path.expanduser(spec)):
        meta = find_meta(os.path.expanduser(spec))
        name = meta['model'] if meta else None
    else:
        raise UserError(f"--pretrained {spec}: neither a file nor a zoo detector name (see "
                        "gluon_ssd.get_model_list())")
    if name is None:
        return
    meta = make_meta(name, [])
    for key in ('network', 'data_shape'):
        value = getattr(cfg, key)
        if value is not None and value != meta[key]:
            raise UserError(f"{_flag(key)} {value} contradicts --pretrained {spec} (a {name} "
                            f"with {key} {meta[key]}); drop {_flag(key)}")
    cfg.network, cfg.data_shape, cfg.model = meta['network'], meta['data_shape'], name


def fill_defaults(cfg):
    """Fill ``None`` fields from ``--pretrained``, the network recipe, then
    :data:`COMMON_DEFAULTS` (in place); ``model`` is the zoo preset the run trains."""
    if cfg.pretrained and not cfg.model:
        _adopt_pretrained(cfg)
    cfg.network = cfg.network or DEFAULT_NETWORK
    if cfg.network not in NETWORK_PRESETS:
        raise UserError(f"--network: unknown network {cfg.network!r}; choose one of "
                        f"{', '.join(NETWORK_PRESETS)}")
    if cfg.data_shape is None:
        cfg.data_shape = NETWORKS[cfg.network]['data_shapes'][0]
    for source in (NETWORK_PRESETS[cfg.network], COMMON_DEFAULTS):
        for key, value in source.items():
            # --epochs given: the recipe's length in steps is not used (nor recorded); a recipe
            # with a number of validations leaves --val-interval to the engine
            if key == 'val_interval' and cfg.validations is not None:
                continue
            if getattr(cfg, key) is None and not (key == 'steps' and cfg.epochs is not None):
                if key == 'steps':
                    value = scaled_steps(value, cfg.network, cfg.data_shape)
                setattr(cfg, key, value)
    if cfg.dataset in DEFAULT_SPLITS:
        train, val = DEFAULT_SPLITS[cfg.dataset]
        cfg.train_split = cfg.train_split or train
        cfg.val_split = cfg.val_split or val
    if cfg.start_epoch is None:
        cfg.start_epoch = 0
    cfg.model = cfg.model or model_name(cfg.network, cfg.data_shape, cfg.dataset)
    if cfg.out_dir is None and not cfg.resume:
        stamp = time.strftime('%Y%m%d-%H%M%S')
        cfg.out_dir = os.path.join('runs', f'{cfg.network}_{cfg.dataset}_{stamp}')
    return cfg


def scaled_steps(steps, network, data_shape):
    """A recipe's ``steps`` (given at the network's default input size) at ``data_shape``:
    scaled by the pixel ratio, so that every input size gets the same compute (a step costs about
    its pixel count): ``round(steps * (default / data_shape) ** 2)``."""
    if not isinstance(data_shape, int) or data_shape <= 0:   # validate() names the flag
        return steps
    default = NETWORKS[network]['data_shapes'][0]
    return max(1, round(steps * (default / data_shape) ** 2))


def _check_number(cfg, name, allow_zero=False):
    """A finite number, positive (or non-negative with ``allow_zero``); else a UserError."""
    value = getattr(cfg, name)
    need = 'a non-negative' if allow_zero else 'a positive'
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{_flag(name)}: must be {need} finite number, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{_flag(name)}: must be {need} number, got {value}")


def validate(cfg):
    """Check a filled configuration; raise :class:`UserError` naming the flag. Returns ``cfg``."""
    if not cfg.pretrained:      # checks --network / --data-shape / --dataset
        model_name(cfg.network, cfg.data_shape, cfg.dataset)
    check_dataset(cfg.dataset, cfg.dataset_root)
    if cfg.pretrained_base and cfg.network in NO_PRETRAINED_BASE:
        raise UserError(f"--pretrained-base: {cfg.network} has no ImageNet weights; drop the flag "
                        "(it trains from scratch)")
    # the length: --epochs, or a recipe's steps that the engine turns into epochs
    length = ('epochs',) if cfg.epochs is not None or cfg.steps is None else ('steps',)
    interval = ('val_interval',) if cfg.val_interval is not None else ('validations',)
    for name in length + interval + ('batch_size', 'lr', 'log_interval', 'save_interval',
                                     'cpu_contexts', 'lr_decay'):
        _check_number(cfg, name)
    for name in ('num_workers', 'wd', 'momentum', 'warmup_epochs', 'start_epoch', 'max_objects',
                 'max_expand', 'num_train', 'num_val', 'seed', 'num_samples_viz'):
        _check_number(cfg, name, allow_zero=True)
    if cfg.momentum >= 1:
        raise UserError(f"--momentum: must be below 1 (SGD diverges otherwise), got {cfg.momentum}")
    if not 0 < cfg.iou_thresh <= 1:
        raise UserError(f"--iou-thresh: must be in (0, 1], got {cfg.iou_thresh}")
    if cfg.max_expand < 1:
        raise UserError(f"--max-expand: the largest zoom-out is at least 1 (1 = off), got "
                        f"{cfg.max_expand}")
    cfg.lr_decay_epochs  # parses, raising UserError on bad text
    gpus = parse_gpus(cfg.gpus)
    if gpus and cfg.cpu_contexts != 1:
        raise UserError("--cpu-contexts is for CPU runs; do not combine it with --gpus")
    num_devices = len(gpus) or cfg.cpu_contexts
    if cfg.batch_size < num_devices:
        raise UserError(f"--batch-size {cfg.batch_size} is smaller than the number of devices "
                        f"({num_devices}); every device needs at least one image")
    if cfg.amp_dtype == 'bfloat16':
        if not resolve_amp('--amp'):      # measured slower here: float32, said in one line
            cfg.amp = False
    if cfg.kvstore not in ('device', 'local', 'dist_sync', 'dist_device_sync', 'dist_async',
                           'nccl'):
        raise UserError(f"--kvstore: unknown kvstore {cfg.kvstore!r}")
    if cfg.horovod and cfg.kvstore.startswith('dist'):
        raise UserError("--horovod and --kvstore dist_* are alternatives; pick one")
    if cfg.resume and not os.path.exists(cfg.resume):
        raise UserError(f"--resume: {cfg.resume} does not exist")
    return cfg

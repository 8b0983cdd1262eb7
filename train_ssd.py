"""Train an SSD detector (flags compatible with GluonCV's scripts/detection/ssd/train_ssd.py).

    python train_ssd.py                       # tiny_ssd (128 px) on the built-in synthetic data, CPU
    python train_ssd.py --data-shape 256      # d2l's TinySSD exactly (256 px, 5444 anchors)
    python train_ssd.py --dataset voc --dataset-root ../shared/data/raccoon \
        --train-split train --val-split test
    python train_ssd.py --network vgg16_atrous --data-shape 300 --dataset voc \
        --dataset-root ~/VOCdevkit --gpus 0,1,2,3 --batch-size 32

Exit codes: 0 success, 2 bad configuration (one-line message, nothing trained), 3 the loss
became NaN/inf (the last good checkpoint is kept).
"""
import sys

from gluon_ssd.config import ConfigError, parse_config

EXIT_CONFIG = 2
EXIT_DIVERGED = 3


def _fail(message, code):
    sys.stderr.write(f"train_ssd.py: error: {message}\n")
    return code


def main(argv=None):
    """Parse flags, train, print the run directory and best mAP. Returns the exit code."""
    try:
        cfg = parse_config(argv)
    except ConfigError as exc:
        return _fail(exc, EXIT_CONFIG)
    from gluon_ssd.engine import TrainingDiverged, train  # heavy imports after flag checks
    try:
        result = train(cfg)
    except ConfigError as exc:
        return _fail(exc, EXIT_CONFIG)
    except TrainingDiverged as exc:
        return _fail(exc, EXIT_DIVERGED)
    best = result['best_map']
    print(f"run directory: {result['run_dir']}  best VOC07 mAP: "
          f"{'n/a' if best is None else f'{best:.4f}'}")
    return 0


if __name__ == '__main__':
    if any('dist_' in arg for arg in sys.argv[1:]):   # ps-lite: exit at once on errors
        from gluon_ssd.distributed import exit_guard
        with exit_guard():
            sys.exit(main())
    sys.exit(main())

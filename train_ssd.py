"""Train an SSD detector (flags compatible with GluonCV's scripts/detection/ssd/train_ssd.py).

    python train_ssd.py                       # tiny_ssd (128 px) on the built-in synthetic data, CPU
    python train_ssd.py --data-shape 256      # d2l's TinySSD exactly (256 px, 5444 anchors)
    python train_ssd.py --dataset voc --dataset-root ../shared/data/raccoon \
        --train-split train --val-split test
    python train_ssd.py --network vgg16_atrous --data-shape 300 --dataset voc \
        --dataset-root ~/VOCdevkit --gpus 0,1,2,3 --batch-size 32
    python train_ssd.py --resume runs/X --epochs 40   # continue run X with its own settings

The headline result is the final epoch's VOC07 mAP (the best epoch's is printed beside it:
picking the best epoch on the validation split flatters it).

Exit codes: 0 success, 2 bad configuration or data (one-line message, nothing trained), 3 the
loss became NaN/inf (the last good checkpoint is kept).
"""
import sys

from gluon_ssd.errors import UserError, fail

PROG = 'train_ssd.py'


def _fmt(value):
    return 'n/a' if value is None else f'{value:.4f}'


def main(argv=None):
    """Parse flags, train, print the run directory and mAP. Returns the exit code."""
    try:
        from gluon_ssd.config import parse_config
        cfg = parse_config(argv)
        from gluon_ssd.engine import train  # heavy imports after flag checks
        result = train(cfg)
    except UserError as exc:
        return fail(PROG, exc)
    line = f"run directory: {result['run_dir']}  final VOC07 mAP: {_fmt(result['final_map'])}"
    if result.get('final_coco_ap') is not None:
        line += f"  final COCO AP: {_fmt(result['final_coco_ap'])}"
    line += f"  (best {_fmt(result['best_map'])} at epoch {result['best_epoch']})"
    print(line)
    return 0


if __name__ == '__main__':
    if any('dist_' in arg for arg in sys.argv[1:]):   # ps-lite: exit at once on errors
        from gluon_ssd.distributed import exit_guard
        with exit_guard():
            sys.exit(main())
    sys.exit(main())

"""Evaluate a trained SSD (VOC07 / VOC / COCO metrics); see :mod:`gluon_ssd.eval`.

    python eval_ssd.py --run-dir runs/tiny_ssd_synthetic_X
    python eval_ssd.py --params best.params --network tiny_ssd --classes raccoon \
        --dataset voc --dataset-root ../shared/data/raccoon --val-split test

Exit codes: 0 success, 2 a problem the user can fix (one-line message).
"""
import sys

from gluon_ssd.eval import main

if __name__ == '__main__':
    sys.exit(main())

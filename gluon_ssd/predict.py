"""Run a trained SSD on images: detections as JSON and one annotated PNG per image.

    python -m gluon_ssd.predict IMG [IMG ...] --run-dir runs/tiny_ssd_synthetic_X
    python -m gluon_ssd.predict photos/ --run-dir runs/X          # every image in the folder
    python -m gluon_ssd.predict IMG --params best.params --network tiny_ssd --classes cat,dog \\
        --thresh 0.3 --out-dir predictions

From Python, :func:`detect` takes a file path, a numpy ``(H, W, 3)`` uint8 RGB image or an MXNet
NDArray::

    net, meta = gluon_ssd.model.io.load_model(run_dir='runs/X')
    boxes, scores, ids = detect(net, meta, 'photo.jpg')       # boxes in the photo's pixels

Each image goes through the model's input transform (resize to ``S x S``, the model's mean/std),
the network's detections (corner pixels of the input) are mapped back to the **original image
pixels**, and those with ``score >= --thresh`` are reported:

    [{"image": path, "width": W, "height": H,
      "detections": [{"class_id": 0, "class": "cat", "score": 0.91,
                      "bbox": [xmin, ymin, xmax, ymax]}, ...]}, ...]

printed on stdout; ``--out-dir`` receives ``<stem>.json`` and ``<stem>.png`` per image.
Exit codes: 0 success, 2 a problem the user can fix (one line on stderr naming the file or flag).
"""
import argparse
import json
import os
import sys

import numpy as np

from gluon_ssd.cli import add_model_args, contexts_from_args, model_from_args
from gluon_ssd.errors import UserError, fail, one_line_warnings
from gluon_ssd.model.io import finite_detections, input_transform, map_boxes_to_original

__all__ = ['IMAGE_EXTENSIONS', 'image_paths', 'as_image', 'detect', 'detections_record',
           'predict_images', 'build_parser', 'main']

PROG = 'python -m gluon_ssd.predict'
#: File endings taken from a folder given to the CLI (case-insensitive).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp', '.ppm',
                    '.pgm')


def image_paths(inputs):
    """Files and folders -> image files: a folder gives its images (:data:`IMAGE_EXTENSIONS`,
    sorted, not recursive). Raises :class:`UserError` for a missing path or an imageless folder."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item)
                           if n.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(item, n)))
            if not found:
                raise UserError(f"{item}: folder has no image files "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"{item}: image file or folder not found")
    return paths


def as_image(image):
    """A file path, numpy array or NDArray -> ``(H, W, 3)`` uint8 RGB NDArray.

    numpy/NDArray inputs must be ``(H, W)`` grayscale, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA
    (alpha dropped) of uint8 values; files are decoded by :func:`gluon_ssd.data.decode_image`.
    """
    import mxnet as mx
    if isinstance(image, (str, os.PathLike)):
        from gluon_ssd.data import decode_image
        return decode_image(os.fspath(image))
    array = image.asnumpy() if isinstance(image, mx.nd.NDArray) else np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 1:
        raise UserError(f"image: expected an (H, W, 3) RGB array, got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 255:
            raise UserError(f"image: expected uint8 pixel values 0-255, got {array.dtype} "
                            f"{array.min()}..{array.max()}")
        array = array.astype(np.uint8)
    return mx.nd.array(array[:, :, :3], dtype='uint8')


def detect(net, meta, image, ctx=None, transform=None):
    """Detections of ``net`` on one image, in the image's own pixels.

    ``net, meta``: from :func:`gluon_ssd.model.io.load_model`. ``image``: see :func:`as_image`.
    Returns ``(bboxes (K,4) float32 corner pixels of the original image, scores (K,),
    class_ids (K,) int)``, best first, padding rows and non-finite detections removed.
    """
    import mxnet as mx
    image = as_image(image)
    ctx = ctx or mx.cpu()
    transform = transform or input_transform(meta)
    size = int(meta['data_shape'])
    height, width = image.shape[:2]
    x, _ = transform(image, np.zeros((0, 6), np.float32))
    ids, scores, bboxes = (a.asnumpy() for a in net(x.expand_dims(0).as_in_context(ctx)))
    finite_detections(ids, scores, bboxes)
    ids, scores, bboxes = ids[0, :, 0], scores[0, :, 0], bboxes[0]
    keep = ids >= 0
    boxes = map_boxes_to_original(bboxes[keep], (size, size), (width, height))
    return boxes, scores[keep], ids[keep].astype(int)


def detections_record(path, image, boxes, scores, ids, classes, thresh):
    """The JSON-ready record of one image (detections with ``score >= thresh``)."""
    dets = []
    for box, score, cid in zip(boxes, scores, ids):
        if score < thresh:
            continue
        dets.append({'class_id': int(cid), 'class': classes[cid], 'score': round(float(score), 6),
                     'bbox': [round(float(v), 3) for v in box]})
    return {'image': path, 'width': int(image.shape[1]), 'height': int(image.shape[0]),
            'detections': dets}


def _unique_stem(path, used):
    stem = os.path.splitext(os.path.basename(path))[0] or 'image'
    name, k = stem, 1
    while name in used:
        name, k = f'{stem}_{k}', k + 1
    used.add(name)
    return name


def predict_images(net, meta, paths, thresh=0.3, out_dir=None, ctx=None):
    """Run :func:`detect` on image files and folders (:func:`image_paths`); write
    ``<stem>.json``/``<stem>.png`` into ``out_dir`` when given. Returns the per-image records
    (see the module docstring). Every path is checked before the network runs."""
    from gluon_ssd.viz import save_detections
    paths = image_paths(paths)
    transform = input_transform(meta)
    records, used = [], set()
    for path in paths:
        image = as_image(path)
        boxes, scores, ids = detect(net, meta, image, ctx, transform)
        record = detections_record(path, image, boxes, scores, ids, meta['classes'], thresh)
        records.append(record)
        if out_dir:
            stem = os.path.join(out_dir, _unique_stem(path, used))
            os.makedirs(out_dir, exist_ok=True)
            with open(stem + '.json', 'w') as f:
                json.dump(record, f, indent=1)
            save_detections(image.asnumpy(), boxes, scores, ids, meta['classes'], stem + '.png',
                            thresh=thresh)
    return records


def build_parser():
    """The ``python -m gluon_ssd.predict`` argument parser."""
    p = argparse.ArgumentParser(
        prog=PROG,
        description='Detect objects in images with a trained SSD: JSON on stdout (boxes in '
                    'original image pixels, corner format) and an annotated PNG per image.')
    p.add_argument('images', nargs='+', help='image files (JPEG, PNG, ...) or folders of them')
    add_model_args(p)
    p.add_argument('--thresh', type=float, default=0.3,
                   help='report detections with score >= this (default 0.3)')
    p.add_argument('--out-dir', default='predictions',
                   help='folder for <stem>.json and <stem>.png per image (default predictions; '
                        'empty string: none)')
    return p


def main(argv=None):
    """Parse flags, predict, print the JSON. Returns the exit code."""
    args = build_parser().parse_args(argv)
    one_line_warnings(PROG)
    try:
        if not 0 <= args.thresh <= 1:
            raise UserError(f"--thresh: must be in [0, 1], got {args.thresh}")
        image_paths(args.images)                  # fail on a missing file before loading
        if args.out_dir:                          # ... or an unusable --out-dir
            from gluon_ssd.rundir import check_out_dir
            check_out_dir(args.out_dir)
        net, meta = model_from_args(args)
        ctx = contexts_from_args(args)[0]
        records = predict_images(net, meta, args.images, args.thresh, args.out_dir or None, ctx)
    except UserError as exc:
        return fail(PROG, exc)
    except OSError as exc:                        # writing into --out-dir (e.g. disk full)
        where = f" ({exc.filename})" if exc.filename else ''
        return fail(PROG, f"--out-dir {args.out_dir}: {exc.strerror or exc}{where}")
    json.dump(records, sys.stdout, indent=1)
    sys.stdout.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Drawing detections and training curves to PNG files (matplotlib's Agg canvas, no pyplot).

Boxes are corner ``(xmin, ymin, xmax, ymax)`` in pixels of the image being drawn; images are
``(H, W, 3)`` uint8 RGB (numpy or NDArray). Predictions are drawn with solid edges coloured per
class and labelled ``name score``; ground truth with dashed edges in the same class colour,
labelled ``gt:name`` under the box's bottom-left corner.
"""
import colorsys
import math
import os

import mxnet as mx
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ['class_color', 'draw_detections', 'save_detections', 'save_detections_grid',
           'plot_curves']

DPI = 100
LABEL_PX = 12   # height of a label, in pixels, to keep it inside the image


# ----------------------------------------------------------------------------------------------
# input checking
# ----------------------------------------------------------------------------------------------
def _np(x):
    return x.asnumpy() if isinstance(x, mx.nd.NDArray) else np.asarray(x)


def _check_image(image):
    """-> (H, W, 3) uint8 numpy array, or a ValueError saying what is wrong."""
    img = _np(image)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be HWC RGB with shape (H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255), got dtype {img.dtype}; "
                         "undo the network normalisation first")
    return img


def _check_boxes(bboxes, name):
    """-> (N, 4) float array (a (1, N, 4) batch of one is squeezed)."""
    b = _np(bboxes).astype(np.float64)
    if b.ndim == 3 and b.shape[0] == 1:
        b = b[0]
    if b.size == 0:
        return b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) corner boxes, got {b.shape}")
    return b


def _check_column(x, n, name):
    """(N,), (N, 1) or (1, N, 1) -> (N,) float array, length checked against the boxes."""
    v = _np(x).astype(np.float64).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"{name} has {v.shape[0]} entries but there are {n} boxes")
    return v


def class_color(class_id):
    """Deterministic, well-spread RGB colour (floats 0-1) for a class id (golden-ratio hues)."""
    hue = (int(class_id) * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.85, 0.95)


def _class_name(class_id, class_names):
    cid = int(class_id)
    if class_names is not None and 0 <= cid < len(class_names):
        return str(class_names[cid])
    return str(cid)


# ----------------------------------------------------------------------------------------------
# drawing
# ----------------------------------------------------------------------------------------------
def _new_axes(height, width):
    """Figure of exactly (width, height) pixels at DPI with one frameless axes filling it."""
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig.add_axes([0, 0, 1, 1])


def _draw_box(ax, box, color, text, dashed, text_at_bottom):
    xmin, ymin, xmax, ymax = box
    ax.add_patch(Rectangle((xmin, ymin), xmax - xmin, ymax - ymin, fill=False,
                           edgecolor=color, linewidth=2.0 if not dashed else 1.5,
                           linestyle='--' if dashed else '-'))
    if text:
        # outside the box (above for predictions, below for gt) unless that leaves the image
        height = ax.get_ylim()[0]
        if text_at_bottom:
            y, va = (ymax, 'top') if ymax < height - LABEL_PX else (ymax, 'bottom')
        else:
            y, va = (ymin, 'bottom') if ymin > LABEL_PX else (ymin, 'top')
        ax.text(xmin, y, text, fontsize=8, color='white', va=va, ha='left', clip_on=True,
                bbox=dict(facecolor=color, alpha=0.75 if not dashed else 0.5, pad=1,
                          edgecolor='none'))


def draw_detections(image, bboxes, scores, labels, class_names=None, thresh=0.3,
                    gt_bboxes=None, gt_labels=None, ax=None):
    """Draw one image with its detections (and optionally its ground truth).

    Parameters
    ----------
    image : (H, W, 3) uint8 RGB, numpy or NDArray.
    bboxes : (K, 4) corner pixels of ``image``; ``scores``, ``labels``: (K,) or (K, 1).
        Rows with label < 0 (padding) or score < ``thresh`` are not drawn.
    class_names : list of str, optional; labels are printed as ids when absent.
    gt_bboxes : (M, 4) corner pixels, optional; ``gt_labels`` (M,) or (M, 1), -1 = padding.
    ax : matplotlib Axes to draw into; a new figure sized exactly W x H pixels when ``None``.

    Returns the Axes (its ``.figure`` can be saved with ``savefig``).
    """
    img = _check_image(image)
    boxes = _check_boxes(bboxes, 'bboxes')
    scores = _check_column(scores, len(boxes), 'scores')
    labels = _check_column(labels, len(boxes), 'labels')
    if np.isnan(scores).any():
        raise ValueError("scores contains NaN")
    if ax is None:
        ax = _new_axes(img.shape[0], img.shape[1])
    ax.imshow(img, interpolation='nearest')
    ax.set_xlim(-0.5, img.shape[1] - 0.5)
    ax.set_ylim(img.shape[0] - 0.5, -0.5)
    ax.axis('off')
    if gt_bboxes is not None:
        _draw_ground_truth(ax, gt_bboxes, gt_labels, class_names)
    keep = (labels >= 0) & (scores >= thresh)
    order = np.argsort(scores[keep])          # highest score drawn last (on top)
    for box, lab, sc in zip(boxes[keep][order], labels[keep][order], scores[keep][order]):
        text = f"{_class_name(lab, class_names)} {sc:.2f}"
        _draw_box(ax, box, class_color(lab), text, dashed=False, text_at_bottom=False)
    return ax


def _draw_ground_truth(ax, gt_bboxes, gt_labels, class_names):
    boxes = _check_boxes(gt_bboxes, 'gt_bboxes')
    if gt_labels is None:
        raise ValueError("gt_labels is required when gt_bboxes is given")
    labels = _check_column(gt_labels, len(boxes), 'gt_labels')
    for box, lab in zip(boxes[labels >= 0], labels[labels >= 0]):
        _draw_box(ax, box, class_color(lab), f"gt:{_class_name(lab, class_names)}",
                  dashed=True, text_at_bottom=True)


def _split_det(det, index):
    """A detection entry ``(bboxes, scores, labels)`` (tuple or dict) -> three arrays."""
    if isinstance(det, dict):
        return det['bboxes'], det['scores'], det['labels']
    if isinstance(det, (tuple, list)) and len(det) == 3:
        return det
    raise ValueError(f"dets[{index}] must be (bboxes, scores, labels) or a dict with those keys")


def _split_gt(gt, index):
    """A ground-truth entry -> (bboxes (M,4), labels (M,)).

    Accepts ``(bboxes, labels)`` or a label array (M, >=5) ``[xmin, ymin, xmax, ymax, cls, ...]``
    as produced by the datasets.
    """
    if gt is None:
        return None, None
    if isinstance(gt, (tuple, list)) and len(gt) == 2:
        return gt
    arr = _np(gt)
    if arr.ndim == 2 and arr.shape[1] >= 5:
        return arr[:, :4], arr[:, 4]
    raise ValueError(f"gts[{index}] must be (bboxes, labels) or an (M, >=5) label array, "
                     f"got {getattr(arr, 'shape', type(gt))}")


def save_detections_grid(images, dets, gts, class_names, path, ncols=4, thresh=0.3):
    """Write a PNG grid of images with detections (and ground truth when ``gts`` is given).

    Parameters
    ----------
    images : list of (H, W, 3) uint8 RGB images; each cell is as large as the largest image.
    dets : list (same length) of ``(bboxes (K,4), scores (K,), labels (K,))`` corner pixels,
        or dicts with keys ``bboxes``, ``scores``, ``labels``.
    gts : ``None`` or a list (same length) of ``(bboxes (M,4), labels (M,))`` or ``(M, >=5)``
        label arrays, or ``None`` entries.
    path : output ``.png`` path (parent directories are created).
    ncols : images per row (fewer when there are fewer images).

    The PNG is exactly ``ncols' * max_W`` by ``nrows * max_H`` pixels. Returns ``path``.
    """
    if not images:
        raise ValueError("images is empty: nothing to draw")
    if len(dets) != len(images):
        raise ValueError(f"{len(images)} images but {len(dets)} detection entries")
    if gts is not None and len(gts) != len(images):
        raise ValueError(f"{len(images)} images but {len(gts)} ground-truth entries")
    if int(ncols) < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    imgs = [_check_image(im) for im in images]
    cell_h = max(im.shape[0] for im in imgs)
    cell_w = max(im.shape[1] for im in imgs)
    ncols = min(int(ncols), len(imgs))
    nrows = math.ceil(len(imgs) / ncols)
    fig = Figure(figsize=(ncols * cell_w / DPI, nrows * cell_h / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    for i, img in enumerate(imgs):
        r, c = divmod(i, ncols)
        ax = fig.add_axes([c / ncols, 1 - (r + 1) / nrows, 1 / ncols, 1 / nrows])
        bboxes, scores, labels = _split_det(dets[i], i)
        gtb, gtl = _split_gt(gts[i] if gts is not None else None, i)
        draw_detections(img, bboxes, scores, labels, class_names, thresh=thresh,
                        gt_bboxes=gtb, gt_labels=gtl, ax=ax)
    _savefig(fig, path)
    return path


def save_detections(image, bboxes, scores, labels, class_names, path, thresh=0.3,
                    gt_bboxes=None, gt_labels=None):
    """One image with its detections to a PNG of the image's own size (W x H). Returns path."""
    ax = draw_detections(image, bboxes, scores, labels, class_names, thresh=thresh,
                         gt_bboxes=gt_bboxes, gt_labels=gt_labels)
    _savefig(ax.figure, path)
    return path


def _savefig(fig, path):
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fig.savefig(path, dpi=DPI, format='png')


# ----------------------------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------------------------
def _is_number(v):
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) \
        and math.isfinite(float(v))


def _series(records, key):
    """(epochs, values) of the records that hold a finite number under ``key``."""
    pts = [(float(r['epoch']), float(r[key])) for r in records if _is_number(r.get(key))]
    return [p[0] for p in pts], [p[1] for p in pts]


def _curve_keys(records):
    """Loss keys (name contains 'loss') and metric keys (mAP/AP and d2l's err/mae), in order."""
    keys = []
    for r in records:
        keys.extend(k for k in r if k not in keys)
    losses = [k for k in keys if 'loss' in k.lower()]
    metrics = [k for k in keys if k.lower().endswith('map') or k in ('AP', 'AP50', 'AP75')
               or k in ('class_err', 'bbox_mae')]
    return losses, metrics


def plot_curves(records, path, title=None):
    """Write ``curves.png``: losses per epoch (left) and mAP per epoch (right).

    ``records``: list of dicts as in ``metrics.jsonl``; each needs ``'epoch'``; every key whose
    name contains ``loss`` is drawn on the left, ``map`` (any key ending in ``map``, COCO's
    ``AP``/``AP50``/``AP75``, d2l's ``class_err``/``bbox_mae``) on the right. Non-numeric or
    missing values (e.g. epochs without evaluation) are skipped. The PNG is 1200 x 450 pixels.
    Returns ``path``.
    """
    if not records:
        raise ValueError("records is empty: nothing to plot")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not _is_number(r.get('epoch')):
            raise ValueError(f"records[{i}] must be a dict with a numeric 'epoch', got {r!r}")
    losses, metrics = _curve_keys(records)
    if not losses and not metrics:
        raise ValueError("records have no loss ('*loss*') or mAP ('map') values to plot")
    fig = Figure(figsize=(12, 4.5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax_loss, ax_map = fig.subplots(1, 2)
    _plot_panel(ax_loss, records, losses, 'loss', 'training loss per epoch')
    _plot_panel(ax_map, records, metrics, 'metric', 'validation mAP per epoch')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _savefig(fig, path)
    return path


def _plot_panel(ax, records, keys, ylabel, title):
    drawn = False
    for k in keys:
        xs, ys = _series(records, k)
        if xs:
            ax.plot(xs, ys, marker='o', markersize=3, label=k)
            drawn = True
    ax.set_xlabel('epoch')
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, 'no data', ha='center', va='center', transform=ax.transAxes)

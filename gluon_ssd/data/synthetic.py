"""Built-in synthetic detection dataset: deterministic from a seed, cached on disk in VOC format.

Each image is a cluttered background (two-colour gradient in a random direction, low-frequency
blotches, distractor lines/arcs/outlines) with 0–8 objects of six classes that differ in shape,
colour and texture:

====================  ==========  =================================
class                 colour      texture
====================  ==========  =================================
``ellipse``           red         solid
``rectangle``         blue        diagonal stripes (rotated box)
``triangle``          green       checkerboard
``cross``             yellow      dots
``ring``              magenta     radial-ish gradient (hollow shape)
``star``              cyan        speckle
====================  ==========  =================================

Object size ``sqrt(w * h)`` is log-uniform in 5 %–80 % of the image side, aspect ratio
log-uniform in [1/2.5, 2.5]; objects lie fully inside the image. Pixel noise is added last.

Boxes. Objects are drawn without anti-aliasing, so every object's pixels are exactly its boolean
mask. The box is the extent of the object's *whole* drawn mask (before later objects are painted
over it), in GluonCV's 0-based inclusive pixels: ``xmin`` = first column, ``xmax`` = last column
(the XML stores them + 1, VOC style, and :class:`~gluon_ssd.data.voc.VOCDetection` subtracts 1).

Occlusion policy. Objects are painted in order; a candidate placement is rejected (and re-drawn,
up to 30 tries, then the object is left out) if it would leave any earlier object with less than
50 % of its pixels visible. Hence every labelled object is at least half visible, nothing is
dropped after drawing, and ``difficult`` is always 0.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

from gluon_ssd.data.voc import VOCDetection

__all__ = ["SYNTHETIC_CLASSES", "synthetic_home", "synthetic_voc", "render_sample",
           "SyntheticDetection"]

SYNTHETIC_CLASSES = ("ellipse", "rectangle", "triangle", "cross", "ring", "star")
_COLOURS = np.array([(215, 40, 40), (40, 70, 220), (40, 170, 60), (235, 210, 40),
                     (200, 50, 200), (40, 200, 215)], dtype=np.float32)
_MIN_VISIBLE = 0.5
_FORMAT_VERSION = 1
_SPLIT_CODES = {"train": 0, "val": 1}


def synthetic_home():
    """Directory holding the synthetic datasets: ``$GLUON_SSD_HOME/synthetic`` if the variable is
    set, else ``~/.cache/gluon_ssd/synthetic`` (a ``Path``; not created here)."""
    base = os.environ.get("GLUON_SSD_HOME")
    base = Path(base).expanduser() if base else Path.home() / ".cache" / "gluon_ssd"
    return base / "synthetic"


# ----------------------------------------------------------------------------- drawing
def _background(rng, size):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    c0, c1 = rng.uniform(30, 225, size=(2, 3)).astype(np.float32)
    img = c0 + t[..., None] * (c1 - c0)
    low = rng.normal(0, 25, size=(6, 6, 3)).astype(np.float32)  # low-frequency blotches
    img += cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC)
    return img


def _distractors(rng, img, size):
    for _ in range(rng.integers(3, 12)):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        kind = rng.integers(0, 3)
        thick = int(rng.integers(1, 4))
        p = rng.integers(0, size, size=4)
        if kind == 0:
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), colour, thick)
        elif kind == 1:
            axes = (int(rng.integers(4, size // 4)), int(rng.integers(4, size // 4)))
            cv2.ellipse(img, (int(p[0]), int(p[1])), axes, float(rng.uniform(0, 180)), 0,
                        float(rng.uniform(60, 300)), colour, thick)
        else:
            w, h = rng.integers(4, size // 5, size=2)
            cv2.rectangle(img, (int(p[0]), int(p[1])), (int(p[0] + w), int(p[1] + h)),
                          colour, thick)


def _shape_mask(cls, w, h, rng):
    """Boolean mask (h, w) of one object of class ``cls`` filling its w x h frame."""
    m = np.zeros((h, w), np.uint8)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    name = SYNTHETIC_CLASSES[cls]
    if name == "ellipse":
        cv2.ellipse(m, (int(round(cx)), int(round(cy))), (max(w // 2, 1), max(h // 2, 1)),
                    0, 0, 360, 1, -1, cv2.LINE_8)
    elif name == "rectangle":
        ang = rng.uniform(-25, 25)
        rw, rh = w / (1 + 0.3 * abs(ang) / 25), h / (1 + 0.3 * abs(ang) / 25)
        pts = cv2.boxPoints(((cx, cy), (rw, rh), ang))
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    elif name == "triangle":
        apex = rng.uniform(0.2, 0.8) * (w - 1)
        pts = np.array([[apex, 0], [0, h - 1], [w - 1, h - 1]])
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    elif name == "cross":
        bw, bh = max(int(w * 0.34), 1), max(int(h * 0.34), 1)
        m[:, (w - bw) // 2:(w - bw) // 2 + bw] = 1
        m[(h - bh) // 2:(h - bh) // 2 + bh, :] = 1
    elif name == "ring":
        cv2.ellipse(m, (int(round(cx)), int(round(cy))), (max(w // 2, 1), max(h // 2, 1)),
                    0, 0, 360, 1, -1, cv2.LINE_8)
        iw, ih = int(w * 0.27), int(h * 0.27)
        if iw >= 1 and ih >= 1:
            cv2.ellipse(m, (int(round(cx)), int(round(cy))), (iw, ih), 0, 0, 360, 0, -1,
                        cv2.LINE_8)
    else:  # star
        k = np.arange(10)
        rad = np.where(k % 2 == 0, 1.0, 0.45)
        ang = -np.pi / 2 + k * np.pi / 5
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1)
        pts -= pts.min(0)
        pts /= pts.max(0)
        pts *= [w - 1, h - 1]
        cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1, cv2.LINE_8)
    return m.astype(bool)


def _texture(cls, w, h, rng):
    """Float32 (h, w, 3) RGB texture of class ``cls``."""
    base = _COLOURS[cls] * rng.uniform(0.8, 1.15) + rng.normal(0, 10, 3)
    dark = base * 0.45
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    name = SYNTHETIC_CLASSES[cls]
    if name == "ellipse":
        t = np.zeros((h, w), np.float32)
    elif name == "rectangle":
        period = rng.uniform(5, 10)
        t = ((xx + yy) % period < period / 2).astype(np.float32)
    elif name == "triangle":
        cell = max(int(rng.uniform(4, 9)), 2)
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
    elif name == "cross":
        cell = rng.uniform(5, 9)
        t = (((xx % cell) - cell / 2) ** 2 + ((yy % cell) - cell / 2) ** 2
             < (cell / 3.2) ** 2).astype(np.float32)
    elif name == "ring":
        r = np.hypot((xx - w / 2) / max(w, 1), (yy - h / 2) / max(h, 1))
        t = np.clip(1.6 * r, 0, 1)
    else:
        t = (rng.random((h, w)) < 0.3).astype(np.float32)
    return base + t[..., None] * (dark - base)


def render_sample(seed, index, size=256, max_objects=8, split="train", clutter=True):
    """Render one synthetic image deterministically from ``(seed, split, index)``.

    Parameters
    ----------
    seed, index : int
        Dataset seed and image index; the same triple always gives the same image.
    size : int
        Image side in pixels (square images).
    max_objects : int
        Objects per image are uniform in ``0..max_objects`` (fewer if placement fails).
    split : {'train', 'val'}
        Selects an independent random stream.
    clutter : bool
        ``False`` draws objects on a black background without distractors or noise (for tests).

    Returns
    -------
    image : np.ndarray
        ``(size, size, 3)`` uint8 RGB.
    label : np.ndarray
        float32 ``(M, 6)`` ``[xmin, ymin, xmax, ymax, class_id, difficult=0]``, 0-based inclusive
        pixels: the extent of each object's whole drawn mask.
    masks : list of np.ndarray
        ``M`` boolean ``(size, size)`` masks, each object's full drawn pixels.
    """
    rng = np.random.default_rng([int(seed), _SPLIT_CODES.get(split, 2), int(index)])
    img = _background(rng, size) if clutter else np.zeros((size, size, 3), np.float32)
    if clutter:
        _distractors(rng, img, size)
    masks, visible, rows = [], [], []
    for _ in range(int(rng.integers(0, max_objects + 1))):
        cls = int(rng.integers(0, len(SYNTHETIC_CLASSES)))
        for _try in range(30):
            side = size * np.exp(rng.uniform(np.log(0.05), np.log(0.8)))
            ar = np.exp(rng.uniform(-np.log(2.5), np.log(2.5)))
            w = int(np.clip(side * np.sqrt(ar), 6, size))
            h = int(np.clip(side / np.sqrt(ar), 6, size))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            local = _shape_mask(cls, w, h, rng)
            full = np.zeros((size, size), bool)
            full[y0:y0 + h, x0:x0 + w] = local
            if all((vis & ~full).sum() >= _MIN_VISIBLE * m.sum() for vis, m in zip(visible, masks)):
                break
        else:
            continue
        tex = _texture(cls, w, h, rng)
        region = img[y0:y0 + h, x0:x0 + w]
        region[local] = tex[local]
        visible = [vis & ~full for vis in visible] + [full.copy()]
        masks.append(full)
        ys, xs = np.nonzero(local)
        rows.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max(), y0 + ys.max(), cls, 0])
    if clutter:
        img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)
    label = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return image, label, masks


# ----------------------------------------------------------------------------- cache on disk
def _xml(img_id, size, label):
    objs = "".join(
        "<object><name>%s</name><pose>Unspecified</pose><truncated>0</truncated>"
        "<difficult>%d</difficult><bndbox><xmin>%d</xmin><ymin>%d</ymin><xmax>%d</xmax>"
        "<ymax>%d</ymax></bndbox></object>\n"
        % (SYNTHETIC_CLASSES[int(r[4])], int(r[5]), r[0] + 1, r[1] + 1, r[2] + 1, r[3] + 1)
        for r in label)
    return ("<annotation><folder>synthetic</folder><filename>%s.jpg</filename>\n"
            "<size><width>%d</width><height>%d</height><depth>3</depth></size>\n%s</annotation>\n"
            % (img_id, size, size, objs))


def _dataset_name(num_train, num_val, size, seed, max_objects):
    return "shapes-v%d-seed%d-%dpx-train%d-val%d-max%d" % (
        _FORMAT_VERSION, seed, size, num_train, num_val, max_objects)


def synthetic_voc(root=None, num_train=1000, num_val=200, size=256, seed=0, max_objects=8,
                  jpeg_quality=95):
    """Generate (once) and return the synthetic dataset folder in VOC format.

    Parameters
    ----------
    root : str or Path, optional
        Parent directory of the dataset folders; default :func:`synthetic_home`.
    num_train, num_val : int
        Images in the ``train`` and ``val`` splits.
    size : int
        Image side in pixels.
    seed : int
        Generation seed: same arguments → byte-identical files.
    max_objects : int
        Maximum objects per image.
    jpeg_quality : int
        JPEG quality of the stored images (boxes do not depend on it).

    Returns
    -------
    Path
        ``<root>/<name>`` holding ``Annotations/``, ``JPEGImages/``,
        ``ImageSets/Main/{train,val}.txt``, ``classes.txt`` and ``meta.json``; read it with
        ``VOCDetection(path, ['train'])`` (classes come from ``classes.txt``).

    The folder is generated in a temporary sibling directory and renamed into place, so an
    interrupted generation never leaves a partial dataset (a leftover ``.tmp-*`` folder is ignored).
    """
    root = Path(root).expanduser() if root is not None else synthetic_home()
    final = root / _dataset_name(num_train, num_val, size, seed, max_objects)
    if (final / "meta.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-" + final.name + "-", dir=str(root)))
    try:
        for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
            (tmp / sub).mkdir(parents=True)
        params = [int(cv2.IMWRITE_JPEG_QUALITY), int(jpeg_quality)]
        for split, count in (("train", num_train), ("val", num_val)):
            ids = []
            for i in range(count):
                img_id = "%s_%06d" % (split, i)
                image, label, _ = render_sample(seed, i, size, max_objects, split)
                ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], params)
                if not ok:
                    raise RuntimeError("could not encode synthetic image %s" % img_id)
                (tmp / "JPEGImages" / (img_id + ".jpg")).write_bytes(buf.tobytes())
                (tmp / "Annotations" / (img_id + ".xml")).write_text(_xml(img_id, size, label))
                ids.append(img_id)
            (tmp / "ImageSets" / "Main" / (split + ".txt")).write_text(
                "".join(i + "\n" for i in ids))
        (tmp / "classes.txt").write_text("".join(c + "\n" for c in SYNTHETIC_CLASSES))
        (tmp / "meta.json").write_text(json.dumps(
            {"num_train": num_train, "num_val": num_val, "size": size, "seed": seed,
             "max_objects": max_objects, "version": _FORMAT_VERSION,
             "classes": list(SYNTHETIC_CLASSES)}, indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent finisher: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


class SyntheticDetection(VOCDetection):
    """The synthetic dataset as a :class:`~gluon_ssd.data.voc.VOCDetection` (generated on first
    use).

    Parameters
    ----------
    split : {'train', 'val'}
    root, num_train, num_val, size, seed, max_objects :
        As :func:`synthetic_voc`.
    transform : callable, optional
        ``transform(image, label)``.

    Items: ``(image (size, size, 3) uint8 RGB NDArray, label float32 (M, 6) pixels)``, ``M`` in
    0..``max_objects`` (empty images are kept); ``classes == SYNTHETIC_CLASSES``.
    """

    def __init__(self, split="train", root=None, num_train=1000, num_val=200, size=256, seed=0,
                 max_objects=8, transform=None):
        path = synthetic_voc(root, num_train, num_val, size, seed, max_objects)
        super().__init__(path, [split], classes=SYNTHETIC_CLASSES, transform=transform)

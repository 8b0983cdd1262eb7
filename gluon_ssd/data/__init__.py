"""Detection datasets, transforms and batchify for SSD.

Every dataset item is ``(image, label)``: image ``(H, W, 3)`` uint8 RGB ``mx.nd.NDArray``; label
float32 ``np.ndarray (M, 6)`` = ``[xmin, ymin, xmax, ymax, class_id, difficult]`` in pixels;
``dataset.classes`` lists the class names. Bad input policy: see :mod:`gluon_ssd.data._validate`.
"""
from gluon_ssd.data._validate import DatasetError, DatasetWarning, ImageDecodeError, decode_image
from gluon_ssd.data.coco import COCODetection
from gluon_ssd.data.synthetic import (SYNTHETIC_CLASSES, SyntheticDetection, render_sample,
                                      synthetic_home, synthetic_voc)
from gluon_ssd.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, PadLabels, SSDTrainTransform,
                                       SSDValTransform, batchify_fn, detection_batchify,
                                       target_batchify_fn)
from gluon_ssd.data.voc import VOC_CLASSES, VOCDetection

__all__ = ["DatasetError", "DatasetWarning", "ImageDecodeError", "decode_image", "COCODetection",
           "RecordDetection", "pack_dataset", "SYNTHETIC_CLASSES", "SyntheticDetection",
           "render_sample", "synthetic_home", "synthetic_voc", "IMAGENET_MEAN", "IMAGENET_STD",
           "PadLabels", "SSDTrainTransform", "SSDValTransform", "batchify_fn", "detection_batchify",
           "target_batchify_fn", "VOC_CLASSES", "VOCDetection"]


def __getattr__(name):
    # recordio is imported lazily so that ``python -m gluon_ssd.data.recordio`` does not find the
    # module already imported by this package (runpy warns about that).
    if name in ("RecordDetection", "pack_dataset"):
        from gluon_ssd.data import recordio
        return getattr(recordio, name)
    raise AttributeError("module 'gluon_ssd.data' has no attribute %r" % name)

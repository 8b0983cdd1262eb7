"""gluon-ssd: the SSD (Single Shot MultiBox Detector) as MXNet Gluon HybridBlocks.

The public API, with GluonCV's calling conventions wherever GluonCV has the same class::

    from gluon_ssd import get_model, SSDTargetGenerator, SSDMultiBoxLoss
    net = get_model('ssd_300_vgg16_atrous_voc')           # or 'tiny_ssd', see list_models()

Conventions (see docs/DESIGN.md): boxes are corner format ``(xmin, ymin, xmax, ymax)`` in pixels
of the network input, anchors are center format ``(cx, cy, w, h)`` in pixels, shape (1, N, 4);
class logits are (B, N, C+1) with background at index 0; label padding is -1.
Datasets, transforms, metrics and drawing live in ``gluon_ssd.data`` (opened by
``gluon_ssd.data.build``), ``gluon_ssd.metrics`` and ``gluon_ssd.viz``; trained models are loaded by
``gluon_ssd.model.io.load_model``; evaluation in ``gluon_ssd.evaluate``; training in
``gluon_ssd.engine`` and ``train_ssd.py``; bfloat16 mixed precision on CPU
(``SSD.set_precision('bfloat16')``) in ``gluon_ssd.precision``. A problem the user can fix raises
``gluon_ssd.errors.UserError``.
"""
__version__ = "0.1.0"

from gluon_ssd.anchors import AnchorGenerator, ssd_sizes
from gluon_ssd.coder import (BoxDecoder, BoxEncoder, DetectionHead, MultiClassDecoder,
                             MultiPerClassDecoder, center_to_corner, corner_to_center)
from gluon_ssd.loss import MultiBoxLossTerms, SSDMultiBoxLoss
from gluon_ssd.model import (COCO_CLASSES, SSD, VOC_CLASSES, ConvPredictor, DownSampleBlock,
                             L2Normalization, concat_preds, flatten_pred, get_model,
                             get_model_list, list_models)
from gluon_ssd.precision import PrecisionMixin, to_bfloat16
from gluon_ssd.target import SSDTargetGenerator

__all__ = [
    'get_model', 'get_model_list', 'list_models', 'SSD', 'SSDTargetGenerator', 'SSDMultiBoxLoss',
    'MultiBoxLossTerms', 'MultiClassDecoder', 'MultiPerClassDecoder', 'DetectionHead',
    'AnchorGenerator', 'ssd_sizes', 'BoxEncoder', 'BoxDecoder', 'corner_to_center',
    'center_to_corner', 'ConvPredictor', 'DownSampleBlock', 'L2Normalization', 'flatten_pred',
    'concat_preds', 'VOC_CLASSES', 'COCO_CLASSES', 'to_bfloat16', 'PrecisionMixin',
]

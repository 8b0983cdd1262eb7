"""SSD networks: building blocks, backbones, the SSD block and the model zoo."""
from gluon_ssd.model.blocks import (ConvPredictor, DownSampleBlock, L2Normalization,
                                    concat_preds, flatten_pred)
from gluon_ssd.model.backbones import (ExpandedBackboneFeatures, TinySSDFeatures,
                                       VGGAtrousFeatures, get_backbone)
from gluon_ssd.model.classes import COCO_CLASSES, VOC_CLASSES
from gluon_ssd.model.ssd import SSD
from gluon_ssd.model.zoo import get_model, get_model_list, get_preset, list_models, model_name

__all__ = ['ConvPredictor', 'DownSampleBlock', 'L2Normalization', 'concat_preds', 'flatten_pred',
           'ExpandedBackboneFeatures', 'TinySSDFeatures', 'VGGAtrousFeatures', 'get_backbone',
           'COCO_CLASSES', 'VOC_CLASSES', 'SSD', 'get_model', 'get_model_list', 'get_preset',
           'list_models', 'model_name']

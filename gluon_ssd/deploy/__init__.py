"""Deployment tools above the model layer: INT8 quantization (MXNet's oneDNN route and NNCF on
the exported ONNX), calibrated on a dataset. The ONNX export itself is
:mod:`gluon_ssd.model.onnx_export`; the runtimes are :mod:`gluon_ssd.model.runtime`."""

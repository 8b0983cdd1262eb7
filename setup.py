"""Installable package for gluon-ssd.

MXNet is deliberately *not* in ``install_requires``: the user picks the wheel that
matches the machine (``mxnet==1.9.1`` for CPU, ``mxnet-cu112==1.9.1`` for CUDA 11.2),
exactly as GluonCV does.  ``scripts/setup_env.sh`` installs the CPU wheel by default.
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "gluon_ssd" / "__init__.py").read_text()).group(1)

setup(
    name="gluon-ssd",
    version=VERSION,
    description="SSD (Single Shot MultiBox Detector) for MXNet Gluon, exact to GluonCV and faster",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["gluon_ssd", "gluon_ssd.*"]),
    python_requires=">=3.10,<3.12",
    install_requires=[
        "gluoncv>=0.10.5,<0.11",
        "numpy>=1.21,<1.24",  # MXNet 1.9.1 uses numpy aliases removed in 1.24
        "matplotlib",
        "pycocotools",
        "opencv-python-headless",
        "Pillow",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest", "nbclient", "nbformat", "ipykernel"],
        # ONNX export, ONNX Runtime / OpenVINO backends, NNCF INT8 (pins: requirements/)
        "deploy": ["onnx>=1.13,<1.14", "protobuf>=3.20,<3.21", "onnxruntime>=1.16",
                   "openvino>=2024.0", "nncf>=2.12"],
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)

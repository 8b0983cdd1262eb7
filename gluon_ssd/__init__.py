"""gluon-ssd: the SSD detector as MXNet Gluon HybridBlocks."""
__version__ = "0.1.0"

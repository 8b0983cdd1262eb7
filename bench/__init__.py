"""Benchmarks of gluon-ssd side by side with GluonCV 0.10.5 and the d2l recipe.

Run ``python -m bench.run`` (``--quick`` for a smoke run); see ``bench/run.py``.
"""

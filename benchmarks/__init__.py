"""Benchmarks and the study (``python -m benchmarks.study``); not installed with the package."""

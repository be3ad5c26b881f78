"""Quantization- and serving-aware fine-tuning workbench."""

__version__ = "0.1.0"

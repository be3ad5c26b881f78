"""Inference benchmarks: llama.cpp for GGUF, torch (each format's own kernels) for the rest, vLLM when present."""

"""`python -m workbench.export.gguf_quantize SRC DST TYPE`: llama.cpp's quantizer in its own process,
so a crash in native code fails one variant instead of the run, and its peak memory can be measured."""

from __future__ import annotations

import ctypes
import sys

import llama_cpp


def main() -> int:
    src, dst, ftype = sys.argv[1:4]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    status = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

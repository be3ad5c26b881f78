"""Loaded at start-up by every Python process that has this folder on PYTHONPATH (tests only): makes
llama.cpp fail inside a child process the way it fails on other machines, e.g. the SIGSEGV of ggml's AMX
kernels on virtualised Xeons (llama.cpp #20824), which the machines running the tests may not have.

WORKBENCH_FAULT is a comma-separated list of WHERE:MATCH:HOW[:JOB] —
  WHERE  decode (llama_decode on a model whose file name contains MATCH) or quantize (a quantization whose
         output file name contains MATCH)
  HOW    segv (a real segmentation fault), hang (sleeps an hour) or raise (MemoryError)
  JOB    only in processes whose command line contains it (a worker's job file: "-check.job", "/eval/")
"""

from __future__ import annotations

import os
import sys

FAULTS = [
    (spec.split(":") + [""])[:4]
    for spec in os.environ.get("WORKBENCH_FAULT", "").split(",")
    if spec and (spec.split(":") + [""])[3] in " ".join(sys.argv)
]


def fail(how: str) -> None:
    import ctypes
    import time

    if how == "segv":
        ctypes.string_at(0)
    if how == "hang":
        time.sleep(3600)
    raise MemoryError("simulated out of memory")


def handle(pointer: object) -> int:
    """A llama.cpp pointer as ctypes returns it (an int) or passes it (a c_void_p)."""
    return pointer if isinstance(pointer, int) else getattr(pointer, "value", None) or 0


def install() -> None:
    import llama_cpp
    import llama_cpp.llama_cpp as native

    loaded: dict[int, str] = {}  # model handle -> its file
    load, decode, quantize = native.llama_model_load_from_file, native.llama_decode, native.llama_model_quantize
    contexts: dict[int, str] = {}
    new_context = native.llama_init_from_model

    def load_model(path, params):  # noqa: ANN001, ANN202
        model = load(path, params)
        if model:
            loaded[handle(model)] = path.decode()
        return model

    def init_context(model, params):  # noqa: ANN001, ANN202
        context = new_context(model, params)
        if context:
            contexts[handle(context)] = loaded.get(handle(model), "")
        return context

    def decode_batch(context, batch):  # noqa: ANN001, ANN202
        path = contexts.get(handle(context), "")
        for where, match, how, _ in FAULTS:
            if where == "decode" and match.lower() in os.path.basename(path).lower():
                fail(how)
        return decode(context, batch)

    def quantize_file(source, destination, params):  # noqa: ANN001, ANN202
        for where, match, how, _ in FAULTS:
            if where == "quantize" and match.lower() in os.path.basename(destination.decode()).lower():
                fail(how)
        return quantize(source, destination, params)

    for module in (native, llama_cpp):
        module.llama_model_load_from_file = load_model
        module.llama_init_from_model = init_context
        module.llama_decode = decode_batch
        module.llama_model_quantize = quantize_file


if FAULTS:
    install()

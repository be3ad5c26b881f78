"""GGUF variants with llama.cpp's own converter (HF -> f16/bf16) and quantizer (-> q8_0, q4_k_m, ...)."""

from __future__ import annotations

import ctypes
import re
import runpy
import struct
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.export import llamacpp_tools
from workbench.export.making import Written
from workbench.workers.child import Channel

# recipe name -> (llama.cpp LLAMA_FTYPE_MOSTLY_* suffix, nominal bits per weight)
GGUF_TYPES: dict[str, tuple[str, float]] = {
    "f16": ("F16", 16),
    "bf16": ("BF16", 16),
    "q8_0": ("Q8_0", 8.5),
    "q6_k": ("Q6_K", 6.56),
    "q5_k_m": ("Q5_K_M", 5.5),
    "q5_0": ("Q5_0", 5.5),
    "q4_k_m": ("Q4_K_M", 4.85),
    "q4_k_s": ("Q4_K_S", 4.58),
    "q4_0": ("Q4_0", 4.5),
    "q3_k_m": ("Q3_K_M", 3.9),
    "q2_k": ("Q2_K", 2.6),
}
FALLBACK = re.compile(
    r"warning: (\S+)\s+- ncols\s+(\d+) not divisible by \d+ \(required for type\s+(\S+)\) "
    r"-> falling back to\s+(\S+)"
)


@dataclass(frozen=True)
class ConvertJob:
    """HF folder -> GGUF file (task `gguf.convert`)."""

    hf_dir: Path
    out: Path
    outtype: str = "f16"  # the converter's --outtype: f16, bf16


@dataclass(frozen=True)
class ConvertLoraJob:
    """PEFT LoRA adapter -> f16 GGUF adapter (task `gguf.convert_lora`)."""

    adapter_dir: Path
    base_dir: Path  # the base model's config, read only
    out: Path


@dataclass(frozen=True)
class QuantizeJob:
    """f16 GGUF -> a quantized one (task `gguf.quantize`)."""

    src: Path
    dst: Path
    ftype: str  # a LLAMA_FTYPE_MOSTLY_* suffix: "Q8_0", "Q4_K_M"
    pure: bool = False  # every tensor in that type, no mixture
    keep_f16: tuple[str, ...] = ()  # "embeddings", "output": those stay f16


def convert(
    hf_dir: Path, out: Path, outtype: str = "f16", *, log: Path | None = None, timeout: float | None = None
) -> workers.Outcome:
    """HF folder -> GGUF with llama.cpp's converter, in a worker named after the file."""
    llamacpp_tools.converter()  # missing tools are refused here, before a worker starts
    job = ConvertJob(hf_dir, out, outtype)
    env = llamacpp_tools.converter_env()
    return workers.run("gguf.convert", job, name=out.name, log=log, timeout=timeout, echo=True, env=env)


def convert_lora(
    adapter_dir: Path, base_dir: Path, out: Path, *, log: Path | None = None, timeout: float | None = None
) -> workers.Outcome:
    """A PEFT LoRA adapter -> GGUF adapter (f16) with llama.cpp's convert_lora_to_gguf.py; `base_dir` gives
    the base model's config (read only, never downloaded)."""
    llamacpp_tools.converter()
    job = ConvertLoraJob(adapter_dir, base_dir, out)
    env = llamacpp_tools.converter_env()
    return workers.run("gguf.convert_lora", job, name=out.name, log=log, timeout=timeout, echo=True, env=env)


def quantize(
    src: Path,
    dst: Path,
    gguf_type: str,
    *,
    pure: bool = False,
    keep_f16: tuple[str, ...] = (),
    log: Path | None = None,
    timeout: float | None = None,
) -> workers.Outcome:
    """f16 GGUF -> `gguf_type` with llama.cpp's quantizer, in a worker named after the file. `pure`: every
    tensor in that type (no mixture: what quantization-aware training trained for), except those named in
    `keep_f16` ("embeddings", "output"), which stay f16."""
    job = QuantizeJob(src, dst, GGUF_TYPES[gguf_type][0], pure, keep_f16)
    return workers.run("gguf.quantize", job, name=dst.name, log=log, timeout=timeout)


def run_converter(script: Path, args: list[str], out: Path) -> Written:
    """One of llama.cpp's converter scripts as its own `__main__` in this worker (started with
    `llamacpp_tools.converter_env()`, so its vendored gguf-py is the one imported); `out` must appear."""
    sys.argv = [str(script), *args]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise RuntimeError(f"{script.name} exited with {exc.code}") from None
    if not out.is_file():
        raise RuntimeError(f"{script.name} wrote no file")
    return Written()


def convert_job(job: ConvertJob, channel: Channel) -> Written:
    """In a worker: llama.cpp's own converter script, HF folder -> f16/bf16 GGUF."""
    args = [str(job.hf_dir), "--outfile", str(job.out), "--outtype", job.outtype]
    return run_converter(llamacpp_tools.converter(), args, job.out)


def convert_lora_job(job: ConvertLoraJob, channel: Channel) -> Written:
    """In a worker: llama.cpp's own adapter converter, PEFT folder -> f16 GGUF adapter."""
    script = llamacpp_tools.converter().with_name("convert_lora_to_gguf.py")
    args = [str(job.adapter_dir), "--base", str(job.base_dir), "--outfile", str(job.out), "--outtype", "f16"]
    return run_converter(script, args, job.out)


def quantize_job(job: QuantizeJob, channel: Channel) -> Written:
    """In a worker: llama.cpp's quantizer, f16 GGUF -> `job.ftype`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{job.ftype}")
    params.pure = job.pure
    if "embeddings" in job.keep_f16:
        params.token_embedding_type = llama_cpp.GGML_TYPE_F16
    if "output" in job.keep_f16:
        params.output_tensor_type = llama_cpp.GGML_TYPE_F16
    status = llama_cpp.llama_model_quantize(str(job.src).encode(), str(job.dst).encode(), ctypes.byref(params))
    if status != 0 or not job.dst.is_file():
        raise RuntimeError(f"llama_model_quantize returned {status}")
    return Written()


def fallbacks(log: str) -> list[dict[str, Any]]:
    """Tensors the quantizer gave another type (rows not a multiple of the block), from its output."""
    return [{"tensor": m[0], "columns": int(m[1]), "wanted": m[2], "got": m[3]} for m in FALLBACK.findall(log)]


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each type a GGUF file holds, from its header. (gguf-py's GGUFReader gets there
    too, but decodes every metadata value first: ~4 s for a file with a 49k-token vocabulary.)"""
    from gguf import GGMLQuantizationType, GGUFValueType

    sizes = {GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
             GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4, GGUFValueType.BOOL: 1,
             GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8}  # fmt: skip
    with open(path, "rb") as handle:

        def number(fmt: str) -> int:
            return struct.unpack(f"<{fmt}", handle.read(struct.calcsize(fmt)))[0]

        def skip(kind: int, count: int = 1) -> None:
            if kind == GGUFValueType.STRING:
                for _ in range(count):
                    handle.seek(number("Q"), 1)
            elif kind == GGUFValueType.ARRAY:
                for _ in range(count):
                    inner = number("I")
                    skip(inner, number("Q"))
            else:
                handle.seek(sizes[GGUFValueType(kind)] * count, 1)

        if handle.read(4) != b"GGUF":
            raise ValueError(f"{path.name} is not a GGUF file")
        number("I")  # version
        tensors, fields = number("Q"), number("Q")
        for _ in range(fields):
            handle.seek(number("Q"), 1)  # the key
            skip(number("I"))
        found: Counter[str] = Counter()
        for _ in range(tensors):
            handle.seek(number("Q"), 1)  # the name
            handle.seek(8 * number("I"), 1)  # the dimensions
            found[GGMLQuantizationType(number("I")).name] += 1
            number("Q")  # the offset
    return dict(found)

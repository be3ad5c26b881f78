"""GGUF variants with llama.cpp's own converter (HF -> f16/bf16) and quantizer (`llama-quantize`: -> q8_0,
q4_k_m, ... on the ladder of `workbench.core.gguf_types`, with an importance matrix and per-tensor types)."""

from __future__ import annotations

import math
import re
import runpy
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.core.common import child_env
from workbench.core.devices import usable_cores
from workbench.core.gguf_types import file_type
from workbench.export import llamacpp_tools
from workbench.export.making import Written
from workbench.workers.child import Channel

# one tensor of `llama-quantize --dry-run`'s listing: its name, its type now and, when it changes, the new one
PLANNED = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =[^(\n]*(?:\((\S+)\))?$", re.M)

# the GGUF metadata key that says how the workbench made a file (llama-quantize writes quantize.imatrix.*)
RECIPE_KEY = "workbench.quantize"
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
    """f16 GGUF -> a quantized one (task `gguf.quantize`), by `llama-quantize`."""

    src: Path
    dst: Path
    ftype: str  # llama-quantize's type: "Q8_0", "Q4_K_M"
    pure: bool = False  # every tensor in that type, no mixture
    keep_f16: tuple[str, ...] = ()  # "embeddings", "output": those stay f16
    imatrix: Path | None = None  # an importance matrix (`llama-imatrix`'s file)
    tensor_types: Path | None = None  # a --tensor-type-file: one `name-regex=ggml_type` a line
    tensor_type: tuple[str, ...] = ()  # --tensor-type values: `name-regex=ggml_type`
    exclude_weights: tuple[str, ...] = ()  # tensors the importance matrix is not used for (--exclude-weights)
    recipe: str | None = None  # written as the file's `workbench.quantize` metadata (at most 127 characters)


@dataclass(frozen=True)
class Quantized:
    """What `gguf.quantize` returns: the quantizer's own time and peak memory (it runs as a program)."""

    seconds: float
    peak_rss_mb: float | None


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
    imatrix: Path | None = None,
    tensor_types: Path | None = None,
    recipe: str | None = None,
    log: Path | None = None,
    timeout: float | None = None,
) -> workers.Outcome:
    """f16 GGUF -> `gguf_type` (a ladder name) with `llama-quantize`, in a worker named after the file.
    `pure`: every tensor in that type (no mixture: what quantization-aware training trained for), except
    those named in `keep_f16` ("embeddings", "output"), which stay f16. `imatrix`: the importance matrix it
    weighs rounding errors with; `tensor_types`: per-tensor overrides; `recipe`: how it was made, in the
    file's metadata."""
    llamacpp_tools.binary("llama-quantize")  # missing tools are refused here, before a worker starts
    job = QuantizeJob(
        src, dst, file_type(gguf_type).ftype, pure, keep_f16, imatrix=imatrix, tensor_types=tensor_types, recipe=recipe
    )
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


def quantize_args(job: QuantizeJob, threads: int) -> list[str]:
    """`llama-quantize`'s command line for the job, run in the importance matrix's folder (`quantize_folder`):
    the file's `quantize.imatrix.file` metadata then names the matrix as it ships, beside the file, not a
    folder of this machine; every other path is absolute."""
    args = ["--pure"] if job.pure else []
    if "embeddings" in job.keep_f16:
        args += ["--token-embedding-type", "f16"]
    if "output" in job.keep_f16:
        args += ["--output-tensor-type", "f16"]
    if job.imatrix is not None:
        args += ["--imatrix", job.imatrix.name]
    if job.tensor_types is not None:
        args += ["--tensor-type-file", str(job.tensor_types.resolve())]
    for override in job.tensor_type:
        args += ["--tensor-type", override]
    for name in job.exclude_weights:
        args += ["--exclude-weights", name]
    if job.recipe is not None:
        if len(job.recipe) > 127:  # llama.cpp's metadata override holds 127 characters
            raise ValueError(f"the recipe metadata is {len(job.recipe)} characters; at most 127 fit")
        args += ["--override-kv", f"{RECIPE_KEY}=str:{job.recipe}"]
    return [*args, str(job.src.resolve()), str(job.dst.resolve()), job.ftype, str(threads)]


def planned_types(f16: Path, gguf_type: str, keep_f16: tuple[str, ...] = ()) -> dict[str, str]:
    """The type `llama-quantize` gives each tensor of `f16` for `gguf_type` (a ladder name), from its
    `--dry-run` (no file written, tensor data not read): GGUF name -> ggml type name ("q4_K", "q5_0", "f32"),
    its mixture rules and fallbacks (rows not a multiple of the block) included."""
    job = QuantizeJob(f16, f16, file_type(gguf_type).ftype, keep_f16=keep_f16)
    options = quantize_args(job, 1)[:-4]  # without source, output, type and threads
    command = [str(llamacpp_tools.binary("llama-quantize")), "--dry-run", *options, str(f16.resolve()), job.ftype]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), stdin=subprocess.DEVNULL)
    said = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"llama-quantize --dry-run exited with {done.returncode}: {said[-1500:]}")
    found = {name: new or now for name, now, new in PLANNED.findall(said)}
    if not found:
        raise RuntimeError(f"llama-quantize --dry-run listed no tensors: {said[-1500:]}")
    return found


def quantize_folder(job: QuantizeJob) -> Path | None:
    return job.imatrix.resolve().parent if job.imatrix is not None else None


def quantize_job(job: QuantizeJob, channel: Channel) -> Quantized:
    """In a worker: `llama-quantize`, f16 GGUF -> `job.ftype`; its output goes to the worker's log."""
    ran = llamacpp_tools.run_tool("llama-quantize", quantize_args(job, usable_cores()), cwd=quantize_folder(job))
    if not job.dst.is_file():
        raise RuntimeError("llama-quantize wrote no file")
    return Quantized(ran.seconds, ran.peak_rss_mb)


def fallbacks(log: str) -> list[dict[str, Any]]:
    """Tensors the quantizer gave another type (rows not a multiple of the block), from its output."""
    return [{"tensor": m[0], "columns": int(m[1]), "wanted": m[2], "got": m[3]} for m in FALLBACK.findall(log)]


@dataclass(frozen=True)
class Tensor:
    """One tensor as a GGUF header lists it."""

    name: str
    dims: tuple[int, ...]  # ggml's order: dims[0] is the row length
    type: str  # its ggml type: "F16", "Q4_K"

    @property
    def count(self) -> int:
        return math.prod(self.dims)


def tensors(path: Path) -> list[Tensor]:
    """The tensors a GGUF file holds, from its header. (gguf-py's GGUFReader gets there too, but decodes every
    metadata value first: ~4 s for a file with a 49k-token vocabulary.)"""
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
        count, fields = number("Q"), number("Q")
        for _ in range(fields):
            handle.seek(number("Q"), 1)  # the key
            skip(number("I"))
        found = []
        for _ in range(count):
            name = handle.read(number("Q")).decode("utf-8")
            dims = tuple(number("Q") for _ in range(number("I")))
            found.append(Tensor(name, dims, GGMLQuantizationType(number("I")).name))
            number("Q")  # the offset
    return found


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each type a GGUF file holds."""
    return dict(Counter(tensor.type for tensor in tensors(path)))

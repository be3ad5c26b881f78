"""GGUF variants with llama.cpp's own converter (HF -> f16/bf16) and quantizer (-> q8_0, q4_k_m, ...)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from workbench.export import llamacpp_tools
from workbench.export.run_measured import Measured, run_measured

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


class ExportFailed(RuntimeError):
    def __init__(self, message: str, output: str = ""):
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"{message}\n{tail}" if tail else message)


def convert(hf_dir: Path, out_file: Path, outtype: str = "f16") -> Measured:
    command = [
        str(llamacpp_tools.converter()),
        str(hf_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
    ]
    result = run_measured(command, env=llamacpp_tools.converter_env())
    if result.returncode != 0 or not out_file.is_file():
        raise ExportFailed(f"convert_hf_to_gguf.py exited with {result.returncode}", result.output)
    return result


def quantize(src: Path, dst: Path, gguf_type: str) -> tuple[Measured, list[dict[str, Any]]]:
    """Quantize; returns the measurement and the tensors that fell back to another type."""
    ftype = GGUF_TYPES[gguf_type][0]
    result = run_measured(["-m", "workbench.export.gguf_quantize", str(src), str(dst), ftype], echo=False)
    if result.returncode != 0 or not dst.is_file():
        raise ExportFailed(f"llama_model_quantize to {gguf_type} failed (exit {result.returncode})", result.output)
    fallbacks = [
        {"tensor": m[0], "columns": int(m[1]), "wanted": m[2], "got": m[3]} for m in FALLBACK.findall(result.output)
    ]
    return result, fallbacks


def tensor_types(path: Path) -> dict[str, int]:
    from gguf import GGUFReader

    return dict(Counter(tensor.tensor_type.name for tensor in GGUFReader(path).tensors))


def chat(path: Path, messages: list[dict[str, str]], max_tokens: int = 48) -> str:
    """Greedy reply through llama.cpp with the chat template embedded in the file."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=1024, n_threads=None, verbose=False)
    try:
        reply = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0.0)
    finally:
        llm.close()
    return reply["choices"][0]["message"]["content"] or ""

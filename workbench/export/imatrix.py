"""An importance matrix for llama.cpp's quantizer, computed by `llama-imatrix` on the f16 GGUF over the text
the model will see: the training split rendered through the chat template as training rendered it (`task`;
the held-out split is never read here), or Python's documentation text that ships in evals/ (`generic`),
so the report can show what calibrating on the task bought.

The context and the number of chunks come from the data: a context that holds nine rows in ten whole, and
every chunk the text fills. An importance matrix is kept in a cache keyed by everything it depends on (the
f16 file's content, the text, context, chunks, llama.cpp's version), so a re-export that changes only its
types reuses it; each run's copy ships beside its variants with its provenance.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.core.devices import usable_cores
from workbench.core.errors import InputError
from workbench.core.fsutil import atomic_write_text
from workbench.core.paths import BUILTIN_EVALS
from workbench.data.dataset import render
from workbench.data.files import read_jsonl
from workbench.export import llamacpp_tools
from workbench.workers.child import Channel

GENERIC_TEXT = BUILTIN_EVALS / "general" / "stdlib_docs.jsonl"
MIN_CONTEXT, MAX_CONTEXT = 32, 512


@dataclass(frozen=True)
class Calibration:
    """The text an importance matrix is computed on, and where it came from."""

    source: str  # task | generic
    text: str
    rows: int  # training rows (task) or documents (generic) in it
    tokens: int  # as the training tokenizer counts them
    context: int
    chunks: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class Provenance:
    """What an importance matrix was computed from (recorded on each variant quantized with it)."""

    source: str
    file: str  # its name beside the variants
    rows: int
    tokens: int  # in the calibration text
    context: int
    chunks: int  # llama-imatrix saw chunks x context tokens
    text_sha256: str
    seconds: float | None  # None: taken from the cache
    peak_rss_mb: float | None  # llama-imatrix's; None: taken from the cache


@dataclass(frozen=True)
class ImatrixJob:
    """`llama-imatrix` over a text file (task `gguf.imatrix`)."""

    model: Path  # the f16 GGUF
    text: Path
    out: Path
    context: int
    chunks: int


@dataclass(frozen=True)
class ImatrixResult:
    seconds: float
    peak_rss_mb: float | None


def split_training(data_dir: Path, measure_rows: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training split's rows as the data stage wrote them (train.jsonl; held-out rows live elsewhere):
    those that calibrate, and the last `measure_rows` (at most a quarter) that quantization choices are
    measured on, which the importance matrix never sees."""
    rows = read_jsonl(data_dir / "train.jsonl")
    kept = min(measure_rows, len(rows) // 4)
    return rows[: len(rows) - kept], rows[len(rows) - kept :]


def generic_texts() -> list[str]:
    return [row["text"] for row in read_jsonl(GENERIC_TEXT)]


def calibration(source: str, texts: list[str], tokenizer: Any) -> Calibration:
    """The texts as one stream, and a context and chunk count that fit it: the context holds nine texts in
    ten whole (a power of two, 32 to 512), and halves until the text fills two chunks (llama-imatrix's
    minimum)."""
    if not texts:
        raise InputError(f"no {source} text to compute an importance matrix on")
    lengths = sorted(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    tokens = sum(lengths)
    p90 = lengths[min(len(lengths) - 1, math.ceil(0.9 * len(lengths)) - 1)]
    context = min(MAX_CONTEXT, max(MIN_CONTEXT, 1 << max(0, p90 - 1).bit_length()))
    while tokens < 2 * context and context > MIN_CONTEXT:
        context //= 2
    if tokens < 2 * context:
        raise InputError(
            f"the {source} calibration text is {tokens} tokens; an importance matrix needs at least {2 * context}"
        )
    text = "".join(t if t.endswith("\n") else t + "\n" for t in texts)
    return Calibration(source, text, len(texts), tokens, context, tokens // context)


def task_calibration(data_dir: Path, tokenizer: Any, limit: int | None, measure_rows: int) -> Calibration:
    """The training split (less the rows choices are measured on) rendered as training rendered it
    (workbench.data.dataset.render)."""
    rows, _ = split_training(data_dir, measure_rows)
    return calibration("task", [render(row, tokenizer) for row in (rows[:limit] if limit else rows)], tokenizer)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def cache_key(model: Path, calib: Calibration) -> str:
    payload = {
        "model": file_sha256(model),
        "text": calib.sha256,
        "context": calib.context,
        "chunks": calib.chunks,
        "llama.cpp": llamacpp_tools.llama_cpp_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def compute(
    model: Path,
    calib: Calibration,
    out: Path,
    cache: Path,
    *,
    log: Path | None = None,
    timeout: float | None = None,
) -> Provenance:
    """The importance matrix of `model` over `calib`, at `out` (from `cache` when it holds one for the same
    inputs), with its provenance beside it (`out` with .json). The text llama-imatrix read stays in the
    cache beside its matrix. Raises when llama-imatrix fails."""
    llamacpp_tools.binary("llama-imatrix")
    kept = cache / f"{cache_key(model, calib)[:32]}.gguf"
    seconds = peak = None
    if not kept.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        text = cache / f"{kept.stem}.txt"
        text.write_text(calib.text, encoding="utf-8")
        partial = kept.with_name(f".tmp-{kept.name}")
        job = ImatrixJob(model, text, partial, calib.context, calib.chunks)
        outcome = workers.run("gguf.imatrix", job, name=out.name, log=log, timeout=timeout)
        result = outcome.value_as(ImatrixResult)  # raises with the worker's error when it failed
        partial.replace(kept)
        seconds, peak = result.seconds, result.peak_rss_mb
    shutil.copyfile(kept, out)
    provenance = Provenance(
        calib.source, out.name, calib.rows, calib.tokens, calib.context, calib.chunks, calib.sha256, seconds, peak
    )
    atomic_write_text(out.with_suffix(".json"), json.dumps(asdict(provenance), indent=2))
    return provenance


def imatrix_job(job: ImatrixJob, channel: Channel) -> ImatrixResult:
    """In a worker: `llama-imatrix` with the chat template's special tokens parsed as tokens (as the training
    tokenizer reads them), no perplexity (not needed, and not free). Run in the text's folder, so the matrix's
    dataset metadata names the text, not a folder of this machine."""
    args = ["-m", str(job.model.resolve()), "-f", job.text.name, "-o", str(job.out.resolve()),
            "-c", str(job.context), "--chunks", str(job.chunks), "--parse-special", "--no-ppl",
            "-t", str(usable_cores())]  # fmt: skip
    ran = llamacpp_tools.run_tool("llama-imatrix", args, cwd=job.text.resolve().parent)
    if not job.out.is_file():
        raise RuntimeError("llama-imatrix wrote no file")
    return ImatrixResult(ran.seconds, ran.peak_rss_mb)

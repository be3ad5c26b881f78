"""Quantized candidates measured against the f16 file they come from. A `Trial` is one `llama-quantize` run
(a file type, an importance matrix or none, per-tensor overrides) whose file is scored by KL divergence to
the f16 model on calibration conversations — rows of the training split the importance matrix did not see;
the held-out split is never read here — and then deleted. One worker runs a list of trials with the
reference's logits computed once; each result is appended to a log as it is measured, so a stopped search
resumes where it stopped. The importance-matrix choice (`export.imatrix: auto`) and the per-tensor search
(`export.search`) measure with this.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.core.devices import usable_cores
from workbench.export import llamacpp_tools
from workbench.export.gguf import QuantizeJob, quantize_args, quantize_folder
from workbench.workers.child import Channel


@dataclass(frozen=True)
class Trial:
    name: str  # unique within a job
    ftype: str  # llama-quantize's type: "Q8_0"
    imatrix: Path | None = None
    tensor_type: tuple[str, ...] = ()  # --tensor-type values: `name-regex=ggml_type`, first match wins
    exclude_weights: tuple[str, ...] = ()  # tensors quantized without the importance matrix

    @property
    def key(self) -> str:
        """What a logged result is reused for: the same trial (its importance matrix by content: the copy a
        re-run of the stage makes lies elsewhere), on the same model and conversations."""
        spec = {**asdict(self), "imatrix": content_key(self.imatrix) if self.imatrix else None}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=8)
def content_key(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Measured:
    name: str
    kld: float  # mean KL(f16 || candidate) over every predicted token
    answer_kld: float | None  # over the answer tokens only (None: no conversation had an answer)
    size: int  # bytes of the candidate file
    seconds: float  # quantizing and measuring it

    @property
    def objective(self) -> float:
        """What choices minimise: the answers' KLD (what training shaped) when there are answers."""
        return self.answer_kld if self.answer_kld is not None else self.kld


@dataclass(frozen=True)
class TrialsJob:
    """Trials on one f16 GGUF (task `gguf.trials`); `log` keeps each result as it is measured."""

    model: Path
    trials: list[Trial]
    sequences: list[list[int]]  # calibration conversations, token ids
    starts: list[int]  # where each one's answer starts
    log: Path
    context: int = 512


@dataclass(frozen=True)
class TrialsResult:
    measured: list[Measured]  # in the job's order
    forwards: int  # passes of a model over the calibration conversations (the reference's included)
    reused: int  # trials taken from the log of an earlier, stopped run
    quantize_peak_mb: float | None  # the largest llama-quantize of this run (None: all reused)


def log_path(cache: Path, model_sha256: str, sequences: list[list[int]]) -> Path:
    """One log per model and conversations: a trial logged there is the same measurement."""
    digest = hashlib.sha256(json.dumps([model_sha256, sequences]).encode()).hexdigest()[:24]
    return cache / "trials" / f"{digest}.jsonl"


def run(job: TrialsJob, *, log: Path | None = None, timeout: float | None = None) -> TrialsResult:
    llamacpp_tools.binary("llama-quantize")
    return workers.run("gguf.trials", job, name=f"{len(job.trials)} trials", log=log, timeout=timeout).value_as(
        TrialsResult
    )


def logged(path: Path) -> dict[str, Measured]:
    """The results a log holds, by trial key (a line cut short by a crash is skipped)."""
    found: dict[str, Measured] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry: dict[str, Any] = json.loads(line)
                key = entry.pop("key")
                found[key] = Measured(**entry)
            except (ValueError, TypeError, KeyError):
                continue
    return found


def trials_job(job: TrialsJob, channel: Channel) -> TrialsResult:
    """In a worker: the reference's logits once, then each trial not in the log quantized, measured,
    logged and deleted."""
    from workbench.eval import fidelity
    from workbench.eval.llamacpp_lm import LlamaCppLM

    done = logged(job.log)
    todo = [trial for trial in job.trials if trial.key not in done]
    forwards = 0
    peak: float | None = None
    if todo:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        if job.log.is_file() and not job.log.read_bytes().endswith(b"\n"):  # a line a crash cut short
            with open(job.log, "a", encoding="utf-8") as out:
                out.write("\n")
        channel.phase("reference logits")
        reference = LlamaCppLM(str(job.model), max_length=job.context)
        cached = list(reference.logits_of(job.sequences))
        reference.close()
        forwards += 1
        candidate = job.log.parent / f".trial-{os.getpid()}.gguf"
        threads = usable_cores()
        for number, trial in enumerate(todo, 1):
            channel.phase(f"trial {number}/{len(todo)}: {trial.name}")
            started = time.monotonic()
            quantize = QuantizeJob(job.model, candidate, trial.ftype, imatrix=trial.imatrix,
                                   tensor_type=trial.tensor_type, exclude_weights=trial.exclude_weights)  # fmt: skip
            folder = quantize_folder(quantize)
            ran = llamacpp_tools.run_tool("llama-quantize", quantize_args(quantize, threads), quiet=True, cwd=folder)
            peak = max(peak or 0.0, ran.peak_rss_mb or 0.0) or None
            model = LlamaCppLM(str(candidate), max_length=job.context)
            try:
                found = fidelity.compare(job.sequences, lambda _: iter(cached), model.logits_of, job.starts)
            finally:
                model.close()
            forwards += 1
            measured = Measured(trial.name, found.kld_mean, found.answer_kld_mean, candidate.stat().st_size,
                                round(time.monotonic() - started, 2))  # fmt: skip
            candidate.unlink()
            with open(job.log, "a", encoding="utf-8") as out:
                out.write(json.dumps({"key": trial.key, **asdict(measured)}) + "\n")
            done[trial.key] = measured
    return TrialsResult([done[trial.key] for trial in job.trials], forwards, len(job.trials) - len(todo), peak)

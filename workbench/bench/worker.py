"""Benchmark one variant on one device in a worker (task `bench.measure`), so its peak memory is its own
and a crash fails one measurement, not the stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from workbench.bench.timing import Settings
from workbench.core.records import Stat
from workbench.workers.child import Channel


@dataclass(frozen=True)
class MeasureJob:
    """One measurement: a variant on a device through a backend, with the recipe's bench settings."""

    variant: str
    format: str
    path: str
    backend: str  # llama.cpp | torch (a format spec's `bench_backend`) | vllm
    device: Literal["cpu", "cuda"]
    threads: int | None  # None: the backend's own (vLLM)
    prompt_tokens: int
    gen_tokens: int
    repetitions: int
    warmup: int
    max_gen_seconds: float | None = None
    vllm_concurrency: list[int] = field(default_factory=list)
    lora: str | None = None  # an adapter variant's GGUF adapter

    @property
    def settings(self) -> Settings:
        return Settings(self.prompt_tokens, self.gen_tokens, self.repetitions, self.warmup, self.max_gen_seconds)


@dataclass(frozen=True)
class Level:
    """vLLM's throughput at one concurrency level."""

    output_tps: float
    requests: int
    seconds: float


@dataclass(frozen=True)
class MeasureResult:
    status: Literal["done", "skipped"]
    error: str | None = None  # why it was skipped
    pp_tps: Stat | None = None
    tg_tps: Stat | None = None
    ttft_ms: Stat | None = None
    tg_tokens: list[int] | None = None  # tokens generated per repetition, when max_gen_seconds cut them short
    peak_vram_mb: float | None = None
    dtype: str | None = None  # what torch computed in
    concurrency: dict[str, Level] | None = None  # vLLM: level -> its throughput
    seconds: float | None = None


def measured(numbers: dict[str, Any], seconds: float) -> MeasureResult:
    """A backend's numbers (`timing.measure`'s, with what the backend adds) as the result."""
    stats = {key: Stat(**numbers[key]) for key in ("pp_tps", "tg_tps", "ttft_ms") if key in numbers}
    levels = {key: Level(**level) for key, level in numbers.get("concurrency", {}).items()}
    return MeasureResult(
        "done",
        pp_tps=stats.get("pp_tps"),
        tg_tps=stats.get("tg_tps"),
        ttft_ms=stats.get("ttft_ms"),
        tg_tokens=numbers.get("tg_tokens"),
        peak_vram_mb=numbers.get("peak_vram_mb"),
        dtype=numbers.get("dtype"),
        concurrency=levels or None,
        seconds=seconds,
    )


def measure_job(job: MeasureJob, channel: Channel) -> MeasureResult:
    settings = job.settings
    started = time.perf_counter()
    if job.backend == "llama.cpp":
        from workbench.bench import llamacpp
        from workbench.core.devices import llama_cpp_offload

        if job.device == "cuda" and not llama_cpp_offload():
            return MeasureResult("skipped", "llama-cpp-python was built without GPU offload")
        assert job.threads is not None
        numbers = llamacpp.bench(job.path, settings, job.threads, gpu=job.device == "cuda", lora=job.lora)
    elif job.backend == "torch":
        from workbench.bench import torch_bench

        assert job.threads is not None
        numbers = torch_bench.bench(job.path, job.format, job.device, settings, job.threads)
    else:
        from workbench.bench import vllm_bench

        numbers = vllm_bench.bench(job.path, settings, job.vllm_concurrency)
    return measured(numbers, round(time.perf_counter() - started, 2))

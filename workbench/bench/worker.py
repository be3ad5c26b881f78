"""Benchmark one variant on one device in a worker (task `bench.measure`), so its peak memory is its own
and a crash fails one measurement, not the stage."""

from __future__ import annotations

import time
from typing import Any

from workbench.bench.timing import Settings
from workbench.workers.child import Channel


def measure_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    settings = Settings.from_job(job)
    started = time.perf_counter()
    if job["backend"] == "llama.cpp":
        from workbench.bench import llamacpp

        if job["device"] == "cuda" and not llamacpp.gpu_offload_available():
            return {"status": "skipped", "error": "llama-cpp-python was built without GPU offload"}
        result = llamacpp.bench(
            job["path"], settings, job["threads"], gpu=job["device"] == "cuda", lora=job.get("lora")
        )
    elif job["backend"] == "torch":
        from workbench.bench import torch_bench

        result = torch_bench.bench(job["path"], job["format"], job["device"], settings, job["threads"])
    else:
        from workbench.bench import vllm_bench

        result = vllm_bench.bench(job["path"], job, job["vllm_concurrency"])
    return {"status": "done", **result, "seconds": round(time.perf_counter() - started, 2)}

"""`python -m workbench.bench.worker JOB.json`: benchmark one variant on one device in its own process,
so its peak memory is its own and a crash fails one measurement, not the stage. Writes JOB's `out`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from workbench.bench.timing import Settings


def run(job: dict[str, Any]) -> dict[str, Any]:
    settings = Settings.from_job(job)
    started = time.perf_counter()
    if job["backend"] == "llama.cpp":
        from workbench.bench import llamacpp

        if job["device"] == "cuda" and not llamacpp.gpu_offload_available():
            return {"status": "skipped", "error": "llama-cpp-python was built without GPU offload"}
        result = llamacpp.bench(job["path"], settings, job["threads"], gpu=job["device"] == "cuda")
    elif job["backend"] == "torch":
        from workbench.bench import torch_bench

        result = torch_bench.bench(job["path"], job["format"], job["device"], settings, job["threads"])
    else:
        from workbench.bench import vllm_bench

        result = vllm_bench.bench(job["path"], job, job["vllm_concurrency"])
    return {"status": "done", **result, "seconds": round(time.perf_counter() - started, 2)}


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    result = run(job)
    Path(job["out"]).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])

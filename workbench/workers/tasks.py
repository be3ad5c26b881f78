"""What a child process may run: each task's function and the words used for it in messages.

A task function takes its job and a `Channel` and returns its result, both dataclasses declared beside it
(`def measure_job(job: MeasureJob, channel: Channel) -> MeasureResult`; `workbench.workers.wire` carries
them as JSON). It runs in a fresh interpreter, so it imports what it needs itself; its module's top level
stays light (the standard library, workbench.core, workers.child), because the parent imports it to build
the job.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    target: str  # "module:function"
    label: str  # what a message calls it: "Q8_0.gguf: <label> crashed (SIGSEGV)"


TASKS: dict[str, Task] = {
    "gguf.convert": Task("workbench.export.gguf:convert_job", "conversion to GGUF"),
    "gguf.quantize": Task("workbench.export.gguf:quantize_job", "quantization"),
    "gguf.imatrix": Task("workbench.export.imatrix:imatrix_job", "importance matrix"),
    "gguf.trials": Task("workbench.export.trials:trials_job", "quantization trials"),
    "gguf.convert_lora": Task("workbench.export.gguf:convert_lora_job", "adapter conversion to GGUF"),
    "qat.grid": Task("workbench.qat.check:grid_job", "grid check"),
    "nf4.export": Task("workbench.export.nf4:export_job", "nf4 export"),
    "gptq.export": Task("workbench.export.gptq:export_job", "GPTQModel export"),
    "format.export": Task("workbench.export.plugin:export_job", "export"),  # a format plugin's `worker_export`
    "variant.check": Task("workbench.export.checks:check_job", "check"),
    "eval.model": Task("workbench.eval.worker:evaluate_job", "evaluation"),
    "bench.measure": Task("workbench.bench.worker:measure_job", "benchmark"),
    "chat.answer": Task("workbench.chat.stream:answer_job", "answer"),
    "doctor.probe": Task("workbench.doctor.probes:probe_job", "probe"),
    "workers.selftest": Task("workbench.workers.selftest:selftest_job", "self-test"),
}

"""Benchmark planning and protocol (the real backends run in the end-to-end test and on a GPU below)."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.bench.timing import Settings, measure
from workbench.core.recipe import Recipe
from workbench.core.records import Variant
from workbench.pipeline.stages.bench import bench_jobs

VARIANTS = [
    Variant("m", "hf", "/m", 16),
    Variant("m-Q8_0.gguf", "gguf", "/q8", 8.5),
    Variant("m-GPTQ", "gptq", "/g", 4),
    Variant("m-NF4", "nf4", "/n", 4.13, status="failed"),
]


def recipe(**bench: object) -> Recipe:
    return Recipe.model_validate({"name": "r", "base_model": "x", "data": {"path": "d.json"}, "bench": bench})


def test_jobs_follow_the_formats_per_target_and_skip_failed_variants() -> None:
    jobs = bench_jobs(VARIANTS, recipe(cpu=["gguf", "hf"], threads=3), cuda=False, vllm=True)
    assert [(j.variant, j.backend, j.device) for j in jobs] == [
        ("m", "torch", "cpu"),
        ("m-Q8_0.gguf", "llama.cpp", "cpu"),
    ]
    assert all(j.threads == 3 and j.prompt_tokens == 512 and j.gen_tokens == 128 for j in jobs)

    on_gpu = bench_jobs(VARIANTS, recipe(cpu=[], gpu=["gguf", "gptq"], threads=2), cuda=True, vllm=True)
    assert [(j.variant, j.backend, j.device, j.threads) for j in on_gpu] == [
        ("m-Q8_0.gguf", "llama.cpp", "cuda", 2),
        ("m-GPTQ", "torch", "cuda", 2),
        ("m-GPTQ", "vllm", "cuda", None),  # vLLM serves GPTQ, not GGUF; it sets its own threads
    ]
    assert on_gpu[2].vllm_concurrency == [1, 8, 32]
    assert bench_jobs(VARIANTS, recipe(), cuda=False, vllm=False)[-1].variant == "m-GPTQ"  # nf4 failed


def test_a_measurement_is_stored_as_it_always_was() -> None:
    """The worker's typed result becomes the store's BenchResult with the same JSON, key for key and in the
    same order, as the dicts it replaced (stored runs read and compare the same); fields added since (the
    served load's open-loop levels and SLO) come after them."""
    from workbench.bench.worker import MeasureResult, measured
    from workbench.pipeline.stages.bench import bench_record

    job = bench_jobs([Variant("m", "hf", "/m", 16)], recipe(cpu=["hf"], threads=2, max_gen_seconds=5), False, False)[0]
    stat = {"median": 2.0, "min": 1.0, "max": 3.0, "samples": [1.0, 2.0, 3.0]}
    numbers = {"pp_tps": stat, "tg_tps": stat, "ttft_ms": stat, "tg_tokens": [3, 4, 5], "dtype": "float32"}
    record = bench_record(job, measured(numbers, 1.5), peak_rss_mb=300.0).to_dict()
    assert list(record.items()) == [
        ("variant", "m"), ("device", "cpu"), ("backend", "torch"), ("status", "done"), ("format", "hf"),
        ("threads", 2), ("prompt_tokens", 512), ("gen_tokens", 128), ("repetitions", 3), ("warmup", 1),
        ("pp_tps", stat), ("tg_tps", stat), ("ttft_ms", stat), ("peak_rss_mb", 300.0), ("peak_vram_mb", None),
        ("concurrency", None), ("seconds", 1.5), ("error", None), ("rates", None), ("slo", None),
        ("max_gen_seconds", 5.0), ("tg_tokens", [3, 4, 5]), ("dtype", "float32"),
    ]  # fmt: skip
    failed = bench_record(job, status="failed", error="m: benchmark crashed").to_dict()
    assert (failed["status"], failed["error"], failed["pp_tps"], failed["seconds"]) == (
        "failed", "m: benchmark crashed", None, None
    )  # fmt: skip
    assert list(failed)[-1] == "max_gen_seconds" and "dtype" not in failed
    skipped = bench_record(job, MeasureResult("skipped", "built without GPU offload")).to_dict()
    assert (skipped["status"], skipped["error"], skipped["seconds"]) == ("skipped", "built without GPU offload", None)


def test_measure_follows_the_warmup_and_repetition_protocol() -> None:
    prompts: list[list[int]] = []
    generated: list[int] = []

    def generate(count: int, deadline: float | None) -> int:
        generated.append(count)
        return count

    result = measure(Settings(prompt_tokens=7, gen_tokens=5, repetitions=3, warmup=2), prompts.append, generate,
                     vocab_size=11)  # fmt: skip
    assert len(prompts) == len(generated) == 5  # warm-up runs are run, not reported
    assert all(len(ids) == 7 and all(0 <= t < 11 for t in ids) for ids in prompts)
    assert prompts[0] != prompts[1]  # a fresh random prompt each time: no prefix cache can help
    assert generated == [5] * 5
    for key in ("pp_tps", "tg_tps", "ttft_ms"):
        stats = result[key]
        assert len(stats["samples"]) == 3 and stats["min"] <= stats["median"] <= stats["max"]
    assert "tg_tokens" not in result


def test_a_slow_generation_stops_at_its_time_limit_and_counts_what_it_made() -> None:
    import time

    from workbench.bench.timing import past

    def generate(count: int, deadline: float | None) -> int:
        for done in range(count):
            if past(deadline, done):
                return done
            time.sleep(0.02)
        return count

    result = measure(Settings(prompt_tokens=3, gen_tokens=1000, repetitions=2, warmup=0, max_gen_seconds=0.1),
                     lambda ids: None, generate, vocab_size=5)  # fmt: skip
    assert all(2 <= n < 20 for n in result["tg_tokens"]), result["tg_tokens"]
    assert 10 < result["tg_tps"]["median"] <= 55  # ~50 tokens/s: the rate of what was made, not of 1000


@pytest.mark.gpu
def test_torch_bench_on_cuda_reports_vram(tiny_model: Path) -> None:
    from workbench.bench import torch_bench

    result = torch_bench.bench(str(tiny_model), "hf", "cuda", Settings(32, 8, 2, 1), threads=1)
    assert result["peak_vram_mb"] > 0 and result["tg_tps"]["median"] > 0


def test_the_open_loop_rates_are_listed_or_reach_past_the_closed_loops_peak() -> None:
    """`rates: auto` offers 1/4 to 5/4 of the best closed-loop requests/s, so the sweep passes saturation;
    listed rates are taken as written; no closed-loop throughput, no automatic rates."""
    from types import SimpleNamespace

    from workbench.pipeline.stages.bench import offered_rates

    closed = [SimpleNamespace(requests_per_s=1.2), SimpleNamespace(requests_per_s=2.0)]
    assert offered_rates("auto", closed) == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert offered_rates([0.3, 4.0], closed) == [0.3, 4.0]
    assert offered_rates("auto", [SimpleNamespace(requests_per_s=0.0)]) == []

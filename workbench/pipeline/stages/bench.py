"""Bench stage: speed and memory of every variant where it would serve. GGUF through llama.cpp on CPU
(and on GPU when llama.cpp was built with it); merged, GPTQ, AWQ and nf4 through torch on CPU and, with
CUDA, on GPU; vLLM throughput when vLLM is installed. One child process per measurement."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import asdict
from functools import partial
from importlib import metadata
from typing import Any

from workbench import workers
from workbench.bench import vllm_bench
from workbench.bench.worker import MeasureJob, MeasureResult
from workbench.core import formats, safe
from workbench.core.devices import gpu_slots, pick_device, usable_cores
from workbench.core.errors import StageFailed
from workbench.core.fsutil import atomic_write_text
from workbench.core.parity import describe_served
from workbench.core.recipe import Recipe
from workbench.core.records import Artifact, BenchResult, Variant
from workbench.data.files import read_jsonl
from workbench.pipeline.stages.base import Stage, StageContext, failure_line


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    """The section, the backends' versions and the machine: numbers from another machine are not reused."""
    versions = {name: version_of(name) for name in ("llama_cpp_python", "gptqmodel", "vllm")}
    return {
        "bench": recipe.bench.model_dump(mode="json", exclude={"timeout_s"}),
        "versions": versions,
        "machine": {"cores": usable_cores(), "device": pick_device("auto"), "node": platform.node()},
    }


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bench_jobs(variants: list[Variant], recipe: Recipe, cuda: bool, vllm: bool) -> list[MeasureJob]:
    section = recipe.bench
    common = section.model_dump(
        include={"prompt_tokens", "gen_tokens", "repetitions", "warmup", "max_gen_seconds", "vllm_concurrency"}
    )
    threads = section.threads or usable_cores()
    jobs = []
    for variant in variants:
        if variant.status != "done":
            continue
        spec = formats.spec(variant.format)
        backend = spec.bench_backend
        lora = variant.meta.get("lora")
        measure = partial(MeasureJob, variant.name, variant.format, variant.path, lora=lora, **common)
        if variant.format in section.cpu:
            jobs.append(measure(backend=backend, device="cpu", threads=threads))
        if cuda and variant.format in section.gpu:
            jobs.append(measure(backend=backend, device="cuda", threads=threads))
            if vllm and spec.vllm:
                jobs.append(measure(backend="vllm", device="cuda", threads=None))
    return jobs


def start_measurement(ctx: StageContext, job: MeasureJob, gpu: str | None = None) -> workers.Running:
    """One measurement in a worker (pinned to one GPU when `gpu` names it)."""
    ctx.say(f"{job.variant} on {job.device} ({job.backend})" + (f", GPU {gpu}" if gpu else ""))
    return ctx.start_worker(
        "bench.measure",
        job,
        name=job.variant,
        log_name=f"{job.variant}-{job.device}-{job.backend}",
        timeout=ctx.recipe.bench.timeout_s,
        env=workers.device_env(gpu),
    )


def bench_record(job: MeasureJob, result: MeasureResult | None = None, **more: Any) -> BenchResult:
    """A measurement as the store records it: the job's settings (max_gen_seconds among the extras, then
    what the backend adds) and the result's numbers; `more`: fields to set (peak memory, a failure)."""
    extra: dict[str, Any] = {"max_gen_seconds": job.max_gen_seconds}
    found: dict[str, Any] = {}
    if result is not None:
        found = {
            "status": result.status,
            "error": result.error,
            "pp_tps": result.pp_tps,
            "tg_tps": result.tg_tps,
            "ttft_ms": result.ttft_ms,
            "peak_vram_mb": result.peak_vram_mb,
            "concurrency": {level: asdict(numbers) for level, numbers in result.concurrency.items()}
            if result.concurrency
            else None,
            "seconds": result.seconds,
        }
        backend_said = {"tg_tokens": result.tg_tokens, "dtype": result.dtype}
        extra |= {key: value for key, value in backend_said.items() if value is not None}
    return BenchResult(
        variant=job.variant,
        device=job.device,
        backend=job.backend,
        format=job.format,
        threads=job.threads,
        prompt_tokens=job.prompt_tokens,
        gen_tokens=job.gen_tokens,
        repetitions=job.repetitions,
        warmup=job.warmup,
        **(found | more),
        extra=extra,
    )


def measurements(ctx: StageContext, jobs: list[MeasureJob]) -> Iterator[tuple[MeasureJob, BenchResult]]:
    """Every job's record: CPU measurements one after another (they would share cores), then GPU ones, one
    per GPU at a time on a machine with several. A failed measurement is recorded; the rest go on."""
    cpu = [job for job in jobs if job.device == "cpu"]
    gpu = [job for job in jobs if job.device != "cpu"]
    runs: list[tuple[list[MeasureJob], list[str | None]]] = [(cpu, [None]), (gpu, [*gpu_slots()] or [None])]
    for batch, slots in runs:
        for job, ended in workers.spread(batch, lambda j, slot: start_measurement(ctx, j, slot), slots):
            try:
                if isinstance(ended, Exception):
                    raise ended
                record = bench_record(job, ended.value_as(MeasureResult), peak_rss_mb=ended.peak_rss_mb)
            except Exception as exc:  # noqa: BLE001 - one failed measurement is recorded, the rest go on
                error = failure_line(job.variant, exc)
                ctx.failures.append(f"{error.splitlines()[0]} (on {job.device}, {job.backend})")
                record = bench_record(job, status="failed", error=error)
            yield job, record


def speed_line(record: BenchResult) -> str:
    if record.pp_tps and record.tg_tps:
        return (
            f"pp{record.prompt_tokens} {record.pp_tps.median:.1f} tok/s, "
            f"tg{record.gen_tokens} {record.tg_tps.median:.1f} tok/s, "
            f"peak RSS {record.peak_rss_mb or 0:.0f} MiB"
        )
    if record.concurrency:
        line = ", ".join(served_level(level, v) for level, v in record.concurrency.items())
        if record.rates:
            held = [float(rate) for rate, v in record.rates.items() if v.get("holds_slo")]
            line += f"; holds the SLO up to {max(held):g} requests/s" if held else "; holds the SLO at no rate tried"
        return line
    return record.status


def serve_load(ctx: StageContext, variants: list[Variant]) -> list[BenchResult]:
    """Each variant of `bench.serve.formats` behind its real server, under the closed-loop load of every
    level; the server is stopped after. A variant that fails is recorded failed and the others go on."""
    from workbench.pipeline import servers
    from workbench.pipeline.candidates import Candidate
    from workbench.serve import backends, load

    section = ctx.recipe.bench.serve
    conversations = [row["messages"][:-1] for row in read_jsonl(ctx.inputs["data"] / "held_out.jsonl")]
    records = []
    for variant in [v for v in variants if v.status == "done" and v.format in section.formats]:
        device = "cuda" if servers.cuda_for(variant.format) else "cpu"
        backend = f"{backends.pick_backend(variant.format, device == 'cuda')} server"
        ctx.say(f"{variant.name}: serving it under load ({backend}, clients {section.concurrency})")
        base = {"variant": variant.name, "device": device, "backend": backend, "format": variant.format}
        candidate = Candidate.of(variant)
        server = None
        try:
            home = ctx.run_dir.parent
            slots = section.slots or max(section.concurrency)
            server = servers.start(
                ctx.store, home, ctx.run_id, candidate, threads=ctx.recipe.bench.threads, slots=slots
            )
            checked = servers.compare_to_chat(ctx.store, home, server, section.parity_prompts, section.max_tokens)
            ctx.say(f"{variant.name}: served parity {describe_served(checked)}")
            if checked["status"] == "failed":
                ctx.failures.append(f"{variant.name}: served parity {describe_served(checked)}")
            endpoint = servers.endpoint(server)
            slo = load.Slo(section.slo.ttft_ms, section.slo.tpot_ms, section.slo.attainment)
            settings = load.Settings(section.requests, section.max_tokens, section.time_limit_s,
                                     section.repetitions, slo, section.ignore_eos)  # fmt: skip
            levels = load.run(endpoint, conversations, section.concurrency, settings)
            if servers.gone(server, within=0):
                raise StageFailed("under load")
            if all(level.errors == level.requests for level in levels):
                raise StageFailed(f"{variant.name}: every request failed ({levels[0].first_error}) — see {server.log}")
            offered = offered_rates(section.rates, levels)
            if offered:
                ctx.say(f"{variant.name}: open loop at {', '.join(f'{r:.2g}' for r in offered)} requests/s")
            at_rates = load.rates(endpoint, conversations, offered, settings) if offered else []
            record = BenchResult.from_dict(
                {**base, "threads": ctx.recipe.bench.threads or usable_cores(), "gen_tokens": section.max_tokens,
                 "repetitions": section.repetitions, "slo": asdict(slo),
                 "concurrency": {str(level.concurrency): level.to_dict() for level in levels},
                 "rates": {f"{level.value:g}": level.to_dict() for level in at_rates} or None}
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - one failed server is recorded, the rest go on
            error = failure_line(variant.name, exc)
            if server is not None and servers.gone(server):
                error = f"{variant.name}: its server died ({error.split(': ', 1)[-1]}) — see {server.log}"
            ctx.failures.append(f"{error.splitlines()[0]} (served, {backend})")
            record = BenchResult.from_dict({**base, "status": "failed", "error": error})
        finally:
            if server is not None:
                servers.stop(ctx.store, server)
        ctx.say(f"{variant.name} served ({backend}): {speed_line(record)}")
        ctx.event("benchmarked", **record.to_dict())
        records.append(record)
    return records


RATE_FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.25)  # `rates: auto`: of the closed loop's peak requests/s


def offered_rates(rates: list[float] | str, closed: list[Any]) -> list[float]:
    """The open loop's rates: as the recipe lists them, or (auto) around the closed loop's peak requests/s,
    from well below it to past it, so the sweep reaches saturation."""
    if not isinstance(rates, str):
        return list(rates)
    peak = max((level.requests_per_s for level in closed), default=0.0)
    return [round(peak * fraction, 3) for fraction in RATE_FRACTIONS] if peak > 0 else []


def served_level(level: str, numbers: dict[str, Any]) -> str:
    line = f"x{level}: {numbers['output_tps']:.0f} tok/s"
    if numbers.get("ttft_p95_ms") is not None:
        line += f", TTFT p95 {numbers['ttft_p95_ms']:.0f} ms"
    if numbers.get("goodput_rps") is not None:
        line += f", goodput {numbers['goodput_rps']:.2f} req/s"
    return line + (f", {numbers['errors']} errors" if numbers.get("errors") else "")


def run(ctx: StageContext) -> list[Artifact]:
    cuda = pick_device("auto") == "cuda"
    if ctx.recipe.bench.gpu and not cuda:
        ctx.say("no CUDA device: GPU benchmarks skipped")
    jobs = bench_jobs(ctx.store.variants(ctx.run_id), ctx.recipe, cuda, cuda and vllm_bench.available())
    records = []
    for job, record in measurements(ctx, jobs):
        ctx.say(f"{job.variant} on {job.device} ({job.backend}): {speed_line(record)}")
        ctx.event("benchmarked", **record.to_dict())
        records.append(record)
    if ctx.recipe.bench.serve.concurrency:
        records += serve_load(ctx, ctx.store.variants(ctx.run_id))
    ctx.store.replace_bench(ctx.run_id, records)
    results = ctx.out / "results.json"
    atomic_write_text(results, safe.json_text({"cuda": cuda, "results": [r.to_dict() for r in records]}, indent=2))
    return [Artifact("bench-results", "bench", results.name, results.stat().st_size)]


STAGE = Stage(name="bench", needs=("data", "export"), key_inputs=key_inputs, run=run)

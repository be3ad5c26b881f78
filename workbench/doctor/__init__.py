"""`workbench doctor`: what a user needs when something native misbehaves — the CPU's features, how
llama.cpp was built, the versions and devices of the backends, free memory and disk — and a tiny piece of
real work through each backend, each in its own worker, saying OK or what crashed and what to do.

`--for RECIPE` marks the backends that recipe needs; the exit status is non-zero when one of them cannot
work (`make run` runs it before the quickstart)."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import psutil

from workbench import workers
from workbench.core import formats
from workbench.core.devices import usable_cores
from workbench.core.preflight import free_disk
from workbench.doctor.probes import ProbeJob, ProbeResult

CPU_FEATURES = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
    "amx_tile", "amx_int8", "amx_bf16", "neon", "asimd", "sve",
)  # fmt: skip
PACKAGES = (
    "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "gptqmodel", "llama_cpp_python",
    "lm_eval", "optimum", "textual",
)  # fmt: skip
BACKENDS = ("torch", "llama.cpp", "bitsandbytes", "gptqmodel", "distributed")
PROBE_TIMEOUT_S = 300  # each probe; on 2 cores the slowest (torch + GPTQModel imports) takes ~10 s
BUILD_RECORD = Path(sys.prefix) / "share" / "workbench" / "llama-cpp-build.json"


@dataclass
class Probe:
    name: str  # "llama.cpp decode q8_0 (cpu)"
    backend: str
    job: ProbeJob
    status: str = "not run"  # done | skipped | failed | crashed | timed_out
    error: str | None = None
    seconds: float | None = None
    result: ProbeResult = field(default_factory=ProbeResult)

    def to_dict(self) -> dict[str, Any]:
        """As the doctor's JSON shows it: of its job and result, what they say."""
        return {**asdict(self), "job": said(self.job), "result": said(self.result)}


def said(record: ProbeJob | ProbeResult) -> dict[str, Any]:
    return {key: value for key, value in asdict(record).items() if value is not None}


@dataclass
class Report:
    machine: dict[str, Any]
    versions: dict[str, str | None]
    llama_build: dict[str, Any] | None
    llama_tools: dict[str, Any] | None
    probes: list[Probe]
    needed: list[str]  # backends the recipe (or, without one, the workbench) needs; only those are probed

    @property
    def failing(self) -> list[str]:
        """Needed backends with a probe that did not work."""
        working = ("done", "skipped")
        return sorted({p.backend for p in self.probes if p.status not in working and p.backend in self.needed})

    def to_dict(self) -> dict[str, Any]:
        probes = [probe.to_dict() for probe in self.probes]
        return {**asdict(self), "probes": probes, "failing": self.failing, "advice": advice(self)}


def cpu_features() -> tuple[str, list[str]]:
    """The CPU's model name and which of the features that matter to the kernels it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                model = value.strip()
            if key.strip() in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return model, [feature for feature in CPU_FEATURES if feature in flags]


def machine(home: Path) -> dict[str, Any]:
    model, features = cpu_features()
    return {
        "cpu": model,
        "arch": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "usable_cores": usable_cores(),
        "features": features,
        "memory_available_gb": round(psutil.virtual_memory().available / 2**30, 1),
        "disk_free_gb": round(free_disk(home) / 2**30, 1),
        "disk_path": str(home),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def llama_build() -> dict[str, Any] | None:
    """How the installed llama-cpp-python was built, as `make install` recorded it."""
    try:
        return json.loads(BUILD_RECORD.read_text())
    except (OSError, ValueError):
        return None


def llama_tools() -> dict[str, Any] | None:
    """How `workbench setup` built llama.cpp's tools (llama-quantize, llama-imatrix, ...), or None."""
    from workbench.export import llamacpp_tools

    return llamacpp_tools.built()


def needed_backends(recipe: Any | None) -> list[str]:
    """The backends a recipe needs: torch always, each wanted format's (its spec's `doctor_backend`),
    bitsandbytes for QLoRA, the process group for several ranks; without a recipe, all of them."""
    if recipe is None:
        return list(BACKENDS)
    needed = {"torch"}
    for spec in formats.specs():
        if any(exporter.wanted(recipe.export) for exporter in spec.exporters):
            needed.add(spec.doctor_backend)
    if recipe.train.method == "qlora":
        needed.add("bitsandbytes")
    if recipe.train.distributed.many:
        needed.add("distributed")
    return [backend for backend in BACKENDS if backend in needed]  # a backend without probes has none to run


def probes_for(cuda: bool, gguf_types: list[str]) -> list[Probe]:
    devices: list[Literal["cpu", "cuda"]] = ["cpu", "cuda"] if cuda else ["cpu"]
    probes = [Probe("llama.cpp build info", "llama.cpp", ProbeJob("llama.cpp info"))]
    probes += [
        Probe(f"llama.cpp decode {kind}", "llama.cpp", ProbeJob("llama.cpp decode", type=kind)) for kind in gguf_types
    ]
    for device in devices:
        probes.append(Probe(f"torch generate ({device})", "torch", ProbeJob("torch", device=device)))
        probes.append(Probe(f"bitsandbytes nf4 ({device})", "bitsandbytes", ProbeJob("bitsandbytes", device=device)))
    probes.append(Probe("gptqmodel 4-bit kernel (cpu)", "gptqmodel", ProbeJob("gptqmodel")))
    group: Literal["cpu", "cuda"] = "cuda" if cuda else "cpu"
    probes.append(Probe(f"process group ({group})", "distributed", ProbeJob("process group", device=group)))
    return probes


def cuda_present() -> bool:
    """An NVIDIA device (the doctor itself never loads torch; the CUDA probes then say whether it works)."""
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def examine(home: Path, recipe: Any | None = None) -> Report:
    """The report without its probes (fast): machine, versions, llama.cpp's recorded build."""
    return Report(machine(home), versions(), llama_build(), llama_tools(), [], needed_backends(recipe))


def run_probes(report: Report, home: Path, gguf_types: list[str], on_probe: Any = None) -> None:
    """Each probe of a needed backend in its own worker (logs in <home>/doctor/)."""
    for probe in probes_for(cuda_present(), gguf_types):
        if probe.backend not in report.needed:
            continue
        slug = "".join(c if c.isalnum() or c in "._-" else "-" for c in probe.name)
        log = home / "doctor" / f"{slug}.log"
        outcome = workers.run("doctor.probe", probe.job, name=probe.name, log=log, timeout=PROBE_TIMEOUT_S)
        probe.status, probe.error, probe.seconds = outcome.status, outcome.error, outcome.seconds
        if outcome.ok:
            probe.result = outcome.value_as(ProbeResult)
        if probe.result.skipped is not None:
            probe.status = "skipped"
        report.probes.append(probe)
        if on_probe:
            on_probe(probe)


def gguf_types_of(recipe: Any | None) -> list[str]:
    """The quantized GGUF types to decode: the recipe's, or the quickstart's."""
    types = sorted(set(recipe.export.gguf) - {"f16", "bf16"}) if recipe is not None else []
    return types or ["q8_0", "q4_k_m"]


def probe_line(probe: Probe) -> str:
    mark = "OK" if probe.status == "done" else probe.status.upper().replace("_", " ")
    text = f"  {probe.name:32} {mark:9} {probe.seconds or 0:5.1f} s"
    if probe.status in ("done", "skipped"):
        return f"{text}  {probe.result.detail or probe.result.skipped or ''}"
    return f"{text}\n      {probe.error}"


def system_info(report: Report) -> str:
    info = next((p.result.system_info for p in report.probes if p.job.probe == "llama.cpp info"), None)
    return info or (report.llama_build or {}).get("system_info") or ""


def advice(report: Report) -> list[str]:
    """What to do about each needed backend that does not work."""
    lines = []
    failing = set(report.failing)
    amx_cpu = any(f.startswith("amx") for f in report.machine["features"])
    if "llama.cpp" in failing:
        if amx_cpu and "AMX_INT8" in system_info(report):
            lines.append(
                "llama.cpp was built with Intel AMX kernels, which crash on virtualised Sapphire/Granite Rapids CPUs "
                "(llama.cpp issue #20824). Rebuild it without them: `make llama-cpp` (native, AMX off)."
            )
        else:
            lines.append(
                "llama.cpp's CPU kernels fail here. Rebuild llama-cpp-python without this CPU's own extensions: "
                "`make llama-cpp LLAMA_CMAKE_ARGS=-DGGML_NATIVE=OFF`, then run `workbench doctor` again."
            )
    if "bitsandbytes" in failing:
        lines.append("bitsandbytes does not work here: use train.method: lora and export.nf4: false.")
    if "gptqmodel" in failing:
        lines.append("GPTQModel does not work here: set export.gptq: false and export.awq: false.")
    if "distributed" in failing:
        lines.append(
            "Two processes could not train together here (see the probe's log): set train.distributed.processes: 1,"
            " or on GPUs check NCCL (`NCCL_DEBUG=INFO`) and that the rendezvous port is free."
        )
    if "torch" in failing:
        lines.append("torch itself fails: reinstall the environment (`rm -rf .venv && make install`).")
    return lines


def header_lines(report: Report) -> list[str]:
    m = report.machine
    build, tools = report.llama_build, report.llama_tools
    return [
        f"machine   {m['cpu']} · {m['arch']} · {m['usable_cores']} usable cores · {m['system']}",
        f"cpu       {' '.join(m['features']) or '(none of the features the kernels look for)'}",
        f"memory    {m['memory_available_gb']} GiB available · disk {m['disk_free_gb']} GiB free in {m['disk_path']}",
        f"python    {m['python']} · " + " · ".join(f"{k} {v or '-'}" for k, v in report.versions.items()),
        f"llama.cpp built by `make install` with CMAKE_ARGS: {build.get('cmake_args') or '(defaults)'}"
        if build
        else "llama.cpp build flags: not recorded (installed outside `make install`)",
        f"llama.cpp tools {', '.join(tools['tools'])} built by `workbench setup` in {tools['seconds']} s against"
        f" {tools['libraries']}"
        if tools
        else "llama.cpp tools: not built; run `workbench setup`",
    ]


def verdict_lines(report: Report) -> list[str]:
    info = system_info(report)
    lines = [f"\nllama.cpp system info: {info}"] if info else []
    if not report.failing:
        return [*lines, f"\nok: every backend this needs works here ({', '.join(report.needed)})"]
    lines.append(f"\nNOT OK: {', '.join(report.failing)} cannot work here")
    return lines + [f"  - {line}" for line in advice(report)]

"""Model formats: one record per format (`FormatSpec`) and their registry (`FORMATS`).

A format is what `Variant.format` says: `hf` (the merged 16-bit model; base models too), `gguf`
(llama.cpp; an adapter variant is a `gguf` variant with `meta["lora"]`, its GGUF adapter on the base file,
made by the gguf spec's second exporter), `gptq`, `awq` and `nf4`. Whatever differs between formats — how
the export stage makes them, how eval, bench and chat load them, which server serves them, where the
report recommends them, what their model card says — is read from the spec; no other module asks which
format a variant is.

Code is named, never imported here: "module:function" strings resolved when called (as
`workbench.workers.tasks` names its tasks), so this foundation module loads no engine and the TUI can read
it without torch. A format from outside the workbench is added with `register`, or as an entry point of
the `workbench.formats` group (a `FormatSpec`), which worker processes find too.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from workbench.core.errors import InputError

if TYPE_CHECKING:
    from workbench.core.recipe import ExportSection

PLUGIN_GROUP = "workbench.formats"
Target = Literal["cpu", "gpu"]


class FormatError(InputError):
    """A model format nobody registered, or a spec that cannot be registered."""


@dataclass(frozen=True)
class Estimate:
    """What an exporter needs, per parameter of the merged model (the export stage's preflight)."""

    bits: float  # on disk: every file it writes, a source it keeps in the work folder included
    memory: float  # bytes in memory at its peak


@dataclass(frozen=True)
class Exporter:
    """One way the export stage makes variants of a format."""

    run: str  # "module:function", (workbench.export.making.ExportContext) -> list[Variant]
    wanted: Callable[[ExportSection], bool]  # whether the recipe's export section asks for it
    estimate: str | None = None  # "module:function", (ExportSection) -> Estimate; None: nothing to reserve


# The model card's "How to run" for each runtime: markdown, its last code block left open ({repo}, {file})
TRANSFORMERS_RUN = (
    "```python",
    "from transformers import AutoModelForCausalLM, AutoTokenizer",
    'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
    'model = AutoModelForCausalLM.from_pretrained("{repo}")',
    "```",
    "```bash",
    "vllm serve {repo}   # or: transformers serve {repo}",
)
LLAMA_CPP_RUN = (
    "```bash",
    "huggingface-cli download {repo} {file} --local-dir .",
    "llama-server -m {file} --jinja --host 127.0.0.1 --port 8080   # the chat template in the file",
)


@dataclass(frozen=True)
class FormatSpec:
    """Everything the workbench does differently for one format. The defaults are a transformers
    checkpoint's (a folder `AutoModelForCausalLM` loads), so such a format names only what differs."""

    name: str  # the `Variant.format` value
    exporters: tuple[Exporter, ...] = ()  # none for `hf`: the merge stage makes the merged model
    # a plugin exporter's step run in a worker by the task `format.export` ("module:function", (FormatExportJob,
    # channel) -> dict | None, `workbench.export.plugin`); the built-in formats have tasks of their own
    worker_export: str | None = None
    # (path, device, dtype) -> the torch model as it serves; None: not loaded through torch (llama.cpp
    # opens a GGUF file itself, with what each use sets: context, batch, threads)
    loader: str | None = "workbench.export.load:transformers_model"
    cpu_dtype: str = "float32"  # computed in on a CPU (bf16 is emulated on most); on a GPU the checkpoint's
    evaluator: str = "workbench.eval.worker:transformers_model"  # (EvalJob) -> EvalModel: lm-eval's hf LM
    streamer: str = "workbench.chat.stream:torch_stream"  # (AnswerJob, loaded) -> the answer's pieces
    parity: str = "workbench.core.parity:check_hf"  # (Expected, path) -> ParityResult: its own chat template
    bench_backend: str = "torch"  # how the `bench.measure` worker measures it ("torch", "llama.cpp")
    vllm: bool = True  # measured through vLLM too (CUDA with vLLM installed)
    servers: tuple[str, ...] = ("vllm", "transformers")  # server backends, first usable wins (vLLM: CUDA)
    gpu: str = "workbench.core.devices:torch_cuda"  # () -> bool: whether its runtime runs on a GPU here
    target: Target = "gpu"  # where the report recommends it when no benchmark says
    loads_fast: bool = False  # loads in about a second: the chat arena asks it by default
    library: str = "transformers"  # the model card's `library_name`
    hub_tag: str | None = None  # the card's quantizer tag ("gptq", "bitsandbytes"); None: not quantized
    template_where: str = "in the tokenizer's `chat_template`"  # where its chat template travels
    how_to_run: tuple[str, ...] = TRANSFORMERS_RUN
    doctor_backend: str = "torch"  # the doctor's backend (its probes) that must work to use it

    def compute_dtype(self, device: str) -> str:
        """The dtype it computes in on `device` ("auto": the checkpoint's own)."""
        return self.cpu_dtype if device == "cpu" else "auto"

    def quantized(self, bits: float) -> bool:
        """Whether a variant of this format with `bits` bits per weight is a quantization of its parent."""
        return self.hub_tag is not None and bits < 16

    def gpu_available(self) -> bool:
        """Whether its runtime would run on a GPU here."""
        return bool(resolve(self.gpu)())


HF = FormatSpec(name="hf")
GGUF = FormatSpec(
    name="gguf",
    exporters=(
        Exporter(
            "workbench.export.gguf_variants:export_files",
            lambda section: bool(section.gguf),
            "workbench.export.gguf_variants:estimate",
        ),
        Exporter("workbench.export.gguf_variants:export_adapters", lambda section: bool(section.adapter_gguf)),
    ),
    loader=None,
    evaluator="workbench.eval.worker:llamacpp_model",
    streamer="workbench.chat.stream:gguf_stream",
    parity="workbench.core.parity:check_gguf",
    bench_backend="llama.cpp",
    vllm=False,
    servers=("llama.cpp",),
    gpu="workbench.core.devices:llama_cpp_offload",
    target="cpu",
    loads_fast=True,
    library="gguf",
    hub_tag="gguf",
    template_where="embedded in the GGUF file",
    how_to_run=LLAMA_CPP_RUN,
    doctor_backend="llama.cpp",
)
NF4 = FormatSpec(
    name="nf4",
    exporters=(Exporter("workbench.export.nf4:export_variants", lambda s: s.nf4, "workbench.export.nf4:estimate"),),
    loader="workbench.export.nf4:load",
    vllm=False,
    hub_tag="bitsandbytes",
    doctor_backend="bitsandbytes",
)
GPTQ = FormatSpec(
    name="gptq",
    exporters=(Exporter("workbench.export.gptq:export_gptq", lambda s: s.gptq, "workbench.export.gptq:estimate"),),
    cpu_dtype="bfloat16",  # GPTQModel's CPU kernel (TorchAtenLinear) measured 5x slower in fp32 than in bf16
    hub_tag="gptq",
    doctor_backend="gptqmodel",
)
AWQ = FormatSpec(
    name="awq",
    exporters=(Exporter("workbench.export.gptq:export_awq", lambda s: s.awq, "workbench.export.gptq:estimate"),),
    hub_tag="awq",
    doctor_backend="gptqmodel",
)

# Registration order is the export order: the order variants are made, stored and listed.
FORMATS: dict[str, FormatSpec] = {spec.name: spec for spec in (HF, GGUF, NF4, GPTQ, AWQ)}
# The built-in formats in the order recipes list them (the defaults of bench.cpu and bench.gpu: that order
# is in every stored bench cache key) and the ones served under load by default (bench.serve.formats).
RECIPE_FORMATS = ("hf", "gguf", "gptq", "awq", "nf4")
SERVED_FORMATS = ("gguf", "hf")
NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
TARGET = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_plugins_loaded = False


def resolve(target: str) -> Any:
    """A "module:function" name as the object it names, imported now (a format's code, a worker's task)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register(spec: FormatSpec) -> FormatSpec:
    """Add a format (a test's, a plugin's). Its names are checked here; its code is imported when used."""
    if not NAME.fullmatch(spec.name):
        raise FormatError(f"format name {spec.name!r}: lower-case letters, digits, '.', '_' or '-', up to 32")
    if spec.name in FORMATS:
        raise FormatError(f"format {spec.name!r} is registered already")
    targets = [spec.loader, spec.worker_export, spec.evaluator, spec.streamer, spec.parity, spec.gpu]
    targets += [t for exporter in spec.exporters for t in (exporter.run, exporter.estimate)]
    for target in targets:
        if target is not None and not TARGET.fullmatch(target):
            raise FormatError(f'format {spec.name!r}: {target!r} is not a "module:function" name')
    FORMATS[spec.name] = spec
    return spec


def load_plugins() -> None:
    """The `workbench.formats` entry points, registered once per process (a broken one is an error each
    time it is asked for, not a format that silently goes missing after the first)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    for point in entry_points(group=PLUGIN_GROUP):
        try:
            found = point.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not a traceback from importlib
            raise FormatError(f"format plugin {point.value!r} could not be loaded: {exc}") from exc
        if not isinstance(found, FormatSpec):
            raise FormatError(f"format plugin {point.value!r} is a {type(found).__name__}, not a FormatSpec")
        if found.name not in FORMATS:
            register(found)
    _plugins_loaded = True


def find(name: str) -> FormatSpec | None:
    """The spec of `name`, or None when nothing registers it (a record made with a plugin now absent)."""
    if name not in FORMATS:
        load_plugins()
    return FORMATS.get(name)


def spec(name: str) -> FormatSpec:
    found = find(name)
    if found is None:
        raise FormatError(f"unknown model format {name!r}; known: {', '.join(FORMATS)}")
    return found


def specs() -> list[FormatSpec]:
    """Every registered format, plugins included, in registration order."""
    load_plugins()
    return list(FORMATS.values())


def compute_dtype(model_format: str, device: str) -> str:
    return spec(model_format).compute_dtype(device)


def load_for_inference(path: str, model_format: str, device: str) -> Any:
    """The model as it serves on `device` (eval, bench and chat all load through here): the format's
    loader, in the dtype the workbench computes that format in there."""
    found = spec(model_format)
    if found.loader is None:
        raise FormatError(f"{model_format} files are not loaded through torch; their runtime opens them")
    return resolve(found.loader)(path, device, found.compute_dtype(device))

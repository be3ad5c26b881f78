"""A format is one record (`workbench.core.formats`): the registry's rules, one loader for eval, bench and
chat, no per-format branches anywhere else — and a format defined only in this module (STAND_IN, a copy
of the merged model) going through export, eval, bench, chat, the serve plan, the report and the card."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from workbench.core import formats
from workbench.core.formats import Estimate, Exporter, FormatSpec

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "workbench"


# --- the stand-in format: its spec, its exporter (stage side) and its worker step ---------------------------


def estimate(section: Any) -> Estimate:
    return Estimate(bits=16, memory=0)


def export_copies(ctx: Any) -> list[Any]:
    """The exporter: one variant, the merged model copied by a worker (task `format.export`), checked."""
    from workbench.core.records import Variant
    from workbench.export.making import record_measurement
    from workbench.export.plugin import FormatExportJob, FormatExportResult

    merged = ctx.inputs.merged
    out = ctx.out / f"{merged.name}-COPY"
    variant = Variant(name=out.name, format="stand-in", path=str(out), bits=16, parent=merged.name, quantizer="copy")

    def build(variant: Variant) -> None:
        job = FormatExportJob("stand-in", Path(merged.path), out, options={"note": "a copy"})
        outcome = ctx.run_worker("format.export", job, name=variant.name, timeout=ctx.recipe.export.timeout_s)
        ctx.made(outcome, out)
        variant.meta["copied"] = outcome.value_as(FormatExportResult).details
        record_measurement(variant, outcome)
        ctx.check(variant)

    return [ctx.attempt(variant, build)]


def copy_job(job: Any, channel: Any) -> dict[str, Any]:
    """In a worker: the copy (`job`: a `workbench.export.plugin.FormatExportJob`)."""
    shutil.copytree(job.merged, job.out)
    return {"files": len(list(job.out.iterdir())), "note": job.options["note"]}


# a transformers checkpoint: every default (the hf loader, lm-eval's hf LM, torch bench, transformers serve)
STAND_IN = FormatSpec(
    name="stand-in",
    exporters=(Exporter("test_formats:export_copies", lambda section: True, "test_formats:estimate"),),
    worker_export="test_formats:copy_job",
)


def plugin_folder(folder: Path, value: str = "test_formats:STAND_IN", name: str = "stand_in_format") -> Path:
    """An installed distribution `name` that declares `value` as a format plugin (an entry point)."""
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{formats.PLUGIN_GROUP}]\nstand-in = {value}\n")
    return folder


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, FormatSpec]:
    """The registry as this test leaves it: registrations and plugin loads undone after."""
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))
    monkeypatch.setattr(formats, "_plugins_loaded", False)
    return formats.FORMATS


@pytest.fixture
def stand_in(registry: dict[str, FormatSpec], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FormatSpec:
    """STAND_IN registered here, and as a plugin every worker this test starts finds."""
    formats.register(STAND_IN)
    path = [str(plugin_folder(tmp_path / "plugin")), str(TESTS), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    return STAND_IN


# --- the registry ------------------------------------------------------------------------------------------


def test_unknown_formats_are_refused_naming_the_known_ones() -> None:
    with pytest.raises(formats.FormatError, match=r"unknown model format 'onnx'; known: hf, gguf, nf4, gptq, awq"):
        formats.spec("onnx")
    assert formats.find("onnx") is None
    from workbench.core.recipe import RecipeError, parse_recipe

    recipe = {"name": "r", "base_model": "x", "data": {"path": "d.json"}, "bench": {"cpu": ["hf", "onnx"]}}
    # as it read when the formats were a Literal, plus any registered plugin's
    choices = "'hf', 'gguf', 'gptq', 'awq' or 'nf4'"
    with pytest.raises(RecipeError, match=re.escape(f"bench.cpu.1: input should be {choices} (got 'onnx')")):
        parse_recipe(recipe)


def test_the_recipe_lists_the_built_in_formats_in_the_order_cache_keys_hold_them() -> None:
    from workbench.core.recipe import FORMATS, SERVED_FORMATS, Recipe

    assert FORMATS == ("hf", "gguf", "gptq", "awq", "nf4")  # bench.cpu / bench.gpu defaults, in stored keys
    assert sorted(FORMATS) == sorted(formats.FORMATS) and set(SERVED_FORMATS) <= set(formats.FORMATS)
    recipe = Recipe.model_validate({"name": "r", "base_model": "x", "data": {"path": "d.json"}})
    assert recipe.bench.model_dump(mode="json")["cpu"] == list(FORMATS)
    assert recipe.bench.serve.formats == ["gguf", "hf"]


def test_every_named_target_of_every_spec_resolves() -> None:
    from workbench.doctor import BACKENDS
    from workbench.report.compare import TARGETS
    from workbench.serve.backends import BACKENDS as SERVERS

    for spec in formats.specs():
        names = [spec.loader, spec.evaluator, spec.streamer, spec.parity, spec.gpu]
        names += [n for e in spec.exporters for n in (e.run, e.estimate)]
        assert all(callable(formats.resolve(name)) for name in names if name), spec.name
        assert set(spec.servers) <= set(SERVERS) and spec.doctor_backend in BACKENDS and spec.target in TARGETS
        assert spec.bench_backend in ("torch", "llama.cpp")


def test_compute_dtypes_and_where_formats_serve() -> None:
    assert formats.compute_dtype("gptq", "cpu") == "bfloat16"  # GPTQModel's CPU kernel is fastest in bf16
    assert [formats.compute_dtype(name, "cpu") for name in ("hf", "awq", "nf4", "gguf")] == ["float32"] * 4
    assert formats.compute_dtype("nf4", "cuda") == "auto"
    from workbench.report.compare import serves_on

    assert [serves_on(name) for name in ("gguf", "hf", "nf4", "gptq", "awq", "onnx")] == ["cpu", *["gpu"] * 4, None]


def test_register_checks_names_and_targets(registry: dict[str, FormatSpec]) -> None:
    with pytest.raises(formats.FormatError, match="registered already"):
        formats.register(FormatSpec(name="gguf"))
    with pytest.raises(formats.FormatError, match="lower-case letters"):
        formats.register(FormatSpec(name="../x"))
    with pytest.raises(formats.FormatError, match=r"'load it' is not a \"module:function\" name"):
        formats.register(FormatSpec(name="x", loader="load it"))
    assert "x" not in registry
    assert formats.register(STAND_IN) is registry["stand-in"] is formats.spec("stand-in")
    with pytest.raises(formats.FormatError, match="not loaded through torch"):
        formats.load_for_inference("x.gguf", "gguf", "cpu")


def test_a_plugin_is_found_through_its_entry_point(registry: dict[str, FormatSpec], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.syspath_prepend(str(plugin_folder(tmp_path / "good")))
    assert formats.spec("stand-in") is STAND_IN  # test_formats is this module: the entry point loads it
    assert formats.specs()[-1] is STAND_IN

    monkeypatch.setattr(formats, "_plugins_loaded", False)
    monkeypatch.syspath_prepend(str(plugin_folder(tmp_path / "bad", "test_formats:estimate", "broken")))
    with pytest.raises(formats.FormatError, match=r"plugin 'test_formats:estimate' is a function, not a FormatSpec"):
        formats.spec("something-else")


def test_the_plugin_export_task_runs_only_a_registered_format(tmp_path: Path) -> None:
    from workbench import workers
    from workbench.export.plugin import FormatExportJob

    job = FormatExportJob("onnx", tmp_path / "merged", tmp_path / "out")
    outcome = workers.run("format.export", job, name="x", log=tmp_path / "x.log", timeout=120)
    assert outcome.status == "failed" and "unknown model format 'onnx'" in (outcome.error or "")
    job = FormatExportJob("hf", tmp_path / "merged", tmp_path / "out")
    outcome = workers.run("format.export", job, name="x", log=tmp_path / "x.log", timeout=120)
    assert outcome.status == "failed" and "format 'hf' has no worker exporter" in (outcome.error or "")


def test_the_plugin_export_task_hands_its_exporter_the_typed_job(stand_in: FormatSpec, tmp_path: Path) -> None:
    """The registered `worker_export` gets the job as its dataclass (paths as paths, the format's options)
    and what it returns comes back as the result's details."""
    from workbench import workers
    from workbench.export.plugin import FormatExportJob, FormatExportResult

    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "config.json").write_text("{}")
    job = FormatExportJob("stand-in", merged, tmp_path / "out", options={"note": "a copy"})
    outcome = workers.run("format.export", job, name="x", log=tmp_path / "x.log", timeout=120)
    assert outcome.value_as(FormatExportResult) == FormatExportResult({"files": 1, "note": "a copy"})
    assert (tmp_path / "out" / "config.json").read_text() == "{}"


# --- no per-format branches outside the registry -----------------------------------------------------------


def mentions_format_names(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Constant) and n.value in names for n in ast.walk(node))


def format_branches(package: Path, names: set[str]) -> list[str]:
    """Comparisons of a format (an expression that says `format`) with format names, and module-level
    tables of format names (`X = {"gguf": ...}`, `Y = ("hf", "gptq")`), outside workbench/core/formats.py."""
    found = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package.parent).as_posix()
        if where == "workbench/core/formats.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                said = [s for s in sides if not isinstance(s, ast.Constant) and "format" in ast.unparse(s)]
                if said and any(mentions_format_names(s, names) for s in sides if s not in said):
                    found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
        for node in tree.body:
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if value is not None and mentions_format_names(value, names):
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_no_module_but_the_registry_branches_on_a_model_format() -> None:
    assert format_branches(PACKAGE, set(formats.FORMATS)) == []


def test_the_branch_check_finds_what_it_forbids(tmp_path: Path) -> None:
    package = tmp_path / "workbench"
    (package / "core").mkdir(parents=True)
    (package / "core" / "formats.py").write_text('TABLE = {"gguf": 1}\n')  # the registry's own: allowed
    (package / "a.py").write_text(
        'LIBRARY = {"gguf": "gguf"}\n'
        "def f(variant, job, args):\n"
        '    if variant.format == "gguf" or job["format"] in ("gptq", "awq"):\n'
        "        return 1\n"
        '    return args.format == "json" or variant.format in section.cpu\n'  # not a model format; the recipe's
    )
    assert format_branches(package, {"gguf", "gptq", "awq"}) == [
        "workbench/a.py:3: variant.format == 'gguf'",
        "workbench/a.py:3: job['format'] in ('gptq', 'awq')",
        "workbench/a.py:1: LIBRARY = {'gguf': 'gguf'}",
    ]


# --- one loader: eval, bench and chat load a model the same way --------------------------------------------


def test_eval_bench_and_chat_load_nf4_the_same_way_through_bitsandbytes_in_fp32(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU: bitsandbytes' 4-bit kernels computing in float32 (what bench and chat ran before; the
    evaluation used to run on dequantized weights instead), for all three."""
    import bitsandbytes as bnb
    import torch

    from workbench.bench import torch_bench
    from workbench.bench.timing import Settings
    from workbench.chat.stream import AnswerJob, torch_stream
    from workbench.core import devices
    from workbench.eval.worker import EvalJob, transformers_model
    from workbench.export import nf4

    path = tmp_path / "nf4"
    nf4.export(tiny_model, path)
    loads: list[tuple[tuple[Any, ...], Any]] = []
    load = formats.load_for_inference

    def recorded(*args: Any) -> Any:
        model = load(*args)
        loads.append((args, model))
        return model

    monkeypatch.setattr(formats, "load_for_inference", recorded)
    monkeypatch.setattr(devices, "pick_device", lambda requested="auto": "cpu")

    job = EvalJob(name="nf4", format="nf4", path=str(path), out=tmp_path / "eval", device="cpu", tasks=[],
                  include=tmp_path / "tasks", include_defaults=False, limit=None, num_fewshot=None, seed=0,
                  batch_size=2, max_length=64, bootstrap_iters=0)  # fmt: skip
    evaluated = transformers_model(job)
    measured = torch_bench.bench(str(path), "nf4", "cpu", Settings(4, 2, 1, 0), threads=1)
    answer = list(torch_stream(AnswerJob(str(path), "nf4", [{"role": "user", "content": "hi"}], 2), lambda: None))

    assert [args for args, _ in loads] == [(str(path), "nf4", "cpu")] * 3
    for _, model in loads:
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers and all(m.compute_dtype is torch.float32 for m in layers)
        assert {p.dtype for p in model.parameters()} <= {torch.float32, torch.uint8}
    assert evaluated.lm.model is loads[0][1] and measured["dtype"] == "float32" and answer


# --- the proof: a format defined only here goes through every stage, the chat, the server plan and the card


@pytest.mark.slow
def test_a_format_defined_only_in_a_test_goes_everywhere(
    stand_in: FormatSpec, tiny_model: Path, tmp_path: Path
) -> None:
    from conftest import addition_rows, write_recipe

    from workbench.core.recipe import load_recipe
    from workbench.core.store import Store
    from workbench.pipeline import candidates
    from workbench.pipeline.runner import run_recipe
    from workbench.report import card, write
    from workbench.serve import backends

    assert not [p for p in PACKAGE.rglob("*.py") if "stand-in" in p.read_text(encoding="utf-8")]  # only here
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(40)))
    recipe = write_recipe(
        tmp_path, tiny_model, data,
        export={"smoke_prompts": 1, "parity_prompts": 2},
        eval={"tasks": ["heldout"], "base": False, "limit": 4, "fidelity_rows": 4},
        bench={"cpu": ["stand-in"], "gpu": [], "max_gen_seconds": 5},
    )  # fmt: skip
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home)
    store = Store(home / "workbench.db")
    merged, copy = store.variants("tiny")

    # export: made by its exporter in a worker, checked like every variant
    assert (copy.format, copy.status, copy.parent) == ("stand-in", "done", merged.name), copy.error
    assert Path(copy.path) == home / "tiny" / "export" / f"{merged.name}-COPY"
    weights = [Path(folder) / "model.safetensors" for folder in (copy.path, merged.path)]
    assert weights[0].read_bytes() == weights[1].read_bytes()
    assert copy.meta["parity"]["status"] == "passed" and isinstance(copy.meta["smoke"][0]["reply"], str)
    assert copy.meta["copied"] == {"files": len(list(Path(copy.path).iterdir())), "note": "a copy"}  # its result
    assert copy.seconds and copy.size == merged.size

    # eval: lm-eval's hf LM on it, and its fidelity to the merged model (the same weights)
    scores = {(m.model, m.task, m.metric): m.value for m in store.metrics("tiny")}
    assert scores[(copy.name, "fidelity", "kld_mean")] < 1e-6
    assert scores[(copy.name, "fidelity", "top1_agreement")] == 1.0
    heldout = {name: {m: v for (model, task, m), v in scores.items() if (model, task) == (name, "heldout")}
               for name in (merged.name, copy.name)}  # fmt: skip
    assert heldout[copy.name] and heldout[copy.name] == heldout[merged.name]

    # bench: through torch on the CPU, as bench.cpu asked
    [measured] = [r for r in store.bench("tiny") if r.variant == copy.name]
    assert (measured.status, measured.device, measured.backend) == ("done", "cpu", "torch"), measured.error
    assert measured.tg_tps and measured.tg_tps.median > 0

    # chat: an answerer of the run, answering what the merged model answers
    found, _ = candidates.for_run(store, "tiny")
    messages = candidates.messages("What is 12 + 30?", None)
    answers = {
        c.name: "".join(e.get("text", "") for e in candidates.ask(c, messages, 8))
        for c in found
        if c.name in (merged.name, copy.name)
    }
    assert answers[copy.name] == answers[merged.name]

    # the serve plan: transformers serve in fp32 on a CPU, vLLM on CUDA where it is installed
    plan = backends.plan("stand-in", copy.path, "copy", "127.0.0.1", 8000, None, 2, cuda=False)
    assert plan.backend == "transformers" and plan.argv[-4:] == ["--device", "cpu", "--dtype", "float32"]
    assert backends.pick_backend("stand-in", cuda=True, vllm=True) == "vllm"

    # the report and the card
    report = write.load(store, "tiny", home / "tiny")
    row = next(r for r in report.comparison.rows if r.name == copy.name)
    assert row.format == "stand-in" and row.kld is not None and row.speed
    text = card.model_card(report, copy, "me/tiny-copy")
    assert "library_name: transformers" in text and "- Exported as stand-in (16 bits) with copy." in text
    assert 'AutoModelForCausalLM.from_pretrained("me/tiny-copy")' in text

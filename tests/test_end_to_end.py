"""A tiny run through every stage on CPU: data, train, merge, export, eval, bench, report — with llama.cpp
failing as it does on other machines (its AMX kernels crash on virtualised Xeons): one variant's smoke check
dies with SIGSEGV, another's evaluation does, and its benchmark hangs. Each fails alone; everything else is
measured and the report names every failure."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import addition_rows, write_recipe

from workbench.core.recipe import load_recipe
from workbench.core.store import Store
from workbench.eval import tasks
from workbench.pipeline.runner import run_recipe
from workbench.pipeline.stages import stages_of
from workbench.report import scores

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves them out


def crash_server_of(gguf_type: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The llama-server of that type's file dies of SIGSEGV once it has answered its first request, as a
    native crash would: its command runs under tests/faults/crash_server.py."""
    from workbench.serve import backends

    planned = backends.plan

    def crashing(*args: Any, **kwargs: Any) -> backends.Plan:
        plan = planned(*args, **kwargs)
        if plan.backend == "llama.cpp" and f"-{gguf_type}.gguf" in plan.argv[plan.argv.index("--model") + 1]:
            plan.argv = [sys.executable, str(Path(__file__).with_name("faults") / "crash_server.py"), *plan.argv]
        return plan

    monkeypatch.setattr(backends, "plan", crashing)


def test_every_stage_runs_and_crashing_variants_take_nothing_else_down(
    tmp_path: Path, tiny_llama_256: Path, fault: Any, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(40)))
    recipe = write_recipe(
        tmp_path,
        tiny_llama_256,
        data,
        data={"max_length": 128},
        train={"max_steps": 2},
        export={"gguf": ["q8_0", "q4_0", "q4_k_m"], "adapter_gguf": ["q8_0"], "smoke_prompts": 1, "parity_prompts": 2},
        eval={"tasks": ["heldout", "general"], "limit": 3, "fidelity_rows": 4, "max_length": 512},
        bench={"prompt_tokens": 32, "gen_tokens": 8, "repetitions": 2, "warmup": 1, "timeout_s": 30,
               "serve": {"concurrency": [1, 2], "requests": 2, "repetitions": 2, "max_tokens": 8,
                         "formats": ["gguf"]}},
        tracking={"report_to": ["tensorboard", "mlflow", "wandb"]},
    )  # fmt: skip
    home = tmp_path / "runs"
    fault("decode:Q4_0:segv:-check.job,decode:Q4_K_M:segv:/eval/,decode:Q4_K_M:hang:/bench/")
    crash_server_of("Q4_K_M", monkeypatch)
    run_recipe(load_recipe(recipe), home)
    store = Store(home / "workbench.db")
    stem = f"{tiny_llama_256.name}-tiny"
    broken = f"{stem}-Q4_K_M.gguf"

    statuses = {stage.name: stage.status for stage in store.stages("tiny")}
    ran = stages_of(load_recipe(recipe))
    assert ran == ["data", "train", "merge", "export", "eval", "bench", "report"]  # no reward or tune sections
    assert list(statuses) == ran and store.run("tiny").status == "done"
    assert statuses == {
        **{name: "done" for name in ran},
        "export": "partial",
        "eval": "partial",
        "bench": "partial",
    }
    assert f"{stem}-Q4_0.gguf: smoke check crashed (SIGSEGV) — see " in store.stage("tiny", "export").error
    assert f"{broken}: lm-eval crashed (SIGSEGV) — see " in store.stage("tiny", "eval").error  # the phase named
    assert f"{broken}: benchmark timed out after 30 s — see " in store.stage("tiny", "bench").error

    # eval: base, merged and Q8_0 scored on every task; fidelity for the variant only
    rows = store.metrics("tiny")
    by_model = {m.model: m for m in scores.by_model(rows)}
    adapted = f"{stem}-adapter-on-Q8_0.gguf"  # the LoRA adapter as a GGUF adapter on the base's Q8_0
    assert set(by_model) == {tiny_llama_256.name, stem, f"{stem}-Q8_0.gguf", adapted}
    assert 0 <= by_model[adapted].scores["kld_mean"] < 0.05
    assert by_model[tiny_llama_256.name].role == "base" and by_model[stem].role == "reference"
    for model in by_model.values():
        for column in ("heldout exact_match,strip", "stdlib_docs word_perplexity", "general_mc acc"):
            assert model.scores[column] is not None
    q8 = by_model[f"{stem}-Q8_0.gguf"].scores
    assert 0 <= q8["kld_mean"] < 0.05 and 0.5 < q8["top1_agreement"] <= 1.0
    assert "kld_mean" not in by_model[stem].scores
    samples = home / "tiny" / "eval" / "models" / f"{stem}-Q8_0.gguf" / "samples"
    assert len((samples / "heldout.jsonl").read_text().splitlines()) == 3  # eval.limit
    # lm-eval's own direction of each metric, and per-item values for paired comparisons
    said = {(m.task, m.metric): m.higher_is_better for m in rows if m.task != "fidelity"}
    assert said[("heldout", "exact_match,strip")] is True and said[("stdlib_docs", "word_perplexity")] is False
    per_item = {(i.model, i.task, i.metric): i.values for i in store.items("tiny")}
    assert set(per_item[(stem, "heldout", "exact_match,strip")]) == {0, 1, 2}
    assert set(per_item[(f"{stem}-Q8_0.gguf", "general_mc", "acc")]) == {0, 1, 2}
    assert all(key[2] != "word_perplexity" for key in per_item)  # corpus-level: no per-item value

    runnable = tmp_path / "again"  # the run's own task folder moves with the run and runs again
    assert tasks.copy_task_folders([home / "tiny" / "eval" / "tasks"], runnable) == ["heldout"]
    copied = yaml.safe_load(next(runnable.rglob("heldout.yaml")).read_text())
    assert Path(copied["dataset_kwargs"]["data_files"]["test"]).is_file()

    # bench: the merged model through torch, Q8_0 through llama.cpp, the broken file recorded as failed
    bench = {(b.variant, b.backend): b.to_dict() for b in store.bench("tiny")}
    served = {key: bench.pop(key) for key in list(bench) if key[1] == "llama.cpp server"}
    assert bench.pop((adapted, "llama.cpp"))["tg_tps"]["median"] > 0
    assert set(bench) == {(stem, "torch"), (f"{stem}-Q8_0.gguf", "llama.cpp"), (broken, "llama.cpp")}
    assert bench[(broken, "llama.cpp")]["status"] == "failed"
    for key in ((stem, "torch"), (f"{stem}-Q8_0.gguf", "llama.cpp")):
        measured = bench[key]
        assert measured["status"] == "done" and measured["device"] == "cpu" and measured["peak_rss_mb"] > 10
        assert len(measured["tg_tps"]["samples"]) == 2 and measured["tg_tps"]["median"] > 0
        assert measured["pp_tps"]["min"] <= measured["pp_tps"]["median"] <= measured["pp_tps"]["max"]

    # served load: Q8_0 behind llama.cpp's server at 1 and 2 clients; the crashing server fails alone
    assert set(served) == {(f"{stem}-Q8_0.gguf", "llama.cpp server"), (broken, "llama.cpp server"),
                           (adapted, "llama.cpp server")}  # fmt: skip
    assert served[(adapted, "llama.cpp server")]["status"] == "done"
    levels = served[(f"{stem}-Q8_0.gguf", "llama.cpp server")]["concurrency"]
    assert list(levels) == ["1", "2"]
    for level in levels.values():
        assert level["requests"] == 2 * 2 and level["errors"] == 0 and level["output_tokens"] > 0
        assert level["ttft_p50_ms"] <= level["ttft_p95_ms"]
    assert served[(broken, "llama.cpp server")]["status"] == "failed"
    crash = served[(broken, "llama.cpp server")]["error"]
    assert crash.startswith(f"{broken}: its server died (") and crash.endswith(".log")
    assert all(s.status == "stopped" for s in store.servers("tiny")) and len(store.servers("tiny")) == 3
    adapter_variant = next(v for v in store.variants("tiny") if v.name == adapted)
    assert adapter_variant.meta["served"]["status"] == "passed"  # answers through its server as in-process
    assert Path(adapter_variant.meta["lora"]).is_file() and Path(adapter_variant.path).is_file()
    adapter_modelfile = (home / "tiny" / "export" / adapter_variant.meta["serving"]["modelfile"]).read_text()
    assert f"ADAPTER ./{Path(adapter_variant.meta['lora']).name}" in adapter_modelfile
    assert f"--lora {adapter_variant.meta['lora']}" in adapter_variant.meta["serving"]["llama_server"]

    # serving files: an Ollama Modelfile and the llama-server command beside each GGUF
    q8_variant = next(v for v in store.variants("tiny") if v.name == f"{stem}-Q8_0.gguf")
    serving = q8_variant.meta["serving"]
    assert serving["template"] == "chatml" and serving["stops"] == ["<|im_end|>"]
    modelfile = home / "tiny" / "export" / serving["modelfile"]
    assert modelfile.read_text().startswith(f"FROM ./{stem}-Q8_0.gguf\nTEMPLATE ")
    assert serving["llama_server"].startswith(f"llama-server -m {home / 'tiny' / 'export' / q8_variant.name} --jinja")

    # report: the table, figures and a CPU recommendation among what was measured
    report = home / "tiny" / "report"
    page = (report / "report.html").read_text()
    assert "<table" in page and "Q8_0.gguf" in page and 'src="data:image/png;base64,' in page
    results = json.loads((report / "results.json").read_text())
    assert "served tok/s (TTFT p95 ms) by clients" in page and "Served throughput" in page
    assert "ollama create NAME -f " in page
    assert "adapter-on-Q8_0.gguf (the LoRA adapter on the base quantized to Q8_0) vs Q8_0.gguf" in page
    assert results["comparison"]["recommendations"][-1]["target"] == "served"
    q8_row = next(r for r in results["comparison"]["rows"] if r["label"] == "Q8_0.gguf")
    assert q8_row["paired"]["items"] == 3 and q8_row["paired"]["verdict"] in ("indistinguishable", "worse", "better")
    assert "vs merged" in page and "lower bound" in page
    cpu = results["comparison"]["recommendations"][0]
    assert cpu["target"] == "cpu" and cpu["variant"] in {stem, f"{stem}-Q8_0.gguf", adapted} and cpu["measured"]
    assert any("Q4_0.gguf" in failure for failure in results["failures"])
    assert any("Q4_K_M.gguf" in failure for failure in results["failures"])

    # tracking: the Trainer's curves in TensorBoard files and MLflow, the report as an MLflow run
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(home / "tiny" / "tracking" / "tensorboard" / "train")).Reload()
    assert [event.step for event in board.Scalars("train/loss")] == [1, 2]
    client = MlflowClient((home / "tiny" / "tracking" / "mlruns").as_uri())
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    assert set(runs) == {"tiny/train", "tiny/report"}
    assert [m.step for m in client.get_metric_history(runs["tiny/train"].info.run_id, "loss")] == [1, 2]
    logged = runs["tiny/report"].data
    assert logged.metrics["Q8_0.gguf/score"] == q8_row["score"] and logged.metrics["Q8_0.gguf/kld"] == q8_row["kld"]
    assert logged.tags["recommended.cpu"].startswith(f"{cpu['variant']}: ")
    shipped = {f.path for f in client.list_artifacts(runs["tiny/report"].info.run_id, "report")}
    assert {"report/results.json", "report/comparison.csv", "report/report.html"} <= shipped
    offline = sorted((home / "tiny" / "tracking" / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # W&B offline: the Trainer's run and the report's
    (table_file,) = [t for run in offline for t in run.glob("files/media/table/comparison_*.table.json")]
    table = json.loads(table_file.read_text())
    header, *lines = list(csv.reader((report / "comparison.csv").open(newline="", encoding="utf-8")))
    assert table["columns"] == header and len(table["data"]) == len(lines)
    (record,) = table_file.parents[3].glob("run-*.wandb")  # the run's summary and artifact, as W&B stores them
    assert b"Q8_0.gguf/score" in record.read_bytes() and b"recommended.cpu" in record.read_bytes()

    from workbench.cli import main

    capsys.readouterr()
    assert main(["--home", str(home), "show", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert "heldout exact_match,strip" in shown and "kld_mean" in shown and "fine-tune vs base" in shown
    assert main(["--home", str(home), "report", "tiny"]) == 0
    assert f"report: {report / 'report.html'}" in capsys.readouterr().out

"""Training, merging, resume and stage caching on a tiny random Llama (CPU)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import addition_rows, train_steps, write_recipe
from transformers import TrainerCallback

from workbench.cli import main
from workbench.core.common import tail
from workbench.core.recipe import RecipeError, load_recipe
from workbench.core.store import Store
from workbench.pipeline.runner import run_recipe
from workbench.pipeline.stages.base import StageInterrupted

pytestmark = pytest.mark.slow  # whole pipelines: `make test-fast` leaves them out


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(addition_rows(72)))
    return path


def losses(home: Path, run_id: str = "tiny") -> list[float]:
    store = Store(home / "workbench.db")
    return [event["loss"] for event in store.events(run_id, stage="train", kind="train_log")]


def assert_loss_goes_down(values: list[float]) -> None:
    assert len(values) >= 8
    first, last = sum(values[:3]) / 3, sum(values[-3:]) / 3
    assert last < first - 0.2, values  # batch-to-batch noise at the start is ~0.05


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_training_lowers_the_loss_and_logs_to_the_store(
    tmp_path: Path, tiny_model: Path, data_file: Path, method: str
) -> None:
    path = write_recipe(
        tmp_path, tiny_model, data_file, train={"method": method, "max_steps": 10, "learning_rate": 5e-2}
    )
    home = tmp_path / "runs"
    run_recipe(load_recipe(path), home, stages=["train"])
    assert_loss_goes_down(losses(home))
    store = Store(home / "workbench.db")
    last = store.events("tiny", stage="train", kind="train_log")[-1]
    assert last["step"] == 10 and last["total_steps"] == 10
    assert last["learning_rate"] is not None and last["grad_norm"] is not None and last["eta_s"] == 0
    adapter = home / "tiny" / "train"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8
    assert [s.status for s in store.stages("tiny")] == ["done", "done"]
    assert not (home / "tiny" / "merge").exists()  # not selected


class InterruptAt(TrainerCallback):
    """Sends this process SIGINT at a step, as Ctrl-C would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_training_resumes_from_its_checkpoint(
    tmp_path: Path, tiny_model: Path, data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trl

    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 8, "checkpoint_every": 100})
    home = tmp_path / "runs"
    original_init = trl.SFTTrainer.__init__

    def with_interrupt(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), InterruptAt(3)]
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(trl.SFTTrainer, "__init__", with_interrupt)
    with pytest.raises(StageInterrupted, match="stopped at step 4"):
        run_recipe(load_recipe(path), home, stages=["train"])
    store = Store(home / "workbench.db")
    assert store.stage("tiny", "train").status == "interrupted"
    assert store.run("tiny").status == "interrupted"
    assert not (home / "tiny" / "train").exists()  # nothing half-written in place
    monkeypatch.setattr(trl.SFTTrainer, "__init__", original_init)

    run_recipe(load_recipe(path), home, stages=["train"])
    steps = [event["step"] for event in store.events("tiny", stage="train", kind="train_log")]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]  # the second run began at step 5, not again at 1
    messages = [e["text"] for e in store.events("tiny", stage="train", kind="message")]
    assert "resuming from checkpoint-4" in messages
    assert store.stage("tiny", "train").status == "done"


def test_merged_logits_equal_base_plus_adapter(tmp_path: Path, tiny_model: Path, data_file: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 4, "learning_rate": 5e-2})
    home = tmp_path / "runs"
    run_recipe(load_recipe(path), home, stages=["merge"])
    merged_dir = home / "tiny" / "merge"
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "tokenizer.json").is_file()
    assert (merged_dir / "generation_config.json").is_file()
    assert (
        "chat_template" in (merged_dir / "tokenizer_config.json").read_text()
        or (merged_dir / "chat_template.jinja").is_file()
    )

    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, str(home / "tiny" / "train")).eval()
        expected = adapted(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
        actual = merged(ids).logits
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter changed something
    assert torch.allclose(actual, expected, atol=1e-3)


def test_unchanged_stages_are_cached_and_changes_redo_them(
    tmp_path: Path, tiny_model: Path, data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 2})
    home = tmp_path / "runs"
    assert main(["--home", str(home), "run", str(path)]) == 0
    store = Store(home / "workbench.db")
    first = {s.name: s.started for s in store.stages("tiny")}
    capsys.readouterr()

    assert main(["--home", str(home), "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert all(f"[{name}] unchanged, skipped" in out for name in ("data", "train", "merge"))
    assert {s.name: s.started for s in store.stages("tiny")} == first

    changed = ["--set", "merge.dtype=bfloat16", "--stages", "merge"]  # (what comes after merge is not the point)
    assert main(["--home", str(home), "run", str(path), *changed]) == 0
    again = {s.name: s.started for s in store.stages("tiny")}
    assert again["train"] == first["train"] and again["merge"] > first["merge"]

    assert main(["--home", str(home), "run", str(path), *changed, "--force", "train"]) == 0
    forced = {s.name: s.started for s in store.stages("tiny")}
    assert forced["data"] == again["data"] and forced["train"] > again["train"] and forced["merge"] > again["merge"]

    capsys.readouterr()
    assert main(["--home", str(home), "show", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert "merged" in shown and str(home / "tiny" / "merge") in shown and "training: step 2/2" in shown
    assert main(["--home", str(home), "runs"]) == 0
    assert "tiny" in capsys.readouterr().out


def test_bad_data_stops_the_run_before_training(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "qa.jsonl"
    rows = addition_rows(30) + [{"question": "What is 1 + 1?"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = write_recipe(tmp_path, tiny_model, data)
    home = tmp_path / "runs"
    assert main(["--home", str(home), "run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "qa.jsonl: 1 of 31 lines are bad" in err and "line 31: missing field 'answer'" in err
    assert Store(home / "workbench.db").stage("tiny", "data").status == "failed"

    assert main(["--home", str(home), "run", str(path), "--set", "data.max_bad_rows=1", "--stages", "data"]) == 0
    bad = (home / "tiny" / "data" / "bad_rows.jsonl").read_text()
    assert json.loads(bad) == {"number": 31, "reason": "missing field 'answer'"}


def test_too_long_rows_are_bad_rows_not_truncated(tmp_path: Path, tiny_model: Path, data_file: Path) -> None:
    path = write_recipe(tmp_path, tiny_model, data_file, data={"max_length": 8})
    with pytest.raises(Exception, match="longer than data.max_length 8"):
        run_recipe(load_recipe(path), tmp_path / "runs", stages=["data"])


@pytest.mark.parametrize(
    "train",
    [
        {"lora": {"r": 8, "alpha": 16, "dora": True}},
        {"lora": {"r": 8, "alpha": 16, "rslora": True}},
        {"lora": {"r": 8, "alpha": 16, "init": "pissa"}},
        pytest.param({"method": "qlora", "lora": {"r": 8, "alpha": 16, "init": "loftq"}}, marks=pytest.mark.gpu),
        {"method": "full", "learning_rate": 1e-3},
    ],
    ids=["dora", "rslora", "pissa", "qlora-loftq", "full"],
)
def test_training_variants_merge_to_what_they_trained(
    tmp_path: Path, tiny_model: Path, data_file: Path, train: dict
) -> None:
    """Each variant's merged checkpoint computes what the trained model computes (the base it was trained on
    plus its adapter): PiSSA via the converted adapter on the original base, LoftQ on the dequantized nf4 base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from workbench.train.merge import load_base

    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 3, "learning_rate": 2e-2, **train})
    home = tmp_path / "runs"
    run_recipe(load_recipe(path), home, stages=["merge"])
    trained = home / "tiny" / "train"
    summary = json.loads((trained / "train_summary.json").read_text())
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        if train.get("method") == "full":
            reference = AutoModelForCausalLM.from_pretrained(trained, dtype=torch.float32)
        else:
            base = load_base(str(tiny_model), summary["merge_base"])
            reference = PeftModel.from_pretrained(base, str(trained))
        expected = reference.eval()(ids).logits
        actual = AutoModelForCausalLM.from_pretrained(home / "tiny" / "merge", dtype=torch.float32).eval()(ids).logits
    assert torch.allclose(actual, expected, atol=1e-3)
    loftq = train.get("lora", {}).get("init") == "loftq"
    assert summary["merge_base"] == ("dequantized-nf4" if loftq else "original")


def test_loftq_without_cuda_is_refused_clearly(tmp_path: Path, tiny_model: Path, data_file: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: LoftQ runs")
    path = write_recipe(tmp_path, tiny_model, data_file, train={"method": "qlora", "lora": {"init": "loftq"}})
    with pytest.raises(RecipeError, match="loftq needs a CUDA device"):
        run_recipe(load_recipe(path), tmp_path / "runs")


def test_killed_worker_reads_crashed_and_resumes_from_the_last_complete_checkpoint(
    tmp_path: Path, tiny_model: Path, data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL gives no chance to save or say anything: the run reads `crashed` with the last lines of its
    log, and the re-run resumes from the last complete `checkpoint_every` checkpoint."""
    import subprocess
    import sys
    import time

    path = write_recipe(tmp_path, tiny_model, data_file, train={"max_steps": 120, "checkpoint_every": 3})
    home = tmp_path / "runs"
    worker = subprocess.Popen(  # in the foreground: it writes its own worker.log
        [sys.executable, "-m", "workbench.cli", "--home", str(home), "run", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and worker.poll() is None:
            if (home / "workbench.db").exists() and max(train_steps(home), default=0) >= 7:
                break
            time.sleep(0.05)
    finally:
        worker.kill()
        worker.wait()
    killed_at = max(train_steps(home))
    store = Store(home / "workbench.db")
    assert store.run("tiny").status == "running"  # what the dead worker last wrote...
    assert store.live_status(store.run("tiny")) == "crashed"  # ...and what everyone reads
    train = next(s for s in store.stages("tiny") if s.name == "train")
    assert train.status == "crashed" and "ended without finishing it" in train.error
    assert 7 <= killed_at < 120, "the worker should have been killed mid-training"
    assert list((home / "tiny").glob(".tmp-train-*"))  # its half-written output was left behind...
    capsys.readouterr()
    assert main(["--home", str(home), "runs"]) == 0
    listed = capsys.readouterr().out
    assert "crashed" in listed and "train:crashed" in listed and "last words:" in listed
    assert main(["--home", str(home), "show", "tiny"]) == 0
    shown = capsys.readouterr().out
    assert "status crashed" in shown and f"the last lines of {home / 'tiny' / 'worker.log'}" in shown
    log = home / "tiny" / "worker.log"  # written by the foreground worker itself
    assert "[train] lora on cpu" in log.read_text() and tail(log)[-1].strip() in shown
    checkpoints = next((home / "tiny" / ".work").glob("train-*")) / "checkpoints"
    (checkpoints / "checkpoint-999").mkdir()  # what a kill in the middle of saving a checkpoint leaves
    (checkpoints / "checkpoint-999" / "adapter_model.safetensors").write_bytes(b"half")

    recipe = load_recipe(path)
    run_recipe(recipe, home, stages=["train"])
    assert not list((home / "tiny").glob(".tmp-train-*"))  # ...and is cleaned up by the re-run
    store = Store(home / "workbench.db")
    resumed = [
        e["text"] for e in store.events("tiny", stage="train", kind="message") if e["text"].startswith("resuming")
    ]
    checkpoint = int(resumed[0].rsplit("-", 1)[1])
    assert checkpoint % 3 == 0 and killed_at - 3 <= checkpoint <= killed_at
    steps = train_steps(home)
    assert steps[killed_at:] == list(range(checkpoint + 1, 121))  # the re-run continued after the checkpoint
    assert store.stage("tiny", "train").status == "done"

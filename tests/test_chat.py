"""Chat arena back end: one prompt answered by each variant in its own process, greedy, with speeds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from workbench import workers
from workbench.chat.stream import AnswerJob, AnswerResult
from workbench.cli import main as cli
from workbench.core.errors import RunError
from workbench.core.records import Server, Variant
from workbench.core.store import Store
from workbench.pipeline import candidates as chat
from workbench.serve.client import Endpoint
from workbench.workers import wire

CHAT = chat.messages("What is 12 + 30?", "You are a calculator.")
MAX_TOKENS = 12


def events(model: dict[str, str], max_tokens: int = MAX_TOKENS) -> list[dict]:
    """The events of asking the model at `path` (of `format`) the calculator question."""
    name = Path(model["path"]).name
    candidate = chat.Candidate(name=name, label=name, format=model["format"], path=model["path"])
    return list(chat.ask(candidate, CHAT, max_tokens))


def answer_text(found: list[dict]) -> str:
    return "".join(e["text"] for e in found if "text" in e)


def llama_cpp_reference(path: Path, max_tokens: int = MAX_TOKENS) -> str:
    """llama-cpp-python's own chat completion, greedy, no repetition penalty: what the worker must say."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, verbose=False)
    try:
        reply = llm.create_chat_completion(CHAT, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0)
    finally:
        llm.close()
    return reply["choices"][0]["message"]["content"]


def test_gguf_answer_streams_what_llama_cpp_says(tiny_ggufs: dict[str, Path]) -> None:
    found = events({"path": str(tiny_ggufs["f16"]), "format": "gguf"})
    assert "loaded" in found[0] and "done" in found[-1]
    result = found[-1]["done"]
    assert isinstance(result, AnswerResult) and 0 < result.tokens <= MAX_TOKENS
    reference = llama_cpp_reference(tiny_ggufs["f16"])
    assert reference and answer_text(found) == reference
    assert result.ttft_s and result.ttft_s > 0 and (result.tok_s is None or result.tok_s > 0)
    assert result.end_of_turn or result.tokens == MAX_TOKENS  # it ended its turn, or was cut at max_tokens


def test_hf_answer_streams_what_transformers_generates(tiny_llama_256: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = events({"path": str(tiny_llama_256), "format": "hf"})
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_256)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_256, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=MAX_TOKENS, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert answer_text(found) == tokenizer.decode(output, skip_special_tokens=True)
    assert found[-1]["done"].tokens == len(output)


def test_a_broken_variant_reports_why(
    tmp_path: Path, tiny_ggufs: dict[str, Path], fault: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = events({"path": str(tmp_path / "gone.gguf"), "format": "gguf"})
    assert len(found) == 1 and "gone.gguf: answer failed:" in found[0]["error"] and "gone.gguf" in found[0]["error"]

    fault("decode:F16:segv")  # the model process dies in llama.cpp's kernels after loading
    found = events({"path": str(tiny_ggufs["f16"]), "format": "gguf"})
    assert "loaded" in found[0] and found[-1] == {"error": "tiny-F16.gguf: answer crashed (SIGSEGV)"}

    monkeypatch.setattr(workers, "PYTHON", [str(tmp_path / "no-such-python"), "-P"])
    assert "could not start the model process" in events({"path": "x", "format": "gguf"})[0]["error"]


def test_candidates_labels_and_picking(tiny_llama_256: Path) -> None:
    variants = [
        Variant("M-run", "hf", "/m", 16, meta={"reference": True}),
        Variant("M-run-Q8_0.gguf", "gguf", "/q8", 8.5),
        Variant("M-run-Q4_K_M.gguf", "gguf", "/q4", 4.85),
        Variant("M-run-SEARCH-Q4_K_M.gguf", "gguf", "/s4", 4.8),
        Variant("M-run-adapter-on-Q8_0.gguf", "gguf", "/a8", 8.5),
        Variant("M-run-GPTQ-Int4", "gptq", "/g", 4, status="failed"),
    ]
    found = chat.askable(variants, str(tiny_llama_256))
    labels = ["merged", "Q8_0.gguf", "Q4_K_M.gguf", "SEARCH-Q4_K_M.gguf", "adapter-on-Q8_0.gguf", "base"]
    assert [c.label for c in found] == labels
    assert found[-1].path == str(tiny_llama_256.resolve()) and found[-1].format == "hf"
    # a type's name is the merged model quantized to it, not a file built on that type
    picked = chat.pick(found, ["q4_k_m", "Q8_0", "merged", "M-run-Q8_0.gguf", "search", "adapter"])
    assert [c.path for c in picked] == ["/q4", "/q8", "/m", "/q8", "/s4", "/a8"]
    with pytest.raises(RunError, match="'gguf' matches several: type 'Q8_0.gguf' or 'Q4_K_M.gguf' or"):
        chat.pick(found, ["gguf"])
    with pytest.raises(RunError, match="'GPTQ' matches nothing; this run has: merged, Q8_0.gguf"):
        chat.pick(found, ["GPTQ"])  # failed variants cannot answer
    assert chat.messages("hi", None) == [{"role": "user", "content": "hi"}]


def test_a_candidate_is_asked_with_a_typed_job(tmp_path: Path) -> None:
    """A variant's adapter reaches the worker's job, which crosses as JSON; a plain variant's job has none; a
    server is asked at its endpoint."""
    adapter = Variant("M-Q4_0.gguf", "gguf", "/q4", 4.5, meta={"lora": "/q4-lora.gguf"})
    job = chat.job(chat.Candidate.of(adapter), CHAT, 7)
    assert job == AnswerJob(path="/q4", format="gguf", messages=CHAT, max_tokens=7, lora="/q4-lora.gguf")
    assert wire.encode(job) == {"path": "/q4", "format": "gguf", "messages": CHAT, "max_tokens": 7,
                                "lora": "/q4-lora.gguf"}  # fmt: skip
    assert wire.decode(AnswerJob, json.loads(json.dumps(wire.encode(job))), "chat.answer job") == job
    assert chat.job(chat.Candidate.of(Variant("M", "hf", "/m", 16)), CHAT).lora is None
    store = Store(tmp_path / "workbench.db")
    store.upsert_run("r", "r", {"name": "r"}, None, os.getpid())
    store.add_server(Server("r-1", "r", "M", "llama.cpp", "::", 8081, "m", os.getpid(), None, 0.0, "log", "k"))
    [served] = chat.served(store, "r")
    assert (served.name, served.label, served.format) == ("r-1", "served:r-1", "served")
    assert served.endpoint == Endpoint("http://[::1]:8081/v1", "m", "llama.cpp", "k")
    assert chat.job(served, CHAT).path == "http://[::1]:8081/v1"


def arena_run(home: Path, variants: list[dict]) -> None:
    store = Store(home / "workbench.db")
    recipe = {"name": "arena", "base_model": "not-local/model", "data": {"system_prompt": "You are a calculator."}}
    store.upsert_run("arena", "arena", recipe, None, os.getpid())
    store.replace_variants("arena", ["gguf"], [Variant(**{"bits": 16, **v}) for v in variants])
    store.set_run_status("arena", "done")
    store.close()


def test_chat_command_answers_with_each_variant_and_survives_a_broken_one(
    tiny_ggufs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arena_run(
        tmp_path,
        [
            {"name": "t-Q4_0.gguf", "format": "gguf", "path": str(tmp_path / "missing.gguf"), "status": "done"},
            {"name": "t-F16.gguf", "format": "gguf", "path": str(tiny_ggufs["f16"]), "status": "done"},
        ],
    )
    prompt = CHAT[-1]["content"]
    with pytest.raises(SystemExit):
        cli(["--home", str(tmp_path), "chat", "arena", prompt, "--max-tokens", "0"])
    assert "expected a whole number of 1 or more" in capsys.readouterr().err
    code = cli(["--home", str(tmp_path), "chat", "arena", prompt, "--max-tokens", str(MAX_TOKENS)])
    out = capsys.readouterr().out
    assert code == 1  # one variant failed
    assert "── t-Q4_0.gguf (gguf)\n   FAILED:" in out and "missing.gguf" in out
    assert f"t-F16.gguf (gguf)\n{llama_cpp_reference(tiny_ggufs['f16'])}\n   " in out
    assert " tokens · " in out  # the speed line

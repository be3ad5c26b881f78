"""Preference tuning and online RL after the supervised fine-tune (the reward and tune stages), on a tiny
random Llama: each objective moves its own metric the right way, the reference is the supervised model,
an interrupted tune resumes, and preference accuracy is the same through llama.cpp and transformers."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import addition_rows, write_recipe
from test_pipeline import InterruptAt

from workbench.core.recipe import RecipeError, load_recipe, parse_recipe
from workbench.core.store import Store
from workbench.data.dataset import DataError
from workbench.pipeline.runner import run_recipe
from workbench.pipeline.stages.base import StageInterrupted


def preference_file(folder: Path, count: int = 40, seed: int = 1, verbose_every: int = 1) -> Path:
    """Addition pairs: chosen the terse sum; rejected a chatty sentence (every `verbose_every`-th row)
    or a wrong sum."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        wrong = str(a + b + rng.choice([-10, -1, 1, 10]))
        rejected = f"The sum of {a} and {b} is {a + b}, of course." if i % verbose_every == 0 else wrong
        rows.append({"prompt": f"What is {a} + {b}?", "chosen": str(a + b), "rejected": rejected})
    path = folder / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tuning_recipe(tmp_path: Path, tiny_model: Path, **tune: Any) -> Path:
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(48)))
    section = {
        "objective": "dpo",
        "data": {"path": str(preference_file(tmp_path)), "held_out": 8, "max_length": 64},
        "max_steps": 6,
        "batch_size": 4,
        "learning_rate": 5e-3,
        "checkpoint_every": 100,
        **tune,
    }
    return write_recipe(tmp_path, tiny_model, data, train={"max_steps": 4}, tune=section)


def logged(home: Path, stage: str, key: str) -> list[float]:
    events = Store(home / "workbench.db").events("tiny", stage=stage, kind="train_log")
    return [event["metrics"][key] for event in events]


@pytest.mark.parametrize("start", ["adapter", "merged"])
def test_dpo_after_sft_starts_at_the_supervised_model_and_raises_the_margin(
    tmp_path: Path, tiny_model: Path, start: str
) -> None:
    home = tmp_path / "runs"
    run_recipe(load_recipe(tuning_recipe(tmp_path, tiny_model, start=start)), home, stages=["merge"])
    margins = logged(home, "tune", "rewards/margins")
    assert len(margins) == 6
    # the first step's policy is the reference: the supervised model (the base model would differ from it)
    assert margins[0] == pytest.approx(0.0, abs=1e-6)
    assert margins[-1] > 0.01
    adapter = home / "tiny" / "tune" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not (adapter / "ref").exists()  # the frozen reference copy is not shipped
    summary = json.loads((home / "tiny" / "tune" / "tune_summary.json").read_text())
    assert (summary["objective"], summary["start"], summary["steps"]) == ("dpo", start, 6)
    assert (home / "tiny" / "tune" / "sft" / "model.safetensors").is_file()
    assert (home / "tiny" / "merge" / "model.safetensors").is_file()


@pytest.mark.parametrize(("objective", "beta"), [("orpo", 1.0), ("kto", 0.1)])
def test_orpo_and_kto_widen_the_chosen_over_rejected_margin(
    tmp_path: Path, tiny_model: Path, objective: str, beta: float
) -> None:
    home = tmp_path / "runs"
    recipe = tuning_recipe(tmp_path, tiny_model, objective=objective, beta=beta, max_steps=10, learning_rate=2e-2)
    run_recipe(load_recipe(recipe), home, stages=["tune"])
    margins = logged(home, "tune", "rewards/margins")  # each step's own batch: compare the ends' means
    assert len(margins) == 10 and sum(margins[-3:]) > sum(margins[:3])


def test_the_reward_model_ranks_held_out_pairs_above_chance(tmp_path: Path, tiny_model: Path) -> None:
    pairs = preference_file(tmp_path, count=48)
    recipe = write_recipe(
        tmp_path,
        tiny_model,
        tmp_path / "unused.json",
        reward_model={
            "data": {"path": str(pairs), "held_out": 16, "max_length": 64},
            "max_steps": 20,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "checkpoint_every": 100,
        },
    )
    (tmp_path / "unused.json").write_text(json.dumps(addition_rows(16)))
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["reward"])
    summary = json.loads((home / "tiny" / "reward" / "reward_summary.json").read_text())
    assert summary["held_out"]["pairs"] == 16
    assert summary["held_out"]["accuracy"] >= 0.9  # chance is 0.5
    assert summary["held_out"]["margin"] > 0
    assert (home / "tiny" / "reward" / "model" / "model.safetensors").is_file()


def verifiable_task(tiny_model: Path) -> tuple[str, str, float]:
    """A prompt, an answer (two tokens) and a sampling temperature at which the untrained tiny model gives
    that answer a few percent of the time: the exact-match reward starts low but not at zero."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    best: tuple[float, str, str, float] = (0.0, "", "", 1.0)
    with torch.no_grad():
        for k in range(20):
            question = f"What is the answer {k}?"
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )["input_ids"]
            first = model(input_ids=ids).logits[0, -1]
            for t1 in first.topk(3).indices.tolist():
                second = model(input_ids=torch.cat([ids, torch.tensor([[t1]])], 1)).logits[0, -1]
                for t2 in second.topk(6).indices.tolist():
                    word = tokenizer.decode([t1, t2]).strip()
                    if not word or "\ufffd" in word or {t1, t2} & set(tokenizer.all_special_ids):
                        continue
                    for temperature in (0.05, 0.08, 0.1, 0.15, 0.2):
                        p = float((first / temperature).softmax(-1)[t1] * (second / temperature).softmax(-1)[t2])
                        if p > best[0]:
                            best = (p, question, word, temperature)
    assert 0.005 < best[0] < 0.3, best
    return best[1], best[2], best[3]


@pytest.mark.parametrize("objective", ["grpo", "rloo"])
def test_online_rl_raises_the_exact_match_reward(tmp_path: Path, tiny_model: Path, objective: str) -> None:
    question, answer, temperature = verifiable_task(tiny_model)
    data = tmp_path / "task.json"
    data.write_text(json.dumps([{"question": question, "answer": answer}] * 40))
    tune = {
        "objective": objective,
        "rewards": ["exact_match"],
        "max_steps": 8,
        "batch_size": 32,  # 8 prompts x 4 sampled answers a step
        "generations": 4,
        "max_completion_length": 2,
        "temperature": temperature,
        "beta": 0.0,
        "learning_rate": 1e-2,
        "checkpoint_every": 100,
    }
    recipe = write_recipe(
        tmp_path, tiny_model, data, data={"held_out": 2}, train={"max_steps": 1, "learning_rate": 1e-8}, tune=tune
    )
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["tune"])
    rewards = logged(home, "tune", "reward")
    assert rewards[0] < 0.25
    assert sum(rewards[-3:]) / 3 > rewards[0] + 0.5


def test_an_interrupted_tune_resumes_after_the_cached_supervised_stage(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trl

    path = tuning_recipe(tmp_path, tiny_model)
    home = tmp_path / "runs"
    original_init = trl.DPOTrainer.__init__

    def with_interrupt(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), InterruptAt(3)]
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(trl.DPOTrainer, "__init__", with_interrupt)
    with pytest.raises(StageInterrupted, match="stopped at step 4"):
        run_recipe(load_recipe(path), home, stages=["merge"])
    store = Store(home / "workbench.db")
    assert store.stage("tiny", "train").status == "done"
    assert store.stage("tiny", "tune").status == "interrupted"
    assert not (home / "tiny" / "tune").exists() and store.stage("tiny", "merge") is None
    monkeypatch.setattr(trl.DPOTrainer, "__init__", original_init)

    run_recipe(load_recipe(path), home, stages=["merge"])
    assert [e["step"] for e in store.events("tiny", stage="tune", kind="train_log")] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in store.events("tiny", stage="train", kind="train_log")] == [1, 2, 3, 4]  # cached
    assert "resuming from checkpoint-4" in [e["text"] for e in store.events("tiny", stage="tune", kind="message")]
    assert store.stage("tiny", "merge").status == "done"


def test_eval_scores_held_out_pairs_against_the_supervised_reference(tmp_path: Path, tiny_model: Path) -> None:
    path = tuning_recipe(tmp_path, tiny_model, max_steps=10)
    data = load_recipe(path)
    recipe = parse_recipe(
        {**data.model_dump(mode="json"), "eval": {"tasks": [], "fidelity_rows": 0, "base": True}}, "r", data.source
    )
    home = tmp_path / "runs"
    run_recipe(recipe, home, stages=["eval"])
    values = {(m.model, m.metric): m.value for m in Store(home / "workbench.db").metrics("tiny")}
    roles = {m.model: m.role for m in Store(home / "workbench.db").metrics("tiny")}
    merged = next(name for name, role in roles.items() if role == "reference")
    assert roles["supervised"] == "sft"
    assert ("supervised", "reward_margin") not in values  # the reference has no margin against itself
    assert values[(merged, "reward_margin")] > 0  # DPO moved the shipped model toward the chosen answers
    assert values[(merged, "reward_accuracy")] > 0.5
    for name in roles:
        assert 0 <= values[(name, "accuracy")] <= 1
    items = Store(home / "workbench.db").items("tiny")
    assert {len(i.values) for i in items if i.task == "preference"} == {8}  # every held-out pair, per model


def test_malformed_preference_rows_are_refused_with_their_line_numbers(tmp_path: Path, tiny_model: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = {"prompt": "What is 1 + 2?", "chosen": "3", "rejected": "4"}
    lines = [good, {"prompt": "What is 2 + 2?", "chosen": "4"}, good, {"prompt": "Q", "chosen": "x", "rejected": "x"}]
    bad.write_text("".join(json.dumps(line) + "\n" for line in lines) + "not json\n")
    path = tuning_recipe(tmp_path, tiny_model, data={"path": str(bad), "held_out": 1})
    with pytest.raises(DataError) as caught:
        run_recipe(load_recipe(path), tmp_path / "runs", stages=["tune"])
    message = str(caught.value)
    assert "3 of 5 rows" in message or "3 of 5 lines" in message
    for number in (2, 4, 5):
        assert f"line {number}:" in message
    assert "line 1:" not in message and "line 3:" not in message


@pytest.mark.parametrize(
    ("tune", "extra", "expected"),
    [
        ({"objective": "dpo"}, {}, "tune.data: dpo trains on preference rows"),
        ({"objective": "grpo", "batch_size": 6, "generations": 4}, {}, "multiple of tune.generations"),
        ({"objective": "grpo", "rewards": ["reward_model"], "batch_size": 8}, {}, "needs a reward_model section"),
        (
            {"objective": "dpo", "start": "merged", "data": {"path": "p.jsonl"}},
            {"export": {"adapter_gguf": ["q8_0"]}},
            "two adapters",
        ),
        ({"objective": "dpo", "data": {"path": "p.jsonl"}}, {"train": {"method": "full"}}, "not a full one"),
    ],
)
def test_tuning_recipes_that_cannot_work_are_refused(tune: dict, extra: dict, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        parse_recipe({"name": "x", "base_model": "m", "data": {"path": "d.json"}, "tune": tune, **extra})


def test_preference_accuracy_through_llama_cpp_equals_transformers_on_the_same_f16_model(
    tmp_path: Path, tiny_llama_256: Path, tiny_ggufs: dict[str, Path]
) -> None:
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from workbench.data.dataset import load_data
    from workbench.eval import preference
    from workbench.eval.llamacpp_lm import LlamaCppLM

    loaded = load_data(preference_file(tmp_path, count=24, verbose_every=3))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_256)
    pairs = preference.render_pairs([{"number": n, **row} for n, row in loaded.rows], tokenizer)
    assert len(pairs) == 24
    jobs = [{"context": p.context, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    numbers = [p.number for p in pairs]
    hf = HFLM(pretrained=str(tiny_llama_256), device="cpu", dtype=torch.float32, batch_size=8, max_length=256)
    gguf = LlamaCppLM(pretrained=str(tiny_ggufs["f16"]), max_length=256, seed=0)
    try:
        by_hf = preference.log_likelihoods(hf, jobs)
        by_gguf = preference.log_likelihoods(gguf, jobs)
    finally:
        gguf.close()
    for side in ("chosen", "rejected"):
        assert by_gguf[side] == pytest.approx(by_hf[side], abs=0.05)  # F16 weights vs fp32: small differences
    assert by_hf["chosen"] != by_hf["rejected"]
    from_hf = preference.score(numbers, by_hf, by_hf, beta=0.1)
    from_gguf = preference.score(numbers, by_gguf, by_hf, beta=0.1)
    assert from_gguf.per_item == from_hf.per_item and from_gguf.accuracy == from_hf.accuracy
    assert 0 < from_hf.accuracy < 1  # a random model: some pairs each way, so equality is not trivial
    assert from_hf.reward_margin == 0 and abs(from_gguf.reward_margin or 0) < 0.01


def test_online_rl_scores_answers_with_the_recipes_reward_model(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(24)))
    recipe = write_recipe(
        tmp_path,
        tiny_model,
        data,
        train={"max_steps": 1},
        reward_model={
            "data": {"path": str(preference_file(tmp_path)), "held_out": 4, "max_length": 64},
            "max_steps": 2,
            "batch_size": 4,
        },
        tune={
            "objective": "grpo",
            "rewards": ["exact_match", "reward_model"],
            "max_steps": 2,
            "batch_size": 8,
            "generations": 4,
            "max_completion_length": 4,
            "checkpoint_every": 100,
        },
    )
    loaded = load_recipe(recipe)
    loaded = parse_recipe(
        {**loaded.model_dump(mode="json"), "eval": {"tasks": ["heldout"], "fidelity_rows": 0, "base": False}},
        "r",
        loaded.source,
    )
    home = tmp_path / "runs"
    run_recipe(loaded, home, stages=["eval"])
    store = Store(home / "workbench.db")
    assert [s.name for s in store.stages("tiny")] == ["data", "train", "reward", "tune", "merge", "export", "eval"]
    # the reward model scored each evaluated model's own answers to the held-out prompts
    scored = {m.role: m.value for m in store.metrics("tiny") if m.task == "reward-model" and m.metric == "mean_score"}
    assert set(scored) == {"sft", "reference"} and all(isinstance(v, float) for v in scored.values())
    logs = store.events("tiny", stage="tune", kind="train_log")
    keys = set(logs[-1]["metrics"])
    assert "rewards/exact_match/mean" in keys
    model_reward = [key for key in keys if key.startswith("rewards/") and "exact_match" not in key]
    assert model_reward and all(key.endswith(("/mean", "/std")) for key in model_reward)
    # the reward model's scores are real numbers: the total reward differs from exact match alone
    assert any(log["metrics"]["reward"] != log["metrics"]["rewards/exact_match/mean"] for log in logs)

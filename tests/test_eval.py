"""Evaluation: the in-process llama.cpp LM against lm-eval's hf backend, fidelity, offline tasks, the stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from workbench.core.paths import BUILTIN_EVALS
from workbench.core.records import Metric
from workbench.eval import fidelity, tasks
from workbench.report import scores

# A GGUF f16 holds the fp32 checkpoint's weights rounded to f16, and llama.cpp multiplies in f16 where
# torch uses fp32: log-likelihoods of a tiny random model agree to about 1e-2 nats a token (measured
# ~2e-3); anything else (wrong positions, an extra BOS, a shifted continuation) is off by whole nats.
LOGLIK_TOLERANCE_PER_TOKEN = 0.02


@pytest.fixture
def ggufs(tiny_ggufs: dict[str, Path]) -> dict[str, Path]:
    return tiny_ggufs


@pytest.fixture(scope="module")
def hf_lm(tiny_llama_256: Path):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(tiny_llama_256), device="cpu", dtype="float32", batch_size=4, max_length=512)


def requests(pairs: list[tuple[str, str]], kind: str = "loglikelihood") -> list:
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, pair, idx) for idx, pair in enumerate(pairs)]


PAIRS = [
    ("What is 12 + 30?", " 42"),
    ("What is 12 + 30?", " forty-two"),
    ("<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n", "Hi! How can I help?"),
    ("The capital of France is", " Paris, a city on the Seine."),
    ("", "An empty context is conditioned on the prefix token."),
]


def test_llamacpp_loglikelihoods_match_hf_on_the_same_model(ggufs: dict[str, Path], hf_lm) -> None:
    from workbench.eval.llamacpp_lm import LlamaCppLM

    lm = LlamaCppLM(pretrained=str(ggufs["f16"]), max_length=512)
    try:
        ours = lm.loglikelihood(requests(PAIRS))
        theirs = hf_lm.loglikelihood(requests(PAIRS))
        for (context, continuation), (ll, greedy), (ll_hf, greedy_hf) in zip(PAIRS, ours, theirs, strict=True):
            tokens = len(hf_lm.tok_encode(continuation, add_special_tokens=False))
            assert abs(ll - ll_hf) <= LOGLIK_TOLERANCE_PER_TOKEN * tokens, (context, continuation, ll, ll_hf)
            assert greedy == greedy_hf
        text = "Assignment statements are used to (re)bind names to values. " * 50  # > one 512-token window
        rolling, rolling_hf = (
            lm.loglikelihood_rolling(requests([(text,)])),
            hf_lm.loglikelihood_rolling(requests([(text,)])),
        )
        tokens = len(hf_lm.tok_encode(text))
        assert tokens > 512
        assert abs(rolling[0] - rolling_hf[0]) <= LOGLIK_TOLERANCE_PER_TOKEN * tokens
        # the same requests again come from the KV cache's shared prefixes and must not change
        assert lm.loglikelihood(requests(PAIRS[:2])) == ours[:2]
    finally:
        lm.close()


def test_batched_scoring_equals_one_request_at_a_time(ggufs: dict[str, Path]) -> None:
    """Several requests per decode, contexts shared in the KV pool, logits only where scored: the same
    numbers as decoding each request alone (within 1e-4 nats), for multiple-choice families, contexts
    that contain other requests' continuations, and windows cut at max_length."""
    import numpy as np

    from workbench.eval.llamacpp_lm import LlamaCppLM, Scoring

    questions = [f"Question: what comes after {n}?\nAnswer:" for n in range(5)]
    pairs = [(q, choice) for q in questions for choice in (" one", " two", " three", " many more numbers")]
    pairs += [(questions[0] + " one", " two"), (" ".join(["Long"] * 300), " tail end"), ("", "no context at all")]
    pairs += PAIRS
    for kind in ("f16", "q4_0"):
        lm = LlamaCppLM(pretrained=str(ggufs[kind]), max_length=256, gen_batch=8)
        try:
            batched = lm.loglikelihood(requests(pairs))
            for (context, continuation), (ll, greedy) in zip(pairs, batched, strict=True):
                # as lm-eval splits a request (trailing spaces of the context move to the continuation)
                if context:
                    ctx, cont = lm._encode_pair(context, continuation)
                else:
                    ctx, cont = [lm.prefix_token_id], lm.tok_encode(continuation)
                scoring = Scoring.of(ctx, cont, lm.max_length)
                rows = fidelity.log_softmax(lm.logits(scoring.window)[scoring.scored_from :])
                alone = float(rows[np.arange(len(cont)), cont].sum())
                assert abs(ll - alone) < 1e-4, (kind, context[:40], continuation, ll, alone)
                assert greedy == bool((rows.argmax(axis=-1) == cont).all())
        finally:
            lm.close()


def test_llamacpp_generation_scores_like_hf(ggufs: dict[str, Path], hf_lm, tmp_path: Path) -> None:
    """Targets are hf's own greedy replies, so hf scores 1.0; llama.cpp on the f16 file must too."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from workbench.eval.llamacpp_lm import LlamaCppLM

    prompts = [f"<|im_start|>user\nWhat is {a} + {a + 7}?<|im_end|>\n<|im_start|>assistant\n" for a in range(10, 16)]
    settings = {"until": ["<|im_end|>"], "max_gen_toks": 8, "do_sample": False}
    replies = hf_lm.generate_until(requests([(p, settings) for p in prompts], "generate_until"))
    data = tmp_path / "gen.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "answer": r}) + "\n" for p, r in zip(prompts, replies, strict=True))
    )
    config = tasks.json_task(data, "gen")
    config.update(
        output_type="generate_until",
        doc_to_text="prompt",
        doc_to_target="answer",
        target_delimiter="",
        generation_kwargs=settings,
        metric_list=[{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    )
    (tmp_path / "gen.yaml").write_text(json.dumps(config))
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    lm = LlamaCppLM(pretrained=str(ggufs["f16"]), max_length=512)
    try:
        scores = [
            lm_eval.simple_evaluate(model=model, tasks=["gen"], task_manager=manager)["results"]["gen"]
            for model in (hf_lm, lm)
        ]
    finally:
        lm.close()
    assert len(set(replies)) > 1  # a random model still answers differently to different prompts
    assert scores[0]["exact_match,none"] == 1.0
    assert scores[1]["exact_match,none"] == scores[0]["exact_match,none"]


def test_fidelity_of_a_model_to_itself_is_exact_and_q4_differs(tiny_llama_256: Path, ggufs: dict[str, Path]) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from workbench.eval.llamacpp_lm import LlamaCppLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_256, dtype=torch.float32).eval()
    sequences = [[(7 * i + 13 * j) % 4000 + 10 for j in range(20 + i)] for i in range(6)]
    reference = fidelity.hf_logits(model, batch_size=4)
    itself = fidelity.compare(sequences, reference, fidelity.hf_logits(model, batch_size=3))
    assert itself.kld_mean < 1e-9 and itself.top1_agreement == 1.0 and abs(itself.ppl_ratio - 1) < 1e-6
    assert itself.tokens == sum(len(s) - 1 for s in sequences)
    results = {}
    for name, path in ggufs.items():
        lm = LlamaCppLM(pretrained=str(path), max_length=512)
        try:
            results[name] = fidelity.compare(sequences, reference, fidelity.per_sequence(lm.logits))
        finally:
            lm.close()
    assert results["f16"].kld_mean < 1e-3
    assert results["q4_0"].kld_mean > 10 * results["f16"].kld_mean
    assert results["q4_0"].kld_mean > 1e-4 and results["q4_0"].ppl_ratio != 1.0

    # several sequences per decode (what the eval stage reads) give each sequence's logits as alone
    lm = LlamaCppLM(pretrained=str(ggufs["q4_0"]), max_length=64, gen_batch=4)
    try:
        alone = [lm.logits(ids).copy() for ids in sequences]
        together = list(lm.logits_of(sequences))  # 6 sequences of 20-25 tokens: several groups
    finally:
        lm.close()
    assert [len(t) for t in together] == [len(s) for s in sequences]
    assert all(np.allclose(a, t, atol=1e-4) for a, t in zip(alone, together, strict=True))

    # answer tokens only: the last five tokens of each sequence, by a mask and by scoring from there
    answers = [len(s) - 5 for s in sequences]
    lm = LlamaCppLM(pretrained=str(ggufs["q4_0"]), max_length=512)
    try:
        both = fidelity.compare(sequences, reference, fidelity.per_sequence(lm.logits), answers)
        alone, _ = fidelity.positions(sequences, reference, fidelity.per_sequence(lm.logits), answers)
    finally:
        lm.close()
    assert both.answer_tokens == 5 * len(sequences) == len(alone.kld)
    kld, _, ratio = alone.summary()
    assert both.answer_kld_mean == pytest.approx(kld) and both.answer_ppl_ratio == pytest.approx(ratio)
    assert both.kld_mean == pytest.approx(results["q4_0"].kld_mean) and both.answer_kld_mean != both.kld_mean


def test_answer_starts_are_where_the_assistant_turn_begins(tiny_llama_256: Path) -> None:
    from transformers import AutoTokenizer

    from workbench.eval.fidelity import answer_starts, fidelity_sequences

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_256)
    rows = [{"messages": [{"role": "system", "content": "You are a calculator."},
                          {"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]},
            {"text": "plain text has no answer"}]  # fmt: skip
    sequences = fidelity_sequences(rows, tokenizer, 2)
    starts = answer_starts(rows, tokenizer, sequences)
    assert tokenizer.decode(sequences[0][starts[0] :]).startswith("5<|im_end|>")
    assert starts[1] == len(sequences[1])


def test_task_folders_get_absolute_data_files_and_code_tags_are_refused(tmp_path: Path) -> None:
    names = tasks.copy_task_folders([BUILTIN_EVALS], tmp_path / "out")
    assert {"general", "general_mc", "stdlib_docs"} <= set(names)

    copied = yaml.safe_load(next((tmp_path / "out").rglob("general_mc.yaml")).read_text())
    data_file = Path(copied["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file == BUILTIN_EVALS / "general" / "general_mc.jsonl"
    assert len(data_file.read_text().splitlines()) == 40

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "task.yaml").write_text("task: evil\nprocess_docs: !function utils.process\n")
    with pytest.raises(tasks.TaskError, match=r"task.yaml: line 2, .*'!function': tags run Python code"):
        tasks.copy_task_folders([evil], tmp_path / "out2")
    with pytest.raises(tasks.TaskError, match="eval task folder not found"):
        tasks.copy_task_folders([tmp_path / "missing"], tmp_path / "out3")


def test_heldout_split_becomes_the_right_kind_of_task(tiny_llama_256: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_256)
    chat = [{"messages": [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]}]
    config = tasks.heldout_task(chat, tokenizer, tmp_path, "exact_match", None)
    doc = json.loads((tmp_path / "heldout.jsonl").read_text())
    assert config["output_type"] == "generate_until" and doc["answer"] == "4"
    assert doc["prompt"] == tokenizer.apply_chat_template(
        chat[0]["messages"][:1], add_generation_prompt=True, tokenize=False
    )
    assert config["generation_kwargs"]["until"] == ["<|im_end|>"]
    text = tasks.heldout_task([{"text": "plain text"}], tokenizer, tmp_path, "exact_match", None)
    assert text["output_type"] == "loglikelihood_rolling"
    with pytest.raises(tasks.TaskError, match="held-out split is empty"):
        tasks.heldout_task([], tokenizer, tmp_path, "exact_match", None)


def test_summary_rows_gain_and_primary_metrics() -> None:
    rows = [
        Metric("m", "reference", "heldout", "exact_match,strip", 0.9),
        Metric("b", "base", "heldout", "exact_match,strip", 0.1),
        Metric("b", "base", "general_mc", "acc", 0.8),
        Metric("b", "base", "general_mc", "acc_norm", 0.7),
        Metric("m", "reference", "general_mc", "acc", 0.75),
        Metric("q", "variant", "heldout", "exact_match,strip", 0.85),
        Metric("q", "variant", "fidelity", "kld_mean", 0.02),
    ]
    models = scores.by_model(rows)
    assert [m.model for m in models] == ["b", "m", "q"]
    assert scores.columns(rows) == ["heldout exact_match,strip", "general_mc acc", "kld_mean"]
    assert scores.gains(rows) == [("heldout exact_match,strip", 0.1, 0.9), ("general_mc acc", 0.8, 0.75)]
    assert models[2].scores == {"heldout exact_match,strip": 0.85, "kld_mean": 0.02}


def test_unknown_task_names_are_refused_with_a_suggestion(tmp_path: Path) -> None:
    from workbench.pipeline.stages.eval import check_task_names

    with pytest.raises(tasks.TaskError, match=r"unknown task\(s\): arc_eazy \(did you mean .*arc_easy"):
        check_task_names(["heldout", "arc_eazy"], ["heldout"], tmp_path)
    assert check_task_names(["heldout", "general"], ["heldout", "general"], tmp_path) is False


def test_a_worker_result_is_kept_and_recorded_as_it_always_was() -> None:
    """The typed `eval.model` result is kept (results.json) as the dict it replaced, key for key and in the
    same order, fidelity without the numbers it has not; a kept summary reads back as the same result and
    gives the store the same records."""
    from workbench.eval.fidelity import Fidelity
    from workbench.eval.worker import EvalResult, ItemRow, MetricRow
    from workbench.pipeline.stages.eval import result_of, store_items, store_rows, summary_of

    close = Fidelity(tokens=175, kld_mean=1e-8, kld_p99=2e-8, kld_max=3e-8, top1_agreement=1.0, ppl_reference=9.0,
                     ppl_variant=9.0, ppl_ratio=1.0, vocab_compared=49152)  # fmt: skip
    result = EvalResult(
        name="m-Q4_0.gguf",
        format="gguf",
        seconds={"load": 0.1, "lm_eval": 2.6, "fidelity": 2.4},
        metrics=[MetricRow("heldout", "exact_match,strip", 0.5, 0.1, True)],
        items=[ItemRow("heldout", "exact_match,strip", {0: 1.0, 1: 0.0})],
        samples={"heldout": 2},
        n_shot={"heldout": 0},
        versions={"heldout": 1.0},
        fidelity=close,
    )
    kept = json.loads(json.dumps(summary_of(result)))  # as results.json holds it
    assert list(kept) == ["name", "format", "seconds", "metrics", "items", "samples", "n_shot", "versions", "fidelity"]
    assert kept["metrics"] == [
        {"task": "heldout", "metric": "exact_match,strip", "value": 0.5, "stderr": 0.1, "higher_is_better": True}
    ]
    assert kept["items"] == [{"task": "heldout", "metric": "exact_match,strip", "values": {"0": 1.0, "1": 0.0}}]
    assert kept["fidelity"] == close.to_dict() and "answer_tokens" not in kept["fidelity"]
    assert result_of({**kept, "peak_mem_mb": 900.0, "fingerprint": "f"}) == result

    model = {"name": "m-Q4_0.gguf", "format": "gguf", "path": "/q4", "role": "variant"}
    rows = store_rows(model, result)
    assert rows[0] == Metric("m-Q4_0.gguf", "variant", "heldout", "exact_match,strip", 0.5, 0.1, True)
    assert [(r.task, r.metric) for r in rows[1:]] == [("fidelity", key) for key in close.to_dict()]
    assert store_items(model, result_of(kept))[0].values == {0: 1.0, 1: 0.0}

    bare = summary_of(EvalResult("base", "hf", {"load": 1.0}))  # no tasks, no fidelity: only what ran
    assert bare == {"name": "base", "format": "hf", "seconds": {"load": 1.0}}

"""The per-tensor search: the allocation is the least-KLD plan within the budget (against brute force), the
file llama-quantize makes holds the planned types (read back from it) and never exceeds its budget, and on a
model with one group made fragile on purpose the searched file beats a uniform assignment of the same size."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from conftest import addition_rows, write_recipe

from workbench.core.gguf_types import parse_budget
from workbench.core.recipe import load_recipe
from workbench.core.store import Store
from workbench.export import gguf, search
from workbench.pipeline.runner import run_recipe


def brute_force(options: search.Options, capacity: int) -> float:
    names = list(options.by_group)
    best = float("inf")
    for combo in itertools.product(*(options.by_group[n].items() for n in names)):
        if sum(size for _, (size, _) in combo) <= capacity:
            best = min(best, sum(kld for _, (_, kld) in combo))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_the_allocation_is_the_least_kld_within_the_budget(seed: int) -> None:
    rng = random.Random(seed)
    sizes = {"q8_0": 34, "q5_0": 22, "q4_0": 18, "q3_k": 14}
    options = search.Options(
        {
            f"g{g}": {
                t: (size * rng.randint(50, 150), 0.0 if t == "q8_0" else rng.random() * (40 - size))
                for t, size in sizes.items()
            }  # fmt: skip
            for g in range(5)
        }
    )
    smallest = sum(min(s for s, _ in choice.values()) for choice in options.by_group.values())
    largest = sum(max(s for s, _ in choice.values()) for choice in options.by_group.values())
    capacity = rng.randint(smallest, largest)
    plan = search.allocate(options, capacity)
    assert sum(options.by_group[name][t][0] for name, t in plan.items()) <= capacity
    got = search.predicted_kld(options, plan, 0.0)
    assert got == pytest.approx(brute_force(options, capacity), abs=0.05 * got + 1e-9)  # sizes rounded up a little
    with pytest.raises(search.BudgetTooSmall, match="need"):
        search.allocate(options, smallest - 1)


def test_groups_by_kind_and_by_layer_and_the_rows_that_fit() -> None:
    tensors = [
        gguf.Tensor("token_embd.weight", (576, 100), "F16"),
        gguf.Tensor("blk.0.attn_q.weight", (576, 576), "F16"),
        gguf.Tensor("blk.1.attn_q.weight", (576, 576), "F16"),
        gguf.Tensor("blk.0.ffn_down.weight", (1536, 576), "F16"),
        gguf.Tensor("blk.0.attn_norm.weight", (576,), "F32"),
    ]
    kinds = {g.name: g for g in search.groups(tensors)}
    assert list(kinds) == ["token_embd", "attn_q", "ffn_down"]
    assert (
        kinds["attn_q"].weights == 2 * 576 * 576 and not kinds["attn_q"].fits("q4_k") and kinds["attn_q"].fits("q4_0")
    )
    assert kinds["ffn_down"].fits("q4_k") and kinds["ffn_down"].bytes("q4_k") == 1536 * 576 // 256 * 144
    assert [g.name for g in search.groups(tensors, "layer")] == [
        "token_embd",
        "blk.0.attn_q",
        "blk.1.attn_q",
        "blk.0.ffn_down",
    ]
    assert search.compact({"a": "q4_0", "b": "q8_0", "c": "q4_0"}) == "q4_0: a c; q8_0: b"
    assert (
        parse_budget("q4_k_m").label == "Q4_K_M"
        and parse_budget("95MiB").mib == 95
        and parse_budget("3.5bpw").bpw == 3.5
    )
    with pytest.raises(ValueError, match="expected a file type"):
        parse_budget("small")


def fragile(model_dir: Path, out: Path) -> Path:
    """A copy of the model whose attn_v weights have one large value in each block of 32: the rest of each
    block rounds to nothing in 4 bits, not in 8 — a group the search must keep at high precision."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(model_dir, out)
    weights = load_file(out / "model.safetensors")
    for name, tensor in weights.items():
        if name.endswith("v_proj.weight"):
            spiked = tensor.clone()
            spiked[:, ::32] = 12 * tensor.abs().max()
            weights[name] = spiked.to(torch.float32)
    save_file(weights, out / "model.safetensors")
    return out


@pytest.mark.slow
def test_a_searched_file_keeps_its_budget_holds_its_plan_and_beats_uniform(
    tmp_path: Path, tiny_llama_256: Path
) -> None:
    from workbench.data.files import read_jsonl
    from workbench.eval import fidelity
    from workbench.eval.llamacpp_lm import LlamaCppLM

    model = fragile(tiny_llama_256, tmp_path / "fragile-llama")
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(64)))
    export = {"gguf": ["f16", "q5_0"], "imatrix": "none", "smoke_prompts": 0, "parity_prompts": 0,
              "search": {"budgets": ["q5_0"], "types": ["q8_0", "q5_0", "q4_0"]}}  # fmt: skip
    recipe = write_recipe(tmp_path, model, data, data={"max_length": 128}, train={"max_steps": 1}, export=export)
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])
    variants = {v.name.removeprefix("fragile-llama-tiny-"): v for v in Store(home / "workbench.db").variants("tiny")}
    f16, stock, searched = variants["F16.gguf"], variants["Q5_0.gguf"], variants["SEARCH-Q5_0.gguf"]
    assert searched.status == "done" and searched.meta["type"] == "search", searched.error
    record = searched.meta["search"]

    # the budget: no larger than llama-quantize's own Q5_0 file (the exported one adds 64 bytes of metadata)
    assert Path(searched.path).stat().st_size <= record["limit_bytes"] <= Path(stock.path).stat().st_size
    # the plan, read back from the file: every weight in its group's planned type
    held = {t.name: t.type.lower() for t in gguf.tensors(Path(searched.path))}
    groups = search.groups(gguf.tensors(Path(f16.path)))
    assert {g.name for g in groups} == set(record["plan"]) and record["not_as_planned"] == []
    assert all(held[t.name] == record["plan"][g.name] for g in groups for t in g.tensors)
    assert (home / "tiny" / "export" / record["tensor_types_file"]).read_text() == search.tensor_type_file(
        groups, record["plan"]
    )
    # the fragile group kept at 8 bits, paid for elsewhere
    assert record["plan"]["attn_v"] == "q8_0" and "q4_0" in record["plan"].values()

    # measured on held-out conversations: closer to the f16 file than the uniform file of the same size
    rows = read_jsonl(home / "tiny" / "data" / "held_out.jsonl")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_256)
    sequences = fidelity.fidelity_sequences(rows, tokenizer, len(rows))
    reference = LlamaCppLM(f16.path, max_length=256)
    cached = list(reference.logits_of(sequences))
    reference.close()

    def kld(path: str) -> float:
        lm = LlamaCppLM(path, max_length=256)
        found = fidelity.compare(sequences, lambda _: iter(cached), lm.logits_of)
        lm.close()
        return found.kld_mean

    assert kld(searched.path) < 0.8 * kld(stock.path)


def test_trials_are_logged_as_measured_and_a_second_run_reuses_them(
    tmp_path: Path, tiny_ggufs: dict[str, Path]
) -> None:
    from workbench.export import trials

    sequences = [[1, 5, 9, 13, 17, 21, 25], [1, 7, 3, 11, 2]]
    batch = [
        trials.Trial("q8", "Q8_0"),
        trials.Trial("q4", "Q4_0"),
        trials.Trial("v4", "Q8_0", tensor_type=("attn_v=q4_0",)),
    ]
    log = tmp_path / "trials.jsonl"
    first = trials.run(trials.TrialsJob(tiny_ggufs["f16"], batch, sequences, [4, 3], log, context=64))
    assert first.reused == 0 and first.forwards == 4 and [m.name for m in first.measured] == ["q8", "q4", "v4"]
    q8, q4, v4 = first.measured
    assert 0 <= q8.kld < v4.kld and q8.kld < q4.kld and q4.size < v4.size < q8.size  # one group in 4 bits costs less
    assert len(log.read_text().splitlines()) == 3
    log.write_text("\n".join(log.read_text().splitlines()[:2]) + '\n{"key": "cut sh')  # a crash mid-line
    again = trials.run(trials.TrialsJob(tiny_ggufs["f16"], batch, sequences, [4, 3], log, context=64))
    assert again.reused == 2 and again.forwards == 2 and again.measured[:2] == first.measured[:2]
    assert trials.logged(log).keys() == {trial.key for trial in batch}  # the cut line did not swallow the next


def test_a_file_over_its_budget_is_refused_and_one_off_its_plan_is_said(tiny_ggufs: dict[str, Path]) -> None:
    from workbench.export import choosing
    from workbench.export.making import ExportFailed

    path = tiny_ggufs["q4_0"]
    all_groups = search.groups(gguf.tensors(path))
    plan = {group.name: "q4_0" for group in all_groups}
    size = path.stat().st_size
    planned = choosing.Planned(parse_budget("q4_0"), size, size, plan, 0.0, "q4_0")
    checked = choosing.check_searched(path, planned, all_groups)
    held = {t.name: t.type.lower() for t in gguf.tensors(path)}
    assert checked["size"] == size
    assert len(checked["not_as_planned"]) == sum(held[t.name] != "q4_0" for g in all_groups for t in g.tensors)
    with pytest.raises(ExportFailed, match="over its budget"):
        choosing.check_searched(
            path, choosing.Planned(parse_budget("q4_0"), size - 1, size, plan, 0.0, "q4_0"), all_groups
        )

"""Packing (`data.packing`): TRL's padding-free collator puts several examples in one row, and the model's
attention mask keeps each from attending to the others (transformers reads the restarts in position_ids).
Checked through the collator and model the train stage uses: an example's logits in a packed row equal its
logits alone, and would not if it saw its neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import addition_rows, write_recipe

from workbench.core.recipe import load_recipe
from workbench.pipeline.runner import run_recipe


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_examples_do_not_attend_to_each_other(tiny_model: Path, attention: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention)
    model.eval()
    examples = [[5, 17, 42, 99, 3, 250, 7], [11, 12, 13, 14, 15], [200, 201, 202, 203, 204, 205, 206, 207]]
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([{"input_ids": ids} for ids in examples])
    assert batch["input_ids"].shape == (1, sum(map(len, examples)))  # one row, no padding
    assert "attention_mask" not in batch or batch["attention_mask"] is None
    with torch.no_grad():
        # as TRL's SFTTrainer.compute_loss calls the model: use_cache=False (with a cache, transformers
        # does not read the restarts, and the examples would see each other)
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for ids in examples:
            alone = model(input_ids=torch.tensor([ids])).logits[0]
            assert torch.allclose(packed[start : start + len(ids)], alone, atol=1e-5), (attention, ids)
            start += len(ids)
        # the same row without the restarts lets later examples see earlier ones: their logits change
        leaky = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
    assert not torch.allclose(leaky[len(examples[0]) :], packed[len(examples[0]) :], atol=1e-3)


def test_a_packed_training_step_carries_several_examples_a_row(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(72)))
    recipe = write_recipe(tmp_path, tiny_model, data, train={"max_steps": 2, "batch_size": 2})
    home = tmp_path / "runs"
    tokens = {}
    for packing in (False, True):
        run_id = run_recipe(load_recipe(recipe, [f"data.packing={str(packing).lower()}"]), home, stages=["train"],
                            run_id=f"packing-{packing}".lower())  # fmt: skip
        history = json.loads((home / run_id / "train" / "log_history.json").read_text())
        tokens[packing] = [log["num_tokens"] for log in history if "num_tokens" in log][-1]
    # the same 2 steps of 2 rows: packed rows hold several examples each, padded rows one
    assert tokens[True] > 2 * tokens[False], tokens

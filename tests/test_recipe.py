from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from workbench.cli import main
from workbench.core.recipe import RecipeError, load_recipe

ROOT = Path(__file__).resolve().parent.parent


def recipe_file(tmp_path: Path, text: str) -> Path:
    (tmp_path / "data.json").write_text('[{"question": "Q", "answer": "A"}]')
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


GOOD = """
name: demo
base_model: smollm2-135m-instruct
data: {path: data.json}
train: {learning_rate: 1e-4}
"""


def test_checked_in_recipes_validate() -> None:
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        assert load_recipe(path).name


def test_good_recipe_with_relative_data_path(tmp_path: Path) -> None:
    recipe = load_recipe(recipe_file(tmp_path, GOOD))
    assert recipe.train.learning_rate == 1e-4
    assert recipe.resolve_path(recipe.data.path) == tmp_path / "data.json"
    assert recipe.train.lora.r == 16 and recipe.merge.dtype == "float16"


def test_every_problem_is_listed_with_its_field_path(tmp_path: Path) -> None:
    text = """
name: demo
base_model: x
data: {path: data.json, held_out: -1}
train:
  learnig_rate: 1e-4
  method: qlorra
  lora: {rank: 8}
exprot: {}
"""
    with pytest.raises(RecipeError) as err:
        load_recipe(recipe_file(tmp_path, text))
    problems = err.value.problems
    assert len(problems) == 5
    joined = "\n".join(problems)
    assert "train.learnig_rate: unknown key; did you mean 'learning_rate'?" in joined
    assert "exprot: unknown key; did you mean 'export'?" in joined
    assert "train.lora.rank: unknown key" in joined
    assert "train.method: input should be 'lora', 'qlora' or 'full' (got 'qlorra')" in joined
    assert "data.held_out: input should be greater than or equal to 0 (got -1)" in joined


def test_missing_fields_and_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="data: required field is missing"):
        load_recipe(recipe_file(tmp_path, "name: demo\nbase_model: x\n"))
    with pytest.raises(RecipeError, match="data.path: file not found: nope.json"):
        load_recipe(recipe_file(tmp_path, "name: demo\nbase_model: x\ndata: {path: nope.json}\n"))
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe(tmp_path / "absent.yaml")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="line 2, column 14: not valid YAML"):
        load_recipe(recipe_file(tmp_path, "name: demo\nbase_model: x: y\ndata: {}\n"))


def test_overrides_are_applied_and_validated(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, GOOD)
    recipe = load_recipe(path, ["train.learning_rate=3e-5", "train.lora.r=4", "train.epochs=2"])
    assert (recipe.train.learning_rate, recipe.train.lora.r, recipe.train.epochs) == (3e-5, 4, 2)
    with pytest.raises(RecipeError, match="train.lora.rr: unknown key; did you mean 'r'"):
        load_recipe(path, ["train.lora.rr=4"])
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(path, ["train.lora.r"])


def test_cli_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = recipe_file(tmp_path, GOOD)
    assert main(["recipe", "validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "demo", "base_model": "x", "data": {"path": "data.json"}, "trian": {}}))
    assert main(["recipe", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: 1 problem" in err and "trian: unknown key; did you mean 'train'?" in err


def test_qat_section_rules_and_the_merge_base_it_implies(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, GOOD)

    def load(*sets: str):
        return load_recipe(path, list(sets))

    assert load().train.qat.target is None and load().merge_base == "original"
    assert load("train.qat.target=none").train.qat.target is None  # what `sweep --vary ...=none,q4_0` passes
    distilled = load("train.qat.target=q4_k_m", "export.gguf=[q4_k_m]", "train.qat.start_after_steps=4",
                     "train.qat.distill={weight: 2}").train.qat.distill  # fmt: skip
    assert distilled is not None
    assert (distilled.weight, distilled.tokens, distilled.teacher) == (2, "answers", "supervised")
    assert load("train.qat.distill={weight: 2}").train.qat.distill is not None  # a plain twin keeps the section
    after = load("train.qat.target=q4_k_m", "export.gguf=[q4_k_m]", "train.qat.steps=8", "train.qat.distill={}")
    assert after.train.qat.steps == 8 and after.train.qat.learning_rate is None  # the supervised steps' teacher
    qat = load("train.qat.target=q4_0", "export.gguf=[q4_0]")
    assert qat.train.qat.start_after_steps == 0 and qat.train.qat.embeddings and qat.merge_base == "original"
    qlora = ["train.method=qlora", "train.qat.target=q4_0", "export.gguf=[q4_0]"]
    assert load(*qlora).merge_base == "dequantized-nf4"  # what QLoRA-QAT trained against
    assert load("train.method=qlora").merge_base == "original"
    assert load("train.method=qlora", "train.lora.init=loftq").merge_base == "dequantized-nf4"
    assert load("train.method=qlora", "merge.base=dequantized-nf4").merge_base == "dequantized-nf4"
    cases = {
        ("train.qat.target=q4_0",): "train.qat.target: q4_0 is not exported; add it to export.gguf",
        (*qlora, "merge.base=original"): "merge.base: original ships other weights",
        ("train.qat.target=q4_0", "export.gguf=[q4_0]", "train.lora.dora=true"): "DoRA is not supported",
        ("train.qat.target=q3_k_m", "export.gguf=[q3_k_m]"): "train.qat.target: input should be 'q4_0', 'q8_0',",
        ("train.qat.target=q4_k_m", "export.gguf=[q4_k_m]", "train.qat.distill={}"): "set qat.steps",
        ("train.qat.target=q4_0", "export.gguf=[q4_0]", "train.qat.steps=8", "train.qat.start_after_steps=2"): (
            "both say when the rounding goes on"
        ),
        ("train.qat.learning_rate=1e-4",): "train.qat.learning_rate: is the rate of qat.steps",
        ("train.qat.steps=0",): "train.qat.steps",
        (
            "train.qat.target=q4_0",
            "export.gguf=[q4_0]",
            "train.method=full",
            "train.qat.start_after_steps=2",
            "train.qat.distill={weight: 2}",
        ): "distillation is built for lora and qlora",  # fmt: skip
        ("train.qat.distill={tokens: some}",): "train.qat.distill.tokens",
        ("train.qat.start_after_steps=-1", "export.gguf=[q4_0]"): "train.qat.start_after_steps",
    }
    for sets, message in cases.items():
        with pytest.raises(RecipeError) as caught:
            load(*sets)
        assert message in caught.value.report(), caught.value.report()


def test_adapter_gguf_needs_an_adapter_that_belongs_to_the_base(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, GOOD)
    assert load_recipe(path, ["export.adapter_gguf=[q8_0]"]).export.adapter_gguf == ["q8_0"]
    assert load_recipe(path).export.adapter_gguf == []  # off unless asked for
    cases = {
        ("train.method=full",): "export.adapter_gguf: a full fine-tune has no adapter",
        ("train.lora.dora=true",): "llama.cpp's adapter format has no DoRA",
        ("train.method=qlora", "train.lora.init=loftq"): "this adapter belongs to the dequantized nf4 base",
    }
    for sets, message in cases.items():
        with pytest.raises(RecipeError) as caught:
            load_recipe(path, ["export.adapter_gguf=[q8_0]", *sets])
        assert message in caught.value.report(), caught.value.report()

"""The importance matrix: computed by llama-imatrix on the training split as training rendered it (never a
held-out row), recorded with its provenance, written into the file's metadata, and cached by its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import addition_rows, write_recipe
from transformers import AutoTokenizer

from workbench.core.recipe import load_recipe
from workbench.core.store import Store
from workbench.data.dataset import render, split_rows
from workbench.pipeline.runner import run_recipe

HELD_OUT = 8


def metadata(path: Path) -> dict[str, object]:
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    return {key: fields[key].contents() for key in fields if key.startswith(("quantize.", "workbench."))}


@pytest.fixture
def marked(tmp_path: Path) -> tuple[Path, list[str]]:
    """40 addition rows; each one the split holds out carries a marker no training row has."""
    rows = addition_rows(40)
    _, held = split_rows(list(enumerate(rows)), HELD_OUT, seed=0)  # the split depends on the count and seed only
    markers = []
    for number, row in held:
        markers.append(f"HELDOUT-MARKER-{number}")
        row["question"] += f" ({markers[-1]})"
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(rows))
    return data, markers


@pytest.mark.slow
def test_the_task_imatrix_reads_the_training_split_never_a_held_out_row_and_auto_measures_both(
    tmp_path: Path, tiny_llama_256: Path, marked: tuple[Path, list[str]]
) -> None:
    data, markers = marked
    export = {"gguf": ["q4_k_m"], "imatrix": "task", "imatrix_compare": ["none"], "smoke_prompts": 0,
              "parity_prompts": 0}  # fmt: skip
    recipe = write_recipe(tmp_path, tiny_llama_256, data, data={"max_length": 128}, train={"max_steps": 2},
                          export=export)  # fmt: skip
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])

    held_out = (home / "tiny" / "data" / "held_out.jsonl").read_text()
    assert all(marker in held_out for marker in markers)  # the planted rows are the held-out ones
    cache = home / "tiny" / ".work" / "cache" / "export" / "imatrix"
    (text_file,) = cache.glob("*.txt")  # the text llama-imatrix read
    text = text_file.read_text()
    assert "HELDOUT-MARKER" not in text
    # every training row but the 8 (a quarter of 32) kept to measure choices on, through the chat template
    train = [json.loads(line) for line in (home / "tiny" / "data" / "train.jsonl").read_text().splitlines()]
    assert text.count("<|im_start|>assistant\n") == len(train) - 8 == 24
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_256)
    calibrating = [render(row, tokenizer) for row in train[:24]]
    assert text == "".join(calibrating)
    assert not any(render(row, tokenizer) in text for row in train[24:] if render(row, tokenizer) not in calibrating)

    store = Store(home / "workbench.db")
    stem = f"{tiny_llama_256.name}-tiny"
    variants = {v.name: v for v in store.variants("tiny")}
    own, plain = variants[f"{stem}-Q4_K_M.gguf"], variants[f"{stem}-Q4_K_M-noimatrix.gguf"]
    assert own.status == plain.status == "done"
    provenance = own.meta["imatrix"]
    assert provenance["source"] == "task" and provenance["rows"] == 24 and provenance["seconds"] > 0
    assert (
        provenance["chunks"] * provenance["context"]
        <= provenance["tokens"]
        < (provenance["chunks"] + 1) * provenance["context"]
    )
    assert plain.meta["imatrix"] is None
    shipped = home / "tiny" / "export" / provenance["file"]
    assert shipped.is_file() and json.loads(shipped.with_suffix(".json").read_text())["rows"] == 24

    said = metadata(Path(own.path))  # llama-quantize's own keys, and the workbench's
    assert said["quantize.imatrix.chunks_count"] == provenance["chunks"]
    # they name the matrix as it ships beside the file, and its text by name: no folder of this machine
    assert said["quantize.imatrix.file"] == provenance["file"] and "/" not in str(said["quantize.imatrix.dataset"])
    assert said["workbench.quantize"].startswith("Q4_K_M; imatrix task (24 rows")
    assert metadata(Path(plain.path))["workbench.quantize"] == "Q4_K_M; imatrix none"
    assert "quantize.imatrix.file" not in metadata(Path(plain.path))
    assert Path(own.path).read_bytes() != Path(plain.path).read_bytes()

    # again under imatrix auto, with another type: the task matrix comes from the cache, and each type is
    # made with it or without it, whichever is closer to the f16 file on the 8 rows the matrix did not see
    auto = {"gguf": ["q4_0", "q3_k_m"], "smoke_prompts": 0, "parity_prompts": 0}
    recipe = write_recipe(tmp_path, tiny_llama_256, data, data={"max_length": 128}, train={"max_steps": 2},
                          export=auto)  # fmt: skip
    run_recipe(load_recipe(recipe), home, stages=["export"])
    made = [v for v in store.variants("tiny") if v.name.endswith(("Q4_0.gguf", "Q3_K_M.gguf"))]
    assert len(made) == 2
    for variant in made:
        choice = variant.meta["imatrix_choice"]
        assert variant.status == "done" and choice["conversations"] == 8
        closer = "task" if choice["task"]["kld"] < choice["none"]["kld"] else "none"
        assert choice["chosen"] == closer and choice["none"]["kld"] != choice["task"]["kld"]
        assert (variant.meta["imatrix"] or {"source": "none"})["source"] == closer
        if closer == "task":
            assert variant.meta["imatrix"]["seconds"] is None  # the cached matrix
            assert variant.meta["imatrix"]["text_sha256"] == provenance["text_sha256"]
        assert metadata(Path(variant.path))["workbench.quantize"].endswith("imatrix none") == (closer == "none")


def test_gptq_and_awq_calibrate_on_the_training_rows_or_the_generic_text(tmp_path: Path, tiny_llama_256: Path) -> None:
    from workbench.data.files import write_jsonl
    from workbench.export.gptq import calibration
    from workbench.export.imatrix import generic_texts

    rows = [{"number": n, "messages": [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": f"a{n}"}]}
            for n in range(3)]  # fmt: skip
    write_jsonl(tmp_path / "train.jsonl", rows)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_256)
    task = calibration("task", tmp_path, tokenizer, 2)
    assert task == [render(row, tokenizer) for row in rows[:2]] and "<|im_start|>assistant\na1<|im_end|>" in task[1]
    generic = calibration("generic", tmp_path, tokenizer, 5)
    assert generic == generic_texts()[:5] and "Assignment statements" in generic[0]

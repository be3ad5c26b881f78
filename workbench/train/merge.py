"""Fold an adapter into its base: the original 16-bit weights, or (`merge.base: dequantized-nf4`) the nf4
weights a QLoRA adapter was trained against, dequantized — what LoftQ initialises against and what
quantization-aware QLoRA rounded; never into the nf4 weights themselves."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def load_base(base: str, merge_base: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if merge_base == "dequantized-nf4":
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        model = AutoModelForCausalLM.from_pretrained(
            base, quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
        )
        return model.dequantize()
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def merge_adapter(
    base: str, adapter_dir: str | Path, merge_base: str = "original", then: str | Path | None = None
) -> PreTrainedModel:
    """The base with the adapter folded in, in fp32 (cast when saving); `then`: a second adapter trained on
    that merged model (preference tuning with `tune.start: merged`), folded in after it."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base, merge_base), str(adapter_dir)).merge_and_unload()
    if then is not None:
        model = PeftModel.from_pretrained(model, str(then)).merge_and_unload()
    return model


def save_merged(model: PreTrainedModel, out: Path, dtype: str, base: str, tokenizer_from: str | Path) -> None:
    """A merged model saved as a plain safetensors checkpoint in `dtype`, with the base model's generation
    settings and the trained tokenizer."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    model = model.to(getattr(torch, dtype))
    model.config.dtype = getattr(torch, dtype)
    with contextlib.suppress(OSError):  # a base without generation_config.json keeps the default
        model.generation_config = GenerationConfig.from_pretrained(base)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(out)

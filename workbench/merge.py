"""Fold an adapter into its base: the original 16-bit weights, or (`merge.base: dequantized-nf4`) the nf4
weights a QLoRA adapter was trained against, dequantized — what LoftQ initialises against and what
quantization-aware QLoRA rounded; never into the nf4 weights themselves."""

from __future__ import annotations

from typing import Any


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


def merge_adapter(base: str, adapter_dir: Any, merge_base: str = "original") -> Any:
    """The base with the adapter folded in, in fp32 (cast when saving)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base, merge_base), str(adapter_dir))
    return model.merge_and_unload()

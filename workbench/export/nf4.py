"""bitsandbytes nf4 variant: the merged model saved as a 4-bit checkpoint transformers loads directly.

`python -m workbench.export.nf4 MERGED_DIR OUT_DIR` runs the export in its own process (see gguf.py).
"""

from __future__ import annotations

import sys
from pathlib import Path


def quantization_config(compute_dtype: str = "bfloat16"):  # noqa: ANN201 - transformers type, imported lazily
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


def export(merged: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(merged, quantization_config=quantization_config(), device_map=device)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(merged).save_pretrained(out)


def chat(model_dir: Path, messages: list[dict[str, str]], max_tokens: int = 48) -> str:
    """Greedy reply through transformers with the variant's own tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    device = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(model_dir, device_map=device).eval()
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


if __name__ == "__main__":
    export(Path(sys.argv[1]), Path(sys.argv[2]))

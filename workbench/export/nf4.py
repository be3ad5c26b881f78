"""bitsandbytes nf4 variant: the merged model saved as a 4-bit checkpoint transformers loads directly.
Runs in a worker (task `nf4.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.workers.child import Channel


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


def export_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    export(Path(job["merged"]), Path(job["out"]))
    return {}

"""GPTQ and AWQ variants with GPTQModel (the maintained successor of auto-gptq and AutoAWQ), written in
the on-disk formats those wrote (`quantize_config.json`), which transformers and vLLM load.

Calibration uses the fine-tune's own training rows, rendered through its chat template: the
activations that matter are the ones the model will see when serving.

`python -m workbench.export.gptq JOB.json` runs one export, then reloads the saved checkpoint with
GPTQModel's kernels and answers the smoke prompts, all in its own process (see gguf.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def calibration_texts(rows: list[dict[str, Any]], tokenizer: Any) -> list[str]:
    return [
        tokenizer.apply_chat_template(row["messages"], tokenize=False) if "messages" in row else row["text"]
        for row in rows
        if "messages" in row or "text" in row
    ]


def export(job: dict[str, Any]) -> None:
    # GPTQModel sizes its CPU worker pool from the machine; on two cores its default asks for more than it has
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(os.cpu_count() or 1, 8))))
    import torch
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.config import AWQConfig, GPTQConfig
    from transformers import AutoTokenizer

    if job["method"] == "gptq":
        config = GPTQConfig(bits=job["bits"], group_size=job["group_size"], desc_act=job["desc_act"])
    else:
        config = AWQConfig(bits=job["bits"], group_size=job["group_size"])
    tokenizer = AutoTokenizer.from_pretrained(job["merged"])
    model = GPTQModel.load(job["merged"], config)
    model.quantize(job["calibration"], tokenizer=tokenizer, batch_size=8)
    model.save(job["out"])
    tokenizer.save_pretrained(job["out"])
    del model

    replies = []
    if job["smoke"]:
        model = GPTQModel.load(job["out"])
        for messages in job["smoke"]:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(model.device)
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=48,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
            reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            replies.append({"prompt": messages[-1]["content"], "reply": reply})
    Path(job["smoke_out"]).write_text(json.dumps(replies))


if __name__ == "__main__":
    export(json.loads(Path(sys.argv[1]).read_text()))

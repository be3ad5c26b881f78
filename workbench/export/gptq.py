"""GPTQ and AWQ variants with GPTQModel (the maintained successor of auto-gptq and AutoAWQ), written in
the on-disk formats those wrote (`quantize_config.json`), which transformers and vLLM load.

Calibration uses the fine-tune's own training rows, rendered through its chat template: the
activations that matter are the ones the model will see when serving.

Runs in a worker (task `gptq.export`); the variant's checks load it again through transformers, as a
server would.
"""

from __future__ import annotations

import os
from typing import Any

from workbench.workers.child import Channel


def calibration_texts(rows: list[dict[str, Any]], tokenizer: Any) -> list[str]:
    return [
        tokenizer.apply_chat_template(row["messages"], tokenize=False) if "messages" in row else row["text"]
        for row in rows
        if "messages" in row or "text" in row
    ]


def export_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    # GPTQModel sizes its CPU worker pool from the machine; on two cores its default asks for more than it has
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(os.cpu_count() or 1, 8))))
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
    return {}

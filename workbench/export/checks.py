"""The checks every exported variant gets, in a worker (task `variant.check`), loaded the way a server
loads it: serving parity (does its own chat template give the prompt tokens and the stop token training
used?) and a smoke test (greedy answers to held-out prompts, through the Chat arena's loaders).

Each phase is announced, so a crash names it ("Q8_0.gguf: smoke check crashed (SIGSEGV)"), and the
parity result is sent as soon as it is known, so it survives a crash in the smoke test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workbench.workers.child import Channel

SMOKE_TOKENS = 48


def check_job(job: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """`job["expected"]` is `parity.Expected` as a dict (training's side, rendered by the caller)."""
    from workbench.chat.stream import reply
    from workbench.core import parity

    channel.phase("parity check")
    check = parity.check_gguf if job["format"] == "gguf" else parity.check_hf
    result: dict[str, Any] = {"parity": check(parity.Expected.from_dict(job["expected"]), Path(job["path"])).to_dict()}
    channel.emit(result)
    if job["smoke_prompts"]:
        channel.phase("smoke check")
        request = {"path": job["path"], "format": job["format"], "max_tokens": SMOKE_TOKENS, "lora": job.get("lora")}
        result["smoke"] = [
            {"prompt": messages[-1]["content"], "reply": reply({**request, "messages": messages})}
            for messages in job["smoke_prompts"]
        ]
    return result

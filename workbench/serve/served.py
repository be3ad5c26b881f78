"""Served parity: held-out conversations sent through the wire with the `openai` client, stream and
non-stream, against what `workbench chat` answered in-process for the same variant (greedy, so the two
must agree) and the prompt length training produced. A wrong chat template, a missing system prompt or a
stop token the server does not honour shows here as a different prompt length, a different answer, or an
answer that runs on to `max_tokens`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workbench.serve.client import Endpoint, Reply, chat


@dataclass
class Case:
    messages: list[dict[str, str]]  # a held-out conversation without its answer
    prompt_tokens: int | None  # the prompt's length as training tokenized it
    answer: str  # `workbench chat`'s greedy answer
    stopped: bool  # that answer ended at the template's end of turn (not at max_tokens)


@dataclass
class Finding:
    conversation: int  # 1-based
    what: str
    expected: Any
    got: Any


def judge(number: int, case: Case, reply: Reply, mode: str) -> list[Finding]:
    found = []
    if reply.text != case.answer:
        found.append(Finding(number, f"{mode} answer differs from `workbench chat`", case.answer, reply.text))
    wanted = "stop" if case.stopped else "length"
    if reply.finish_reason != wanted:
        what = "did not stop at the end of turn" if case.stopped else "stopped before max_tokens"
        found.append(Finding(number, f"{mode} answer {what}", wanted, reply.finish_reason))
    if case.prompt_tokens is not None and reply.prompt_tokens is not None and reply.prompt_tokens != case.prompt_tokens:
        found.append(
            Finding(number, f"{mode} prompt length differs from training's", case.prompt_tokens, reply.prompt_tokens)
        )
    return found


def check(endpoint: Endpoint, cases: list[Case], max_tokens: int) -> dict[str, Any]:
    """Every case non-stream and stream; passed when nothing differs. The prompt is compared by its length
    in tokens (what the OpenAI API reports back as usage), the answer by its text."""
    if not cases:
        return {"status": "skipped", "reason": "no held-out conversations", "checked": 0, "findings": []}
    findings: list[Finding] = []
    lengths_reported = False
    for number, case in enumerate(cases, 1):
        for stream in (False, True):
            reply = chat(endpoint, case.messages, max_tokens, stream=stream)
            lengths_reported |= reply.prompt_tokens is not None
            findings += judge(number, case, reply, "streamed" if stream else "whole")
    return {
        "status": "failed" if findings else "passed",
        "checked": len(cases),
        "stopped": sum(case.stopped for case in cases),  # answers that ended at the end of turn in-process
        "backend": endpoint.backend,
        "prompt_lengths_compared": lengths_reported and any(c.prompt_tokens is not None for c in cases),
        "findings": [asdict(f) for f in findings],
    }

"""Served parity: held-out conversations sent through the wire with the `openai` client, stream and
non-stream, against what `workbench chat` answered in-process for the same variant (greedy, so the two
must agree) and the prompt length training produced. A wrong chat template, a missing system prompt or a
stop token the server does not honour shows here as a different prompt length, a different answer, or an
answer that runs on to `max_tokens`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workbench.core.parity import SERVED_UNSTABLE as UNSTABLE
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


def judge(number: int, case: Case, reply: Reply, mode: str, answer: bool = True) -> list[Finding]:
    """What differs from the in-process answer; `answer=False` compares the prompt length only."""
    found = []
    if not answer:
        pass
    elif reply.text != case.answer:
        found.append(Finding(number, f"{mode} answer differs from `workbench chat`", case.answer, reply.text))
    wanted = "stop" if case.stopped else "length"
    if answer and reply.finish_reason != wanted:
        what = "did not stop at the end of turn" if case.stopped else "stopped before max_tokens"
        found.append(Finding(number, f"{mode} answer {what}", wanted, reply.finish_reason))
    if case.prompt_tokens is not None and reply.prompt_tokens is not None and reply.prompt_tokens != case.prompt_tokens:
        found.append(
            Finding(number, f"{mode} prompt length differs from training's", case.prompt_tokens, reply.prompt_tokens)
        )
    return found


def compare_to_chat(endpoint: Endpoint, cases: list[Case], max_tokens: int) -> dict[str, Any]:
    """Every case non-stream and stream; passed when nothing differs. The prompt is compared by its length
    in tokens (what the OpenAI API reports back as usage), the answer by its text.

    A server that answers one conversation differently twice (llama-cpp-python reuses the cached prefix of
    the previous request, and a near-tie can flip with the arithmetic) is not judged against the in-process
    answer for it: that difference is numerical, not the template's. It is reported (`unstable`); a wrong
    prompt length still fails."""
    if not cases:
        return {"status": "skipped", "reason": "no held-out conversations", "checked": 0, "findings": []}
    findings: list[Finding] = []
    lengths_reported = False
    for number, case in enumerate(cases, 1):
        whole = chat(endpoint, case.messages, max_tokens, stream=False, fresh=True)
        streamed = chat(endpoint, case.messages, max_tokens, stream=True, fresh=True)
        lengths_reported |= whole.prompt_tokens is not None or streamed.prompt_tokens is not None
        stable = whole.text == streamed.text
        if not stable:
            findings.append(Finding(number, UNSTABLE, whole.text, streamed.text))
        findings += judge(number, case, whole, "whole", answer=stable)
        findings += judge(number, case, streamed, "streamed", answer=stable)
    unstable = sum(f.what == UNSTABLE for f in findings)
    return {
        "status": "failed" if len(findings) > unstable else "passed",
        "unstable": unstable,
        "checked": len(cases),
        "stopped": sum(case.stopped for case in cases),  # answers that ended at the end of turn in-process
        "backend": endpoint.backend,
        "prompt_lengths_compared": lengths_reported and any(c.prompt_tokens is not None for c in cases),
        "findings": [asdict(f) for f in findings],
    }

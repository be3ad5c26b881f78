"""The checks every exported variant gets, in a worker (task `variant.check`), loaded the way a server
loads it: serving parity (does its own chat template give the prompt tokens and the stop token training
used?) and a smoke test (greedy answers to held-out prompts, through the Chat arena's loaders).

Each phase is announced, so a crash names it ("Q8_0.gguf: smoke check crashed (SIGSEGV)"), and the
parity result is sent as soon as it is known (an event `{"parity": ParityResult}`), so it survives a crash
in the smoke test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.core.parity import Expected, Messages, ParityResult
from workbench.workers import wire
from workbench.workers.child import Channel

SMOKE_TOKENS = 48


@dataclass(frozen=True)
class CheckJob:
    path: str  # the variant's file or folder
    format: str
    expected: Expected  # training's side, rendered by the caller (without its `decode`)
    smoke_prompts: list[Messages]  # held-out conversations without their answers; none: no smoke test
    lora: str | None = None  # an adapter variant's GGUF adapter


@dataclass(frozen=True)
class SmokeAnswer:
    prompt: str  # the conversation's last turn
    reply: str


@dataclass(frozen=True)
class CheckResult:
    parity: ParityResult
    smoke: list[SmokeAnswer] | None = None  # None: not asked


def check_job(job: CheckJob, channel: Channel) -> CheckResult:
    from workbench.chat.stream import AnswerJob, reply
    from workbench.core import formats

    channel.phase("parity check")
    check = formats.resolve(formats.spec(job.format).parity)
    parity: ParityResult = check(job.expected, Path(job.path))
    channel.emit({"parity": wire.encode(parity)})
    if not job.smoke_prompts:
        return CheckResult(parity)
    channel.phase("smoke check")
    answers = [
        SmokeAnswer(messages[-1]["content"], reply(AnswerJob(job.path, job.format, messages, SMOKE_TOKENS, job.lora)))
        for messages in job.smoke_prompts
    ]
    return CheckResult(parity, answers)

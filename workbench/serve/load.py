"""A bounded closed-loop load on a served variant: `concurrency` clients on loopback, each sending its
next chat request (streamed, greedy) as soon as its last one finished, until `requests` have been sent
or the time limit passes. Per level: output tokens/s, requests/s, time to first token and inter-token
latency (p50, p95), errors."""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.serve.client import Endpoint, request


@dataclass
class Sample:
    ok: bool
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)  # between consecutive pieces of text
    output_tokens: int = 0
    error: str | None = None


@dataclass
class Level:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    output_tokens: int
    output_tps: float
    requests_per_s: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    itl_p50_ms: float | None
    itl_p95_ms: float | None
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (1..99), interpolated between ranks; None for no values."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def one(client: Any, endpoint: Endpoint, messages: list[dict[str, str]], max_tokens: int) -> Sample:
    started = time.perf_counter()
    times: list[float] = []
    tokens = None
    try:
        stream = await client.chat.completions.create(**request(endpoint, messages, max_tokens, True))
        async for chunk in stream:
            if chunk.usage:
                tokens = chunk.usage.completion_tokens
            if any(choice.delta.content for choice in chunk.choices):
                times.append(time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, the load goes on
        return Sample(False, error=f"{type(exc).__name__}: {exc}"[:300])
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    return Sample(True, times[0] - started if times else None, gaps, tokens if tokens is not None else len(times))


async def closed_loop(
    endpoint: Endpoint, conversations: list[list[dict[str, str]]], concurrency: int, requests: int,
    max_tokens: int, time_limit: float,
) -> Level:  # fmt: skip
    import openai

    client = openai.AsyncOpenAI(
        base_url=endpoint.url, api_key=endpoint.api_key or "none", timeout=time_limit, max_retries=0
    )
    sent = 0
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + time_limit

    async def worker() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            messages = conversations[sent % len(conversations)]
            sent += 1
            samples.append(await one(client, endpoint, messages, max_tokens))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    seconds = time.perf_counter() - started
    good = [s for s in samples if s.ok]
    output = sum(s.output_tokens for s in good)
    ttft = sorted(s.ttft_s * 1000 for s in good if s.ttft_s is not None)
    gaps = sorted(g * 1000 for s in good for g in s.gaps_s)
    errors = [s.error for s in samples if not s.ok]
    return Level(
        concurrency, len(samples), len(errors), seconds, output, output / seconds, len(good) / seconds,
        percentile(ttft, 50), percentile(ttft, 95), percentile(gaps, 50), percentile(gaps, 95),
        errors[0] if errors else None,
    )  # fmt: skip


def run(
    endpoint: Endpoint, conversations: list[list[dict[str, str]]], levels: list[int], requests: int,
    max_tokens: int, time_limit: float = 300,
) -> list[Level]:  # fmt: skip
    """Each level after the last; one untimed request first, so no level pays for the first load."""
    if not conversations:
        raise ValueError("no conversations to send")
    asyncio.run(closed_loop(endpoint, conversations, 1, 1, max_tokens, time_limit))
    return [
        asyncio.run(closed_loop(endpoint, conversations, level, max(requests, level), max_tokens, time_limit))
        for level in levels
    ]

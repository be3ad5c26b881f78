"""Load on a served variant as the field measures it (GuideLLM, `vllm bench serve`): streamed, greedy chat
requests from clients on loopback, in two sweeps.

- Closed loop (`closed_level`): `concurrency` clients, each sending its next request as soon as its last one
  finished — what a fixed number of users does; its peak output tok/s is the server's throughput.
- Open loop (`open_level`): requests arrive at a `rate` (requests/s) with Poisson arrivals, whether or not
  earlier ones have finished — what traffic does; past the server's capacity, queues and latency grow.

Per level: time to first token (TTFT), inter-token latency (ITL: the gaps between streamed pieces) and
end-to-end latency at p50/p90/p99, output tok/s, requests/s and errors; each level repeated and reported with
a 95% interval over its repetitions. Given an SLO (TTFT and time per output token limits), **goodput** is
the requests/s that met both, and a level *holds* the SLO when at least `attainment` of its requests met it;
the capacity knee is the highest offered rate that holds it.

The load engine is the workbench's own async `openai` client loop: GuideLLM (which reports the same
numbers) pins `click~=8.4` against the lock's 8.5."""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.serve.client import Endpoint, request

# two-sided 95% quantiles of Student's t by degrees of freedom (the repetitions of a level are few)
T_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


@dataclass(frozen=True)
class Slo:
    ttft_ms: float  # time to first token, at most
    tpot_ms: float  # time per output token after the first, at most (a request's mean inter-token latency)
    attainment: float = 0.9  # share of a level's requests that must meet both for the level to hold the SLO


@dataclass
class Sample:
    """One request as its client saw it."""

    ok: bool
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)  # between consecutive pieces of text
    output_tokens: int = 0
    prompt_tokens: int | None = None
    e2e_s: float | None = None
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (vLLM's TPOT); None for answers of one token."""
        if self.e2e_s is None or self.ttft_s is None or self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)

    def meets(self, slo: Slo) -> bool:
        tpot = self.tpot_s
        return (
            self.ok
            and self.ttft_s is not None
            and self.ttft_s * 1000 <= slo.ttft_ms
            and (tpot is None or tpot * 1000 <= slo.tpot_ms)
        )


@dataclass
class Pass:
    """One repetition of one level: its requests and the wall time from the first send to the last answer."""

    samples: list[Sample]
    seconds: float


@dataclass
class Level:
    """One level of a sweep over its repetitions: rates as mean with a 95% interval (low, high), latencies
    as percentiles over every request of every repetition."""

    mode: str  # concurrency | rate
    value: float  # clients, or requests/s offered
    repetitions: int
    requests: int
    errors: int
    output_tokens: int
    seconds: float  # all repetitions
    output_tps: float
    output_tps_low: float
    output_tps_high: float
    requests_per_s: float
    requests_per_s_low: float
    requests_per_s_high: float
    ttft_p50_ms: float | None
    ttft_p90_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p90_ms: float | None
    itl_p95_ms: float | None
    itl_p99_ms: float | None
    e2e_p50_ms: float | None
    e2e_p90_ms: float | None
    e2e_p99_ms: float | None
    prompt_tokens: int | None  # as the server reported them (usage), all repetitions
    goodput_rps: float | None = None  # requests/s that met the SLO (None: no SLO given)
    goodput_rps_low: float | None = None
    goodput_rps_high: float | None = None
    attainment: float | None = None  # share of requests that met the SLO
    holds_slo: bool | None = None
    first_error: str | None = None

    @property
    def concurrency(self) -> int:
        return int(self.value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (1..99), interpolated between ranks; None for no values."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and its 95% interval (Student's t) over repetitions; one value has no spread to show."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, mean, mean
    half = T_95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


async def one(
    client: Any, endpoint: Endpoint, messages: list[dict[str, str]], max_tokens: int, ignore_eos: bool
) -> Sample:
    started = time.perf_counter()
    times: list[float] = []
    tokens = prompt = None
    args = request(endpoint, messages, max_tokens, True, ignore_eos=ignore_eos)
    try:
        stream = await client.chat.completions.create(**args)
        async for chunk in stream:
            if chunk.usage:
                tokens, prompt = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
            if any(choice.delta.content for choice in chunk.choices):
                times.append(time.perf_counter())
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, the load goes on
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        return Sample(False, error=f"{type(exc).__name__}: {exc}{cause}"[:300])
    ended = time.perf_counter()
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    return Sample(
        True, times[0] - started if times else None, gaps, tokens if tokens is not None else len(times), prompt,
        ended - started,
    )  # fmt: skip


def client_for(endpoint: Endpoint, time_limit: float) -> Any:
    """A client whose every request opens its own connection, as separate users' would. With pooled
    keep-alive connections, about one request in twenty failed against llama-server ("Server disconnected
    without sending a response": a reused connection the server had just closed); with a connection per
    request, none in the same loads."""
    import httpx2  # the HTTP library of the openai client
    import openai

    pool = openai.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_keepalive_connections=0))
    return openai.AsyncOpenAI(base_url=endpoint.url, api_key=endpoint.api_key or "none", timeout=time_limit,
                              max_retries=0, http_client=pool)  # fmt: skip


async def closed_pass(
    endpoint: Endpoint, conversations: list[list[dict[str, str]]], concurrency: int, requests: int,
    max_tokens: int, time_limit: float, ignore_eos: bool = False,
) -> Pass:  # fmt: skip
    """`concurrency` clients, each sending its next request when its last one is answered, until `requests`
    have been sent or `time_limit` has passed."""
    client = client_for(endpoint, time_limit)
    sent = 0
    samples: list[Sample] = []
    started = time.perf_counter()
    deadline = started + time_limit

    async def user() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            messages = conversations[sent % len(conversations)]
            sent += 1
            sample = await one(client, endpoint, messages, max_tokens, ignore_eos)
            samples.append(sample)

    try:
        await asyncio.gather(*(user() for _ in range(concurrency)))
    finally:
        await client.close()
    return Pass(samples, time.perf_counter() - started)


async def open_pass(
    endpoint: Endpoint, conversations: list[list[dict[str, str]]], rate: float, requests: int,
    max_tokens: int, time_limit: float, seed: int, ignore_eos: bool = False,
) -> Pass:  # fmt: skip
    """`requests` sent at Poisson arrival times of `rate` per second (exponential gaps from `seed`), each
    whether or not the earlier ones were answered; none sent after `time_limit`."""
    client = client_for(endpoint, max(time_limit, 300))  # a request sent late in the pass may finish after it
    gaps = random.Random(seed)
    started = time.perf_counter()
    tasks: list[asyncio.Task[Sample]] = []
    try:
        due = started
        for index in range(requests):
            due += gaps.expovariate(rate)
            if due - started > time_limit:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            messages = conversations[index % len(conversations)]
            tasks.append(asyncio.create_task(one(client, endpoint, messages, max_tokens, ignore_eos)))
        samples = list(await asyncio.gather(*tasks))
    finally:
        await client.close()
    return Pass(samples, time.perf_counter() - started)


@dataclass(frozen=True)
class Settings:
    """How each level of a sweep is sent."""

    requests: int  # a pass (a closed loop sends at least one a client)
    max_tokens: int
    time_limit: float = 300  # seconds a pass may send for
    repetitions: int = 1
    slo: Slo | None = None
    ignore_eos: bool = False


def summarize(mode: str, value: float, passes: list[Pass], slo: Slo | None) -> Level:
    samples = [s for p in passes for s in p.samples]
    good = [s for s in samples if s.ok]
    errors = [s.error for s in samples if not s.ok]
    ttft = sorted(s.ttft_s * 1000 for s in good if s.ttft_s is not None)
    gaps = sorted(g * 1000 for s in good for g in s.gaps_s)
    e2e = sorted(s.e2e_s * 1000 for s in good if s.e2e_s is not None)
    tps = interval([sum(s.output_tokens for s in p.samples if s.ok) / p.seconds for p in passes])
    rps = interval([sum(s.ok for s in p.samples) / p.seconds for p in passes])
    prompts = [s.prompt_tokens for s in good]
    level = Level(
        mode=mode,
        value=value,
        repetitions=len(passes),
        requests=len(samples),
        errors=len(errors),
        output_tokens=sum(s.output_tokens for s in good),
        seconds=sum(p.seconds for p in passes),
        output_tps=tps[0],
        output_tps_low=tps[1],
        output_tps_high=tps[2],
        requests_per_s=rps[0],
        requests_per_s_low=rps[1],
        requests_per_s_high=rps[2],
        ttft_p50_ms=percentile(ttft, 50),
        ttft_p90_ms=percentile(ttft, 90),
        ttft_p95_ms=percentile(ttft, 95),
        ttft_p99_ms=percentile(ttft, 99),
        itl_p50_ms=percentile(gaps, 50),
        itl_p90_ms=percentile(gaps, 90),
        itl_p95_ms=percentile(gaps, 95),
        itl_p99_ms=percentile(gaps, 99),
        e2e_p50_ms=percentile(e2e, 50),
        e2e_p90_ms=percentile(e2e, 90),
        e2e_p99_ms=percentile(e2e, 99),
        prompt_tokens=sum(p for p in prompts if p is not None) if prompts and None not in prompts else None,
        first_error=errors[0] if errors else None,
    )
    if slo is not None:
        met = sum(s.meets(slo) for s in samples)
        level.goodput_rps, level.goodput_rps_low, level.goodput_rps_high = interval(
            [sum(s.meets(slo) for s in p.samples) / p.seconds for p in passes]
        )
        level.attainment = met / len(samples) if samples else 0.0
        level.holds_slo = level.attainment >= slo.attainment
    return level


def warm_up(endpoint: Endpoint, conversations: list[list[dict[str, str]]], max_tokens: int) -> None:
    """One untimed request, so no level pays for the first load."""
    if not conversations:
        raise ValueError("no conversations to send")
    asyncio.run(closed_pass(endpoint, conversations, 1, 1, max_tokens, 300))


def run(
    endpoint: Endpoint, conversations: list[list[dict[str, str]]], levels: list[int], settings: Settings
) -> list[Level]:
    """The closed-loop sweep: each concurrency level after the last, `settings.repetitions` times each."""
    warm_up(endpoint, conversations, settings.max_tokens)
    found = []
    for level in levels:
        passes = [
            asyncio.run(closed_pass(endpoint, conversations, level, max(settings.requests, level), settings.max_tokens,
                                    settings.time_limit, settings.ignore_eos))
            for _ in range(settings.repetitions)
        ]  # fmt: skip
        found.append(summarize("concurrency", level, passes, settings.slo))
    return found


def rates(
    endpoint: Endpoint, conversations: list[list[dict[str, str]]], offered: list[float], settings: Settings,
    seed: int = 1234,
) -> list[Level]:  # fmt: skip
    """The open-loop sweep: each offered rate (requests/s), `settings.repetitions` times with different
    arrivals."""
    warm_up(endpoint, conversations, settings.max_tokens)
    found = []
    for rate in offered:
        passes = [
            asyncio.run(open_pass(endpoint, conversations, rate, settings.requests, settings.max_tokens,
                                  settings.time_limit, seed + number, settings.ignore_eos))
            for number in range(settings.repetitions)
        ]  # fmt: skip
        found.append(summarize("rate", rate, passes, settings.slo))
    return found


def knee(levels: list[Level]) -> Level | None:
    """The highest offered rate that holds the SLO (None when none does, or no SLO was given)."""
    held = [level for level in levels if level.mode == "rate" and level.holds_slo]
    return max(held, key=lambda level: level.value, default=None)


@dataclass
class Soak:
    """A constant open-loop load held for a while, and the server's memory over it."""

    level: Level
    rss_mb: list[tuple[float, float]]  # (seconds since the start, the server's resident memory)

    @property
    def rss_slope_mb_per_min(self) -> float | None:
        """Least-squares slope of the server's memory over the soak's second half (after its caches fill)."""
        points = [(t, mb) for t, mb in self.rss_mb if t >= self.rss_mb[-1][0] / 2] if self.rss_mb else []
        if len(points) < 3:
            return None
        mean_t = statistics.fmean(t for t, _ in points)
        mean_mb = statistics.fmean(mb for _, mb in points)
        spread = sum((t - mean_t) ** 2 for t, _ in points)
        return 60 * sum((t - mean_t) * (mb - mean_mb) for t, mb in points) / spread if spread else None


def soak(
    endpoint: Endpoint, conversations: list[list[dict[str, str]]], rate: float, seconds: float, max_tokens: int,
    memory: Callable[[], float], slo: Slo | None = None, every: float = 2.0, seed: int = 1234,
) -> Soak:  # fmt: skip
    """Requests at `rate` (Poisson arrivals) for `seconds`, sampling `memory()` (MB) every `every` seconds."""
    warm_up(endpoint, conversations, max_tokens)

    async def held() -> tuple[Pass, list[tuple[float, float]]]:
        sampled: list[tuple[float, float]] = []
        started = time.perf_counter()

        async def watch() -> None:
            while True:
                sampled.append((time.perf_counter() - started, memory()))
                await asyncio.sleep(every)

        watcher = asyncio.create_task(watch())
        try:
            count = int(rate * seconds * 2) + 10  # more than the time allows: the time limit ends the sending
            found = await open_pass(endpoint, conversations, rate, count, max_tokens, seconds, seed)
        finally:
            watcher.cancel()
        sampled.append((time.perf_counter() - started, memory()))
        return found, sampled

    found, sampled = asyncio.run(held())
    return Soak(summarize("rate", rate, [found], slo), sampled)

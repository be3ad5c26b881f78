"""Talking to a served variant with the official `openai` client, greedy, as `workbench chat` answers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from workbench.core.errors import ResourceError

# greedy whatever the server's sampling defaults (llama.cpp's top_k 40; a repeat penalty where one is set)
GREEDY_EXTRA = {"llama.cpp": {"top_k": 1, "repeat_penalty": 1.0}}
# the prompt evaluated afresh, not continued from a slot's cached prefix: a prefix computed inside an earlier
# batch of several conversations carries that batch's rounding, and a near-tie can then flip
FRESH_EXTRA = {"llama.cpp": {"cache_prompt": False}}
# answers that run to max_tokens whatever the model would end on, so the load measures decoding
IGNORE_EOS_EXTRA: dict[str, dict[str, object]] = {
    "llama.cpp": {"ignore_eos": True},
    "vllm": {"ignore_eos": True},
    # transformers serve has no ignore_eos: the request's generation config names an end id no token has
    "transformers": {"generation_config": json.dumps({"do_sample": False, "eos_token_id": -1})},
}


@dataclass
class Endpoint:
    url: str  # ending in /v1
    model: str
    backend: str
    api_key: str | None = None

    def client(self, timeout: float = 600) -> Any:
        import openai

        # the client insists on a key; a server without one ignores it
        return openai.OpenAI(base_url=self.url, api_key=self.api_key or "none", timeout=timeout, max_retries=0)


@dataclass
class Reply:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float = 0.0
    first_token_s: float | None = None  # streams: time to the first piece of text
    piece_times: list[float] = field(default_factory=list)  # streams: when each piece of text arrived


def request(
    endpoint: Endpoint, messages: list[dict[str, str]], max_tokens: int, stream: bool, fresh: bool = False,
    ignore_eos: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """The chat-completion arguments for a greedy answer from this endpoint (`fresh`: its prompt computed
    anew, as an in-process answer computes it; `ignore_eos`: run to `max_tokens` where the server can)."""
    args: dict[str, Any] = {"model": endpoint.model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    extra: dict[str, object] = {**GREEDY_EXTRA.get(endpoint.backend, {})}
    extra |= FRESH_EXTRA.get(endpoint.backend, {}) if fresh else {}
    extra |= IGNORE_EOS_EXTRA.get(endpoint.backend, {}) if ignore_eos else {}
    if extra:
        args["extra_body"] = extra
    if stream:
        args["stream"] = True
        args["stream_options"] = {"include_usage": True}
    return args


def chat(
    endpoint: Endpoint, messages: list[dict[str, str]], max_tokens: int, stream: bool = False, fresh: bool = False
) -> Reply:
    client = endpoint.client()
    started = time.perf_counter()
    if not stream:
        answer = client.chat.completions.create(**request(endpoint, messages, max_tokens, False, fresh))
        choice = answer.choices[0]
        usage = answer.usage
        return Reply(
            choice.message.content or "",
            choice.finish_reason,
            usage.prompt_tokens if usage else None,
            usage.completion_tokens if usage else None,
            time.perf_counter() - started,
        )
    pieces: list[str] = []
    times: list[float] = []
    finish = prompt_tokens = completion_tokens = None
    for chunk in client.chat.completions.create(**request(endpoint, messages, max_tokens, True, fresh)):
        if chunk.usage:
            prompt_tokens, completion_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
                times.append(time.perf_counter() - started)
            finish = choice.finish_reason or finish
    seconds = time.perf_counter() - started
    return Reply("".join(pieces), finish, prompt_tokens, completion_tokens, seconds, times[0] if times else None, times)


def wait_ready(endpoint: Endpoint, alive: Callable[[], bool], timeout: float, why: Callable[[], str]) -> float:
    """Poll the server's model list until it answers; seconds it took. ResourceError when its process ends
    first (with `why()`, e.g. its log's last lines) or it does not answer within `timeout`."""
    import openai

    started = time.monotonic()
    client = endpoint.client(timeout=5)
    while time.monotonic() - started < timeout:
        if not alive():
            raise ResourceError(f"the {endpoint.backend} server exited before it answered: {why()}")
        try:
            client.models.list()
            return time.monotonic() - started
        except openai.AuthenticationError:
            return time.monotonic() - started  # it is up; the key is checked by whoever calls it
        except (openai.APIConnectionError, openai.APIStatusError):
            time.sleep(0.25)
    raise ResourceError(f"the {endpoint.backend} server did not answer within {timeout:.0f} s: {why()}")


def server_metrics(endpoint: Endpoint, timeout: float = 10) -> dict[str, float]:
    """The server's Prometheus counters and gauges (`GET /metrics`, llama-server's `--metrics`), by name
    without the `llamacpp:` prefix; labelled series are left out. ResourceError when it has none."""
    import urllib.error
    import urllib.request

    url = endpoint.url.removesuffix("/").removesuffix("/v1") + "/metrics"
    headers = {"Authorization": f"Bearer {endpoint.api_key}"} if endpoint.api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as answer:
            text = answer.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise ResourceError(f"no metrics from {url}: {exc}") from exc
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if line.startswith("#") or "{" in name or not value:
            continue
        try:
            found[name.split(":", 1)[-1]] = float(value)
        except ValueError:
            continue
    return found

"""Who can answer in a run's chat (its variants, its base, its running servers), and asking them.

Each answerer is a `Candidate`. `ask` yields events as the answer streams — `{"loaded": s}`, `{"text": piece}`
per token, then `{"done": AnswerResult}` or `{"error": message}` — so the TUI (which never imports torch) and the
CLI can show answers as they come. This module's top level imports only the standard library and the
light workbench.core, workbench.workers and workbench.serve.client modules. The answering itself is
`workbench.chat.stream`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench import workers
from workbench.chat.stream import AnswerJob, AnswerResult, stats
from workbench.core.errors import RunError
from workbench.core.records import Variant
from workbench.core.store import Store
from workbench.serve.client import Endpoint

MAX_TOKENS = 128
ANSWER_TIMEOUT_S = 900  # loading and answering; a hung model process is stopped after this


@dataclass(frozen=True)
class Candidate:
    """One answerer in a run's chat: a finished variant, the run's base model, or one of its running servers
    (format `served`, asked over HTTP at its `endpoint`)."""

    name: str  # the variant's (the base model's folder, the server's id)
    label: str  # the comparison table's: "merged", "Q4_K_M.gguf", "GPTQ-Int4", "base", "served:<server>"
    format: str
    path: str  # the model file or folder; a server's URL
    lora: str | None = None  # a GGUF adapter, loaded on the file
    endpoint: Endpoint | None = None  # a running server's

    @classmethod
    def of(cls, variant: Variant, label: str | None = None) -> Candidate:
        """A variant as an answerer (labelled with its name unless given a label)."""
        label = variant.name if label is None else label
        return cls(variant.name, label, variant.format, variant.path, variant.meta.get("lora"))


def askable(variants: list[Variant], base_model: str | None = None) -> list[Candidate]:
    """What can answer: the run's finished variants, then its base model when that is a local folder.
    Each has the comparison table's label too ("merged", "Q4_K_M.gguf", "GPTQ-Int4", "base")."""
    from workbench.report.compare import label_of, reference_name

    reference = reference_name(variants)
    found = [
        Candidate.of(v, label_of(v.name, reference, "reference" if v.name == reference else "variant"))
        for v in variants
        if v.status == "done"
    ]
    if base_model:
        from workbench.core.models import ModelError, resolve_model

        try:
            path = resolve_model(base_model)
        except (ModelError, OSError, ValueError, KeyError):  # the base is optional here; a broken registry
            return found  # shows up where a run needs it
        if Path(path).is_dir():
            found.append(Candidate(name=Path(path).name, label="base", format="hf", path=path))
    return found


def for_run(store: Store, run_id: str) -> tuple[list[Candidate], str | None]:
    """A run's answerers and the system prompt its rows were trained with."""
    run = store.run(run_id)
    if run is None:
        raise RunError(f"no run {run_id!r}; `workbench runs` lists them")
    recipe = store.recipe(run)
    system_prompt = (recipe.get("data") or {}).get("system_prompt")
    return askable(store.variants(run_id), recipe.get("base_model")), system_prompt


def served(store: Store, run_id: str) -> list[Candidate]:
    """The run's running servers as answerers (label `served:<server>`): the arena asks them over HTTP."""
    return [
        Candidate(
            name=server.id,
            label=f"served:{server.id}",
            format="served",
            path=server.local_url,
            endpoint=Endpoint(server.local_url, server.model, server.backend, server.api_key),
        )
        for server in store.servers(run_id)
        if server.status == "running"
    ]


def stem(label: str) -> str:
    """A label as a user types a type: without the file's extension, case folded ("Q8_0.gguf" -> "q8_0")."""
    return label.removesuffix(".gguf").casefold()


def pick(found: list[Candidate], wanted: list[str]) -> list[Candidate]:
    """Candidates by label ("merged", "base", "Q4_K_M.gguf") or name; then by a label without its extension,
    case-insensitive, so a quantization type (`Q8_0`, `q4_k_m`) names the merged model quantized to it and not
    the files built on that (`adapter-on-Q8_0.gguf`, `SEARCH-Q4_K_M.gguf`); then by a part of a name or label
    (`GPTQ`). A name that still matches several is refused with the exact labels to type."""
    chosen = []
    for want in wanted:
        matches = (
            [c for c in found if want in (c.name, c.label)]
            or [c for c in found if stem(c.label) == stem(want)]
            or [c for c in found if want.casefold() in f"{c.name} {c.label}".casefold()]
        )
        if not matches:
            names = ", ".join(c.label for c in found)
            raise RunError(f"variant {want!r} matches nothing; this run has: {names}")
        if len(matches) > 1:
            names = " or ".join(repr(c.label) for c in matches)
            raise RunError(f"variant {want!r} matches several: type {names}")
        chosen.append(matches[0])
    return chosen


def messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The prompt as the fine-tune saw its rows: with the recipe's system prompt when it has one."""
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*turns, {"role": "user", "content": prompt}]


def job(candidate: Candidate, chat: list[dict[str, str]], max_tokens: int = MAX_TOKENS) -> AnswerJob:
    """What the candidate is asked: a worker's job (a served candidate is asked the same over HTTP)."""
    return AnswerJob(candidate.path, candidate.format, chat, max_tokens, candidate.lora)


Event = dict[str, Any]  # {"loaded": s}, {"text": piece}, {"done": AnswerResult} or {"error": message}


def ask(
    candidate: Candidate,
    chat: list[dict[str, str]],
    max_tokens: int = MAX_TOKENS,
    *,
    started: Callable[[workers.Running], None] | None = None,
    timeout: float | None = ANSWER_TIMEOUT_S,
) -> Generator[Event, None, None]:
    """Answer in a worker and yield its events; a crash, a timeout or an exit without an answer becomes an
    `error` event. `started` gets the running worker (to stop it early); closing this generator stops it.
    A served candidate answers over HTTP instead (no worker)."""
    question = job(candidate, chat, max_tokens)
    if candidate.endpoint is not None:
        yield from ask_server(candidate.endpoint, question)
        return
    try:
        running = workers.start("chat.answer", question, name=Path(question.path).name, timeout=timeout)
    except OSError as exc:
        yield {"error": f"could not start the model process: {exc}"}
        return
    if started:
        started(running)
    yield from running.events()
    outcome = running.outcome
    assert outcome is not None
    yield {"done": outcome.value_as(AnswerResult)} if outcome.ok else {"error": outcome.error}


def ask_server(endpoint: Endpoint, question: AnswerJob) -> Generator[Event, None, None]:
    """The same events from a running server, streamed with the `openai` client (greedy)."""
    from workbench.serve.client import request as chat_request

    started = time.perf_counter()
    yield {"loaded": 0.0}
    times: list[float] = []
    try:
        arguments = chat_request(endpoint, question.messages, question.max_tokens, stream=True)
        for chunk in endpoint.client().chat.completions.create(**arguments):
            for choice in chunk.choices:
                if choice.delta.content:
                    times.append(time.perf_counter())
                    yield {"text": choice.delta.content}
    except Exception as exc:  # noqa: BLE001 - the server's failure is this answer's
        yield {"error": f"{endpoint.url}: {type(exc).__name__}: {exc}"}
        return
    yield {"done": stats(started, started, times)}


def stats_line(result: AnswerResult) -> str:
    parts = [f"{result.tokens} tokens"]
    if result.tok_s is not None:
        parts.append(f"{result.tok_s:.1f} tok/s")
    if result.ttft_s is not None:
        parts.append(f"first token {result.ttft_s:.2f} s")
    parts.append(f"load {result.load_s:.1f} s")
    return " · ".join(parts)

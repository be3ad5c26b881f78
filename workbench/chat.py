"""One prompt answered by one variant, in a worker (task `chat.answer`).

GGUF through llama.cpp with the chat template stored in the file, everything else through transformers
with the format's kernels (the loaders the evaluation uses). Greedy, so variants differ only by what
quantization did. `ask` yields events as the answer streams — `{"loaded": s}`, `{"text": piece}` per
token, then `{"done": stats}` or `{"error": message}` — so the TUI (which never imports torch) and the
CLI can show answers as they come. This module's top level imports only the standard library and the
light workbench.errors / workbench.store / workbench.workers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, cast

from workbench import workers
from workbench.errors import RunError
from workbench.store import Store
from workbench.variants import Variant
from workbench.workers.child import Channel

MAX_TOKENS = 128
ANSWER_TIMEOUT_S = 900  # loading and answering; a hung model process is stopped after this


def askable(variants: list[Variant], base_model: str | None = None) -> list[dict[str, Any]]:
    """What can answer: the run's finished variants, then its base model when that is a local folder.
    Each has the comparison table's label too ("merged", "Q4_K_M.gguf", "GPTQ-Int4", "base")."""
    from workbench.report.compare import label_of, reference_name

    reference = reference_name(variants)
    found = [
        {
            "name": v.name,
            "label": label_of(v.name, reference, "reference" if v.name == reference else "variant"),
            "format": v.format,
            "path": v.path,
            "lora": v.meta.get("lora"),
        }
        for v in variants
        if v.status == "done"
    ]
    if base_model:
        from workbench.models import ModelError, resolve_model

        try:
            path = resolve_model(base_model)
        except (ModelError, OSError, ValueError, KeyError):  # the base is optional here; a broken registry
            return found  # shows up where a run needs it
        if Path(path).is_dir():
            found.append({"name": Path(path).name, "label": "base", "format": "hf", "path": path})
    return found


def for_run(store: Store, run_id: str) -> tuple[list[dict[str, Any]], str | None]:
    """A run's answerers and the system prompt its rows were trained with."""
    run = store.run(run_id)
    if run is None:
        raise RunError(f"no run {run_id!r}; `workbench runs` lists them")
    recipe = store.recipe(run)
    system_prompt = (recipe.get("data") or {}).get("system_prompt")
    return askable(store.variants(run_id), recipe.get("base_model")), system_prompt


def served(store: Store, run_id: str) -> list[dict[str, Any]]:
    """The run's running servers as answerers (label `served:<server>`): the arena asks them over HTTP."""
    return [
        {
            "name": server.id,
            "label": f"served:{server.id}",
            "format": "served",
            "path": server.local_url,
            "endpoint": {
                "url": server.local_url,
                "model": server.model,
                "backend": server.backend,
                "api_key": server.api_key,
            },
        }
        for server in store.servers(run_id)
        if server.status == "running"
    ]


def pick(found: list[dict[str, Any]], wanted: list[str]) -> list[dict[str, Any]]:
    """Candidates by label ("merged", "base", "Q4_K_M.gguf") or name, or by a part of either such as
    `Q4_K_M` or `GPTQ` (case-insensitive)."""
    chosen = []
    for want in wanted:
        exact = [c for c in found if want in (c["name"], c["label"])]
        matches = exact or [c for c in found if want.lower() in f"{c['name']} {c['label']}".lower()]
        if len(matches) != 1:
            names = ", ".join(c["label"] for c in found)
            what = "matches nothing" if not matches else "matches several"
            raise RunError(f"variant {want!r} {what}; this run has: {names}")
        chosen.append(matches[0])
    return chosen


def messages(prompt: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The prompt as the fine-tune saw its rows: with the recipe's system prompt when it has one."""
    turns = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*turns, {"role": "user", "content": prompt}]


def job(candidate: dict[str, Any], chat: list[dict[str, str]], max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    request = {"path": candidate["path"], "format": candidate["format"], "messages": chat, "max_tokens": max_tokens}
    for extra in ("endpoint", "lora"):  # a server to ask; a GGUF adapter to load on the file
        if candidate.get(extra):
            request[extra] = candidate[extra]
    return request


def ask(
    request: dict[str, Any],
    started: Callable[[workers.Running], None] | None = None,
    timeout: float | None = ANSWER_TIMEOUT_S,
) -> Generator[dict[str, Any], None, None]:
    """Answer in a worker and yield its events; a crash, a timeout or an exit without an answer becomes an
    `error` event. `started` gets the running worker (to stop it early); closing this generator stops it.
    A served candidate answers over HTTP instead (no worker)."""
    if "endpoint" in request:
        yield from ask_server(request)
        return
    try:
        running = workers.start("chat.answer", request, name=Path(request["path"]).name, timeout=timeout)
    except OSError as exc:
        yield {"error": f"could not start the model process: {exc}"}
        return
    if started:
        started(running)
    yield from running.events()
    outcome = running.outcome
    assert outcome is not None
    yield {"done": outcome.result} if outcome.ok else {"error": outcome.error}


def ask_server(request: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
    """The same events from a running server, streamed with the `openai` client (greedy)."""
    from workbench.serve.client import Endpoint
    from workbench.serve.client import request as chat_request

    endpoint = Endpoint(**request["endpoint"])
    started = time.perf_counter()
    yield {"loaded": 0.0}
    times: list[float] = []
    try:
        arguments = chat_request(endpoint, request["messages"], request["max_tokens"], stream=True)
        for chunk in endpoint.client().chat.completions.create(**arguments):
            for choice in chunk.choices:
                if choice.delta.content:
                    times.append(time.perf_counter())
                    yield {"text": choice.delta.content}
    except Exception as exc:  # noqa: BLE001 - the server's failure is this answer's
        yield {"error": f"{endpoint.url}: {type(exc).__name__}: {exc}"}
        return
    yield {"done": stats(started, started, times)}


def stats(started: float, loaded: float, token_times: list[float]) -> dict[str, Any]:
    """Time to first token from the request (after loading), and generation speed after the first token."""
    count = len(token_times)
    result: dict[str, Any] = {"tokens": count, "load_s": loaded - started, "ttft_s": None, "tok_s": None}
    if count:
        result["ttft_s"] = token_times[0] - loaded
    if count > 1 and token_times[-1] > token_times[0]:
        result["tok_s"] = (count - 1) / (token_times[-1] - token_times[0])
    return result


def stats_line(result: dict[str, Any]) -> str:
    parts = [f"{result['tokens']} tokens"]
    if result["tok_s"] is not None:
        parts.append(f"{result['tok_s']:.1f} tok/s")
    if result["ttft_s"] is not None:
        parts.append(f"first token {result['ttft_s']:.2f} s")
    parts.append(f"load {result['load_s']:.1f} s")
    return " · ".join(parts)


# --- in the worker process ----------------------------------------------------------------------------


def plain_text(turns: list[dict[str, str]]) -> str:
    return "\n".join(turn["content"] for turn in turns) + "\n"


END_OF_TURN = None  # what a stream yields for the token that ends the answer (not at max_tokens)


def gguf_stream(request: dict[str, Any], loaded: Callable[[], None]) -> Iterator[str | None]:
    """Greedy tokens through llama.cpp; each yield is one generated token's text (end of turn: None)."""
    import codecs

    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from workbench.devices import usable_cores

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    llm = llama_cpp.Llama(
        request["path"], n_ctx=2048, n_threads=usable_cores(), n_gpu_layers=-1 if gpu else 0, verbose=False,
        lora_path=request.get("lora"),
    )  # fmt: skip
    try:
        template = llm.metadata.get("tokenizer.chat_template")
        if template:

            def text(token: int) -> str:
                return llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

            formatter = Jinja2ChatFormatter(template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()))
            prompt = llm.tokenize(formatter(messages=request["messages"]).prompt.encode(), add_bos=False, special=True)
        else:  # no template in the file: the turns as plain text
            prompt = llm.tokenize(plain_text(request["messages"]).encode(), add_bos=True)
        loaded()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        generated: list[int] = []
        tokens = llm.generate(prompt, temp=0.0, top_k=1, repeat_penalty=1.0)
        try:
            for token in tokens:
                if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
                    yield END_OF_TURN
                    return
                yield decoder.decode(llm.detokenize([token], prev_tokens=prompt + generated))
                generated.append(token)
                if len(generated) >= request["max_tokens"]:
                    return
        finally:
            tokens.close()  # before the model goes: a live generator holding freed state aborts at exit
    finally:
        llm.close()


def torch_stream(request: dict[str, Any], loaded: Callable[[], None]) -> Iterator[str | None]:
    """Greedy tokens through transformers; each yield is one generated token's text (end of turn: None)."""
    from queue import Queue
    from threading import Thread

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    from workbench.devices import compute_dtype, pick_device, usable_cores

    torch.set_num_threads(usable_cores())
    device = pick_device("auto")
    dtype = compute_dtype(request["format"], device)
    tokenizer = AutoTokenizer.from_pretrained(request["path"])
    model = AutoModelForCausalLM.from_pretrained(
        request["path"], dtype=dtype if dtype == "auto" else getattr(torch, dtype), device_map={"": device}
    )
    if request["format"] == "nf4" and device == "cpu":
        from workbench.export.nf4 import compute_in

        compute_in(model, torch.float32)
    if tokenizer.chat_template:
        inputs = tokenizer.apply_chat_template(
            request["messages"], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:  # no template: the turns as plain text, as for a GGUF without one
        inputs = tokenizer(plain_text(request["messages"]), return_tensors="pt")
    inputs = cast(BatchEncoding, inputs).to(model.device)
    loaded()
    pieces: Queue[object] = Queue()
    done = object()  # the queue's last item
    eos = model.generation_config.eos_token_id
    ends = set(eos) if isinstance(eos, list) else {eos}

    class Streamer:  # transformers calls put() with the prompt first, then once per new token
        def __init__(self) -> None:
            self.prompt_seen = False
            self.ids: list[int] = []
            self.shown = 0  # characters already handed out

        def put(self, value: torch.Tensor) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            new = value.flatten().tolist()
            if new and new[-1] in ends:
                pieces.put(END_OF_TURN)
                return
            self.ids += new
            text = str(tokenizer.decode(self.ids, skip_special_tokens=True))
            if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                pieces.put("")
                return
            pieces.put(text[self.shown :])
            self.shown = len(text)

        def end(self) -> None:
            pieces.put(done)

    def generate() -> None:
        try:
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=request["max_tokens"], do_sample=False, streamer=Streamer())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            pieces.put(exc)
            pieces.put(done)

    Thread(target=generate, daemon=True).start()
    while (piece := pieces.get()) is not done:
        if isinstance(piece, BaseException):
            raise piece
        yield cast(str | None, piece)


def answer_job(request: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """In a worker: stream one greedy answer as events; returns its stats."""
    started = time.perf_counter()
    loaded_at: list[float] = []

    def loaded() -> None:
        loaded_at.append(time.perf_counter())
        channel.emit({"loaded": loaded_at[0] - started})

    stream = stream_for(request)
    times: list[float] = []
    ended = False
    for piece in stream(request, loaded):
        times.append(time.perf_counter())
        ended = piece is END_OF_TURN
        if piece:
            channel.emit({"text": piece})
    return {**stats(started, loaded_at[0] if loaded_at else started, times), "end_of_turn": ended}


def reply(request: dict[str, Any]) -> str:
    """In a worker: one whole greedy answer (the export checks' smoke test)."""
    return "".join(piece or "" for piece in stream_for(request)(request, lambda: None))


def stream_for(request: dict[str, Any]) -> Callable[[dict[str, Any], Callable[[], None]], Iterator[str | None]]:
    return gguf_stream if request["format"] == "gguf" else torch_stream

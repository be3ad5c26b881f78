"""One prompt answered by one variant, in a worker (task `chat.answer`), token by token.

Each format's streamer (its spec's `streamer`, `workbench.core.formats`): GGUF through llama.cpp with the
chat template stored in the file, the transformers formats through `formats.load_for_inference` (the
loader the evaluation and the benchmarks use). Greedy, so variants differ only by what quantization did.
The export checks' smoke test answers with `reply`. The top level imports only the standard library: the
TUI reaches `stats` through the pipeline's chat candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from workbench.workers.child import Channel


@dataclass(frozen=True)
class AnswerJob:
    """One greedy answer (task `chat.answer`; the export checks' smoke test)."""

    path: str  # the model file or folder
    format: str
    messages: list[dict[str, str]]  # the conversation so far, ending with the user's turn
    max_tokens: int
    lora: str | None = None  # a GGUF adapter, loaded on the file


@dataclass(frozen=True)
class AnswerResult:
    """How the answer went: its length and speeds."""

    tokens: int
    load_s: float  # from the request until the model was ready
    ttft_s: float | None  # time to the first token after loading; None: no token
    tok_s: float | None  # generation speed after the first token; None: fewer than two tokens
    end_of_turn: bool = False  # the model ended its turn (not cut at max_tokens)


def stats(started: float, loaded: float, token_times: list[float], end_of_turn: bool = False) -> AnswerResult:
    """Time to first token from the request (after loading), and generation speed after the first token."""
    count = len(token_times)
    ttft = token_times[0] - loaded if count else None
    speed = (count - 1) / (token_times[-1] - token_times[0]) if count > 1 and token_times[-1] > token_times[0] else None
    return AnswerResult(count, loaded - started, ttft, speed, end_of_turn)


def plain_text(turns: list[dict[str, str]]) -> str:
    return "\n".join(turn["content"] for turn in turns) + "\n"


END_OF_TURN = None  # what a stream yields for the token that ends the answer (not at max_tokens)


def gguf_stream(request: AnswerJob, loaded: Callable[[], None]) -> Iterator[str | None]:
    """Greedy tokens through llama.cpp; each yield is one generated token's text (end of turn: None)."""
    import codecs

    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from workbench.core.devices import usable_cores

    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    llm = llama_cpp.Llama(
        request.path, n_ctx=2048, n_threads=usable_cores(), n_gpu_layers=-1 if gpu else 0, verbose=False,
        lora_path=request.lora,
    )  # fmt: skip
    try:
        template = llm.metadata.get("tokenizer.chat_template")
        if template:

            def text(token: int) -> str:
                return llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

            formatter = Jinja2ChatFormatter(template, eos_token=text(llm.token_eos()), bos_token=text(llm.token_bos()))
            rendered = formatter(messages=cast(Any, request.messages)).prompt  # plain role/content dicts
            prompt = llm.tokenize(rendered.encode(), add_bos=False, special=True)
        else:  # no template in the file: the turns as plain text
            prompt = llm.tokenize(plain_text(request.messages).encode(), add_bos=True)
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
                if len(generated) >= request.max_tokens:
                    return
        finally:
            tokens.close()  # before the model goes: a live generator holding freed state aborts at exit
    finally:
        llm.close()


def torch_stream(request: AnswerJob, loaded: Callable[[], None]) -> Iterator[str | None]:
    """Greedy tokens through transformers; each yield is one generated token's text (end of turn: None)."""
    from queue import Queue
    from threading import Thread

    import torch
    from transformers import AutoTokenizer, BatchEncoding

    from workbench.core.devices import pick_device, usable_cores
    from workbench.core.formats import load_for_inference

    torch.set_num_threads(usable_cores())
    tokenizer = AutoTokenizer.from_pretrained(request.path)
    model = load_for_inference(request.path, request.format, pick_device("auto"))
    if tokenizer.chat_template:
        inputs = tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    else:  # no template: the turns as plain text, as for a GGUF without one
        inputs = tokenizer(plain_text(request.messages), return_tensors="pt")
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
                model.generate(**inputs, max_new_tokens=request.max_tokens, do_sample=False, streamer=Streamer())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            pieces.put(exc)
            pieces.put(done)

    Thread(target=generate, daemon=True).start()
    while (piece := pieces.get()) is not done:
        if isinstance(piece, BaseException):
            raise piece
        yield cast(str | None, piece)


def answer_job(job: AnswerJob, channel: Channel) -> AnswerResult:
    """In a worker: stream one greedy answer as events (`{"loaded": s}`, then `{"text": piece}` per token);
    returns its stats."""
    started = time.perf_counter()
    loaded_at: list[float] = []

    def loaded() -> None:
        loaded_at.append(time.perf_counter())
        channel.emit({"loaded": loaded_at[0] - started})

    times: list[float] = []
    ended = False
    for piece in stream_for(job)(job, loaded):
        times.append(time.perf_counter())
        ended = piece is END_OF_TURN
        if piece:
            channel.emit({"text": piece})
    return stats(started, loaded_at[0] if loaded_at else started, times, ended)


def reply(job: AnswerJob) -> str:
    """In a worker: one whole greedy answer (the export checks' smoke test)."""
    return "".join(piece or "" for piece in stream_for(job)(job, lambda: None))


Streamer = Callable[[AnswerJob, Callable[[], None]], Iterator[str | None]]


def stream_for(job: AnswerJob) -> Streamer:
    from workbench.core import formats

    streamer: Streamer = formats.resolve(formats.spec(job.format).streamer)
    return streamer

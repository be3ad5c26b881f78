"""One prompt answered by one variant, in a worker (task `chat.answer`), token by token.

GGUF through llama.cpp with the chat template stored in the file, everything else through transformers
with the format's kernels (the loaders the evaluation uses). Greedy, so variants differ only by what
quantization did. The export checks' smoke test answers with `reply`. The top level imports only the
standard library: the TUI reaches `stats` through the pipeline's chat candidates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, cast

from workbench.workers.child import Channel


def stats(started: float, loaded: float, token_times: list[float]) -> dict[str, Any]:
    """Time to first token from the request (after loading), and generation speed after the first token."""
    count = len(token_times)
    result: dict[str, Any] = {"tokens": count, "load_s": loaded - started, "ttft_s": None, "tok_s": None}
    if count:
        result["ttft_s"] = token_times[0] - loaded
    if count > 1 and token_times[-1] > token_times[0]:
        result["tok_s"] = (count - 1) / (token_times[-1] - token_times[0])
    return result


def plain_text(turns: list[dict[str, str]]) -> str:
    return "\n".join(turn["content"] for turn in turns) + "\n"


END_OF_TURN = None  # what a stream yields for the token that ends the answer (not at max_tokens)


def gguf_stream(request: dict[str, Any], loaded: Callable[[], None]) -> Iterator[str | None]:
    """Greedy tokens through llama.cpp; each yield is one generated token's text (end of turn: None)."""
    import codecs

    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from workbench.core.devices import usable_cores

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

    from workbench.core.devices import compute_dtype, pick_device, usable_cores

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

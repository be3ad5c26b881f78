"""Serving parity: does the prompt a server builds for a variant match what training saw?

Training renders conversations with the training tokenizer's chat template. A server renders them with
the variant's own: for GGUF, the template embedded in the file and llama.cpp's tokenizer, exactly as
llama-cpp-python's chat completion does. Different token ids or a missing stop token is the usual reason
a GGUF "forgets" its fine-tune in Ollama or llama.cpp.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

Messages = list[dict[str, str]]


@dataclass
class Rendered:
    prompt_ids: list[int]
    stop_ids: set[int]
    decode: Any  # ids -> text, for showing a difference


@dataclass
class ParityResult:
    passed: bool
    checked: int
    first_difference: dict[str, Any] | None = None
    stop_token: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def training_end_of_turn(tokenizer: Any, messages: Messages) -> int | None:
    """The special token that closes the assistant turn in training data (what generation must stop on)."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    tail = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_encoder.values())
    return next((token for token in tail if token in special), None)


def render_hf(tokenizer: Any, messages: Messages) -> Rendered:
    text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stops = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    return Rendered(ids, stops, lambda part: tokenizer.decode(part))


class GGUFRenderer:
    """Renders like llama-cpp-python's chat completion for a GGUF file (vocabulary only, no weights)."""

    def __init__(self, path: Path):
        import llama_cpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{path.name} has no chat template (tokenizer.chat_template)")
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        self.stops = {eos}
        eot = self.llm.metadata.get("tokenizer.ggml.eot_token_id")
        if eot is not None:
            self.stops.add(int(eot))
        self.formatter = Jinja2ChatFormatter(
            template, eos_token=self._text(eos), bos_token=self._text(bos), stop_token_ids=[eos]
        )

    def _text(self, token: int) -> str:
        return self.llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def render(self, messages: Messages) -> Rendered:
        result = self.formatter(messages=messages[:-1])
        ids = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        return Rendered(
            ids, self.stops, lambda part: self.llm.detokenize(part, special=True).decode("utf-8", "replace")
        )

    def close(self) -> None:
        self.llm.close()


def compare(training_tokenizer: Any, render_variant: Any, conversations: list[Messages]) -> ParityResult:
    """Compare token ids of every conversation's prompt and the stop token; report the first difference."""
    for number, messages in enumerate(conversations, 1):
        expected = render_hf(training_tokenizer, messages)
        actual = render_variant(messages)
        if expected.prompt_ids != actual.prompt_ids:
            at = next(
                (i for i, (a, b) in enumerate(zip(expected.prompt_ids, actual.prompt_ids, strict=False)) if a != b),
                min(len(expected.prompt_ids), len(actual.prompt_ids)),
            )
            window = slice(max(0, at - 3), at + 5)
            return ParityResult(
                passed=False,
                checked=number,
                first_difference={
                    "conversation": number,
                    "token_index": at,
                    "training": expected.decode(expected.prompt_ids[window]),
                    "variant": actual.decode(actual.prompt_ids[window]),
                    "training_length": len(expected.prompt_ids),
                    "variant_length": len(actual.prompt_ids),
                },
            )
    end = training_end_of_turn(training_tokenizer, conversations[0]) if conversations else None
    stops = render_variant(conversations[0]).stop_ids if conversations else set()
    stop = {"training_end_of_turn": end, "variant_stops": sorted(stops), "ok": end is None or end in stops}
    return ParityResult(passed=stop["ok"], checked=len(conversations), stop_token=stop)


def check_gguf(training_tokenizer: Any, path: Path, conversations: list[Messages]) -> ParityResult:
    renderer = GGUFRenderer(path)
    try:
        return compare(training_tokenizer, renderer.render, conversations)
    finally:
        renderer.close()


def check_hf(training_tokenizer: Any, variant_dir: Path, conversations: list[Messages]) -> ParityResult:
    from transformers import AutoTokenizer

    variant_tokenizer = AutoTokenizer.from_pretrained(variant_dir)
    return compare(training_tokenizer, lambda messages: render_hf(variant_tokenizer, messages), conversations)

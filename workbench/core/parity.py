"""Serving parity: does the prompt a server builds for a variant match what training saw?

Training renders conversations with the training tokenizer's chat template. A server renders them with
the variant's own: for GGUF, the template embedded in the file and llama.cpp's tokenizer, exactly as
llama-cpp-python's chat completion does. Different token ids or a missing stop token is the usual reason
a GGUF "forgets" its fine-tune in Ollama or llama.cpp.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

Messages = list[dict[str, str]]


@dataclass
class Rendered:
    prompt_ids: list[int]
    stop_ids: set[int]
    decode: Any  # ids -> text, for showing a difference


@dataclass
class ParityResult:
    status: Literal["passed", "failed", "skipped"]
    checked: int
    first_difference: dict[str, Any] | None = None
    stop_token: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None  # why it was skipped

    @property
    def passed(self) -> bool | None:
        """True / False, or None when nothing was checked (never shown as passed)."""
        return None if self.status == "skipped" else self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def skipped(cls, reason: str) -> ParityResult:
        return cls(status="skipped", checked=0, reason=reason)


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
        result = self.formatter(messages=cast(Any, messages[:-1]))  # plain role/content dicts
        ids = self.llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
        return Rendered(
            ids, self.stops, lambda part: self.llm.detokenize(part, special=True).decode("utf-8", "replace")
        )

    def close(self) -> None:
        self.llm.close()


@dataclass
class Expected:
    """What training rendered for each held-out conversation: its prompt token ids, and the special token
    that closes the assistant turn. Made where the training tokenizer is loaded; without its `decode` it
    crosses to a worker (the `variant.check` job), which holds a variant against it without loading that
    tokenizer again."""

    conversations: list[Messages]
    prompt_ids: list[list[int]]
    end_of_turn: int | None
    decode: Any = field(default=None, repr=False, compare=False)  # training ids -> text, where it is loaded

    @classmethod
    def of(cls, training_tokenizer: Any, conversations: list[Messages]) -> Expected:
        ids = [render_hf(training_tokenizer, messages).prompt_ids for messages in conversations]
        end = training_end_of_turn(training_tokenizer, conversations[0]) if conversations else None
        return cls(conversations, ids, end, training_tokenizer.decode)


def compare(expected: Expected, render_variant: Any) -> ParityResult:
    """Compare token ids of every conversation's prompt and the stop token; report the first difference."""
    if not expected.conversations:
        return ParityResult.skipped("no held-out conversations to compare")
    for number, (messages, wanted) in enumerate(zip(expected.conversations, expected.prompt_ids, strict=True), 1):
        actual = render_variant(messages)
        if wanted != actual.prompt_ids:
            at = next(
                (i for i, (a, b) in enumerate(zip(wanted, actual.prompt_ids, strict=False)) if a != b),
                min(len(wanted), len(actual.prompt_ids)),
            )
            window = slice(max(0, at - 3), at + 5)
            difference = {
                "conversation": number,
                "token_index": at,
                "training_ids": wanted[window],
                "variant": actual.decode(actual.prompt_ids[window]),
                "training_length": len(wanted),
                "variant_length": len(actual.prompt_ids),
            }
            if expected.decode is not None:
                difference["training"] = expected.decode(difference["training_ids"])
            return ParityResult(status="failed", checked=number, first_difference=difference)
    end = expected.end_of_turn
    stops = render_variant(expected.conversations[0]).stop_ids
    stop = {"training_end_of_turn": end, "variant_stops": sorted(stops), "ok": end is None or end in stops}
    return ParityResult(
        status="passed" if stop["ok"] else "failed", checked=len(expected.conversations), stop_token=stop
    )


def with_training_text(result: dict[str, Any], training_tokenizer: Any) -> dict[str, Any]:
    """A worker's result with the training side of its first difference decoded (the worker had only ids)."""
    difference = result.get("first_difference")
    if difference and "training" not in difference:
        difference["training"] = training_tokenizer.decode(difference["training_ids"])
    return result


def check_gguf(expected: Expected, path: Path) -> ParityResult:
    if not expected.conversations:
        return ParityResult.skipped("no held-out conversations to compare")
    renderer = GGUFRenderer(path)
    try:
        return compare(expected, renderer.render)
    finally:
        renderer.close()


def check_hf(expected: Expected, variant_dir: Path) -> ParityResult:
    from transformers import AutoTokenizer

    if not expected.conversations:
        return ParityResult.skipped("no held-out conversations to compare")
    variant_tokenizer = AutoTokenizer.from_pretrained(variant_dir)
    return compare(expected, lambda messages: render_hf(variant_tokenizer, messages))


SERVED_UNSTABLE = "the server answered it differently whole and streamed"  # numerics, not the template


def describe_served(result: dict[str, Any]) -> str:
    """A served-parity result (workbench.serve.served) in one line."""
    if result["status"] == "skipped":
        return f"skipped ({result['reason']})"
    unstable = result.get("unstable") or 0
    note = f"; {unstable} answered differently whole and streamed by the server (numerics)" if unstable else ""
    if result["status"] == "passed":
        how = " and prompt lengths" if result.get("prompt_lengths_compared") else ""
        return f"passed: {result['checked']} conversations, stream and non-stream, answers{how} as in-process{note}"
    failures = [f for f in result["findings"] if f["what"] != SERVED_UNSTABLE]
    first = failures[0]
    more = len(failures) - 1
    return (
        f"FAILED: conversation {first['conversation']}: {first['what']} (expected {first['expected']!r},"
        f" got {first['got']!r})" + (f"; {more} more" if more else "")
    )

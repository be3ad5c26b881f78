"""Row formats: detection and normalisation to one canonical shape.

SFT formats become ``{"messages": [{"role", "content"}, ...]}`` ending with an assistant turn;
preference rows become ``{"prompt": [...], "chosen": [...], "rejected": [...]}`` (answers are
assistant turns); unpaired (KTO, thumbs up/down) rows become
``{"prompt": [...], "completion": [...], "label": bool}``; plain text rows stay ``{"text": ...}``.
Every problem raises `BadRow` with a reason a person can act on.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Row = dict[str, Any]
ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


class BadRow(ValueError):
    """A row that cannot be used, with the reason."""


def _text(row: Row, key: str, *, required: bool = True) -> str:
    if key not in row or row[key] is None:
        if required:
            raise BadRow(f"missing field '{key}'")
        return ""
    value = row[key]
    if not isinstance(value, str):
        raise BadRow(f"field '{key}' must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise BadRow(f"field '{key}' is empty")
    return value


def _check_conversation(messages: list[Row], field: str) -> list[Row]:
    if not messages:
        raise BadRow(f"'{field}' has no turns")
    if messages[-1]["role"] != "assistant":
        raise BadRow(f"'{field}' must end with an assistant turn, ends with {messages[-1]['role']}")
    if not any(m["role"] == "user" for m in messages):
        raise BadRow(f"'{field}' has no user turn")
    return messages


def _messages(value: Any, field: str, role_key: str, text_key: str, roles: dict[str, str]) -> list[Row]:
    if not isinstance(value, list):
        raise BadRow(f"field '{field}' must be a list of turns, got {type(value).__name__}")
    turns = []
    for i, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            raise BadRow(f"{field}[{i}] must be an object, got {type(turn).__name__}")
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in roles:
            raise BadRow(f"{field}[{i}].{role_key} is {role!r:.40}; expected one of {sorted(roles)}")
        content = turn.get(text_key)
        if not isinstance(content, str):
            raise BadRow(f"{field}[{i}].{text_key} must be text, got {type(content).__name__}")
        if not content.strip() and roles[role] != "system":
            raise BadRow(f"{field}[{i}].{text_key} is empty")
        turns.append({"role": roles[role], "content": content})
    return turns


def from_messages(row: Row) -> Row:
    if "messages" not in row:
        raise BadRow("missing field 'messages'")
    turns = _messages(row["messages"], "messages", "role", "content", {r: r for r in ROLES})
    return {"messages": _check_conversation(turns, "messages")}


def from_sharegpt(row: Row) -> Row:
    if "conversations" not in row:
        raise BadRow("missing field 'conversations'")
    turns = _messages(row["conversations"], "conversations", "from", "value", SHAREGPT_ROLES)
    if row.get("system"):
        turns.insert(0, {"role": "system", "content": _text(row, "system")})
    return {"messages": _check_conversation(turns, "conversations")}


def from_alpaca(row: Row) -> Row:
    instruction = _text(row, "instruction")
    extra = _text(row, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(row, "output")},
        ]
    }


def from_qa(row: Row) -> Row:
    return {
        "messages": [
            {"role": "user", "content": _text(row, "question")},
            {"role": "assistant", "content": _text(row, "answer")},
        ]
    }


def _turns_or_text(row: Row, key: str, role: str) -> list[Row]:
    if isinstance(row.get(key), list):
        return _messages(row[key], key, "role", "content", {r: r for r in ROLES})
    return [{"role": role, "content": _text(row, key)}]


def from_prompt_completion(row: Row) -> Row:
    prompt = _turns_or_text(row, "prompt", "user")
    completion = _turns_or_text(row, "completion", "assistant")
    return {"messages": _check_conversation(prompt + completion, "completion")}


# "\n\nHuman: ...\n\nAssistant: ..." transcripts (Anthropic HH-RLHF, DeepSpeed-Chat / Dahoas rm-static).
HH_MARKER = re.compile(r"^\s*(Human|Assistant):", re.MULTILINE)
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _is_transcript(value: Any) -> bool:
    return isinstance(value, str) and value.lstrip().startswith("Human:") and "Assistant:" in value


def _transcript(text: str, field: str) -> list[Row]:
    """Chat turns of a transcript; a final empty "Assistant:" is the generation point and is dropped."""
    parts = HH_MARKER.split(text)[1:]  # role, content, role, content, ...
    pairs = zip(parts[::2], parts[1::2], strict=True)
    turns = [{"role": HH_ROLES[role], "content": content.strip()} for role, content in pairs]
    if turns[-1] == {"role": "assistant", "content": ""}:
        turns.pop()
    for i, turn in enumerate(turns, 1):
        if not turn["content"]:
            raise BadRow(f"field '{field}' turn {i} ({'Human' if turn['role'] == 'user' else 'Assistant'}) is empty")
    return turns


def _prompt(row: Row) -> list[Row]:
    if _is_transcript(row.get("prompt")):
        turns = _transcript(row["prompt"], "prompt")
        if turns[-1]["role"] != "user":
            raise BadRow("field 'prompt' must end with a Human turn or an empty 'Assistant:'")
        return turns
    turns = _turns_or_text(row, "prompt", "user")
    if not turns:
        raise BadRow("'prompt' has no turns")
    return turns


def _answer(row: Row, key: str, stripped: bool) -> list[Row]:
    """Assistant turns; text after a Human/Assistant prompt loses the space it had after "Assistant:"."""
    turns = _turns_or_text(row, key, "assistant")
    if not turns:
        raise BadRow(f"'{key}' has no turns")
    if stripped and isinstance(row[key], str):
        turns[0]["content"] = turns[0]["content"].strip()
    if any(turn["role"] != "assistant" for turn in turns):
        raise BadRow(f"'{key}' must hold only assistant turns (the prompt goes in 'prompt')")
    return turns


def _conversation(row: Row, key: str) -> list[Row]:
    if _is_transcript(row.get(key)):
        turns = _transcript(row[key], key)
    elif isinstance(row.get(key), list):
        turns = _turns_or_text(row, key, "assistant")
    else:
        _text(row, key)
        raise BadRow(
            f"field '{key}' must be a whole conversation ('Human: ... Assistant: ...' text or a list of turns)"
            " when there is no 'prompt' field"
        )
    return _check_conversation(turns, key)


def _split_prompt(chosen: list[Row], rejected: list[Row]) -> tuple[list[Row], list[Row], list[Row]]:
    """Whole conversations (TRL's implicit prompt): the turns up to the last shared user turn are the prompt."""
    differ = 0
    while differ < min(len(chosen), len(rejected)) and chosen[differ] == rejected[differ]:
        differ += 1
    shared = differ
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    prompt, answers = chosen[:shared], chosen[shared:] + rejected[shared:]
    if not any(turn["role"] == "user" for turn in prompt) or any(turn["role"] != "assistant" for turn in answers):
        raise BadRow(
            f"'chosen' and 'rejected' do not share a prompt: they differ at turn {differ + 1}, before their last"
            " user turn; only the assistant answer after it may differ"
        )
    return prompt, chosen[shared:], rejected[shared:]


def from_preference(row: Row) -> Row:
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise BadRow(f"missing field '{key}'")
    if row.get("prompt") is not None:
        stripped = _is_transcript(row["prompt"])
        prompt, chosen, rejected = _prompt(row), _answer(row, "chosen", stripped), _answer(row, "rejected", stripped)
    else:
        chosen, rejected = _conversation(row, "chosen"), _conversation(row, "rejected")
        if chosen != rejected:
            prompt, chosen, rejected = _split_prompt(chosen, rejected)
    if chosen == rejected:
        raise BadRow("'chosen' and 'rejected' are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


LABEL_FIELDS = ("label", "thumbs", "rating", "feedback")
ACCEPTED_LABELS = "true/false, 1/0, up/down, good/bad, yes/no or 👍/👎"
LABELS = {
    **dict.fromkeys(["true", "1", "up", "👍", "good", "yes"], True),
    **dict.fromkeys(["false", "0", "down", "👎", "bad", "no"], False),
}


def _label(row: Row) -> bool:
    key = next((k for k in LABEL_FIELDS if row.get(k) is not None), None)
    if key is None:
        others = ", ".join(repr(k) for k in LABEL_FIELDS[1:])
        raise BadRow(f"missing field 'label' (or {others}); expected {ACCEPTED_LABELS}")
    value = row[key]
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in LABELS:
        return LABELS[value.strip().lower()]
    raise BadRow(f"field '{key}' is {value!r:.40}; expected {ACCEPTED_LABELS}")


def from_unpaired(row: Row) -> Row:
    """KTO's prompt/completion/label, or a prompt and response with thumbs up/down feedback."""
    key = next((k for k in ("completion", "response") if row.get(k) is not None), None)
    if key is None:
        raise BadRow("missing field 'completion' (or 'response')")
    prompt = _prompt(row)
    completion = _answer(row, key, _is_transcript(row.get("prompt")))
    return {"prompt": prompt, "completion": completion, "label": _label(row)}


def from_text(row: Row) -> Row:
    return {"text": _text(row, "text")}


NORMALISERS: dict[str, Callable[[Row], Row]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "qa": from_qa,
    "prompt_completion": from_prompt_completion,
    "preference": from_preference,
    "unpaired": from_unpaired,
    "text": from_text,
}

# Checked in order: the first format whose keys a row has wins.
SIGNATURES: list[tuple[str, set[str]]] = [
    ("messages", {"messages"}),
    ("sharegpt", {"conversations"}),
    ("preference", {"prompt", "chosen", "rejected"}),
    # before prompt_completion, so that rated answers are never trained on as plain completions
    *[("unpaired", {"prompt", answer, label}) for answer in ("completion", "response") for label in LABEL_FIELDS],
    ("prompt_completion", {"prompt", "completion"}),
    ("alpaca", {"instruction", "output"}),
    ("qa", {"question", "answer"}),
    # whole conversations, the prompt implicit (Anthropic HH-RLHF); late, so it never takes another format's rows
    ("preference", {"chosen", "rejected"}),
    ("text", {"text"}),
]


DETECT_ROWS = 50  # the first rows a format is told from


def detect_format(rows: list[Any], source: str) -> str:
    """The format most of the first rows match; a clear error when none does."""
    votes: dict[str, int] = {}
    for row in rows[:DETECT_ROWS]:
        if isinstance(row, dict):
            for name, keys in SIGNATURES:
                if keys <= row.keys():
                    votes[name] = votes.get(name, 0) + 1
                    break
    if not votes:
        sample = next((sorted(r) for r in rows if isinstance(r, dict)), None)
        columns: dict[str, list[str]] = {}
        for name, keys in SIGNATURES:
            columns.setdefault(name, []).append(", ".join(sorted(keys)))
        expected = "; ".join(f"{name}: {' | '.join(alternatives)}" for name, alternatives in columns.items())
        raise ValueError(
            f"{source}: cannot tell the data format from the columns {sample}; expected one of "
            f"({expected}), or set data.format"
        )
    return max(votes, key=lambda name: votes[name])

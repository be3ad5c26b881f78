"""Row formats: detection and normalisation to one canonical shape.

SFT formats become ``{"messages": [{"role", "content"}, ...]}`` ending with an assistant turn;
preference rows become ``{"prompt": [...], "chosen": [...], "rejected": [...]}``; plain text rows
stay ``{"text": ...}``. Every problem raises `BadRow` with a reason a person can act on.
"""

from __future__ import annotations

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


def from_preference(row: Row) -> Row:
    prompt = _turns_or_text(row, "prompt", "user")
    chosen = _turns_or_text(row, "chosen", "assistant")
    rejected = _turns_or_text(row, "rejected", "assistant")
    if chosen == rejected:
        raise BadRow("'chosen' and 'rejected' are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def from_text(row: Row) -> Row:
    return {"text": _text(row, "text")}


NORMALISERS: dict[str, Callable[[Row], Row]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "qa": from_qa,
    "prompt_completion": from_prompt_completion,
    "preference": from_preference,
    "text": from_text,
}

# Checked in order: the first format whose keys a row has wins.
SIGNATURES: list[tuple[str, set[str]]] = [
    ("messages", {"messages"}),
    ("sharegpt", {"conversations"}),
    ("preference", {"prompt", "chosen", "rejected"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("alpaca", {"instruction", "output"}),
    ("qa", {"question", "answer"}),
    ("text", {"text"}),
]


def detect_format(rows: list[Any], source: str) -> str:
    """The format most of the first rows match; a clear error when none does."""
    votes: dict[str, int] = {}
    for row in rows[:50]:
        if isinstance(row, dict):
            for name, keys in SIGNATURES:
                if keys <= row.keys():
                    votes[name] = votes.get(name, 0) + 1
                    break
    if not votes:
        sample = next((sorted(r) for r in rows if isinstance(r, dict)), None)
        expected = "; ".join(f"{name}: {', '.join(sorted(keys))}" for name, keys in SIGNATURES)
        raise ValueError(
            f"{source}: cannot tell the data format from the columns {sample}; expected one of "
            f"({expected}), or set data.format"
        )
    return max(votes, key=lambda name: votes[name])

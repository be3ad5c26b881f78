"""Writes stdlib_docs.jsonl: English technical prose from the Python documentation that every Python
install carries (`pydoc_data.topics`), for the perplexity part of the forgetting probe.

The text is committed so the probe does not change with the Python version; this script only rebuilds it.
"""

import json
from pathlib import Path
from pydoc_data.topics import topics

TOPICS = [
    "assignment",
    "augassign",
    "bltin-null-object",
    "break",
    "class",
    "compound",
    "continue",
    "conversions",
    "dict",
    "exceptions",
    "for",
    "if",
    "import",
    "lambda",
    "naming",
    "numbers",
    "pass",
    "return",
    "sequence-types",
    "string-methods",
    "truth",
    "typesseq",
    "while",
    "with",
]
DOCS = 16
MAX_CHARS = 1200


def paragraphs(text: str, limit: int) -> str:
    """Whole paragraphs up to `limit` characters (at least one)."""
    kept: list[str] = []
    for paragraph in text.strip().split("\n\n"):
        if kept and sum(len(p) + 2 for p in kept) + len(paragraph) > limit:
            break
        kept.append(paragraph)
    return "\n\n".join(kept)[:limit]


def main() -> None:
    out = Path(__file__).with_name("stdlib_docs.jsonl")
    rows = [{"topic": name, "text": paragraphs(topics[name], MAX_CHARS)} for name in TOPICS if name in topics]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows[:DOCS]), encoding="utf-8")
    print(f"wrote {len(rows[:DOCS])} documents to {out}")


if __name__ == "__main__":
    main()

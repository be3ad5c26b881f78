"""Names and model answers are shown as they are, never read as markup: a `[` in an answer would
otherwise fail to render or restyle the screen. Statics showing such text are made with `markup=False`,
table cells go through `workbench.tui.tables.cell`; border titles and option prompts through `plain`."""

from __future__ import annotations

from textual.content import Content

from workbench.core.safe import terminal_text


def plain(value: str) -> Content:
    return Content(terminal_text(value))  # Textual drops bells and returns, not escape sequences

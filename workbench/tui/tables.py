"""DataTable helpers shared by the screens."""

from __future__ import annotations

from rich.markup import escape
from textual.widgets import DataTable

from workbench.core.safe import terminal_text


def cell(value: object) -> str:
    """A cell shown as it is: DataTable reads str cells as Rich markup, so a `[` in a name or an error
    would otherwise fail to render or restyle the row; escape sequences would reach the terminal."""
    return escape(terminal_text(str(value)))


def selected_row(table: DataTable) -> str | None:
    """The key of the row under the cursor; None for an empty table."""
    if not table.row_count:
        return None
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

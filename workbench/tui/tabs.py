"""Number keys for a screen's tabs: panes with ids `<name>-tab`, key n shows the n-th (hidden tabs stay
hidden)."""

from __future__ import annotations

from textual.binding import Binding
from textual.widgets import TabbedContent

from workbench.tui.screens import AppScreen


def tab_keys(names: list[str] | tuple[str, ...]) -> list[Binding]:
    return [Binding(str(n), f"show_tab('{name}')", name, show=False) for n, name in enumerate(names, 1)]


class NumberedTabs(AppScreen):
    """A screen whose tabs answer to number keys."""

    def action_show_tab(self, name: str) -> None:
        tabs = self.query_one(TabbedContent)
        if tabs.get_tab(f"{name}-tab").display:
            tabs.active = f"{name}-tab"

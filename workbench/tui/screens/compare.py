"""Compare: a run's comparison table (sortable from the keyboard) and recommendation per target, and
the quality-vs-size, KLD-vs-size (the size–fidelity frontier) and quality-vs-speed charts with their Pareto
fronts, drawn in the terminal — the same numbers as `workbench report`."""

from __future__ import annotations

from typing import Any, Literal

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from workbench.report import chart, table, write
from workbench.tui.tables import cell
from workbench.tui.tabs import NumberedTabs, tab_keys

CHARTS = {
    "size": "2 Quality/size",
    "fidelity": "3 KLD/size",
    "cpu": "4 Quality/CPU speed",
    "gpu": "5 Quality/GPU speed",
}


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before text, so a sort by any column reads sensibly."""
    return (0, value) if isinstance(value, int | float) else (1, str(value))


def draw(plot: PlotextPlot, data: chart.Chart) -> None:
    """The chart as plotext draws it: the Pareto front as a line through its points (o), the others as
    crosses (x), each point labelled, and lines at the merged score and the keep bar. Marks and labels
    carry it without colour."""
    plt = plot.plt
    plt.clear_data()
    xs, ys = [p.x for p in data.points], [p.y for p in data.points]
    ys += [y for y in (data.merged, data.bar) if y is not None]
    x_pad = (max(xs) - min(xs)) * 0.12 or 1.0
    y_pad = (max(ys) - min(ys)) * 0.12 or 0.05
    plt.xlim(min(xs) - x_pad, max(xs) + x_pad)
    plt.ylim(min(ys) - y_pad, max(ys) + 2 * y_pad)  # room for the labels above the top points
    if data.merged is not None and data.bar is not None:
        plt.horizontal_line(data.merged)
        plt.horizontal_line(data.bar)
    if len(data.front) > 1:
        plt.plot([p.x for p in data.front], [p.y for p in data.front], marker="braille", label="Pareto front")
    plt.scatter([p.x for p in data.front], [p.y for p in data.front], marker="o")
    others = [p for p in data.points if not p.on_front]
    if others:
        plt.scatter([p.x for p in others], [p.y for p in others], marker="x", label="x: not on the front")
    middle = (min(xs) + max(xs)) / 2
    for index, point in enumerate(data.points):
        align: Literal["left", "right"] = "left" if point.x <= middle else "right"
        below = index % 2 == 1  # neighbours' labels alternate above and below, so close points stay readable
        y = point.y - y_pad * 0.6 if below else point.y + y_pad * 0.6
        plt.text(point.label.removesuffix(".gguf"), point.x, y, alignment=align)
    title = data.ylabel
    if data.merged is not None and data.bar is not None:
        title += f" · lines: merged {data.merged:.3f}, {data.bar_label.removesuffix(' of merged')} {data.bar:.3f}"
    plt.title(title)
    plt.xlabel(data.xlabel)
    plot.refresh()


class CompareScreen(NumberedTabs):
    DEFAULT_CSS = """
    #compare-tabs { height: 1fr; }
    #recommendation { height: auto; padding: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("s", "sort", "Sort by next column"),
        Binding("r", "reverse", "Reverse"),
        Binding("q", "app.quit", "Quit"),
        *tab_keys(["table", *CHARTS]),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.sort_column = -1
        self.descending = False

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="compare-tabs"):
            with TabPane("1 Table", id="table-tab"):
                yield Static(id="recommendation", markup=False)
                yield DataTable(id="comparison", cursor_type="row", zebra_stripes=True)
            for axis, title in CHARTS.items():
                with TabPane(title, id=f"{axis}-tab"):
                    yield PlotextPlot(id=f"{axis}-chart")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"workbench · compare {self.run_id}"
        report = write.load(self.workbench.store, self.run_id, self.workbench.home / self.run_id)
        comparison = report.comparison
        lines = write.recommendation_lines(comparison) + [f"({line})" for line in report.settings]
        self.query_one("#recommendation", Static).update("\n".join(lines))
        grid = self.query_one("#comparison", DataTable)
        headers, body = table.text_rows(comparison)
        _, raw = table.raw_rows(comparison)
        self.raw = {row.name: values for row, values in zip(comparison.rows, raw, strict=True)}
        self.headers = headers
        grid.add_columns(*headers)
        for row, cells in zip(comparison.rows, body, strict=True):
            grid.add_row(*map(cell, cells), key=row.name)
        tabs = self.query_one(TabbedContent)
        self.charts: dict[str, chart.Chart] = {}
        for axis in CHARTS:
            data = chart.fidelity_vs_size(comparison) if axis == "fidelity" else chart.quality_vs(comparison, axis)
            if data is None:
                tabs.hide_tab(f"{axis}-tab")  # e.g. no GPU measurements
            else:
                self.charts[axis] = data
                draw(self.query_one(f"#{axis}-chart", PlotextPlot), data)

    def action_sort(self) -> None:
        self.sort_column = (self.sort_column + 1) % len(self.headers)
        self._sort()

    def action_reverse(self) -> None:
        self.descending = not self.descending
        self._sort()

    def _sort(self) -> None:
        column = max(self.sort_column, 0)
        grid = self.query_one("#comparison", DataTable)
        present = [name for name in self.raw if self.raw[name][column] is not None]
        order = sorted(present, key=lambda name: sort_key(self.raw[name][column]), reverse=self.descending)
        order += [name for name in self.raw if name not in present]  # blanks stay last either way
        rows = {key.value: grid.get_row(key) for key in grid.rows}
        grid.clear()
        for name in order:
            grid.add_row(*rows[name], key=name)
        direction = "descending" if self.descending else "ascending"
        self.notify(f"sorted by {self.headers[column]} ({direction})", timeout=2, markup=False)

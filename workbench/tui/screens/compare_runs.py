"""Several runs side by side (e.g. LoRA vs QLoRA vs LoftQ): per kind of variant, each run's score, its
change vs that run's merged model and KLD, and which run kept the most — as `workbench compare`."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from workbench.report import runs, twins, write
from workbench.tui.screens import AppScreen
from workbench.tui.tables import cell


class CompareRunsScreen(AppScreen):
    DEFAULT_CSS = """
    #runs-legend { height: auto; padding: 0 1; }
    #runs-comparison { height: 1fr; }
    #runs-recovered { height: auto; max-height: 12; }
    """
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_ids: list[str]) -> None:
        super().__init__()
        self.run_ids = run_ids

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="runs-legend", markup=False)
        yield DataTable(id="runs-comparison", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="runs-recovered", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"workbench · compare {', '.join(self.run_ids)}"
        store, home = self.workbench.store, self.workbench.home
        table = runs.side_by_side([write.load(store, run_id, home / run_id) for run_id in self.run_ids])
        self.query_one("#runs-legend", Static).update(runs.legend(table))
        grid = self.query_one("#runs-comparison", DataTable)
        grid.add_columns("variant", *runs.headings(table), "keeps most")
        for row in table["rows"]:
            cells = [runs.cell_text(row["runs"].get(r["run"])) for r in table["runs"]]
            grid.add_row(*map(cell, (row["variant"], *cells, row["keeps_most"] or "")), key=row["variant"])
        recovered = self.query_one("#runs-recovered", DataTable)
        recovered.display = bool(table["recovered"])
        if table["recovered"]:
            self.query_one("#runs-legend", Static).update(f"{runs.legend(table)}\n{twins.RECOVERED_LEGEND}")
            recovered.add_columns(*twins.RECOVERED_HEADINGS)
            for item in table["recovered"]:
                recovered.add_row(*map(cell, twins.recovered_cells(item)))

"""Layout at 80x24, pinned as SVG snapshots (tests/__snapshots__/; after a deliberate change,
re-accept them with `pytest tests/test_tui_snapshots.py --snapshot-update` and look at the diff)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_report import SCORES, fill_store
from test_tui import finished_run

from workbench.core.store import Store
from workbench.tui.app import WorkbenchApp

MOMENT = 1_790_000_000.0  # every stored time: the snapshots do not depend on when they were taken


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setenv("WORKBENCH_MODELS", str(tmp_path / "no-models"))
    finished_run(tmp_path)
    store = Store(tmp_path / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    store.set_run_status("lora", "done")
    store.db.execute("UPDATE runs SET created=?, updated=?", (MOMENT, time.time() - 300))  # shown as "5m"
    store.db.execute("UPDATE runs SET created=? WHERE id='lora'", (MOMENT + 1,))
    store.db.execute("UPDATE stages SET started=?, finished=? + 75", (MOMENT, MOMENT))
    store.db.commit()
    store.close()
    yield tmp_path
    monkeypatch.undo()  # TZ back first, then re-read it
    time.tzset()


def test_runs(home: Path, snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(WorkbenchApp(home), press=["down", "space"])


def test_run_stages(home: Path, snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(WorkbenchApp(home), press=["down", "enter"])


def test_run_loss_curve(home: Path, snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(WorkbenchApp(home), press=["down", "enter", "2"])


def test_compare_table(home: Path, snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(WorkbenchApp(home), press=["v"])


def test_compare_pareto_chart(home: Path, snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(WorkbenchApp(home), press=["v", "2"])


def test_models(home: Path, snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(WorkbenchApp(home), press=["m"])


def test_new_run(home: Path, snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    (home / "recipes").mkdir()
    for name in ("big-gpu.yaml", "quickstart.yaml"):
        (home / "recipes" / name).write_text("name: x\n")
    monkeypatch.chdir(home)  # the screen offers ./recipes/*.yaml, the quickstart first
    assert snap_compare(WorkbenchApp(home), press=["n"])


def test_chat_arena_with_answers(home: Path, snap_compare) -> None:  # noqa: ANN001
    from workbench.chat.stream import AnswerResult
    from workbench.tui.screens.chat import Answer, ChatScreen

    async def answered(pilot) -> None:  # noqa: ANN001
        """Two answers as the model processes would stream them (layout only; test_tui runs real ones)."""
        await pilot.press("enter", "a")
        screen = pilot.app.screen
        assert isinstance(screen, ChatScreen)
        panels = [Answer(candidate) for candidate in screen.found[1:3]]
        await screen.query_one("#answers").mount_all(panels)
        screen.fit_answers()
        done = AnswerResult(tokens=2, load_s=0.4, ttft_s=0.1, tok_s=50.0)
        events = [{"loaded": 0.4}, {"text": "42 [/] [b]as is[/b]"}, {"done": done}]  # text, not markup
        for event in events:
            panels[0].show(event)
        panels[1].show({"error": "the model process died: out of memory"})
        await pilot.pause()

    assert snap_compare(WorkbenchApp(home), run_before=answered)


def test_runs_in_monochrome(home: Path, snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("NO_COLOR", "1")  # read (and removed) when the app is made
    app = WorkbenchApp(home)
    assert app.no_color
    assert snap_compare(app, press=["down", "space"])


def test_compare_chart_in_monochrome(home: Path, snap_compare, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("NO_COLOR", "1")
    assert snap_compare(WorkbenchApp(home), press=["v", "4"])  # the CPU chart (3, KLD/size, is hidden: no KLDs)

"""Chat arena: one prompt answered by the chosen variants of a run, side by side, each with its speed.
Answers come from `workbench.pipeline.candidates` model processes, one variant at a time (so each gets the machine to
itself and the tok/s compare); the app itself never loads a model."""

from __future__ import annotations

import contextlib
import threading

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import HorizontalScroll, Vertical, VerticalScroll
from textual.widgets import Footer, Header, Input, SelectionList, Static
from textual.worker import get_current_worker

from workbench import workers
from workbench.core import formats
from workbench.core.errors import RunError
from workbench.pipeline import candidates as chat
from workbench.tui.screens import AppScreen
from workbench.tui.text import plain

MIN_WIDTH = 26


class Answer(Vertical):
    """One variant's answer: its label and speed on the border, the details under the text."""

    def __init__(self, candidate: chat.Candidate) -> None:
        super().__init__(classes="answer")
        self.border_title = plain(candidate.label)
        self.border_subtitle = "waiting"
        self.text = ""

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(classes="answer-text", markup=False)
        yield Static(classes="answer-stats", markup=False)

    def stop(self) -> None:
        if self.border_subtitle in ("waiting", "generating"):
            self.border_subtitle = "stopped"

    def show(self, event: chat.Event) -> None:
        if self.border_subtitle == "stopped":
            return  # an event already on its way when the answer was stopped
        body = self.query_one(".answer-text", Static)
        if "loaded" in event:
            self.border_subtitle = "generating"
        elif "text" in event:
            self.text += event["text"]
            body.update(plain(self.text))
        elif "done" in event:
            result = event["done"]
            self.border_subtitle = f"{result.tok_s:.1f} tok/s" if result.tok_s else "done"
            self.query_one(".answer-stats", Static).update(chat.stats_line(result))
        elif "error" in event:
            self.border_subtitle = "FAILED"
            self.query_one(".answer-stats", Static).update(plain(f"FAILED: {event['error']}"))


class ChatScreen(AppScreen):
    DEFAULT_CSS = """
    #chat-info { height: auto; padding: 0 1; }
    #variants { height: auto; max-height: 6; }
    #answers { height: 1fr; }
    .answer { border: round $accent; padding: 0 1; }
    .answer-stats { height: auto; color: $text-muted; }
    """
    BINDINGS = [
        Binding("escape", "leave", "Back"),
        Binding("f2", "stop", "Stop answering", priority=True),
    ]

    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.found: list[chat.Candidate] = []
        self.system_prompt: str | None = None
        self.running: workers.Running | None = None  # the model process answering now
        self.stop_lock = threading.Lock()  # between the answering thread starting one and `stop` killing it

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="chat-info", markup=False)
        yield SelectionList[int](id="variants")
        yield HorizontalScroll(id="answers")
        yield Input(placeholder="Ask the chosen variants (enter)", id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        self.title = f"workbench · chat · {self.run_id}"
        info = self.query_one("#chat-info", Static)
        try:
            self.found, self.system_prompt = chat.for_run(self.workbench.store, self.run_id)
            self.found += chat.served(self.workbench.store, self.run_id)  # its running servers, over HTTP
        except RunError as exc:
            info.update(str(exc))
            return
        choices = self.query_one("#variants", SelectionList)
        for index, candidate in enumerate(self.found):
            # a format that loads in a second (llama.cpp's) and the merged model are asked by default
            spec = formats.FORMATS.get(candidate.format)  # no plugin loading here: the TUI stays light
            chosen = bool(spec and spec.loads_fast) or candidate.label == "merged"
            choices.add_option((plain(f"{candidate.label} ({candidate.format})"), index, chosen))
        if self.found:
            choices.highlighted = 0  # so `space` works as soon as the list has focus
        system = f"system: {self.system_prompt!r}" if self.system_prompt else "no system prompt"
        what = f"{len(self.found)} variants (space picks)" if self.found else "no finished variants yet"
        info.update(f"{what} · greedy, ≤{chat.MAX_TOKENS} tokens · {system}")
        self.query_one("#prompt", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        prompt = event.value.strip()
        chosen = [self.found[i] for i in self.query_one("#variants", SelectionList).selected]
        if not prompt:
            return
        if not chosen:
            self.notify("pick at least one variant (space in the list)", severity="warning")
            return
        self.action_stop()  # a new question replaces the one being answered
        answers = self.query_one("#answers", HorizontalScroll)
        answers.remove_children()
        panels = [Answer(candidate) for candidate in chosen]
        answers.mount_all(panels)
        self.fit_answers()
        self.ask_all(prompt, chosen, panels)

    def fit_answers(self) -> None:
        """Share the width; below MIN_WIDTH columns each, scroll sideways instead (CSS `fr` widths
        would give each panel the whole width once they overflow)."""
        answers = self.query_one("#answers", HorizontalScroll)
        panels = list(answers.query(Answer))
        if panels:
            width = max(MIN_WIDTH, answers.size.width // len(panels))
            for panel in panels:
                panel.styles.width = width

    def on_resize(self) -> None:
        self.fit_answers()

    @work(thread=True, exclusive=True, group="arena")
    def ask_all(self, prompt: str, chosen: list[chat.Candidate], panels: list[Answer]) -> None:
        conversation = chat.messages(prompt, self.system_prompt)
        worker = get_current_worker()

        def started(running: workers.Running) -> None:
            with self.stop_lock:
                if worker.is_cancelled:  # stopped while this one was starting
                    running.stop()
                else:
                    self.running = running

        for candidate, panel in zip(chosen, panels, strict=True):
            if worker.is_cancelled:
                return
            with contextlib.closing(chat.ask(candidate, conversation, started=started)) as events:
                for event in events:
                    if worker.is_cancelled:
                        return  # closing ask() stops its model process
                    self.app.call_from_thread(panel.show, event)

    def action_stop(self) -> None:
        with self.stop_lock:
            self.workers.cancel_group(self, "arena")
            if self.running is not None:
                self.running.stop()
        for panel in self.query(Answer):
            panel.stop()

    def action_leave(self) -> None:
        self.app.pop_screen()

    def on_unmount(self) -> None:
        self.action_stop()  # leaving (or quitting) stops the model process too

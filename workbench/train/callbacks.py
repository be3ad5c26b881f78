"""Trainer callbacks: metrics into the run store, and a clean stop on Ctrl-C / SIGTERM."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from workbench.core.records import TrainLog


class Recorder(Protocol):
    """Where training metrics go (a stage's context: its `event` lands in the run store, `say` in its log)."""

    def event(self, kind: str, **data: Any) -> None: ...

    def say(self, message: str) -> None: ...


class StoreCallback(TrainerCallback):
    """Writes loss, learning rate, grad norm, tokens/s, ETA and the objective's own metrics to the run store
    at every log."""

    def __init__(self, ctx: Recorder, total_steps: int):
        self.ctx = ctx
        self.total_steps = total_steps
        self.last_loss: float | None = None
        self._start: float | None = None
        self._start_step = 0
        self._start_tokens = 0.0
        self._tokens = 0.0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._start = time.perf_counter()
        self._start_step = state.global_step
        self._start_tokens = float(getattr(state, "num_input_tokens_seen", 0) or 0)

    def tokens_per_second(self) -> float | None:
        if self._start is None or self._tokens <= self._start_tokens:
            return None
        return round((self._tokens - self._start_tokens) / (time.perf_counter() - self._start), 1)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        if "loss" not in logs or self._start is None or not state.is_world_process_zero:
            return
        self.last_loss = float(logs["loss"])
        self._tokens = float(logs.get("num_tokens", self._tokens))
        elapsed = time.perf_counter() - self._start
        done = state.global_step - self._start_step
        per_step = elapsed / done if done else None
        log = TrainLog(
            step=state.global_step,
            total_steps=self.total_steps,
            epoch=logs.get("epoch", state.epoch),
            loss=self.last_loss,
            learning_rate=logs.get("learning_rate"),
            grad_norm=logs.get("grad_norm"),
            tokens_per_s=self.tokens_per_second(),
            eta_s=round(per_step * (self.total_steps - state.global_step), 1) if per_step else None,
            metrics=objective_metrics(logs),
        )
        self.ctx.event("train_log", **log.to_dict())


COMMON_LOGS = frozenset({"loss", "epoch", "learning_rate", "grad_norm", "num_tokens"})


def objective_metrics(logs: dict[str, Any]) -> dict[str, float]:
    """What an objective logs besides the loss: DPO's rewards/margins and rewards/accuracies, online RL's
    reward and kl, a reward model's accuracy and margin."""
    return {
        key: float(value)
        for key, value in logs.items()
        if key not in COMMON_LOGS and isinstance(value, int | float) and not isinstance(value, bool)
    }


class InterruptCallback(TrainerCallback):
    """When an interrupt is requested, save a checkpoint after the current step and stop. On several
    processes the request is a file (`stop_file`, written by the stage's process) and the ranks agree at
    every step, so all of them checkpoint the same step."""

    def __init__(self, stop_file: Path | None = None) -> None:
        self.requested = False
        self.stop_file = stop_file

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> Any:
        if self.stop_file is not None:
            from workbench.train.distributed import any_rank

            self.requested = any_rank(self.requested or self.stop_file.exists())
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
        return control


@contextmanager
def catch_interrupts(callback: InterruptCallback) -> Iterator[None]:
    """SIGINT / SIGTERM ask the trainer to checkpoint and stop; a second SIGINT stops at once."""

    def request(signum: int, frame: Any) -> None:
        if callback.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        callback.requested = True
        print("\nstopping after this step; the checkpoint lets a re-run resume (Ctrl-C again to abort)", flush=True)

    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread
        return
    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class QATSwitch(TrainerCallback):
    """Switches quantization-aware training's rounding on once training reaches `start` optimizer steps
    (at once when it is 0, or when a resumed run is already past it)."""

    def __init__(self, ctx: Recorder, model: Any, start: int, on_switch: Callable[[int], None] | None = None):
        self.ctx = ctx
        self.model = model  # workbench.qat.modules.QATModel
        self.start = start
        self.on_switch = on_switch  # called before the rounding goes on, with the step (a teacher's snapshot)

    def _check(self, state: Any) -> None:
        if not self.model.enabled and state.global_step >= self.start:
            if self.on_switch is not None:
                self.on_switch(state.global_step)
            self.model.switch_on()
            self.ctx.event("qat_on", step=state.global_step, target=self.model.target)
            self.ctx.say(f"step {state.global_step}: training on the {self.model.target} rounding from here")

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._check(state)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._check(state)

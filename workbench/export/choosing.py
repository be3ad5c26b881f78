"""The export's measured quantization choices, on the rows of the training split the importance matrix did not
see (`export.measure_rows`): whether each type is better with the task importance matrix or without one
(`export.imatrix: auto`), and the per-tensor recipe searched under each budget of `export.search`. Both run
their trials in one worker each (`workbench.export.trials`), logged in the run's cache so a stopped export
resumes them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workbench.core.gguf_types import LADDER, Budget
from workbench.core.recipe import SearchSection
from workbench.eval.fidelity import answer_starts, fidelity_sequences
from workbench.export import gguf, imatrix, search, trials
from workbench.export.making import ExportContext, ExportFailed


@dataclass(frozen=True)
class Conversations:
    """The training conversations choices are measured on, as token ids."""

    sequences: list[list[int]]
    starts: list[int]


class Measuring:
    """Trials against one f16 GGUF, on the export's measuring conversations (read once)."""

    def __init__(self, ctx: ExportContext, model: Path):
        self.ctx, self.model = ctx, model
        self._conversations: Conversations | None = None
        self._log: Path | None = None

    @property
    def conversations(self) -> Conversations:
        if self._conversations is None:
            tokenizer = self.ctx.inputs.tokenizer
            _, rows = imatrix.split_training(self.ctx.inputs.data, self.ctx.recipe.export.measure_rows)
            if not rows:
                raise ExportFailed("no training rows to measure quantization choices on (the split is too small)")
            sequences = fidelity_sequences(rows, tokenizer, len(rows))
            self._conversations = Conversations(sequences, answer_starts(rows, tokenizer, sequences))
        return self._conversations

    def run(self, batch: list[trials.Trial], what: str) -> trials.TrialsResult:
        found = self.conversations
        if self._log is None:
            self._log = trials.log_path(self.ctx.cache, imatrix.file_sha256(self.model), found.sequences)
        job = trials.TrialsJob(self.model, batch, found.sequences, found.starts, self._log)
        self.ctx.say(f"{what}: {len(batch)} trials on {len(found.sequences)} training conversations")
        return trials.run(job, log=self.ctx.log_path(what.replace(" ", "-")), timeout=self.ctx.recipe.export.timeout_s)


def choose_imatrix(measuring: Measuring, types: list[str], matrix: Path) -> dict[str, dict[str, Any]]:
    """For each type, its file without an importance matrix and with the task one, measured: the choice
    (`chosen`: none or task, whichever has the lower KLD over the conversations) and both measurements."""
    batch = []
    for gguf_type in types:
        ftype = LADDER[gguf_type].ftype
        batch += [trials.Trial(f"{gguf_type} none", ftype), trials.Trial(f"{gguf_type} task", ftype, matrix)]
    result = measuring.run(batch, "imatrix choice")
    choices = {}
    for number, gguf_type in enumerate(types):
        none, task = result.measured[2 * number : 2 * number + 2]
        choices[gguf_type] = {
            "chosen": "task" if task.kld < none.kld else "none",
            "none": asdict(none),
            "task": asdict(task),
            "conversations": len(measuring.conversations.sequences),
        }
    return choices


@dataclass
class Sensitivities:
    """Each group's measured damage in each type it fits (one search, several budgets)."""

    groups: list[search.Group]
    options: search.Options
    baseline: trials.Measured
    trials: int
    forwards: int
    seconds: float


def measure_sensitivities(measuring: Measuring, section: SearchSection, matrix: Path | None) -> Sensitivities:
    all_groups = search.groups(gguf.tensors(measuring.model), section.groups)
    baseline, by_choice = search.sensitivity_trials(all_groups, section.types, matrix)
    result = measuring.run([baseline, *by_choice.values()], "search")
    measured = dict(zip(by_choice, result.measured[1:], strict=True))
    options = search.Options.measured(all_groups, section.types, result.measured[0], measured)
    seconds = sum(m.seconds for m in result.measured)
    return Sensitivities(all_groups, options, result.measured[0], len(by_choice) + 1, result.forwards, seconds)


@dataclass(frozen=True)
class Planned:
    """A searched recipe under one budget, before llama-quantize makes it."""

    budget: Budget
    limit_bytes: int | None  # the file may not be larger (size budgets)
    capacity: int  # bytes the searched groups may take
    plan: dict[str, str]  # group -> ggml type
    predicted_kld: float
    ftype: str  # the file type the file is labelled with

    def record(self, sensitivities: Sensitivities) -> dict[str, Any]:
        return {
            "budget": self.budget.label,
            "limit_bytes": self.limit_bytes,
            "capacity_bytes": self.capacity,
            "plan": self.plan,
            "compact": search.compact(self.plan),
            "predicted_kld": self.predicted_kld,
            "baseline_kld": sensitivities.baseline.kld,
            "trials": sensitivities.trials,
            "forwards": sensitivities.forwards,
            "trial_seconds": round(sensitivities.seconds, 1),
        }


def budget_file(ctx: ExportContext, source: Path, budget: Budget, matrix: Path | None) -> Path:
    """llama-quantize's own file of the budget's type, made in the work folder to be measured (with the
    importance matrix only where the type needs one: it changes no size)."""
    assert budget.same_as is not None
    stock = ctx.work / f"budget-{budget.label}.gguf"
    if not stock.is_file():
        needed = matrix if LADDER[budget.same_as].needs_imatrix else None
        made = gguf.quantize(source, stock, budget.same_as, imatrix=needed, log=ctx.log_path(stock.name))
        ctx.made(made, stock)
    return stock


def plan_budget(source: Path, budget: Budget, sensitivities: Sensitivities, stock_size: int | None) -> Planned:
    """The allocation under one budget; `stock_size`: the size of llama-quantize's own file of the budget's
    type (a type's budget)."""
    limit = stock_size if budget.same_as else int(budget.mib * 2**20) if budget.mib is not None else None
    f16 = gguf.tensors(source)
    capacity = search.capacity(budget, limit, f16, source.stat().st_size, sensitivities.groups)
    plan = search.allocate(sensitivities.options, capacity)
    weights = sum(group.weights for group in sensitivities.groups)
    bits = sum(g.bytes(plan[g.name]) for g in sensitivities.groups) * 8 / weights
    ftype = budget.same_as or min(
        LADDER, key=lambda name: abs(LADDER[name].bits - bits) + 100 * LADDER[name].needs_imatrix
    )
    predicted = search.predicted_kld(sensitivities.options, plan, sensitivities.baseline.kld)
    return Planned(budget, limit, capacity, plan, predicted, ftype)


def check_searched(path: Path, planned: Planned, all_groups: list[search.Group]) -> dict[str, Any]:
    """What the file holds against the plan: each tensor's type as planned (else llama-quantize fell back),
    and the budget kept. Raises when the budget is exceeded: a file over its budget is never shipped."""
    held = {tensor.name: tensor.type.lower() for tensor in gguf.tensors(path)}
    different = [
        f"{tensor.name}: {held.get(tensor.name)} (planned {planned.plan[group.name]})"
        for group in all_groups
        for tensor in group.tensors
        if held.get(tensor.name) != planned.plan[group.name]
    ]
    size = path.stat().st_size
    grouped = sum(search.tensor_bytes(t.count, held[t.name]) for g in all_groups for t in g.tensors if t.name in held)
    if planned.limit_bytes is not None and size > planned.limit_bytes:
        raise ExportFailed(f"{path.name} is {size} bytes, over its budget of {planned.limit_bytes}")
    if planned.budget.bpw is not None and grouped > planned.capacity:
        raise ExportFailed(f"{path.name}: its searched weights take {grouped} bytes, over {planned.capacity}")
    return {"size": size, "searched_bytes": grouped, "not_as_planned": different}

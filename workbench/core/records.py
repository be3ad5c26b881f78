"""What the run store keeps, as records: the pipeline writes them, the report and the TUI read them. A
stage's status is a `StageRecord`, a servable model a `Variant`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Artifact:
    """A file or folder a stage made, for `workbench show` and the Run screen."""

    name: str
    kind: str  # adapter, model, gguf, eval, bench, report, ...
    path: str  # relative to the stage's folder until the runner makes it absolute
    size: int
    meta: dict[str, Any] = field(default_factory=dict)
    stage: str = ""  # filled in by the store


@dataclass(frozen=True)
class Metric:
    """One evaluation number: a task's metric for a model, or a fidelity measure (task "fidelity")."""

    model: str
    role: str  # base | reference | variant
    task: str
    metric: str
    value: float | None
    stderr: float | None = None
    higher_is_better: bool | None = None  # lm-eval's own word for the metric; None: not said (fidelity, old runs)


@dataclass
class ItemScores:
    """One model's per-item values of one task metric (lm-eval's per-sample numbers), by item id: what
    paired comparisons between models of a run are made of."""

    model: str
    task: str
    metric: str
    values: dict[int, float]


@dataclass
class Stat:
    """A timed quantity over the repetitions."""

    median: float
    min: float
    max: float
    samples: list[float] = field(default_factory=list)


STATS = ("pp_tps", "tg_tps", "ttft_ms")


@dataclass
class BenchResult:
    """One measurement of one variant on one device through one backend (or why there is none)."""

    variant: str
    device: str  # cpu | cuda
    backend: str  # llama.cpp | torch | vllm
    status: str = "done"  # done | failed | skipped
    format: str | None = None
    threads: int | None = None
    prompt_tokens: int | None = None
    gen_tokens: int | None = None
    repetitions: int | None = None
    warmup: int | None = None
    pp_tps: Stat | None = None  # prompt processing, tokens/s
    tg_tps: Stat | None = None  # generation, tokens/s
    ttft_ms: Stat | None = None  # time to first token
    peak_rss_mb: float | None = None
    peak_vram_mb: float | None = None
    concurrency: dict[str, dict[str, Any]] | None = None  # clients -> a closed-loop level (serve.load.Level)
    seconds: float | None = None
    error: str | None = None
    rates: dict[str, dict[str, Any]] | None = None  # requests/s offered -> an open-loop level (serve.load.Level)
    slo: dict[str, float] | None = None  # the limits goodput was counted against (bench.serve.slo)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else a backend reports (e.g. dtype)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        for key in STATS:
            if isinstance(values.get(key), dict):
                values[key] = Stat(**values[key])
        return cls(**values, extra={key: value for key, value in data.items() if key not in known})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {**{key: value for key, value in data.items() if key != "extra"}, **data["extra"]}


@dataclass
class Server:
    """A model server the workbench started for one variant of a run (an OpenAI-compatible endpoint)."""

    id: str  # <run>-<n>
    run_id: str
    variant: str
    backend: str  # llama.cpp | transformers | vllm
    host: str
    port: int
    model: str  # the model name its API answers to
    pid: int
    pid_started: float | None
    started: float
    log: str
    api_key: str | None = None
    stopped: float | None = None
    status: str = "running"  # running | stopped; a server whose process is gone reads stopped

    @property
    def url(self) -> str:
        return api_url(self.host, self.port)

    @property
    def local_url(self) -> str:
        """Where this machine reaches it (a wildcard bind answers on loopback)."""
        return api_url({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host), self.port)


def api_url(host: str, port: int) -> str:
    """An OpenAI-compatible server's base URL."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


@dataclass
class Variant:
    name: str  # e.g. SmolLM2-135M-Instruct-quickstart-Q4_K_M.gguf
    format: str
    path: str
    bits: float
    parent: str | None = None  # the variant it was made from
    size: int = 0
    quantizer: str | None = None  # e.g. llama.cpp
    quantizer_version: str | None = None
    seconds: float | None = None
    peak_mem_mb: float | None = None
    status: str = "done"  # done | failed
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def is_reference(self) -> bool:
        """The merged model every variant is compared with."""
        return bool(self.meta.get("reference"))


def variant_name(base: str, run: str, suffix: str = "") -> str:
    """The usual hub naming: <Base>-<run>[-<QUANT>]."""
    return f"{base}-{run}{'-' + suffix if suffix else ''}"


@dataclass
class StageRecord:
    name: str
    status: str
    cache_key: str | None
    started: float | None
    finished: float | None
    error: str | None

    @property
    def seconds(self) -> float | None:
        return self.finished - self.started if self.started and self.finished else None


@dataclass(frozen=True)
class RunRecord:
    """A run as the store keeps it. `status` is what its worker last wrote (`Store.live_status` reads a dead
    worker's `running` as `crashed`)."""

    id: str
    name: str
    recipe_path: str | None
    # the recipe it was started with, as stored (JSON): `Store.recipe(run)` reads it, a broken one a StoreError
    # naming the run; read where it is used, so that one broken run does not hide the others from a listing
    recipe_json: str
    status: str
    created: float
    updated: float
    pid: int | None
    pid_started: float | None = None  # the worker's start time (stores from version 2 on)


@dataclass(frozen=True)
class TrainLog:
    """One training log (event `train_log`): what the training callbacks write at each Trainer log, what
    `workbench show` and the TUI follow. Stored as the event's JSON (`to_dict`); keys this version does not
    know are kept in `extra`."""

    step: int
    total_steps: int
    loss: float
    epoch: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    # the objective's own numbers: DPO's rewards/margins, GRPO's reward and kl, a reward model's accuracy
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    stage: str = ""  # the event's, filled in by the store
    id: int = 0  # the event's id: later logs have larger ones

    STORED = ("step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "eta_s", "metrics")

    def to_dict(self) -> dict[str, Any]:
        """The event's JSON, as the store keeps it."""
        return {**{key: getattr(self, key) for key in self.STORED}, **self.extra}

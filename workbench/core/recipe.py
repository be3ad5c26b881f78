"""Recipe schema (pydantic v2), loading, `--set` overrides and readable validation errors."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from workbench.core import formats, gguf_types, yamlfile
from workbench.core.errors import InputError
from workbench.core.paths import NAME_PATTERN, NAME_RULE, check_name

DataFormat = Literal[
    "auto", "messages", "sharegpt", "alpaca", "qa", "prompt_completion", "preference", "unpaired", "text"
]


class Section(BaseModel):
    # inf and nan (YAML's .inf, .nan, 1e309) are no setting's value; they overflowed where counts are made
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


READ_LIMITS = {"max_file_mb", "max_rows"}  # they refuse a file, never change the rows read: not in cache keys


class RowsSection(Section):
    """A data file and how its rows are read, checked and split."""

    path: str = Field(description="JSON, JSONL, CSV or Parquet file, relative to the recipe")
    format: DataFormat = Field(
        default="auto", description="how rows are read (docs: data formats); auto: detected from the columns"
    )
    encoding: str = Field(
        default="utf-8", description="text encoding of JSON / JSONL / CSV files (a byte-order mark is always read)"
    )
    system_prompt: str | None = Field(
        default=None, description="added to rows that have no system message of their own"
    )
    held_out: float = Field(default=0.1, ge=0, description="fraction (< 1) or count (>= 1) of rows kept for evaluation")
    split_seed: int = Field(default=0, description="seed of the train / held-out split (saved with the run)")
    max_bad_rows: int = Field(default=0, ge=0, description="bad rows tolerated before refusing")
    max_length: int = Field(default=1024, gt=0, description="longest row in tokens; longer rows are bad")
    max_file_mb: int = Field(default=1024, gt=0, description="largest data file read, in MiB (Parquet: as decoded)")
    max_rows: int = Field(default=3_000_000, gt=0, description="most rows read from the file")


class DataSection(RowsSection):
    """The supervised training data: a data file, how its rows are read, split and trained on."""

    loss_on: Literal["responses", "all"] = Field(
        default="responses", description="responses: the loss on the assistant turns only (prompts masked); all"
    )
    packing: bool = Field(
        default=False, description="pack examples into shared rows (TRL best-fit, padding-free; pays on GPUs)"
    )


class LoraSection(Section):
    """The LoRA adapter (peft): its rank, scale, which layers it adapts and how it starts."""

    r: int = Field(default=16, gt=0, description="rank of the adapter matrices")
    alpha: int = Field(default=32, gt=0, description="scale: the update is multiplied by alpha / r")
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout on the adapter's input")
    targets: str | list[str] = Field(
        default="all-linear", description="layers adapted: all-linear, or a list of module names (q_proj, ...)"
    )
    dora: bool = Field(default=False, description="DoRA: the update split into magnitude and direction")
    rslora: bool = Field(default=False, description="rank-stabilised scale: alpha / sqrt(r) instead of alpha / r")
    init: Literal["default", "pissa", "loftq"] = Field(
        default="default",
        description="default: B zero, A random; pissa: from the principal singular vectors (saved as plain LoRA);"
        " loftq: against the nf4 weights, for QLoRA",
    )


QATTarget = Literal["q4_0", "q8_0", "q4_k_m", "q5_k_m", "q6_k"]


class DistillSection(Section):
    """Distillation toward the 16-bit fine-tune while the rounded model trains: the loss is the task's plus
    weight × KL(teacher ‖ student) on the chosen tokens."""

    teacher: Literal["supervised"] = Field(
        default="supervised",
        description="supervised: the run's own adapter as it is when the rounding is switched on (the finished"
        " supervised adapter with qat.steps, else the one after start_after_steps), frozen and computed without"
        " the rounding",
    )
    weight: float = Field(default=1.0, gt=0, description="the KL term's weight beside the task loss")
    temperature: float = Field(default=1.0, gt=0, description="softens both distributions (the KL is scaled by T²)")
    tokens: Literal["answers", "all"] = Field(
        default="answers", description="answers: the tokens the task loss trains on; all: every token of the rows"
    )


class QATSection(Section):
    """Quantization-aware fine-tuning: train on the rounding of the GGUF type the model will be served as."""

    target: QATTarget | None = Field(
        default=None,
        description="GGUF type to train for: q4_0, q8_0 (every weight in it) or the mixture llama-quantize makes"
        " of this model for q4_k_m, q5_k_m, q6_k (each weight on its own type's grid); none: a plain fine-tune",
    )
    start_after_steps: int = Field(default=0, ge=0, description="optimizer steps before the rounding is switched on")
    steps: int | None = Field(
        default=None,
        ge=1,
        description="optimizer steps on the rounding after the supervised training has finished all of its own,"
        " continuing from its adapter with a learning-rate schedule of their own: the supervised part is the plain"
        " twin's (target none) step for step, so the twin is the teacher; none: the rounding goes on at"
        " start_after_steps, within train.max_steps",
    )
    learning_rate: float | None = Field(
        default=None, gt=0, description="peak learning rate of the qat.steps (none: train.learning_rate)"
    )
    embeddings: bool = Field(default=True, description="token embeddings on the grid too (off: kept f16 in the file)")
    output: bool = Field(
        default=True, description="a separate output layer on the grid too (off: kept f16); tied ones follow embeddings"
    )
    distill: DistillSection | None = Field(
        default=None,
        description="distil toward the 16-bit fine-tune while training on the rounding (ignored without a target:"
        " a plain twin); none: the task loss alone",
    )

    @field_validator("target", mode="before")
    @classmethod
    def _none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.lower() == "none" else value


MAX_EPOCHS = 10_000


class OptimizeSection(Section):
    """How long and how a training stage optimizes (supervised, preference and reward training alike)."""

    epochs: float | Literal["auto"] = Field(
        default="auto",
        description="passes over the training rows; auto: ~15 at 100 rows, ~10 at 1 000, ~2 at 10 000 (log-linear)",
    )
    max_steps: int | None = Field(default=None, gt=0, description="overrides epochs when set")
    batch_size: int = Field(default=8, gt=0, description="rows per optimizer step (over all processes)")
    grad_accum: int = Field(default=1, gt=0, description="steps whose gradients are summed before an update")
    learning_rate: float = Field(default=2e-4, gt=0, description="peak learning rate")
    lr_scheduler: str = Field(default="cosine", description="a transformers scheduler name (cosine, linear, ...)")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="share of the steps spent warming up")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay")
    checkpoint_every: int = Field(default=50, gt=0, description="steps between checkpoints")
    seed: int = Field(default=0, description="seed of the adapter's start and the row order: a rerun trains the same")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when present, else CPU")
    gradient_checkpointing: bool = Field(
        default=False, description="recompute activations in the backward pass: less memory, more time"
    )
    lora: LoraSection = LoraSection()

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, value: Any) -> Any:
        if isinstance(value, float) and not 0 < value <= MAX_EPOCHS:  # 1e308 epochs overflowed counting steps
            raise ValueError(f"must be above 0 and at most {MAX_EPOCHS} (or auto)")
        return value


class FSDPSection(Section):
    """FSDP2 (torch's fully_shard) through accelerate: what accelerate's own config asks."""

    reshard_after_forward: bool = Field(
        default=True, description="free gathered weights after each forward (ZeRO-3-like); off: keep them (ZeRO-2-like)"
    )
    offload: bool = Field(default=False, description="keep parameters and optimizer state in CPU memory")
    auto_wrap: Literal["transformer", "size"] = Field(
        default="transformer", description="one shard unit per decoder layer, or per min_params parameters"
    )
    min_params: int = Field(default=100_000_000, gt=0, description="auto_wrap size: parameters per unit")
    layer_class: str | None = Field(
        default=None, description="auto_wrap transformer: the decoder layer class (default: the model's own)"
    )


class DeepSpeedSection(Section):
    """DeepSpeed ZeRO through accelerate and the Trainer's DeepSpeed integration."""

    stage: Literal[0, 1, 2, 3] = Field(
        default=2, description="ZeRO stage: 0 off, 1 shards optimizer state, 2 also gradients, 3 also parameters"
    )
    offload_optimizer: Literal["none", "cpu", "nvme"] = Field(
        default="none", description="where optimizer state lives between steps"
    )
    offload_params: Literal["none", "cpu", "nvme"] = Field(default="none", description="ZeRO stage 3 only")
    nvme_path: str | None = Field(default=None, description="folder for nvme offload")


class DistributedSection(Section):
    """Data-parallel training over several processes and machines, started by `accelerate launch` (torchrun
    underneath). `train.batch_size` stays the batch of one optimizer step over all processes, split evenly,
    so a recipe trains the same steps on one process or many."""

    processes: int | Literal["auto"] = Field(
        default=1, description="processes per machine; auto: one per visible GPU (one on a CPU)"
    )
    nodes: int = Field(default=1, gt=0, description="machines; each runs `workbench run … --node-rank K`")
    strategy: Literal["ddp", "fsdp", "deepspeed"] = Field(
        default="ddp", description="ddp (a full copy per process), fsdp (FSDP2 sharding), deepspeed (ZeRO)"
    )
    fsdp: FSDPSection = FSDPSection()
    deepspeed: DeepSpeedSection = DeepSpeedSection()
    port: int | None = Field(
        default=None,
        gt=0,
        lt=65536,
        description="rendezvous port of the first machine (default 29500; one machine: a free one)",
    )
    timeout_s: int = Field(
        default=600, gt=0, description="a collective (or the start) waiting longer than this fails the stage"
    )

    @field_validator("processes")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 (or auto)")
        return value

    @property
    def many(self) -> bool:
        """Whether the recipe asks for more than one process (auto decides on the machine)."""
        return self.processes != 1 or self.nodes > 1


class TrainSection(OptimizeSection):
    """The supervised fine-tune: the method, how long and how it optimizes, QAT and the processes it runs on."""

    method: Literal["lora", "qlora", "full"] = Field(
        default="lora", description="lora: an adapter on the 16-bit model; qlora: on the nf4 model; full: all weights"
    )
    qat: QATSection = QATSection()
    distributed: DistributedSection = DistributedSection()


Objective = Literal["dpo", "orpo", "kto", "grpo", "rloo"]
PAIRED: tuple[Objective, ...] = ("dpo", "orpo")  # trained on chosen / rejected pairs
ONLINE: tuple[Objective, ...] = ("grpo", "rloo")  # generate, score with rewards, learn
RewardName = Literal["exact_match", "reward_model"]


class TuneSection(OptimizeSection):
    """Preference tuning or online RL after the supervised fine-tune, starting from its result."""

    objective: Objective = Field(description="dpo, orpo, kto (preference rows); grpo, rloo (online RL)")
    data: RowsSection | None = Field(
        default=None,
        description="preference rows (dpo, orpo: prompt/chosen/rejected; kto: prompt/completion/label or pairs);"
        " online RL: prompts with reference answers, default the supervised split's training rows",
    )
    start: Literal["adapter", "merged"] = Field(
        default="adapter",
        description="adapter: the supervised adapter trains on, the reference is a frozen copy of it; merged: the"
        " supervised model is merged first and a new LoRA trains on it, the reference is the merged model",
    )
    beta: float = Field(
        default=0.1,
        ge=0,
        description="KL coefficient to the reference model (DPO/KTO beta, GRPO/RLOO KL penalty; ORPO: the"
        " odds-ratio weight)",
    )
    learning_rate: float = Field(default=5e-5, gt=0, description="peak learning rate")
    rewards: list[RewardName] = Field(
        default_factory=lambda: list[RewardName](["exact_match"]),
        description="online RL rewards: exact_match (answer equals the row's reference answer), reward_model"
        " (the recipe's reward_model)",
    )
    generations: int = Field(default=4, ge=2, description="online RL: answers sampled per prompt")
    max_completion_length: int = Field(default=32, gt=0, description="online RL: tokens per sampled answer")
    temperature: float = Field(default=1.0, gt=0, description="online RL: sampling temperature")


class RewardModelSection(OptimizeSection):
    """A reward model: the base model with a LoRA sequence-classification head, trained on preference pairs."""

    data: RowsSection | None = Field(default=None, description="preference pairs; default: tune.data")
    learning_rate: float = Field(default=1e-4, gt=0, description="peak learning rate")


MergeBase = Literal["original", "dequantized-nf4"]


class MergeSection(Section):
    """Folding the adapter into the base: the 16-bit model every export starts from."""

    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        default="float16", description="dtype the merged model is saved in"
    )
    base: Literal["auto", "original", "dequantized-nf4"] = Field(
        default="auto",
        description="what a QLoRA adapter is folded into: the original 16-bit weights or the nf4 weights it"
        " trained against, dequantized; auto: dequantized-nf4 for LoftQ and quantization-aware QLoRA",
    )


def _on_ladder(name: str) -> str:
    if name not in gguf_types.LADDER:
        why = gguf_types.NOT_ON_LADDER.get(name.upper())
        choices = ", ".join(gguf_types.LADDER)
        raise PydanticCustomError(
            "gguf_type",
            "{name} is not offered{why}; choose from {choices}",
            {"name": repr(name), "why": f" ({why})" if why else "", "choices": choices},
        )
    return name


# a llama.cpp file type (workbench.core.gguf_types.LADDER: read from gguf-py's constants)
GGUFType = Annotated[str, AfterValidator(_on_ladder)]
ImatrixSource = Literal["task", "generic", "none"]


def _tensor_type(name: str) -> str:
    if name not in gguf_types.SEARCH_TYPES:
        choices = ", ".join(gguf_types.SEARCH_TYPES)
        said = "{name} is not a ggml type a tensor can take here; choose from {choices}"
        raise PydanticCustomError("tensor_type", said, {"name": repr(name), "choices": choices})
    return name


def _budget(text: str) -> str:
    try:
        gguf_types.parse_budget(text)
    except ValueError as exc:
        raise PydanticCustomError("budget", str(exc)) from None
    return text


TensorType = Annotated[str, AfterValidator(_tensor_type)]  # a ggml type one tensor can be given: q4_k, iq4_nl
BudgetText = Annotated[str, AfterValidator(_budget)]  # a budget as a recipe writes it (gguf_types.parse_budget)


class SearchSection(Section):
    """A per-tensor recipe searched under a size budget: each tensor group's sensitivity measured (one group at
    a time in each candidate type, the rest in q8_0, KLD to the f16 file on training conversations the
    importance matrix did not see), types allocated under the budget to the least total KLD, and the file
    made by llama-quantize with those types (a --tensor-type-file) and the importance matrix."""

    budgets: list[BudgetText] = Field(
        default_factory=lambda: ["q4_k_m"],
        description="one searched file per budget: a file type (no larger than llama-quantize's file of that type,"
        " e.g. q4_k_m), a size (`95MiB`) or bits per weight over the quantized tensors (`3.5bpw`)",
    )
    types: list[TensorType] = Field(
        default_factory=lambda: list(gguf_types.DEFAULT_SEARCH_TYPES),
        description="ggml types a tensor group may take; a group whose rows do not fit a type's block never takes it",
    )
    groups: Literal["kind", "layer"] = Field(
        default="kind",
        description="kind: each kind of weight across all layers (attn_q, ffn_down, ... , token_embd, output);"
        " layer: each kind in each layer (many more trials)",
    )


DEFAULT_GGUF: tuple[str, ...] = ("f16", "q8_0", "q4_k_m")


class ExportSection(Section):
    """The exported variants (GGUF, nf4, GPTQ, AWQ, the adapter as a GGUF adapter) and their checks."""

    gguf: list[GGUFType] = Field(
        default_factory=lambda: list(DEFAULT_GGUF),
        description="llama.cpp file types to export (`llama-quantize`'s ladder, read from gguf-py: "
        + ", ".join(gguf_types.LADDER)
        + "); [] for none",
    )
    imatrix: Literal["auto", "task", "generic", "none"] = Field(
        default="auto",
        description="the importance matrix (`llama-imatrix` on the f16 file) the types that use one are quantized"
        " with: task (the training split rendered with the chat template, as training saw it; never a held-out"
        " row), generic (Python's documentation text in evals/general), none, or auto: each type with task or"
        " none, whichever is closer to the f16 file on training conversations the matrix did not see; f16,"
        " bf16 and q8_0 use none",
    )
    imatrix_compare: list[ImatrixSource] = Field(
        default_factory=list,
        description="also make each type that uses an importance matrix with these, as more variants (e.g. [none,"
        " generic]): what the calibration bought, side by side in the report",
    )
    imatrix_rows: int | None = Field(
        default=None,
        gt=0,
        description="at most this many training rows calibrate the task importance matrix; null: all",
    )
    measure_rows: int = Field(
        default=32,
        gt=0,
        description="training rows (at most a quarter of the split) kept out of the importance matrix to measure"
        " quantization choices on (imatrix auto, search); the held-out split is never used for choices",
    )
    search: SearchSection | None = Field(
        default=None, description="per-tensor types searched under a size budget; null: none"
    )
    adapter_gguf: list[GGUFType] = Field(
        default_factory=list,
        description="the LoRA adapter as a GGUF adapter (llama.cpp's convert_lora_to_gguf.py) served on the base"
        " model quantized to each of these types, next to the merged-then-quantized files; [] for none",
    )
    nf4: bool = Field(default=True, description="bitsandbytes nf4 checkpoint (double quantization)")
    gptq: bool = Field(default=True, description="GPTQ checkpoint with GPTQModel")
    awq: bool = Field(default=True, description="AWQ (GEMM) checkpoint with GPTQModel")
    awq_clip: bool = Field(
        default=False,
        description="AWQ's clipping search (AutoAWQ's apply_clip): ~12x AWQ's export time on a CPU (717 s vs 58 s)"
        " and a higher KLD (0.210 vs 0.139) on the default model (benchmarks/awq_settings.py)",
    )
    bits: Literal[4, 8] = Field(default=4, description="GPTQ / AWQ bits")
    group_size: int = Field(default=128, gt=0, description="GPTQ / AWQ group size; must divide the layer widths")
    desc_act: bool = Field(default=False, description="GPTQ act-order")
    calibration: Literal["task", "generic"] = Field(
        default="task",
        description="what GPTQ and AWQ calibrate on: task (training rows rendered through the chat template, as"
        " training saw them) or generic (Python's documentation text in evals/general)",
    )
    calibration_rows: int = Field(
        default=128, gt=0, description="training rows (or generic documents) used to calibrate GPTQ / AWQ"
    )
    smoke_prompts: int = Field(default=1, ge=0, description="held-out prompts each variant answers after export")
    parity_prompts: int = Field(default=8, ge=0, description="held-out conversations whose prompt tokens are compared")
    timeout_s: float | None = Field(
        default=7200, gt=0, description="seconds one exporter may run before it is stopped; null: no limit"
    )
    check_timeout_s: float | None = Field(
        default=900, gt=0, description="seconds one variant's parity and smoke check may run; null: no limit"
    )


class EvalSection(Section):
    """The same lm-evaluation-harness tasks for every model, and fidelity to the merged model."""

    tasks: list[str] = Field(
        default_factory=lambda: ["heldout", "general"],
        description="heldout (the held-out split), general (offline forgetting probe), tasks in evals/ or"
        " eval.include, or any lm-eval task name (those need internet for their datasets)",
    )
    metric: str = Field(default="exact_match", description="lm-eval metric for held-out chat rows")
    base: bool = Field(default=True, description="evaluate the base model too (gain and forgetting)")
    limit: int | None = Field(default=None, gt=0, description="at most this many documents per task")
    num_fewshot: int | None = Field(default=None, ge=0, description="examples in each prompt; default: the task's")
    seed: int = Field(default=1234, description="lm-eval's seeds (sampling, few-shot choice)")
    batch_size: int = Field(default=8, gt=0, description="hf backend batch size")
    max_length: int = Field(default=2048, gt=0, description="context for every backend (rolling windows too)")
    max_gen_tokens: int | None = Field(default=None, gt=0, description="default: twice the longest answer + 8")
    fidelity_rows: int = Field(default=64, ge=0, description="held-out rows for KLD / top-1 vs the merged model")
    include: list[str] = Field(default_factory=list, description="more folders of lm-eval task YAMLs")
    trust_task_code: bool = Field(
        default=False,
        description="let task folders run code (!function, unsafe_code, metric scripts); off: task files are data",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where torch-loaded models are evaluated; auto: CUDA when present"
    )
    bootstrap_iters: int = Field(default=1000, ge=0, description="lm-eval bootstrap for non-mean metrics")
    timeout_s: float | None = Field(
        default=7200, gt=0, description="seconds one model's evaluation may run before it is stopped; null: no limit"
    )


def _registered_format(name: str) -> str:
    if formats.find(name) is None:  # said as pydantic says a Literal's choices, plugin formats after ours
        known = [*formats.RECIPE_FORMATS, *(s.name for s in formats.specs() if s.name not in formats.RECIPE_FORMATS)]
        choices = ", ".join(repr(k) for k in known[:-1]) + f" or {known[-1]!r}"
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": choices})
    return name


Format = Annotated[str, AfterValidator(_registered_format)]  # a model format (workbench.core.formats)
FORMATS: tuple[str, ...] = formats.RECIPE_FORMATS
SERVED_FORMATS: tuple[str, ...] = formats.SERVED_FORMATS


class SloSection(Section):
    """The latency a served request must meet to count toward goodput (DistServe's and `vllm bench serve`'s
    definition): its time to first token and its time per output token after the first."""

    ttft_ms: float = Field(default=1000, gt=0, description="time to first token, at most (ms)")
    tpot_ms: float = Field(
        default=100, gt=0, description="time per output token after the first, at most (ms; 100 = 10 tok/s a user)"
    )
    attainment: float = Field(
        default=0.9, gt=0, le=1, description="share of a level's requests meeting both for the level to hold the SLO"
    )


class ServeLoadSection(Section):
    """Served load: each variant behind its real OpenAI-compatible server, held-out prompts streamed from
    clients on loopback — a closed-loop sweep of client counts and an open-loop sweep of request rates
    (Poisson arrivals), each level repeated; goodput at the SLO. Off unless `concurrency` lists levels."""

    concurrency: list[int] = Field(default_factory=list, description="client counts, e.g. [1, 4, 16]; [] for none")
    rates: list[float] | Literal["auto"] = Field(
        default_factory=list,
        description="open-loop request rates (requests/s); auto: 1/4 to 5/4 of the closed loop's peak; [] for none",
    )
    requests: int = Field(default=16, gt=0, description="requests per level (at least the level's client count)")
    repetitions: int = Field(default=3, ge=1, description="passes of each level (a 95% interval over them)")
    max_tokens: int = Field(default=64, gt=0, description="answer length limit per request")
    ignore_eos: bool = Field(
        default=True, description="answers run to max_tokens (llama.cpp, vLLM), so the sweeps measure decoding"
    )
    slo: SloSection = Field(default_factory=SloSection, description="the latency limits goodput counts")
    parity_prompts: int = Field(
        default=4, ge=0, description="held-out conversations each server answers first, held to `workbench chat`"
    )
    formats: list[Format] = Field(
        default_factory=lambda: list(SERVED_FORMATS),
        description="formats served (GGUF: llama.cpp; others: transformers/vLLM)",
    )
    time_limit_s: float = Field(default=300, gt=0, description="seconds one level may take before it stops sending")
    slots: int | None = Field(
        default=None,
        ge=1,
        description="conversations llama-server decodes together (its --parallel); default: the largest level",
    )

    @field_validator("concurrency")
    @classmethod
    def _levels(cls, levels: list[int]) -> list[int]:
        if any(level < 1 for level in levels):
            raise ValueError("each level is a count of clients, 1 or more")
        return levels

    @field_validator("rates")
    @classmethod
    def _rates(cls, rates: list[float] | str) -> list[float] | str:
        if not isinstance(rates, str) and any(rate <= 0 for rate in rates):
            raise ValueError("each rate is requests per second, above 0")
        return rates


class BenchSection(Section):
    """Speed and memory of every variant where it would serve: CPU, GPU and behind its server."""

    prompt_tokens: int = Field(default=512, gt=0, description="prompt processing length (llama-bench's pp512)")
    gen_tokens: int = Field(default=128, gt=0, description="generation length (llama-bench's tg128)")
    repetitions: int = Field(default=3, gt=0, description="timed repetitions; the median is reported")
    warmup: int = Field(default=1, ge=0, description="untimed runs first")
    max_gen_seconds: float | None = Field(
        default=10,
        gt=0,
        description="a timed generation stops after this many seconds (2 tokens at least) and"
        " tokens/s is taken over what it generated: AWQ decodes ~1 tok/s on a CPU without AVX-512; null: no limit",
    )
    threads: int | None = Field(default=None, gt=0, description="CPU threads; default: every usable core")
    cpu: list[Format] = Field(
        default_factory=lambda: list(FORMATS), description="formats measured on CPU (GGUF: llama.cpp; others: torch)"
    )
    gpu: list[Format] = Field(
        default_factory=lambda: list(FORMATS), description="formats measured on CUDA, when it is present"
    )
    vllm_concurrency: list[int] = Field(
        default_factory=lambda: [1, 8, 32], description="vLLM throughput runs (only when vLLM and CUDA are present)"
    )
    timeout_s: float | None = Field(
        default=1800, gt=0, description="seconds one measurement may run before it is stopped; null: no limit"
    )
    serve: ServeLoadSection = ServeLoadSection()


class ReportSection(Section):
    """The comparison and the recommendation per target: what a variant must keep to be recommended."""

    keep_percent: float = Field(
        default=98.0, gt=0, le=100, description="a recommended variant keeps at least this % of the merged task score"
    )
    keep_on: Literal["lower", "point"] = Field(
        default="lower",
        description="keep_percent applies to the 95% paired interval's lower bound of kept % (lower) or to the "
        "point estimate (point)",
    )
    max_kld: float | None = Field(
        default=0.2,
        gt=0,
        description="a variant whose mean next-token KLD to the merged model exceeds this is "
        "flagged and not recommended; null: no limit",
    )
    min_top1: float | None = Field(
        default=0.8,
        gt=0,
        le=1,
        description="... or whose top-1 agreement with the merged model is below this",
    )
    task: str | None = Field(default=None, description="the task score to judge by; default: the first eval task")
    max_ttft_ms: float | None = Field(
        default=None, gt=0, description="served load: the p95 time to first token a recommended level must keep"
    )


Tracker = Literal["tensorboard", "mlflow", "wandb"]


class TrackingSection(Section):
    """Experiment tracking teams already use: the trainers' curves and the report's comparison. Offline
    unless a server is named: TensorBoard files, an MLflow file store, W&B offline, all in <run>/tracking/."""

    report_to: list[Tracker] = Field(default_factory=list, description="tensorboard, mlflow, wandb (installed ones)")
    mlflow_uri: str | None = Field(default=None, description="an MLflow server; default: <run>/tracking/mlruns")
    experiment: str | None = Field(
        default=None, description="MLflow experiment / W&B project; default: the recipe's name"
    )
    wandb_mode: Literal["offline", "online"] = Field(default="offline", description="online sends to W&B's servers")

    @property
    def run_trackers(self) -> list[Tracker]:
        """The trackers that take the report as a run of its own (TensorBoard only draws curves)."""
        return [tracker for tracker in self.report_to if tracker != "tensorboard"]

    def mlflow_store(self, run_dir: Path) -> str:
        """The recipe's MLflow server, else a file store in <run>/tracking/mlruns (`mlflow ui --backend-store-uri`)."""
        return self.mlflow_uri or (run_dir / "tracking" / "mlruns").resolve().as_uri()


class Recipe(Section):
    """A recipe: the run's name, its base model and one section per stage."""

    name: str = Field(pattern=NAME_PATTERN, description=NAME_RULE)
    base_model: str = Field(description="registry name, local folder or hub id")
    data: DataSection
    train: TrainSection = TrainSection()
    reward_model: RewardModelSection | None = None
    tune: TuneSection | None = None
    merge: MergeSection = MergeSection()
    export: ExportSection = ExportSection()
    eval: EvalSection = EvalSection()
    bench: BenchSection = BenchSection()
    report: ReportSection = ReportSection()
    tracking: TrackingSection = TrackingSection()

    source: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        qat = self.train.qat
        if self.export.adapter_gguf and self.train.method == "full":
            raise ValueError("export.adapter_gguf: a full fine-tune has no adapter to convert")
        if self.export.adapter_gguf and self.train.lora.dora:
            raise ValueError("export.adapter_gguf: llama.cpp's adapter format has no DoRA; leave train.lora.dora off")
        if self.export.adapter_gguf and self.merge_base != "original":
            raise ValueError(
                "export.adapter_gguf: this adapter belongs to the dequantized nf4 base (merge.base"
                f" {self.merge_base}), not to the base model a GGUF adapter is applied to"
            )
        self._check_tuning()
        self._check_distributed()
        self._check_imatrix()
        if qat.target and qat.target not in self.export.gguf:
            raise ValueError(f"train.qat.target: {qat.target} is not exported; add it to export.gguf")
        if qat.target and qat.distill and self.train.method == "full":
            raise ValueError(
                "train.qat.distill: a full fine-tune would keep a second copy of every weight as its teacher;"
                " distillation is built for lora and qlora"
            )
        if qat.target and qat.steps and qat.start_after_steps:
            raise ValueError(
                "train.qat: steps (the rounding after the supervised training) and start_after_steps (the rounding"
                " within it) both say when the rounding goes on; set one of them"
            )
        if qat.learning_rate and not qat.steps:
            raise ValueError("train.qat.learning_rate: is the rate of qat.steps; set steps too")
        if qat.target and qat.distill and qat.start_after_steps == 0 and not qat.steps:
            raise ValueError(
                "train.qat.distill: teacher supervised is the adapter after some plain training; set qat.steps"
                " (after the supervised training) or start_after_steps above 0"
            )
        if qat.target and self.train.lora.dora and self.train.method != "full":
            raise ValueError("train.qat: DoRA is not supported with quantization-aware training")
        if qat.target and self.train.method == "qlora" and self.merge.base == "original":
            raise ValueError(
                "merge.base: original ships other weights than quantization-aware QLoRA trained on (the nf4"
                " ones); use dequantized-nf4 or auto"
            )
        return self

    def _check_distributed(self) -> None:
        train = self.train
        spread = train.distributed
        if isinstance(spread.processes, int) and train.batch_size % (spread.processes * spread.nodes):
            raise ValueError(
                f"train.batch_size: {train.batch_size} does not split evenly over {spread.processes * spread.nodes}"
                " processes (train.distributed.processes x nodes); it is the batch of one step over all of them"
            )
        if spread.strategy == "ddp":
            return
        if train.qat.target:
            raise ValueError(f"train.qat: quantization-aware training runs alone or with ddp, not {spread.strategy}")
        if train.lora.init != "default" and train.method != "full":
            raise ValueError(f"train.lora.init: {train.lora.init} needs the whole model in one process; use ddp")
        speed = spread.deepspeed
        if spread.strategy == "deepspeed" and speed.offload_params != "none" and speed.stage != 3:
            raise ValueError("train.distributed.deepspeed.offload_params: ZeRO offloads parameters at stage 3 only")
        if "nvme" in (speed.offload_optimizer, speed.offload_params) and not speed.nvme_path:
            raise ValueError("train.distributed.deepspeed.nvme_path: name the folder nvme offload writes to")

    def _check_imatrix(self) -> None:
        export = self.export
        needing = {"export.gguf": [t for t in export.gguf if gguf_types.LADDER[t].needs_imatrix]}
        if export.search and export.imatrix == "none":  # the search quantizes with the recipe's own matrix
            needing["export.search.types"] = [t for t in export.search.types if t in gguf_types.NEEDS_IMATRIX_TYPES]
            budgets = [gguf_types.parse_budget(b).same_as for b in export.search.budgets]
            needing["export.search.budgets"] = [t for t in budgets if t and gguf_types.LADDER[t].needs_imatrix]
        for where, types in needing.items():
            if types and "none" in (export.imatrix, *(export.imatrix_compare if where == "export.gguf" else ())):
                field = "export.imatrix" if export.imatrix == "none" else "export.imatrix_compare"
                raise ValueError(
                    f"{where}: {', '.join(types)} need{'s' if len(types) == 1 else ''} an importance matrix"
                    " (llama-quantize refuses them without one: their low-bit weights round badly unweighted);"
                    f" {field} asks for none. Use task or generic"
                )
        unmatrixed = [t for t in export.adapter_gguf if gguf_types.LADDER[t].needs_imatrix]
        if unmatrixed:
            raise ValueError(
                f"export.adapter_gguf: {', '.join(unmatrixed)} need{'s' if len(unmatrixed) == 1 else ''} an importance"
                " matrix, and the adapter's base model is quantized without one; choose a type that does not"
                " (q4_k_m, q8_0, ...)"
            )
        if export.imatrix in export.imatrix_compare or len(set(export.imatrix_compare)) < len(export.imatrix_compare):
            raise ValueError(
                f"export.imatrix_compare: {export.imatrix_compare} repeats a calibration (export.imatrix is"
                f" {export.imatrix}); list each other one once"
            )

    def _check_tuning(self) -> None:
        tune, reward = self.tune, self.reward_model
        if reward and not (reward.data or (tune and tune.data)):
            raise ValueError("reward_model.data: needs preference pairs (or tune.data to share)")
        if not tune:
            return
        if tune.objective not in ONLINE and tune.data is None:
            raise ValueError(f"tune.data: {tune.objective} trains on preference rows; name their file")
        if tune.objective in ONLINE and tune.batch_size * tune.grad_accum % tune.generations:
            raise ValueError(
                f"tune.batch_size x tune.grad_accum must be a multiple of tune.generations ({tune.generations}):"
                " each prompt's sampled answers are scored together"
            )
        if tune.objective in ONLINE and "reward_model" in tune.rewards and not reward:
            raise ValueError("tune.rewards: reward_model needs a reward_model section to train it")
        if self.train.method == "full":
            raise ValueError("tune: follows a LoRA fine-tune (train.method lora or qlora), not a full one")
        if self.train.qat.target:
            raise ValueError("tune: quantization-aware training applies to the supervised stage alone; drop train.qat")
        if tune.start == "merged" and self.export.adapter_gguf:
            raise ValueError(
                "export.adapter_gguf: with tune.start merged the result is two adapters; use tune.start adapter"
            )

    @property
    def merge_base(self) -> MergeBase:
        """What the adapter is folded into, `merge.base: auto` decided."""
        if self.merge.base != "auto":
            return self.merge.base
        nf4 = self.train.method == "qlora" and (self.train.lora.init == "loftq" or self.train.qat.target is not None)
        return "dequantized-nf4" if nf4 else "original"

    def data_files(self) -> dict[str, RowsSection]:
        """Every data file the recipe reads, by the field that names it."""
        files: dict[str, RowsSection] = {"data": self.data}
        if self.tune and self.tune.data:
            files["tune.data"] = self.tune.data
        if self.reward_model and self.reward_model.data:
            files["reward_model.data"] = self.reward_model.data
        return files

    @property
    def reward_rows(self) -> RowsSection | None:
        """The reward model's preference pairs (its own, else tune.data)."""
        if not self.reward_model:
            return None
        return self.reward_model.data or (self.tune.data if self.tune else None)

    @field_validator("base_model")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a model")
        return value

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        return check_name(value, "the run name")  # it names the run's folder in the runs home

    def resolve_path(self, relative: str) -> Path:
        """Paths in a recipe are relative to the recipe file (or the current folder)."""
        path = Path(relative).expanduser()
        if path.is_absolute() or self.source is None:
            return path
        beside = self.source.parent / path
        return beside if beside.exists() or not path.exists() else path


class RecipeError(InputError):
    """A recipe that cannot be used; `problems` lists one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def message(self) -> str:
        return self.report()

    def report(self) -> str:
        count = len(self.problems)
        lines = [f"{self.source}: {count} problem{'s' if count != 1 else ''}"]
        lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section a validation error points into (for "did you mean")."""
    current = model
    for part in loc:
        field = current.model_fields.get(part)
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            current = annotation
        else:
            break
    return list(current.model_fields)


def _describe(error: Mapping[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = ".".join(str(part) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        known = _fields_at(Recipe, loc[:-1])
        known = [name for name in known if name != "source"]
        guess = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{guess[0]}'?" if guess else f"; known keys: {', '.join(known)}"
        return f"{where}: unknown key{hint}"
    if error["type"] == "missing":
        return f"{where}: required field is missing"
    if error["type"] == "value_error" and not loc:  # a rule across sections: its message names the fields
        return str(error["ctx"]["error"])
    got = error.get("input")
    shown = "a mapping" if isinstance(got, dict) else f"a list of {len(got)}" if isinstance(got, list) else repr(got)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"{where}: {error['msg'].lower()} (got {shown})"


def parse_recipe(data: Any, source: str = "<recipe>", path: Path | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(source, [f"(top level): expected a mapping of sections, got {type(data).__name__}"])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, [_describe(error) for error in exc.errors()]) from None
    recipe.source = path
    return recipe


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML scalars (1e-4, true, [a, b])."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=1e-4")
            continue
        try:
            value = yamlfile.load(raw, f"--set {key}") if raw else ""
        except yamlfile.YamlError as exc:
            problems.append(str(exc))
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {key}: {part} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise RecipeError(source, problems)
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), ["file not found"])
    try:
        data = yamlfile.load(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
    except yamlfile.YamlError as exc:
        raise RecipeError(str(path), [str(exc).removeprefix(f"{path}: ")]) from None
    if data is None:
        raise RecipeError(str(path), ["file is empty"])
    if overrides:
        if not isinstance(data, dict):
            raise RecipeError(str(path), ["(top level): must be a mapping to apply --set"])
        data = apply_overrides(data, overrides, str(path))
    recipe = parse_recipe(data, str(path), path.resolve())
    missing = [
        f"{field}.path: file not found: {section.path}"
        for field, section in recipe.data_files().items()
        if not recipe.resolve_path(section.path).is_file()
    ]
    if missing:
        raise RecipeError(str(path), missing)
    return recipe

"""One row per model of a run (size, task score and its change vs the merged model, general probes,
fidelity, parity, CPU and GPU speed, memory), the Pareto fronts and a recommendation per target.

Pure functions of the run's stored results, so the rules are testable on fixed numbers."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from workbench.core import formats
from workbench.core.records import BenchResult, ItemScores, Metric, Variant
from workbench.report.paired import Paired, compare_items, sample_size_text
from workbench.report.scores import primary_metrics

# only for results stored before lm-eval's own `higher_is_better` was kept with them
LOWER_IS_BETTER = ("perplexity", "ppl", "bits_per_byte", "kld", "loss")
TARGETS = ("cpu", "gpu")


def parity_status(check: dict[str, Any] | None) -> str | None:
    """A variant's parity check as passed / failed / skipped (records from before `status` have `passed`)."""
    if not check:
        return None
    return check.get("status") or ("passed" if check.get("passed") else "failed")


def higher_is_better(metric: str) -> bool:
    """From the metric's name: the fallback for results stored without lm-eval's word on it."""
    return not any(word in metric for word in LOWER_IS_BETTER)


def direction(metrics: list[Metric], task: str | None, metric: str | None) -> bool:
    """Whether a higher value of the task's metric is better, as lm-eval said when it scored it."""
    said = next((m.higher_is_better for m in metrics if (m.task, m.metric) == (task, metric)
                 and m.higher_is_better is not None), None)  # fmt: skip
    return said if said is not None else higher_is_better(metric or "")


@dataclass
class Speed:
    backend: str
    pp_tps: float | None = None
    tg_tps: float | None = None
    ttft_ms: float | None = None
    peak_rss_mb: float | None = None
    peak_vram_mb: float | None = None
    tg_spread: tuple[float, float] | None = None  # min, max over the repetitions
    throughput: dict[str, float] = field(default_factory=dict)  # vLLM: concurrency -> output tok/s


@dataclass
class ComparisonRow:
    name: str
    label: str  # the part of the name after the merged model's: "Q4_K_M.gguf", "GPTQ-Int4"; "merged", "base"
    format: str
    role: str  # base | sft | reference | variant
    status: str = "done"
    error: str | None = None
    size_mb: float | None = None
    bits: float | None = None
    score: float | None = None
    delta: float | None = None  # score - merged score
    keep_pct: float | None = None  # share of the merged score kept (oriented so 100 = as good)
    probes: dict[str, float] = field(default_factory=dict)  # other tasks' primary metrics
    kld: float | None = None
    top1: float | None = None
    parity: str | None = None  # passed | failed | skipped; None: not checked
    grid: str | None = None  # a quantization-aware run's file: passed | failed; None: not checked
    speed: dict[str, Speed] = field(default_factory=dict)  # target -> fastest measurement there
    served: dict[str, dict[str, Any]] = field(default_factory=dict)  # served load: clients -> its numbers
    served_rates: dict[str, dict[str, Any]] = field(default_factory=dict)  # open loop: requests/s -> its numbers
    slo: dict[str, float] | None = None  # the limits its goodput was counted against
    served_by: str | None = None  # e.g. "llama.cpp server"
    served_parity: str | None = None  # through its server vs `workbench chat`: passed | failed | skipped
    paired: Paired | None = None  # vs the merged model on the same held-out items
    moved: str | None = None  # why its next-token distribution moved too far from the merged model's

    def tg(self, target: str) -> float | None:
        return self.speed[target].tg_tps if target in self.speed else None


@dataclass
class Recommendation:
    target: str
    variant: str | None
    reason: str
    measured: bool  # chosen on measured speed on this target (else on size)


@dataclass(frozen=True)
class Judging:
    """How variants are judged against the merged model (the recipe's `report` section)."""

    keep_percent: float = 98.0
    keep_on: str = "lower"  # lower: the 95% interval's lower bound of kept %; point: the estimate
    max_kld: float | None = 0.2  # a variant whose mean next-token KLD exceeds this is flagged
    min_top1: float | None = 0.8  # ... or whose top-1 agreement is below this


@dataclass
class Comparison:
    run_id: str
    task: str | None
    metric: str | None
    keep_percent: float
    rows: list[ComparisonRow]
    pareto_size: list[str]
    pareto_speed: dict[str, list[str]]
    recommendations: list[Recommendation]
    higher_is_better: bool = True  # of the task's metric
    judging: Judging = field(default_factory=Judging)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated on (quality, cost): higher quality and lower cost are better. A point is
    dominated when another is at least as good on both and strictly better on one."""
    front = []
    for name, (quality, cost) in points.items():
        dominated = any(
            q >= quality and c <= cost and (q > quality or c < cost)
            for other, (q, c) in points.items()
            if other != name
        )
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][1])


def keep_percent(value: float | None, reference: float | None, higher: bool) -> float | None:
    if value is None or reference is None:
        return None
    if not higher:
        value, reference = reference, value  # lower is better: reference / value
    if reference <= 0 or value < 0:  # a share means nothing here: as good or not
        return 100.0 if value >= reference else 0.0
    return 100.0 * value / reference


def oriented(row: ComparisonRow, higher: bool) -> float:
    assert row.score is not None
    return row.score if higher else -row.score


def moved_reason(row: ComparisonRow, judging: Judging) -> str | None:
    """Why the row's next-token distributions moved too far from the merged model's, if they did."""
    if row.role != "variant":
        return None
    reasons = []
    if judging.max_kld is not None and row.kld is not None and row.kld > judging.max_kld:
        reasons.append(f"KLD {row.kld:.3g} > {judging.max_kld:g}")
    if judging.min_top1 is not None and row.top1 is not None and row.top1 < judging.min_top1:
        reasons.append(f"top-1 agreement {row.top1:.3f} < {judging.min_top1:g}")
    return ", ".join(reasons) or None


def qualifies(row: ComparisonRow, judging: Judging) -> bool:
    """Keeps `keep_percent` of the merged score: by the interval's lower bound when the recipe says so and
    the items were paired, else by the point estimate."""
    if judging.keep_on == "lower" and row.paired is not None and row.paired.low is not None:
        return row.paired.low >= judging.keep_percent
    return row.keep_pct is not None and row.keep_pct >= judging.keep_percent


VERDICT_WORDS = {"indistinguishable": "indistinguishable from", "worse": "worse than", "better": "better than"}


def kept_text(row: ComparisonRow, what: str, judging: Judging | None = None) -> str:
    """`96.2% of WHAT (95% CI 89.8-100.0%, lower bound >= 98%): indistinguishable from the merged model on
    60 held-out items`; without paired items `96.2% of WHAT`. The rule in the brackets with `judging`."""
    if row.keep_pct is None:
        return f"? of {what}"
    rule = ""
    if judging is not None:
        lower = judging.keep_on == "lower" and row.paired is not None and row.paired.low is not None
        rule = f"{'lower bound ' if lower else ''}>= {judging.keep_percent:g}%"
    if row.paired is None or row.paired.low is None or row.paired.high is None:
        return f"{row.keep_pct:.1f}% of {what}" + (f" ({rule})" if rule else "")
    paired = row.paired
    interval = f"95% CI {paired.low:.1f}-{paired.high:.1f}%" + (f", {rule}" if rule else "")
    verdict = f"{VERDICT_WORDS[paired.verdict]} the merged model on {paired.items} held-out items"
    return f"{paired.kept:.1f}% of {what} ({interval}): {verdict}"


def choose_task(metrics: list[Metric], wanted: str | None) -> tuple[str | None, str | None]:
    primary = primary_metrics(metrics)
    if wanted and wanted in primary:
        return wanted, primary[wanted]
    if not primary:
        return None, None
    task = next(iter(primary))
    return task, primary[task]


def reference_name(variants: list[Variant]) -> str | None:
    """The merged model every variant is compared with."""
    return next((v.name for v in variants if v.is_reference), None)


def label_of(name: str, reference: str | None, role: str) -> str:
    if role == "reference":
        return "merged"
    if role == "base":
        return "base"
    if reference and name.startswith(reference + "-"):
        return name[len(reference) + 1 :]
    return name


def speeds(bench: list[BenchResult]) -> dict[str, dict[str, Speed]]:
    """variant -> target -> its fastest measurement there, with vLLM's throughput attached on GPU."""
    found: dict[str, dict[str, Speed]] = {}
    throughput: dict[str, dict[str, float]] = {}
    for record in bench:
        if record.status != "done":
            continue
        if record.concurrency is not None and is_served(record):
            continue
        if record.concurrency is not None:
            throughput[record.variant] = {level: v["output_tps"] for level, v in record.concurrency.items()}
            continue
        if record.tg_tps is None:
            continue
        target = "cpu" if record.device == "cpu" else "gpu"
        tg = record.tg_tps
        speed = Speed(
            record.backend,
            pp_tps=record.pp_tps.median if record.pp_tps else None,
            tg_tps=tg.median,
            ttft_ms=record.ttft_ms.median if record.ttft_ms else None,
            peak_rss_mb=record.peak_rss_mb,
            peak_vram_mb=record.peak_vram_mb,
            tg_spread=(tg.min, tg.max),
        )
        current = found.setdefault(record.variant, {}).get(target)
        if current is None or (speed.tg_tps or 0) > (current.tg_tps or 0):
            found[record.variant][target] = speed
    for variant, levels in throughput.items():
        # serving throughput includes prefill: kept apart from the decode-only tg the rules compare
        found.setdefault(variant, {}).setdefault("gpu", Speed("vllm")).throughput = levels
    return found


def is_served(record: BenchResult) -> bool:
    """A served-load measurement (bench.serve): through a real server over HTTP."""
    return record.backend.endswith(" server")


def build_rows(
    variants: list[Variant],
    metrics: list[Metric],
    bench: list[BenchResult],
    task: str | None,
    items: list[ItemScores] | None = None,
    judging: Judging = Judging(),
) -> list[ComparisonRow]:
    primary = primary_metrics(metrics)
    values = {(m.model, m.task, m.metric): m.value for m in metrics if m.value is not None}
    roles = {m.model: m.role for m in metrics}
    reference = reference_name(variants)
    measured = speeds(bench)
    rows = []
    base_names = [name for name, role in roles.items() if role == "base"]
    for name in base_names:
        rows.append(ComparisonRow(name=name, label="base", format="hf", role="base"))
    for name in [name for name, role in roles.items() if role == "sft"]:  # before preference tuning
        rows.append(ComparisonRow(name=name, label="supervised", format="hf", role="sft"))
    for variant in variants:
        role = "reference" if variant.is_reference else "variant"
        rows.append(
            ComparisonRow(
                name=variant.name,
                label=label_of(variant.name, reference, role),
                format=variant.format,
                role=role,
                status=variant.status,
                error=variant.error,
                size_mb=variant.size / 2**20 if variant.size is not None else None,
                bits=variant.bits,
                parity=parity_status(variant.meta.get("parity")),
                grid=(variant.meta.get("grid") or {}).get("status"),
                served_parity=(variant.meta.get("served") or {}).get("status"),
            )
        )
    for row in rows:
        if task:
            row.score = values.get((row.name, task, primary[task]))
        row.probes = {
            f"{other} {metric}": values[(row.name, other, metric)]
            for other, metric in primary.items()
            if other != task and (row.name, other, metric) in values
        }
        row.kld = values.get((row.name, "fidelity", "kld_mean"))
        row.top1 = values.get((row.name, "fidelity", "top1_agreement"))
        row.speed = measured.get(row.name, {})
        for record in bench:
            if record.variant == row.name and record.status == "done" and record.concurrency and is_served(record):
                row.served, row.served_by = record.concurrency, record.backend
                row.served_rates, row.slo = record.rates or {}, record.slo
    merged = next((r for r in rows if r.role == "reference"), None)
    higher = direction(metrics, task, primary.get(task or ""))
    if task and merged and merged.score is not None:
        per_item = {s.model: s.values for s in items or [] if (s.task, s.metric) == (task, primary[task])}
        for row in rows:
            if row.score is not None:
                row.delta = row.score - merged.score
                row.keep_pct = keep_percent(row.score, merged.score, higher)
            if row.role == "variant" and row.name in per_item and merged.name in per_item:
                row.paired = compare_items(per_item[row.name], per_item[merged.name], higher, judging.keep_percent)
    for row in rows:
        row.moved = moved_reason(row, judging)
    return rows


UNSHIPPED = ("base", "sft")  # rows shown for comparison, never recommended


def serves_on(model_format: str) -> str | None:
    """Where a format serves when no benchmark on a target says otherwise (its spec's `target`); None for
    a format this installation does not know."""
    spec = formats.find(model_format)
    return spec.target if spec else None


def candidates(rows: list[ComparisonRow]) -> list[ComparisonRow]:
    return [r for r in rows if r.role not in UNSHIPPED and r.status == "done" and r.score is not None]


def mib(size: float | None) -> str:
    return "? MiB" if size is None else f"{size:.0f} MiB"


def recommend(
    rows: list[ComparisonRow], target: str, judging: Judging, task: str | None, metric: str | None, higher: bool
) -> Recommendation:
    """The fastest variant measured on the target (else the smallest of the target's formats) that keeps
    `keep_percent` of the merged model's task score (by the interval's lower bound or the estimate, as
    judging says), passed the parity check and whose next-token distributions did not move too far."""
    keep = judging.keep_percent
    pool = [r for r in candidates(rows) if r.tg(target) is not None]
    measured = bool(pool)
    if not measured:
        pool = [r for r in candidates(rows) if serves_on(r.format) == target]
    if not pool or task is None or metric is None:
        return Recommendation(target, None, f"nothing to choose from on {target}: no scored variant runs there", False)
    what = f"the merged model's {task} {metric}"
    if all(r.keep_pct is None for r in pool):
        return Recommendation(target, None, f"cannot judge: {what} is missing (its evaluation failed?)", measured)
    servable = [r for r in pool if r.parity != "failed"]
    if not servable:
        return Recommendation(target, None, "every variant here failed the serving parity check", measured)
    faithful = [r for r in servable if r.moved is None]
    if not faithful:
        moved = "; ".join(f"{r.label}: {r.moved}" for r in servable)
        reason = f"every variant here moved too far from the merged model ({moved})"
        return Recommendation(target, None, reason, measured)
    keeping = [r for r in faithful if qualifies(r, judging)]
    if not keeping:
        best = max(faithful, key=lambda r: oriented(r, higher))
        on = "by the interval's lower bound" if judging.keep_on == "lower" else "by the point estimate"
        reason = (
            f"no variant that passed parity keeps {keep:g}% of {what} ({on});"
            f" {best.label} comes closest: {kept_text(best, what)}"
        )
        return Recommendation(target, best.name, reason, measured)
    smallest = min(keeping, key=lambda r: (r.size_mb if r.size_mb is not None else float("inf"), -oriented(r, higher)))
    chosen = smallest
    if not measured:
        reason = f"smallest ({mib(smallest.size_mb)}) that keeps {kept_text(smallest, what, judging)}"
        reason += f"; speed on {target} not measured here"
    else:
        chosen = max(keeping, key=lambda r: (r.tg(target) or 0, -(r.size_mb or 0)))
        reason = (
            f"fastest on {target} ({chosen.tg(target):.1f} tok/s generating, {mib(chosen.size_mb)}) that keeps"
            f" {kept_text(chosen, what, judging)}"
        )
        if smallest is not chosen:
            size, speed = mib(smallest.size_mb), smallest.tg(target)
            reason += f"; smallest that qualifies: {smallest.label} ({size}, {speed:.1f} tok/s)"
    too_few = sample_size_text(chosen.paired) if chosen.paired else None
    if too_few:
        reason += f"; {too_few}"
    return Recommendation(target, chosen.name, reason, measured)


def best_served_level(row: ComparisonRow, max_ttft_ms: float | None) -> tuple[str, dict[str, Any]] | None:
    """The level at which the row's server put out the most tokens/s while its p95 time to first token
    stayed within `max_ttft_ms` (any level when there is no limit); None when no level qualifies."""
    levels = [
        (level, numbers)
        for level, numbers in row.served.items()
        if not numbers.get("errors")
        and (max_ttft_ms is None or (numbers.get("ttft_p95_ms") is not None and numbers["ttft_p95_ms"] <= max_ttft_ms))
    ]
    return max(levels, key=lambda item: item[1]["output_tps"], default=None)


def best_goodput(row: ComparisonRow) -> tuple[str, str, dict[str, Any]] | None:
    """The level, closed loop ("clients") or open loop ("requests/s"), with the row's highest goodput at
    the SLO among levels that hold it (None: no level held it, or goodput was not measured)."""
    levels = [("clients", level, numbers) for level, numbers in row.served.items()]
    levels += [("requests/s", rate, numbers) for rate, numbers in row.served_rates.items()]
    held = [item for item in levels if item[2].get("holds_slo") and item[2].get("goodput_rps") is not None]
    return max(held, key=lambda item: item[2]["goodput_rps"], default=None)


def slo_text(slo: dict[str, float]) -> str:
    return f"TTFT <= {slo['ttft_ms']:g} ms and TPOT <= {slo['tpot_ms']:g} ms for {slo['attainment']:.0%} of requests"


def recommend_by_goodput(pool: list[ComparisonRow], keep: float) -> Recommendation:
    slo = next(r.slo for r in pool if r.slo)
    best = [(r, found) for r in pool if (found := best_goodput(r)) is not None]
    if not best:
        return Recommendation(
            "served", None, f"no served variant that keeps {keep:g}% holds the SLO ({slo_text(slo)})", True
        )
    row, (unit, level, numbers) = max(best, key=lambda item: item[1][2]["goodput_rps"])
    low, high = numbers.get("goodput_rps_low"), numbers.get("goodput_rps_high")
    spread = f" ({low:.2f}–{high:.2f})" if low is not None and high is not None and high > low else ""
    plural = "s" if level != "1" else ""
    where = f"with {level} concurrent client{plural}" if unit == "clients" else f"at {level} {unit} offered"
    reason = (
        f"highest goodput through its server ({row.served_by}): {numbers['goodput_rps']:.2f} requests/s{spread} "
        f"meeting the SLO {where}, {numbers['output_tps']:.1f} tok/s ({slo_text(slo)})"
    )
    return Recommendation("served", row.name, reason, True)


def recommend_served(
    rows: list[ComparisonRow], judging: Judging, max_ttft_ms: float | None, task: str | None
) -> Recommendation | None:
    """Which variant, of those that keep `keep`% of the merged score and passed parity, serves best through
    its server: the highest goodput at the SLO where it was measured, else the most tokens/s within the
    latency limit. None when nothing was served under load."""
    served = [r for r in rows if r.served and r.status == "done"]
    if not served:
        return None
    keep = judging.keep_percent
    limit = f"TTFT p95 <= {max_ttft_ms:g} ms" if max_ttft_ms is not None else "any TTFT"
    pool = [
        r
        for r in served
        if r.role not in UNSHIPPED
        and "failed" not in (r.parity, r.served_parity)
        and r.moved is None
        and (task is None or qualifies(r, judging))
    ]
    if any(r.slo for r in pool):
        return recommend_by_goodput(pool, keep)
    best = [(r, found) for r in pool if (found := best_served_level(r, max_ttft_ms)) is not None]
    if not best:
        return Recommendation("served", None, f"no served variant that keeps {keep:g}% meets {limit}", True)
    row, (clients, numbers) = max(best, key=lambda item: item[1][1]["output_tps"])
    ttft = numbers.get("ttft_p95_ms")
    reason = f"most tokens/s through its server ({row.served_by}): {numbers['output_tps']:.1f} tok/s with {clients}"
    reason += f" concurrent client{'s' if clients != '1' else ''}"
    reason += f", TTFT p95 {ttft:.0f} ms" if ttft is not None else ""
    reason += f" ({limit})" if max_ttft_ms is not None else "; no latency limit set (report.max_ttft_ms)"
    return Recommendation("served", row.name, reason, True)


def compare(
    run_id: str,
    variants: list[Variant],
    metrics: list[Metric],
    bench: list[BenchResult],
    keep: float = 98.0,
    wanted_task: str | None = None,
    max_ttft_ms: float | None = None,
    *,
    items: list[ItemScores] | None = None,
    judging: Judging | None = None,
) -> Comparison:
    judging = judging or Judging(keep_percent=keep)
    task, metric = choose_task(metrics, wanted_task)
    higher = direction(metrics, task, metric)
    rows = build_rows(variants, metrics, bench, task, items, judging)
    scored = candidates(rows)
    pareto_size, pareto_speed = [], {}
    if metric:
        pareto_size = pareto_front({r.name: (oriented(r, higher), r.size_mb) for r in scored if r.size_mb is not None})
        for target in TARGETS:
            points = {r.name: (oriented(r, higher), -(r.tg(target) or 0)) for r in scored if r.tg(target) is not None}
            if points:
                pareto_speed[target] = pareto_front(points)
    recommendations = [recommend(rows, target, judging, task, metric, higher) for target in TARGETS]
    served = recommend_served(rows, judging, max_ttft_ms, task)
    if served is not None:
        recommendations.append(served)
    return Comparison(
        run_id, task, metric, judging.keep_percent, rows, pareto_size, pareto_speed, recommendations, higher, judging
    )

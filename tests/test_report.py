"""The comparison rules on fixed numbers, and the report files built from a store."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from workbench.core.records import BenchResult, ItemScores, Metric, Stat, Variant
from workbench.core.store import Store
from workbench.report import runs, table, twins, write
from workbench.report.compare import Judging, compare, direction, keep_percent, pareto_front
from workbench.report.paired import compare_items, sample_size_text

MERGED = "m"
TASK, METRIC = "heldout", "exact_match,strip"


def variant(name: str, fmt: str, size_mib: float, parity: bool = True, reference: bool = False) -> Variant:
    meta = {"parity": {"passed": parity}, **({"reference": True} if reference else {})}
    full = MERGED if reference else f"{MERGED}-{name}"
    return Variant(full, fmt, f"/x/{full}", 4, size=int(size_mib * 2**20), meta=meta)


def metrics(scores: dict[str, float], probe: dict[str, float] | None = None) -> list[Metric]:
    rows = []
    for name, score in scores.items():
        role = "base" if name == "base" else "reference" if name == MERGED else "variant"
        rows.append(Metric(name, role, TASK, METRIC, score))
        if probe and name in probe:
            rows.append(Metric(name, role, "stdlib_docs", "word_perplexity", probe[name]))
    return rows


# KLD to the merged model: Q8_0 closest, Q4_K_M and GPTQ about as close, GPTQ larger (off the frontier)
KLDS = [
    Metric(f"{MERGED}-{label}", "variant", "fidelity", "kld_mean", kld)
    for label, kld in (("F16.gguf", 0.0001), ("Q8_0.gguf", 0.004), ("Q4_K_M.gguf", 0.06), ("NF4", 0.15), ("GPTQ", 0.07))
]


def bench(name: str, device: str, tg: float, backend: str = "llama.cpp") -> BenchResult:
    def stat(v: float) -> Stat:
        return Stat(median=v, min=v * 0.95, max=v * 1.05, samples=[v])

    return BenchResult(name, device, backend, pp_tps=stat(tg * 4), tg_tps=stat(tg), ttft_ms=stat(100.0),
                       peak_rss_mb=300.0, threads=2, prompt_tokens=512, gen_tokens=128, repetitions=3,
                       warmup=1)  # fmt: skip


VARIANTS = [
    variant("merged", "hf", 260, reference=True),
    variant("F16.gguf", "gguf", 258),
    variant("Q8_0.gguf", "gguf", 138),
    variant("Q4_K_M.gguf", "gguf", 100),
    variant("NF4", "nf4", 110),
    variant("GPTQ", "gptq", 113),
    variant("AWQ", "awq", 112, parity=False),
]
SCORES = {
    "base": 0.0,
    MERGED: 0.90,
    f"{MERGED}-F16.gguf": 0.90,
    f"{MERGED}-Q8_0.gguf": 0.89,  # 98.9% kept
    f"{MERGED}-Q4_K_M.gguf": 0.85,  # 94.4%
    f"{MERGED}-NF4": 0.80,
    f"{MERGED}-GPTQ": 0.90,
    f"{MERGED}-AWQ": 0.91,  # best score but its stop token differs from training's
}
CPU_BENCH = [
    bench(MERGED, "cpu", 13.0, "torch"),
    bench(f"{MERGED}-F16.gguf", "cpu", 66.0),
    bench(f"{MERGED}-Q8_0.gguf", "cpu", 92.0),
    bench(f"{MERGED}-Q4_K_M.gguf", "cpu", 96.0),
]


def test_pareto_front_keeps_exactly_the_undominated_points() -> None:
    points = {"a": (0.9, 100.0), "b": (0.8, 50.0), "c": (0.7, 80.0), "d": (0.9, 120.0), "e": (0.95, 200.0)}
    assert pareto_front(points) == ["b", "a", "e"]  # c is beaten by b, d by a; sorted by cost
    assert pareto_front({"x": (0.5, 1.0), "y": (0.5, 1.0)}) == ["x", "y"]  # ties dominate nobody


def test_keep_percent_follows_the_metric_direction() -> None:
    assert keep_percent(0.45, 0.9, True) == pytest.approx(50.0)
    assert keep_percent(20.0, 10.0, False) == pytest.approx(50.0)  # twice the perplexity
    assert keep_percent(0.0, 0.0, True) == 100.0


def test_the_direction_is_lm_evals_word_not_the_metric_name() -> None:
    # a metric whose name reads "lower is better" but that lm-eval scores higher-is-better, and the reverse
    for metric, higher in (("loss_avoided", True), ("mistakes", False)):
        scores = {MERGED: 0.8, f"{MERGED}-Q8_0.gguf": 0.4}
        rows = [replace(m, metric=metric, higher_is_better=higher) for m in metrics(scores)]
        result = compare("r", VARIANTS, rows, CPU_BENCH, keep=98.0, wanted_task=TASK)
        assert result.higher_is_better is higher
        kept = next(r for r in result.rows if r.label == "Q8_0.gguf").keep_pct
        assert kept == pytest.approx(50.0 if higher else 200.0)
    assert direction([], TASK, "word_perplexity") is False  # results stored without it: the name decides


def items(values: dict[str, list[float]]) -> list[ItemScores]:
    return [ItemScores(name, TASK, METRIC, dict(enumerate(v))) for name, v in values.items()]


def outcomes(right: int, total: int = 60) -> list[float]:
    return [1.0] * right + [0.0] * (total - right)


def test_paired_interval_and_verdict_on_fixed_outcomes() -> None:
    merged = outcomes(53)
    # the same answers: nothing lost, but 60 items cannot rule out a 2% loss
    same = compare_items(dict(enumerate(merged)), dict(enumerate(merged)), True, 98.0)
    assert same is not None and same.verdict == "indistinguishable" and same.kept == 100.0
    assert same.low == same.high == 100.0 and not same.enough_items
    assert "too few to tell a loss of 2%" in (sample_size_text(same) or "")
    # two answers lost of 53: 96.2% kept, an interval reaching 100% — McNemar's exact p for 2-0 is 0.5
    two = compare_items(dict(enumerate(outcomes(51))), dict(enumerate(merged)), True, 98.0)
    assert two is not None and two.verdict == "indistinguishable"
    assert two.kept == pytest.approx(100 * 51 / 53) and two.high == pytest.approx(100.0) and two.low < 95
    assert two.items_needed is not None and two.items_needed > 60
    # twelve lost: worse, and the interval stays below 100%
    worse = compare_items(dict(enumerate(outcomes(41))), dict(enumerate(merged)), True, 98.0)
    assert worse is not None and worse.verdict == "worse" and worse.high < 100 and sample_size_text(worse) is None
    assert worse.low is not None and worse.low < worse.kept < worse.high < 100
    # swapped answers on the same count: same score, and the interval is wide both ways
    swapped = merged[::-1]
    mixed = compare_items(dict(enumerate(swapped)), dict(enumerate(merged)), True, 98.0)
    assert mixed is not None and mixed.kept == 100.0 and mixed.verdict == "indistinguishable"
    assert mixed.low < 90 and mixed.high > 110
    # 10 gained: better; lower-is-better metrics read the other way round
    assert (
        compare_items(dict(enumerate(outcomes(63, 80))), dict(enumerate(outcomes(53, 80))), True, 98).verdict
        == "better"
    )
    lower = compare_items({0: 2.0, 1: 2.0, 2: 2.0}, {0: 1.0, 1: 1.0, 2: 1.0}, False, 98.0)
    assert lower is not None and lower.kept == pytest.approx(50.0) and lower.verdict == "worse"
    assert compare_items({5: 1.0}, {6: 1.0}, True, 98.0) is None  # nothing shared


def test_recommendation_by_the_lower_bound_says_indistinguishable_and_the_sample_size() -> None:
    scores = {MERGED: 53 / 60, f"{MERGED}-F16.gguf": 53 / 60, f"{MERGED}-Q8_0.gguf": 53 / 60,
              f"{MERGED}-Q4_K_M.gguf": 52 / 60}  # fmt: skip
    per_item = items({MERGED: outcomes(53), f"{MERGED}-F16.gguf": outcomes(53), f"{MERGED}-Q8_0.gguf": outcomes(53),
                      f"{MERGED}-Q4_K_M.gguf": outcomes(52)})  # fmt: skip
    fidelity = [Metric(f"{MERGED}-{n}", "variant", "fidelity", "kld_mean", 0.01) for n in ("Q8_0.gguf", "Q4_K_M.gguf")]
    judged = Judging(keep_percent=98.0, keep_on="lower")
    result = compare("r", VARIANTS, metrics(scores) + fidelity, CPU_BENCH, wanted_task=TASK, items=per_item,
                     judging=judged)  # fmt: skip
    cpu = result.recommendations[0]
    # Q4_K_M is faster and keeps 98.1% by the point estimate, but its interval reaches far below 98%
    assert cpu.variant == f"{MERGED}-Q8_0.gguf", cpu.reason
    assert "(95% CI 100.0-100.0%, lower bound >= 98%): indistinguishable from the merged model on 60" in cpu.reason
    assert "60 held-out items are too few to tell a loss of 2%" in cpu.reason
    row = next(r for r in result.rows if r.label == "Q4_K_M.gguf")
    assert row.paired is not None and row.paired.verdict == "indistinguishable" and row.paired.low < 98
    # by the point estimate it qualifies and, being faster, is chosen
    point = compare("r", VARIANTS, metrics(scores) + fidelity, CPU_BENCH, wanted_task=TASK, items=per_item,
                    judging=replace(judged, keep_on="point"))  # fmt: skip
    assert point.recommendations[0].variant == f"{MERGED}-Q4_K_M.gguf"
    headers, body = table.text_rows(result)
    assert "kept 95% CI" in headers and "vs merged" in headers
    verdicts = {cells[0]: cells[headers.index("vs merged")] for cells in body}
    assert verdicts["Q4_K_M.gguf"] == "indistinguishable" and verdicts["merged"] == "-"


def test_a_variant_that_moved_far_is_flagged_and_not_recommended() -> None:
    # the user's case: a Q4_0 that kept 100% of 10 exact-match answers with KLD 0.77 and top-1 0.58
    scores = {MERGED: 0.9, f"{MERGED}-Q4_K_M.gguf": 0.9, f"{MERGED}-Q8_0.gguf": 0.9}
    far = [Metric(f"{MERGED}-Q4_K_M.gguf", "variant", "fidelity", "kld_mean", 0.77),
           Metric(f"{MERGED}-Q4_K_M.gguf", "variant", "fidelity", "top1_agreement", 0.58),
           Metric(f"{MERGED}-Q8_0.gguf", "variant", "fidelity", "kld_mean", 0.004)]  # fmt: skip
    result = compare("r", VARIANTS, metrics(scores) + far, CPU_BENCH, wanted_task=TASK)
    row = next(r for r in result.rows if r.label == "Q4_K_M.gguf")
    assert row.moved == "KLD 0.77 > 0.2, top-1 agreement 0.580 < 0.8"
    assert result.recommendations[0].variant == f"{MERGED}-Q8_0.gguf"  # Q4_K_M is faster, but flagged
    alone = compare("r", VARIANTS, metrics(scores) + far, [CPU_BENCH[3]], wanted_task=TASK)
    assert alone.recommendations[0].variant is None and "moved too far" in alone.recommendations[0].reason
    headers, body = table.text_rows(result)
    assert "KLD 0.77 > 0.2" in body[[c[0] for c in body].index("Q4_K_M.gguf")][headers.index("moved")]
    loose = compare("r", VARIANTS, metrics(scores) + far, CPU_BENCH, wanted_task=TASK,
                    judging=Judging(max_kld=None, min_top1=None))  # fmt: skip
    assert loose.recommendations[0].variant == f"{MERGED}-Q4_K_M.gguf"


def test_cpu_recommendation_is_the_fastest_that_keeps_the_threshold() -> None:
    result = compare("r", VARIANTS, metrics(SCORES), CPU_BENCH, keep=98.0, wanted_task=TASK)
    cpu, gpu = result.recommendations
    assert cpu.target == "cpu" and cpu.measured
    assert cpu.variant == f"{MERGED}-Q8_0.gguf"  # Q4_K_M is faster but keeps only 94.4%
    assert "92.0 tok/s" in cpu.reason and "98.9%" in cpu.reason
    # a lower bar lets the faster, smaller Q4_K_M through
    loose = compare("r", VARIANTS, metrics(SCORES), CPU_BENCH, keep=90.0, wanted_task=TASK).recommendations[0]
    assert loose.variant == f"{MERGED}-Q4_K_M.gguf"
    # no GPU measured: the smallest GPU format that keeps the score and passed parity (not AWQ, not NF4)
    assert gpu.target == "gpu" and not gpu.measured
    assert gpu.variant == f"{MERGED}-GPTQ" and "not measured" in gpu.reason


def test_gpu_recommendation_uses_gpu_speed_when_measured() -> None:
    gpu_bench = [bench(MERGED, "cuda", 150.0, "torch"), bench(f"{MERGED}-GPTQ", "cuda", 120.0, "torch")]
    gpu = compare("r", VARIANTS, metrics(SCORES), CPU_BENCH + gpu_bench, wanted_task=TASK).recommendations[1]
    assert gpu.measured and gpu.variant == MERGED  # the merged model keeps 100% and is faster here
    assert "smallest that qualifies: GPTQ" in gpu.reason


def test_when_nothing_keeps_the_threshold_the_closest_is_named() -> None:
    scores = {**SCORES, f"{MERGED}-F16.gguf": 0.5, f"{MERGED}-Q8_0.gguf": 0.6, f"{MERGED}-Q4_K_M.gguf": 0.4}
    cpu = compare("r", VARIANTS, metrics(scores), CPU_BENCH[1:], wanted_task=TASK).recommendations[0]
    assert cpu.variant == f"{MERGED}-Q8_0.gguf" and "keeps 98%" in cpu.reason and "66.7%" in cpu.reason


def test_parity_failures_are_never_recommended_and_a_missing_merged_score_is_said() -> None:
    broken = [replace(v, meta={**v.meta, "parity": {"passed": False}}) if v.format == "gguf" else v for v in VARIANTS]
    cpu = compare("r", broken, metrics(SCORES), CPU_BENCH[1:], wanted_task=TASK).recommendations[0]
    assert cpu.variant is None and "parity" in cpu.reason  # every CPU-measured variant failed parity
    unscored = {name: score for name, score in SCORES.items() if name != MERGED}
    cpu = compare("r", VARIANTS, metrics(unscored), CPU_BENCH, wanted_task=TASK).recommendations[0]
    assert cpu.variant is None and "cannot judge" in cpu.reason


def test_rows_carry_deltas_probes_and_pareto_fronts() -> None:
    probe = {MERGED: 300.0, f"{MERGED}-Q4_K_M.gguf": 330.0}
    result = compare("r", VARIANTS, metrics(SCORES, probe), CPU_BENCH, wanted_task=TASK)
    rows = {r.label: r for r in result.rows}
    assert list(rows)[:2] == ["base", "merged"]
    assert rows["Q4_K_M.gguf"].delta == pytest.approx(-0.05)
    assert rows["Q4_K_M.gguf"].probes == {"stdlib_docs word_perplexity": 330.0}
    assert rows["AWQ"].parity == "failed" and rows["Q8_0.gguf"].speed["cpu"].tg_tps == 92.0
    # size: AWQ (0.91 at 112 MiB) beats GPTQ and NF4; CPU speed: the merged model ties F16's score, slower
    assert result.pareto_size == [f"{MERGED}-Q4_K_M.gguf", f"{MERGED}-AWQ"]
    assert result.pareto_speed["cpu"] == [f"{MERGED}-Q4_K_M.gguf", f"{MERGED}-Q8_0.gguf", f"{MERGED}-F16.gguf"]


def fill_store(store: Store, run_id: str, scores: dict[str, float], method: str) -> None:
    store.upsert_run(run_id, run_id, {"name": run_id, "train": {"method": method}, "eval": {"tasks": [TASK]}}, None, 1)
    store.replace_variants(run_id, ["hf", "gguf", "nf4", "gptq", "awq"], VARIANTS)
    store.replace_metrics(run_id, metrics(scores))
    store.replace_bench(run_id, CPU_BENCH)
    for stage in ("data", "train"):
        store.start_stage(run_id, stage, "k")
        store.finish_stage(run_id, stage, "done")


def test_report_files_hold_the_table_the_figures_and_the_numbers(tmp_path: Path) -> None:
    store = Store(tmp_path / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    run_dir = tmp_path / "lora"
    (run_dir / "train").mkdir(parents=True)
    history = [{"step": s, "loss": 3.0 / s} for s in range(1, 9)] + [{"step": 8, "eval_loss": 0.5}]
    (run_dir / "train" / "log_history.json").write_text(json.dumps(history))

    dest = write.write(write.load(store, "lora", run_dir), run_dir / "report")

    page = (dest / "report.html").read_text()
    assert page.count("<table") == 1 and "Q4_K_M.gguf" in page and "exact_match,strip" in page
    assert page.count('src="data:image/png;base64,') == 3  # quality vs size, vs CPU speed, loss (no GPU numbers)
    assert "CPU: Q8_0.gguf" in page and "CPU: pp512 / tg128, median of 3 runs after 1 warm-up, 2 threads" in page
    assert "| Q8_0.gguf | gguf | 138 | 0.890 | -0.010 | 98.9 |" in (dest / "report.md").read_text()
    assert {p.name for p in dest.glob("*.png")} == {"quality_vs_size.png", "quality_vs_cpu_speed.png", "loss_curve.png"}
    table = list(csv.DictReader((dest / "comparison.csv").open()))
    assert len(table) == 8 and float(table[4]["CPU tg tok/s"]) == 96.0
    results = json.loads((dest / "results.json").read_text())
    assert results["comparison"]["recommendations"][0]["variant"] == f"{MERGED}-Q8_0.gguf"
    assert results["loss"][0] == {"step": 1, "loss": 3.0}


def test_report_and_compare_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from workbench.cli import main

    store = Store(tmp_path / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    fill_store(store, "qlora", {**SCORES, f"{MERGED}-Q4_K_M.gguf": 0.88}, "qlora")

    assert main(["--home", str(tmp_path), "report", "lora", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["comparison"]["task"] == TASK and not (tmp_path / "lora" / "report").exists()
    assert main(["--home", str(tmp_path), "report", "lora", "--keep-percent", "90"]) == 0
    out = capsys.readouterr().out
    assert "CPU: Q4_K_M.gguf" in out and (tmp_path / "lora" / "report-keep90" / "report.html").is_file()
    assert not (tmp_path / "lora" / "report").exists()  # the run's own report keeps the recipe's threshold
    keep = tmp_path / "mine"
    (keep / "notes.txt").parent.mkdir()
    (keep / "notes.txt").write_text("not a report")
    assert main(["--home", str(tmp_path), "report", "lora", "--out", str(keep)]) == 2
    assert (keep / "notes.txt").read_text() == "not a report"  # nothing of the user's is replaced

    assert main(["--home", str(tmp_path), "compare", "lora", "qlora", "--format", "json"]) == 0
    side = json.loads(capsys.readouterr().out)
    q4 = next(row for row in side["rows"] if row["variant"] == "Q4_K_M.gguf")
    assert q4["keeps_most"] == "qlora" and q4["runs"]["lora"]["delta"] == pytest.approx(-0.05)
    assert main(["--home", str(tmp_path), "compare", "lora", "qlora"]) == 0
    assert "| Q4_K_M.gguf | 0.850 (-0.050) | 0.880 (-0.020) | qlora |" in capsys.readouterr().out
    assert main(["--home", str(tmp_path), "compare", "lora", "nope"]) == 2


def test_side_by_side_marks_nothing_for_a_single_run() -> None:
    report = write.RunReport(compare("a", VARIANTS, metrics(SCORES), []), {"train": {"method": "lora"}}, [], [])
    assert all(row["keeps_most"] is None for row in runs.side_by_side([report])["rows"])


def test_recovered_share_of_a_qat_run_beside_its_plain_twin() -> None:
    recipe = {"name": "r", "train": {"method": "lora", "lr": 1e-3}, "export": {"gguf": ["q4_0"]}}
    q4 = variant("Q4_0.gguf", "gguf", 80)

    def report(run: str, qat: str | None, merged: float, score: float, kld: float, other: dict | None = None):
        found = metrics({MERGED: merged, q4.name: score}) + [Metric(q4.name, "variant", "fidelity", "kld_mean", kld)]
        train = {**recipe["train"], **({"qat": {"target": qat}} if qat else {}), **(other or {})}
        return write.RunReport(compare(run, [VARIANTS[0], q4], found, []), {**recipe, "train": train}, [], [])

    plain, qat = report("plain", None, 0.90, 0.70, 0.40), report("qat", "q4_0", 0.88, 0.85, 0.10)
    unrelated = report("other", None, 0.90, 0.10, 0.90, {"method": "qlora"})  # not its twin: another method
    table = runs.side_by_side([unrelated, qat, plain])
    [item] = table["recovered"]
    assert item["run"] == "qat" and item["twin"] == "plain" and item["variant"] == "Q4_0.gguf"
    # plain loses 0.20 from its 16-bit 0.90; the QAT file loses 0.05 from that same 0.90 (0.03 from its own 0.88)
    assert item["score"]["recovered_pct"] == pytest.approx(75.0)
    assert item["score"]["recovered_own_pct"] == pytest.approx(85.0)
    assert item["kld"]["recovered_pct"] == pytest.approx(75.0)  # (0.40 - 0.10) / 0.40, each vs its own 16-bit
    assert [r["method"] for r in table["runs"]] == ["qlora", "lora + QAT q4_0", "lora"]
    text = runs.markdown(table)
    assert "| qat | plain | Q4_0.gguf | 0.700 → 0.850 | 75% | 85% | 0.4000 → 0.1000 | 75% | - |" in text
    assert twins.recovered_pct(0.0, 0.1) is None and twins.recovered_pct(0.2, 0.3) == pytest.approx(-50.0)
    assert runs.side_by_side([qat])["recovered"] == []  # no twin, nothing claimed


def test_a_run_report_finds_its_twin_in_the_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "workbench.db")
    fill_store(store, "plain", SCORES, "lora")
    fill_store(store, "qat", {**SCORES, f"{MERGED}-Q8_0.gguf": 0.895}, "lora")
    fill_store(store, "other", SCORES, "qlora")  # another recipe: no twin of either
    recipe = {"name": "qat", "train": {"method": "lora", "qat": {"target": "q8_0"}}, "eval": {"tasks": [TASK]}}
    store.upsert_run("qat", "qat", recipe, None, 1)
    for run, twin in (("qat", "plain"), ("plain", "plain")):  # from either side, the same pairing
        report = write.load(store, run, tmp_path / run)
        report.recovered = twins.in_store(store, tmp_path, report)
        [item] = report.recovered
        assert (item["run"], item["twin"], item["score"]["recovered_pct"]) == ("qat", twin, pytest.approx(50.0))
    text = write.markdown(report, {})
    assert "## Quantization-aware training against the plain twin" in text
    assert "| qat | plain | Q8_0.gguf | 0.890 → 0.895 | 50% | 50% |" in text
    assert "<td>50%</td>" in write.to_html(report, {})
    alone = write.load(store, "other", tmp_path / "other")
    assert twins.in_store(store, tmp_path, alone) == []


def test_the_size_fidelity_frontier_is_drawn_from_the_klds(tmp_path: Path) -> None:
    from workbench.report import chart

    store = Store(tmp_path / "workbench.db")
    fill_store(store, "lora", SCORES, "lora")
    store.replace_metrics("lora", metrics(SCORES) + KLDS)
    report = write.load(store, "lora", tmp_path / "lora")
    frontier = chart.fidelity_vs_size(report.comparison)
    assert frontier is not None
    on = {p.label: p.on_front for p in frontier.points}
    # Q4_K_M (100 MiB) and Q8_0 (138) and F16 (258) are each the closest at their size; NF4 (110, 0.15) and
    # GPTQ (113, 0.07) are both larger and further than Q4_K_M
    assert on == {"Q4_K_M.gguf": True, "NF4": False, "GPTQ": False, "Q8_0.gguf": True, "F16.gguf": True}
    assert [p.x for p in frontier.points] == sorted(p.x for p in frontier.points)
    dest = write.write(report, tmp_path / "report")
    assert (dest / "fidelity_vs_size.png").read_bytes().startswith(b"\x89PNG")
    store.replace_metrics("lora", metrics(SCORES))  # no KLDs: no frontier, no figure
    assert chart.fidelity_vs_size(write.load(store, "lora", tmp_path / "lora").comparison) is None


def test_an_interval_that_rounds_past_its_point_draws_no_negative_bar() -> None:
    from workbench.report import chart, plots

    score = 0.917
    exact = chart.Point("F16.gguf", 258, score, True, low=score * 100 / 100 + 1e-16, high=score)  # as good: 100-100
    wide = chart.Point("Q4_K_M.gguf", 101, 0.95, True, low=0.90, high=0.99)
    data = chart.Chart("size (MiB)", "heldout exact_match", [wide, exact], [wide, exact], score, 0.9, "98% of merged")
    assert plots.numbered(data) is not None and plots.numbered(data, log_y=True) is not None

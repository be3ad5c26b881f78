"""`workbench doctor`: each backend tried in its own worker; a crash is named, with advice, and the exit
status says whether the recipe's backends work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import write_recipe

from workbench import doctor
from workbench.cli import main
from workbench.doctor.build import contradiction
from workbench.doctor.probes import ProbeJob, ProbeResult


def recipe_needing_llama_cpp_and_torch(tmp_path: Path, tiny_model: Path) -> Path:
    data = tmp_path / "qa.json"
    data.write_text(json.dumps([{"question": "q", "answer": "a"}] * 4))
    return write_recipe(tmp_path, tiny_model, data, export={"gguf": ["q8_0"]})


def test_a_crashing_backend_is_named_and_fails_the_doctor(
    tmp_path: Path, tiny_model: Path, fault: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = recipe_needing_llama_cpp_and_torch(tmp_path, tiny_model)
    fault("decode:Q8_0:segv")  # as ggml's AMX kernels crash on virtualised Xeons
    assert main(["--home", str(tmp_path / "runs"), "doctor", "--for", str(recipe)]) == 3
    out = capsys.readouterr().out
    assert "llama.cpp decode q8_0" in out and "CRASHED" in out
    assert "llama.cpp decode q8_0: decoding Q8_0 crashed (SIGSEGV) — see " in out
    assert "torch generate (cpu)" in out and "gptqmodel 4-bit kernel" not in out  # only what the recipe needs
    assert "NOT OK: llama.cpp cannot work here" in out and "make llama-cpp" in out


def test_a_working_machine_passes_and_reports_as_json(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = recipe_needing_llama_cpp_and_torch(tmp_path, tiny_model)
    assert main(["--home", str(tmp_path / "runs"), "doctor", "--for", str(recipe), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failing"] == [] and report["needed"] == ["torch", "llama.cpp"]
    probes = {probe["name"]: probe for probe in report["probes"]}
    assert (
        probes["llama.cpp decode q8_0"]["status"] == "done" and probes["llama.cpp decode q8_0"]["result"]["tokens"] == 4
    )
    # a probe's job and result show what they say, as the dicts they were before they were typed
    assert probes["llama.cpp decode q8_0"]["job"] == {"probe": "llama.cpp decode", "type": "q8_0"}
    assert probes["llama.cpp decode q8_0"]["result"] == {"detail": "4 tokens", "tokens": 4}
    assert list(probes["llama.cpp build info"]["result"]) == ["detail", "system_info", "gpu_offload"]
    assert "CPU :" in probes["llama.cpp build info"]["result"]["system_info"]
    assert report["machine"]["usable_cores"] >= 1 and report["versions"]["torch"]


def test_advice_for_an_amx_build_on_an_amx_cpu() -> None:
    report = doctor.Report(
        machine={"features": ["avx512f", "amx_tile", "amx_int8"]},
        versions={},
        llama_build={"system_info": "CPU : AVX512 = 1 | AMX_INT8 = 1 |"},
        llama_tools=None,
        probes=[doctor.Probe("llama.cpp decode q8_0", "llama.cpp", ProbeJob("llama.cpp decode"), status="crashed")],
        needed=["torch", "llama.cpp"],
    )
    assert report.failing == ["llama.cpp"]
    (advice,) = doctor.advice(report)
    assert "AMX" in advice and "#20824" in advice and "`make llama-cpp`" in advice
    report.machine["features"] = ["avx2"]  # no AMX: a generic build is the way out
    assert "GGML_NATIVE=OFF" in doctor.advice(report)[0]


def test_an_install_that_contradicts_its_flags_is_caught() -> None:
    flags = "-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'"
    assert contradiction(flags, "CPU : AVX512 = 1 | AMX_INT8 = 1 |")  # a wheel cached from an AMX build
    assert contradiction(flags, "CPU : AVX512 = 1 | AVX512_VNNI = 1 |") is None
    assert contradiction("-DGGML_NATIVE=ON", "CPU : AMX_INT8 = 1 |") is None  # AMX asked for


def test_a_distributed_recipe_has_two_processes_form_a_group(tmp_path: Path, tiny_model: Path) -> None:
    from workbench import workers
    from workbench.core.recipe import load_recipe

    data = tmp_path / "qa.json"
    data.write_text(json.dumps([{"question": "q", "answer": "a"}] * 4))
    spread = load_recipe(write_recipe(tmp_path, tiny_model, data, train={"distributed": {"processes": 2}}))
    assert "distributed" in doctor.needed_backends(spread)
    assert "distributed" not in doctor.needed_backends(load_recipe(write_recipe(tmp_path, tiny_model, data)))
    (probe,) = [p for p in doctor.probes_for(cuda=False, gguf_types=[]) if p.backend == "distributed"]
    outcome = workers.run("doctor.probe", probe.job, name=probe.name, log=tmp_path / "probe.log", timeout=300)
    assert outcome.status == "done", outcome.error
    result = outcome.value_as(ProbeResult)
    assert result.detail == "2 processes, gloo: all-reduce 1 + 2 = 3 on both"  # each rank saw the sum
    assert (tmp_path / "probe.log").read_text().count('"world": 2') == 2


def test_the_backends_a_recipe_needs_come_from_its_formats_specs(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from workbench.core import formats
    from workbench.core.recipe import load_recipe

    data = tmp_path / "qa.json"
    data.write_text(json.dumps([{"question": "q", "answer": "a"}] * 4))

    def needed(**export: Any) -> list[str]:
        return doctor.needed_backends(load_recipe(write_recipe(tmp_path, tiny_model, data, export=export)))

    assert needed() == ["torch"]
    assert needed(gguf=["q8_0"], nf4=True, gptq=True) == ["torch", "llama.cpp", "bitsandbytes", "gptqmodel"]
    assert needed(adapter_gguf=["q8_0"]) == ["torch", "llama.cpp"]  # the adapter is answered by llama.cpp
    # a format's backend is its spec's: one whose exporter is wanted brings its probes with it
    monkeypatch.setitem(formats.FORMATS, "awq", replace(formats.FORMATS["awq"], doctor_backend="bitsandbytes"))
    assert needed(awq=True) == ["torch", "bitsandbytes"]

"""Re-running an unchanged recipe decides that every stage is cached without loading torch or the model
libraries (seconds each on a small machine), and device detection agrees with torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import addition_rows, write_recipe

from workbench.core import devices
from workbench.pipeline.stages import STAGE_ORDER, STAGES

HEAVY = ("torch", "transformers", "peft", "trl", "lm_eval", "llama_cpp", "gptqmodel", "datasets")


def test_every_stage_key_is_computed_without_the_model_libraries(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(72)))
    recipe = write_recipe(tmp_path, tiny_model, data)
    script = f"""
import sys
from workbench.core.recipe import load_recipe
from workbench.pipeline.stages import STAGE_ORDER, STAGES
from workbench.pipeline.stages.base import key_payload
recipe = load_recipe({str(recipe)!r})
keys = {{}}
for name in STAGE_ORDER:
    keys[name] = key_payload(STAGES[name], recipe, {{n: str(n) for n in STAGES[name].needs}})
assert keys["bench"]["inputs"]["machine"]["device"] == "cpu", keys["bench"]
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a GPU machine would rightly import torch to ask it
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_hidden_devices_mean_cpu_and_a_cuda_request_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.no_gpu_possible()
    assert devices.pick_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="no CUDA device"):
        devices.pick_device("cuda")


def test_the_driver_check_agrees_with_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if devices.no_gpu_possible():
        assert not torch.cuda.is_available()
    assert devices.pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_without_a_driver_file_no_gpu_is_possible(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(devices, "GPU_DRIVER_FILES", (str(tmp_path / "nvidiactl"),))
    assert devices.no_gpu_possible()
    (tmp_path / "nvidiactl").touch()
    assert not devices.no_gpu_possible()


GOLDEN_KEYS = Path(__file__).parent / "golden" / "stage_key_inputs.json"
# what differs between machines or library installs, not between versions of this code; file hashes (data,
# task files) change with the files
VOLATILE = {"machine", "versions", "llama_cpp", "lm_eval", "task_files", "data_file"}


def test_the_shipped_recipes_keep_the_stage_keys_stored_runs_hold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A store made by an earlier version re-runs cached: what each stage's cache key is made of, for every
    recipe in recipes/, equals tests/golden/stage_key_inputs.json — written by the code of commit a28216c,
    before the modules moved into layer folders, and rewritten since for the export's importance matrix
    and search fields (their defaults changed what the export makes) and for the served load's sweeps and
    SLO (GGUF variants are served by llama-server now: their served numbers are measured again). A
    deliberate key change rewrites the golden file, and means every stored run of that stage runs again."""
    from workbench.core.recipe import load_recipe
    from workbench.pipeline.stages import data as data_stage

    monkeypatch.setattr(data_stage, "base_model_key", lambda name: f"<{name}>")  # not materialised in CI
    found = {}
    for path in sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        for name in STAGE_ORDER:
            if STAGES[name].wanted(recipe):
                inputs = {k: v for k, v in STAGES[name].key_inputs(recipe).items() if k not in VOLATILE}
                found[f"{path.name}:{name}"] = json.loads(json.dumps(inputs, sort_keys=True, default=str))
    assert found == json.loads(GOLDEN_KEYS.read_text(encoding="utf-8"))

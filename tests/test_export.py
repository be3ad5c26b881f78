"""GGUF export with llama.cpp's converter and quantizer on a tiny Llama whose widths suit K-quants."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import addition_rows, write_recipe

from workbench.core.recipe import load_recipe
from workbench.core.store import Store
from workbench.export import gguf
from workbench.pipeline.runner import run_recipe


def recorded(store: Store) -> list[dict]:
    """The run's variants as the store gives them back, as plain dicts for the assertions below."""
    return [variant.to_dict() for variant in store.variants("tiny")]


@pytest.fixture
def recipe(tmp_path: Path, tiny_llama_256: Path) -> Path:
    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(40)))
    return write_recipe(
        tmp_path,
        tiny_llama_256,
        data,
        data={"max_length": 128},
        train={"max_steps": 2},
        export={"gguf": ["f16", "q8_0", "q4_k_m"], "smoke_prompts": 1},
    )


def test_gguf_variants_are_exported_recorded_and_smoke_checked(
    tmp_path: Path, recipe: Path, tiny_llama_256: Path
) -> None:
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])
    store = Store(home / "workbench.db")
    variants = {v["name"]: v for v in recorded(store)}
    stem = f"{tiny_llama_256.name}-tiny"
    assert list(variants) == [stem, f"{stem}-F16.gguf", f"{stem}-Q8_0.gguf", f"{stem}-Q4_K_M.gguf"]
    merged, f16, q8, q4 = variants.values()
    assert merged["format"] == "hf" and merged["meta"]["reference"] and merged["path"] == str(home / "tiny" / "merge")
    for variant in (f16, q8, q4):
        path = Path(variant["path"])
        assert variant["status"] == "done" and path.is_file() and path.parent == home / "tiny" / "export"
        assert variant["size"] == path.stat().st_size
        assert variant["quantizer"] == "llama.cpp" and variant["seconds"] > 0 and variant["peak_mem_mb"] > 0
        assert isinstance(variant["meta"]["smoke"][0]["reply"], str)
        assert variant["meta"]["smoke"][0]["prompt"].startswith("What is")
    assert f16["size"] > q8["size"] > q4["size"]
    assert f16["parent"] == merged["name"] and q4["parent"] == f16["name"]
    assert "Q4_K" in q4["meta"]["tensor_types"] and "Q8_0" in q8["meta"]["tensor_types"]
    assert q4["meta"]["fallbacks"] == []  # widths are multiples of 256
    assert store.stage("tiny", "export").status == "done"


def test_quantizer_fallbacks_are_parsed() -> None:
    line = (
        "warning: blk.0.attn_k.weight                 - ncols    576 not divisible by 256 "
        "(required for type    q4_K) -> falling back to    q5_0\n"
    )
    assert [tuple(m) for m in gguf.FALLBACK.findall(line)] == [("blk.0.attn_k.weight", "576", "q4_K", "q5_0")]


def test_one_failing_variant_leaves_the_others_done(
    tmp_path: Path, recipe: Path, fault: Callable[[str], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    fault("quantize:Q8_0:raise")
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])
    store = Store(home / "workbench.db")
    status = {v["name"].rsplit("-", 1)[-1]: v for v in recorded(store)}
    q8 = status["Q8_0.gguf"]
    assert q8["status"] == "failed" and "quantization failed: MemoryError: simulated out of memory" in q8["error"]
    assert status["F16.gguf"]["status"] == "done" and status["Q4_K_M.gguf"]["status"] == "done"
    assert Path(status["Q4_K_M.gguf"]["path"]).is_file() and not Path(q8["path"]).exists()
    stage = store.stage("tiny", "export")
    assert stage.status == "partial" and "simulated out of memory" in stage.error

    monkeypatch.delenv("WORKBENCH_FAULT")  # a partial stage is redone on the next run
    run_recipe(load_recipe(recipe), home, stages=["export"])
    assert all(v["status"] == "done" for v in recorded(store))
    assert store.stage("tiny", "export").status == "done"


def test_a_native_crash_in_a_smoke_check_fails_that_variant_only(
    tmp_path: Path, recipe: Path, fault: Callable[[str], None]
) -> None:
    """llama_decode dies with SIGSEGV on Q8_0 weights, as ggml's AMX kernels do on virtualised Xeons."""
    fault("decode:Q8_0:segv")
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])
    store = Store(home / "workbench.db")
    status = {v["name"].rsplit("-", 1)[-1]: v for v in recorded(store)}
    q8, log = status["Q8_0.gguf"], home / "tiny" / "logs" / "export" / f"{status['Q8_0.gguf']['name']}-check.log"
    assert q8["status"] == "failed"
    assert q8["error"] == f"{q8['name']}: smoke check crashed (SIGSEGV) — see {log}"
    assert "Segmentation fault" in log.read_text()  # the child's Python stack, for a bug report
    assert q8["meta"]["parity"]["status"] == "passed"  # found before the crash, kept
    assert all(status[kind]["status"] == "done" for kind in ("F16.gguf", "Q4_K_M.gguf"))
    assert all(status[kind]["meta"]["smoke"][0]["reply"] is not None for kind in ("F16.gguf", "Q4_K_M.gguf"))
    stage = store.stage("tiny", "export")
    assert stage.status == "partial" and "smoke check crashed (SIGSEGV)" in stage.error
    assert store.run("tiny").status == "done"  # the run itself went on


def test_a_hung_check_is_stopped_at_its_timeout(tmp_path: Path, recipe: Path, fault: Callable[[str], None]) -> None:
    fault("decode:Q4_K_M:hang")
    home = tmp_path / "runs"
    settings = ["export.gguf=[q8_0, q4_k_m]", "export.check_timeout_s=30"]
    run_recipe(load_recipe(recipe, settings), home, stages=["export"])
    status = {v["name"].rsplit("-", 1)[-1]: v for v in recorded(Store(home / "workbench.db"))}
    assert status["Q8_0.gguf"]["status"] == "done"
    assert status["Q4_K_M.gguf"]["status"] == "failed"
    assert "smoke check timed out after 30 s" in status["Q4_K_M.gguf"]["error"]


def test_missing_converter_fails_every_gguf_variant_with_the_fix(
    tmp_path: Path, recipe: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKBENCH_LLAMA_CPP_TOOLS", str(tmp_path / "nothing-here"))
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])
    store = Store(home / "workbench.db")
    errors = [v["error"] for v in recorded(store) if v["format"] == "gguf"]
    assert "run `workbench setup`" in errors[0]  # the f16 conversion names the fix
    assert all("its conversion failed" in error for error in errors[1:])
    assert store.stage("tiny", "export").status == "partial"  # the merged model still goes on to eval


def test_serving_parity_passes_for_the_real_template_and_fails_for_a_wrong_one(tmp_path: Path, recipe: Path) -> None:
    from transformers import AutoTokenizer

    from workbench.core import parity

    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe, ["export.gguf=[q8_0]"]), home, stages=["export"])
    variants = recorded(Store(home / "workbench.db"))
    assert all(v["meta"]["parity"]["status"] == "passed" for v in variants), [v["meta"].get("parity") for v in variants]
    assert variants[-1]["meta"]["parity"]["checked"] == 8
    assert variants[-1]["meta"]["parity"]["stop_token"]["ok"]

    conversations = [json.loads(line)["messages"] for line in (home / "tiny" / "data" / "held_out.jsonl").open()]
    wrong = AutoTokenizer.from_pretrained(home / "tiny" / "merge")
    wrong.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    result = parity.check_gguf(parity.Expected.of(wrong, conversations), Path(variants[-1]["path"]))
    assert not result.passed and result.checked == 1
    difference = result.first_difference
    # no system turn in these rows: SmolLM2's template adds its default one, the wrong template does not
    assert difference["token_index"] == 1
    assert "<|im_start|>user:" in difference["training"] and "<|im_start|>system\n" in difference["variant"]


def test_nf4_variant_is_a_4bit_checkpoint_transformers_loads(tmp_path: Path, recipe: Path) -> None:
    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe, ["export.gguf=[]", "export.nf4=true"]), home, stages=["export"])
    nf4 = recorded(Store(home / "workbench.db"))[-1]
    assert nf4["format"] == "nf4" and nf4["status"] == "done" and nf4["name"].endswith("-BNB-NF4")
    assert nf4["meta"]["parity"]["passed"]
    assert isinstance(nf4["meta"]["smoke"][0]["reply"], str) and nf4["peak_mem_mb"] > 0
    config = json.loads((Path(nf4["path"]) / "config.json").read_text())["quantization_config"]
    assert config["bnb_4bit_quant_type"] == "nf4" and config["bnb_4bit_use_double_quant"] is True
    model = AutoModelForCausalLM.from_pretrained(nf4["path"], device_map={"": "cpu"})
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    merged_size = recorded(Store(home / "workbench.db"))[0]["size"]
    assert nf4["size"] < merged_size

    # on a CPU it loads (for eval, bench and chat alike) through bitsandbytes' kernels computing in fp32,
    # which compute what the stored weights do
    import bitsandbytes.functional as bnb_functional
    import torch

    from workbench.core.formats import load_for_inference

    served = load_for_inference(nf4["path"], "nf4", "cpu")
    layers = {name: m for name, m in served.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert layers and all(m.compute_dtype is torch.float32 for m in layers.values())
    assert all(p.dtype in (torch.float32, torch.uint8) for p in served.parameters())  # 4-bit codes are bytes
    stored = {name: bnb_functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float() for name, m in
              layers.items()}  # fmt: skip  # before a forward: on some CPUs bitsandbytes repacks them then
    ids = torch.tensor([[3, 17, 42, 99, 5, 250, 7, 11]])
    with torch.inference_mode():
        by_bnb = served(ids).logits
        for name, weight in stored.items():  # the same model with each layer's stored weights, unquantized
            plain = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            plain.weight = torch.nn.Parameter(weight, requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(served.get_submodule(parent), child, plain)
        by_weights = served(ids).logits
    assert by_bnb.dtype == by_weights.dtype == torch.float32
    assert (by_bnb - by_weights).abs().max() <= 0.02 * by_bnb.abs().max()  # kernel numerics only
    assert torch.equal(by_bnb.argmax(-1), by_weights.argmax(-1))


def test_preflight_refuses_with_numbers_before_writing_anything(
    tmp_path: Path, recipe: Path, tiny_llama_256: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM

    from workbench.core import preflight

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_256)
    assert preflight.parameter_count(tiny_llama_256) == model.num_parameters()

    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["merge"])
    monkeypatch.setattr(preflight, "free_disk", lambda path: 1_000_000)
    with pytest.raises(preflight.PreflightError, match=r"export refused before starting: needs ~0\.\d+ GB free disk"):
        run_recipe(load_recipe(recipe), home, stages=["export"])
    assert not (home / "tiny" / "export").exists() and not list((home / "tiny").glob(".tmp-export-*"))
    assert recorded(Store(home / "workbench.db")) == []

    monkeypatch.setattr(preflight, "available_memory", lambda: 10_000_000)
    with pytest.raises(preflight.PreflightError, match=r"merge refused .* GB of memory, 0\.01 GB available"):
        run_recipe(load_recipe(recipe), home, stages=["merge"], force=["merge"])


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_gptq_and_awq_variants_with_gptqmodel(tmp_path: Path, recipe: Path, method: str) -> None:
    home = tmp_path / "runs"
    settings = ["export.gguf=[]", f"export.{method}=true", "export.group_size=64", "export.calibration_rows=16",
                "merge.dtype=bfloat16"]  # fmt: skip
    run_recipe(load_recipe(recipe, settings), home, stages=["export"])
    variant = recorded(Store(home / "workbench.db"))[-1]
    assert variant["status"] == "done", variant["error"]
    assert variant["format"] == method and variant["name"].endswith(f"-{method.upper()}-Int4")
    config = json.loads((Path(variant["path"]) / "quantize_config.json").read_text())
    assert config["bits"] == 4 and config["group_size"] == 64
    assert config.get("quant_method", method) == method
    assert variant["meta"]["calibration_rows"] == 16 and variant["meta"]["parity"]["passed"]
    assert isinstance(variant["meta"]["smoke"][0]["reply"], str)

    # calibrated in fp32 on a CPU, stored like a checkpoint quantized in the merged model's dtype
    from safetensors import safe_open

    merged_dtype = json.loads((home / "tiny" / "merge" / "config.json").read_text())["dtype"]
    assert json.loads((Path(variant["path"]) / "config.json").read_text())["dtype"] == merged_dtype
    with safe_open(str(Path(variant["path"]) / "model.safetensors"), "pt") as handle:
        kinds = {key.rsplit(".", 1)[-1]: str(handle.get_slice(key).get_dtype()) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict
    assert kinds["scales"] == "F16" and kinds["qweight"] == "I32" and "F32" not in kinds.values()
    assert merged_dtype == "bfloat16" and kinds["weight"] == "BF16"
    if method == "awq":
        assert variant["meta"]["clip"] is False  # the default: the clip search costs ~4x and did not help

    from transformers import AutoModelForCausalLM  # plain transformers loads it with GPTQModel's kernels

    model = AutoModelForCausalLM.from_pretrained(variant["path"], device_map="cpu")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ != "Linear"


def test_tensor_types_read_from_the_header_agree_with_gguf_py(tiny_ggufs: dict[str, Path]) -> None:
    from collections import Counter

    from gguf import GGUFReader

    for path in tiny_ggufs.values():
        assert gguf.tensor_types(path) == dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors))
    assert "Q4_0" in gguf.tensor_types(tiny_ggufs["q4_0"])

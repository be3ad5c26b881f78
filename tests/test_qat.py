"""Quantization-aware fine-tuning: the fake quantizers are llama.cpp's numerics, gradients reach the
adapter through the rounding, and the model trains on the merged weight's grid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

from workbench.qat import grid

TYPES = {  # the grids gguf-py can quantize (the K-quants: tests/test_qat_kquants.py, against ggml itself)
    "q4_0": GGMLQuantizationType.Q4_0,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q5_1": GGMLQuantizationType.Q5_1,
    "q8_0": GGMLQuantizationType.Q8_0,
}


def reference(x: torch.Tensor, target: str) -> torch.Tensor:
    """gguf-py: quantize to the llama.cpp type, then dequantize."""
    data = x.numpy()
    kind = TYPES[target]
    return torch.from_numpy(quants.dequantize(quants.quantize(data, kind), kind).reshape(data.shape))


def edge_cases() -> torch.Tensor:
    rows = torch.randn(6, 64)
    rows[0] = 0  # all-zero blocks: scale 0
    rows[1, :32] = torch.linspace(-1, 0.5, 32)  # the extreme is negative
    rows[1, 32:] = torch.linspace(-0.5, 1, 32)  # ... and positive
    rows[2, :32] = 3.0  # all equal
    rows[2, 32:] = torch.tensor([0.75, -0.75] * 16)  # a tie between signs: the first one sets the scale
    rows[3] = rows[3] * 1e7  # the fp16 scale overflows to inf
    rows[4] = rows[4] * 1e-7  # fp16 subnormal scales
    rows[5, 5] = 2.0  # one outlier per block
    rows[5, 40] = -2.0
    return rows


@pytest.mark.parametrize("target", sorted(TYPES))
def test_grid_equals_gguf_py_bit_for_bit(target):
    torch.manual_seed(0)
    g = grid.GRIDS[target]
    for x in (torch.randn(64, 256), torch.randn(3, 32) * 40, edge_cases()):
        ours, theirs = g.values(x), reference(x, target)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, equal_nan=True)
    assert not g.values(edge_cases())[3].isfinite().all()  # the overflow case is really exercised


def test_torchao_int4_is_not_q4_0():
    """Why the workbench has its own quantizers: torchao's symmetric int4 grid is another grid."""
    from torchao.quantization.qat.utils import _fake_quantize_per_channel_group

    torch.manual_seed(0)
    x = torch.randn(64, 256)
    scale = x.reshape(-1, 32).abs().amax(dim=-1) / 7.5
    theirs = _fake_quantize_per_channel_group(x, scale.reshape(64, -1), torch.zeros(64, 8), -8, 7, 32)
    same = (theirs == reference(x, "q4_0")).float().mean().item()
    assert same < 0.5


def test_storage_chain_rounds_like_the_export():
    x = torch.tensor([[1 + 2**-9] * 32])  # not representable in bf16
    direct = grid.fake_quantize(x, grid.GRIDS["q8_0"])
    stored = grid.fake_quantize(x, grid.GRIDS["q8_0"], grid.storage_chain(torch.bfloat16))
    assert torch.equal(stored, reference(x.bfloat16().half().float(), "q8_0"))
    assert not torch.equal(direct, stored)


def test_rows_that_do_not_divide_are_refused():
    with pytest.raises(ValueError, match="blocks of 32"):
        grid.q4_0(torch.zeros(2, 48))
    assert not grid.fits((8, 48), grid.GRIDS["q4_0"]) and grid.fits((8, 64), grid.GRIDS["q4_0"])


def lora_model(path, targets="all-linear"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # B starts at zero; a trained adapter is not
            param.data.normal_(0, 0.05)
    return model


def test_lora_layer_rounds_the_merged_weight_and_gradients_reach_the_adapter(tiny_model):
    from workbench.qat import modules

    model = lora_model(tiny_model)
    state = modules.prepare(model, "q4_0", merge_dtype=torch.bfloat16, embeddings=True, output=True)
    state.switch_on()
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    chain = grid.storage_chain(torch.bfloat16)

    x = torch.randn(3, 5, 64, requires_grad=True)
    y = layer(x)
    weight = layer.base_layer.weight
    rounded = grid.fake_quantize(weight + s * b @ a, grid.GRIDS["q4_0"], chain)
    assert torch.equal(y, torch.nn.functional.linear(x, rounded))  # the forward is the file's weight
    assert not torch.equal(rounded, grid.fake_quantize(weight, grid.GRIDS["q4_0"], chain) + s * b @ a)

    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    got = [t.grad.clone() for t in (x, a, b)]
    for t in (x, a, b):
        t.grad = None
    merged = weight + s * b @ a  # the reference: autograd through W + s·B·A, straight through the rounding
    x_ref = x.detach().requires_grad_()
    y_ref = x_ref @ (merged + (rounded - merged).detach()).T
    (y_ref * upstream).sum().backward()
    for ours, theirs in zip(got, (x_ref.grad, a.grad, b.grad), strict=True):
        assert ours.abs().sum() > 0
        torch.testing.assert_close(ours, theirs)


def test_lora_model_computes_what_the_merged_file_holds(tiny_model):
    """The whole model with QAT on equals its merge with every weight on the grid — the GGUF's weights."""
    from workbench.qat import modules

    model = lora_model(tiny_model)
    ids = torch.randint(0, 200, (2, 12))
    with torch.no_grad():
        plain = model(ids).logits
        merged = lora_model(tiny_model).merge_and_unload()
    state = modules.prepare(model, "q8_0", merge_dtype=torch.float32, embeddings=True, output=True)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, plain)  # switched off until switch_on
        state.switch_on()
        trained = model(ids).logits
        for param in merged.parameters():
            if param.ndim == 2:
                param.copy_(grid.fake_quantize(param, grid.GRIDS["q8_0"], grid.storage_chain(torch.float32)))
        served = merged(ids).logits
    torch.testing.assert_close(trained, served, rtol=1e-5, atol=1e-5)
    assert (trained - plain).abs().max() > 1e-4
    assert "model.embed_tokens" in next(iter(state.on_grid)) and state.frozen  # the tied embedding, rounded once


def test_embeddings_can_stay_off_the_grid(tiny_model):
    from workbench.qat import modules

    model = lora_model(tiny_model)
    before = model.get_input_embeddings().weight.clone()
    state = modules.prepare(model, "q4_0", merge_dtype=torch.float32, embeddings=False, output=True)
    state.switch_on()
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert not state.frozen and not any("embed" in name for name in state.on_grid)


def test_full_fine_tune_uses_torchao_modules_with_ggml_numerics(tiny_model):
    from torchao.quantization.qat import FakeQuantizedLinear
    from transformers import AutoModelForCausalLM

    from workbench.qat import modules

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    state = modules.prepare(model, "q4_0", merge_dtype=torch.float32, embeddings=True, output=True)
    layer = model.model.layers[1].self_attn.o_proj
    assert isinstance(layer, FakeQuantizedLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # still tied
    state.switch_on()
    x = torch.randn(4, 64)
    y = layer(x)
    rounded = grid.fake_quantize(layer.weight.detach(), grid.GRIDS["q4_0"], grid.storage_chain(torch.float32))
    assert torch.equal(y, torch.nn.functional.linear(x, rounded))
    y.sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(4, 64).T @ x)  # straight through


def addition_recipe(tmp_path, model, **sections):
    from conftest import addition_rows, write_recipe

    data = tmp_path / "qa.json"
    data.write_text(json.dumps(addition_rows(40)))
    return write_recipe(tmp_path, model, data, data={"max_length": 128}, **sections)


def gguf_logits(path, tokens):
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=2)
    llm.eval(tokens)
    return torch.from_numpy(np.array(llm.scores[: len(tokens)], dtype=np.float32))


def hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


def relative(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()


@pytest.mark.slow
def test_a_qat_run_exports_a_file_on_its_grid(tmp_path, tiny_llama_256, tiny_ggufs, capsys):
    from transformers import AutoModelForCausalLM

    from workbench.core.recipe import load_recipe
    from workbench.core.store import Store
    from workbench.pipeline.runner import run_recipe

    recipe = addition_recipe(
        tmp_path,
        tiny_llama_256,
        train={"max_steps": 3, "qat": {"target": "q4_0", "start_after_steps": 1}},
        merge={"dtype": "bfloat16"},
        export={"gguf": ["q4_0"], "smoke_prompts": 0},
    )
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])
    store = Store(home / "workbench.db")
    q4 = next(v for v in store.variants("tiny") if v.name.endswith("Q4_0.gguf"))
    assert q4.status == "done" and store.stage("tiny", "export").status == "done"
    assert q4.meta["grid"]["status"] == "passed" and q4.meta["grid"]["tensors"] == 2 * 7 + 1
    assert set(q4.meta["tensor_types"]) == {"Q4_0", "F32"}  # every weight in the type it trained for
    events = store.events("tiny", stage="train", kind="qat_on")
    assert [e["step"] for e in events] == [1]
    summary = json.loads((home / "tiny" / "train" / "train_summary.json").read_text())
    assert summary["qat"]["on_grid"] == 15 and summary["qat"]["off_grid"] == []
    from workbench.cli import main

    capsys.readouterr()
    assert main(["--home", str(home), "show", "tiny"]) == 0
    assert f"grid check: {q4.name}: passed: 15 tensors equal the q4_0 rounding" in capsys.readouterr().out

    # llama.cpp computes with what training computed: the merged weights on the grid
    tokens = list(range(1, 40))
    served = gguf_logits(q4.path, tokens)
    merged = AutoModelForCausalLM.from_pretrained(home / "tiny" / "merge", dtype=torch.float32)
    with torch.no_grad():
        for param in merged.parameters():
            if param.ndim == 2:
                param.copy_(grid.fake_quantize(param, grid.GRIDS["q4_0"], (grid.SOURCE,)))
    trained = hf_logits(merged, tokens)
    # a plain Q4_0 against its 16-bit model, for scale
    plain = relative(
        gguf_logits(tiny_ggufs["q4_0"], tokens),
        hf_logits(AutoModelForCausalLM.from_pretrained(tiny_llama_256, dtype=torch.float32), tokens),
    )
    assert relative(served, trained) < plain / 5, (relative(served, trained), plain)


def test_grid_check_finds_a_file_that_is_not_on_the_grid(tmp_path, tiny_llama_256, tiny_ggufs):
    """llama.cpp's default Q4_0 mixture of an untrained model: the grid check says which tensors differ."""
    from dataclasses import replace

    from workbench import workers
    from workbench.qat.check import GridJob, GridResult

    job = GridJob(tiny_ggufs["q4_0"], tiny_llama_256, "q4_0", embeddings=True, output=True)
    result = workers.run("qat.grid", job, name="q4").value_as(GridResult)
    assert result.status == "passed" or result.retyped
    # the merged weights rounded are exactly the file's, wherever the file kept Q4_0
    assert result.mismatched == [] and result.tensors > 0
    bumped = tmp_path / "bumped"
    bumped.mkdir()
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_llama_256 / "model.safetensors")
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"] * 1.5
    save_file(tensors, bumped / "model.safetensors")
    result = workers.run("qat.grid", replace(job, merged=bumped), name="q4").value_as(GridResult)
    assert result.status == "failed" and result.mismatched == ["blk.0.ffn_up.weight"]


def test_qlora_trains_on_what_the_dequantized_nf4_merge_ships(tiny_model, tmp_path):
    """QLoRA rounds dequantize(nf4 W) + s·B·A, and merge.base: dequantized-nf4 (its auto choice) folds
    the adapter into exactly those weights."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from workbench.qat import modules
    from workbench.train.merge import merge_adapter

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model, quantization_config=quant, dtype=torch.float32, device_map={"": "cpu"}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(2)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    model.save_pretrained(tmp_path / "adapter")
    state = modules.prepare(model, "q8_0", merge_dtype=torch.float32, embeddings=True, output=True)
    state.switch_on()
    ids = torch.randint(0, 200, (1, 10))
    with torch.no_grad():
        trained = model(ids).logits
        merged = merge_adapter(str(tiny_model), tmp_path / "adapter", "dequantized-nf4")
        for param in merged.parameters():
            if param.ndim == 2:
                param.copy_(grid.fake_quantize(param, grid.GRIDS["q8_0"], grid.storage_chain(torch.float32)))
        served = merged(ids).logits
    torch.testing.assert_close(trained, served, rtol=1e-5, atol=1e-5)
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.slow
def test_sweep_runs_a_2x2_grid_and_compares_the_qat_runs_with_their_twins(tmp_path, tiny_llama_256, capsys):
    from workbench.cli import main
    from workbench.core.store import Store

    recipe = addition_recipe(
        tmp_path,
        tiny_llama_256,
        train={"max_steps": 2},
        export={"gguf": ["q4_0"], "smoke_prompts": 0, "parity_prompts": 1},
        eval={"tasks": ["heldout"], "base": False, "limit": 4, "fidelity_rows": 4, "max_gen_tokens": 4},
        bench={
            "cpu": ["gguf"],
            "gpu": [],
            "prompt_tokens": 8,
            "gen_tokens": 4,
            "repetitions": 1,
            "warmup": 0,
            "serve": {"formats": ["gguf"], "parity_prompts": 1},
        },  # fmt: skip
    )
    home = tmp_path / "runs"
    bad = ["--home", str(home), "sweep", str(recipe), "--vary", "train.method=lora,nope"]
    assert main(bad) == 2 and not home.exists()  # every combination is validated before anything runs
    capsys.readouterr()

    argv = ["--home", str(home), "sweep", str(recipe), "--vary", "train.method=lora,full",
            "--vary", "train.qat.target=none,q4_0"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    names = ["tiny-method-lora-target-none", "tiny-method-lora-target-q4_0",
             "tiny-method-full-target-none", "tiny-method-full-target-q4_0"]  # fmt: skip
    store = Store(home / "workbench.db")
    assert [store.live_status(store.run(name)) for name in names] == ["done"] * 4
    data_dirs = [home / name / "data" / "train.jsonl" for name in names]
    assert len({path.stat().st_ino for path in data_dirs}) == 1  # one data stage, shared
    assert "[data] shared with an earlier run of the sweep" in out
    recovered = [line for line in out.splitlines() if line.startswith("| tiny-method-")]
    qat_lines = [line for line in recovered if "→" in line]
    assert len(qat_lines) == 2 and "| tiny-method-lora-target-q4_0 | tiny-method-lora-target-none |" in qat_lines[0]
    assert all(line.rstrip().endswith("| passed |") for line in qat_lines), out[-2500:]  # grid check, per QAT run


@pytest.mark.gpu
def test_lora_qat_on_cuda_in_bf16_rounds_like_the_cpu_grid(tiny_model):
    from workbench.qat import modules

    model = lora_model(tiny_model).to("cuda", torch.bfloat16)
    original = model.get_input_embeddings().weight.detach().cpu().clone()
    state = modules.prepare(model, "q4_0", merge_dtype=torch.bfloat16, embeddings=True, output=True)
    state.switch_on()
    ids = torch.randint(0, 200, (2, 12), device="cuda")
    model(ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    rounded = model.get_input_embeddings().weight.detach().cpu()  # rounded in place on the GPU
    expected = grid.fake_quantize(original, grid.GRIDS["q4_0"], grid.storage_chain(torch.bfloat16))
    assert torch.equal(rounded, expected.bfloat16())  # the CPU grid's values, cast to the training dtype


def test_a_start_past_the_last_step_is_refused_before_training(tmp_path, tiny_model):
    from workbench.core.recipe import RecipeError, load_recipe
    from workbench.pipeline.runner import run_recipe

    recipe = addition_recipe(
        tmp_path, tiny_model, train={"max_steps": 2, "qat": {"target": "q8_0", "start_after_steps": 2}},
        export={"gguf": ["q8_0"]},
    )  # fmt: skip
    with pytest.raises(RecipeError, match="start_after_steps: 2 is not below the 2 training steps"):
        run_recipe(load_recipe(recipe), tmp_path / "runs", stages=["train"])
    assert not (tmp_path / "runs" / "tiny" / "train").exists()


def test_a_detached_sweep_runs_in_the_background_and_one_failing_run_does_not_stop_it(tmp_path, capsys):
    import time

    from workbench.cli import main

    recipe = addition_recipe(tmp_path, tmp_path / "no-such-model", export={"gguf": ["q8_0"]})
    home = tmp_path / "runs"
    argv = ["--home", str(home), "sweep", str(recipe), "--vary", "train.qat.target=none,q8_0", "--detach"]
    assert main(argv) == 0
    assert "tiny-target-none" in capsys.readouterr().out
    log = home / "sweeps" / "tiny.log"
    for _ in range(600):
        if "sweep done" in (log.read_text() if log.exists() else ""):
            break
        time.sleep(0.1)
    text = log.read_text()
    assert "sweep done: 0 of 2 runs finished" in text  # both ran, each failed on its missing model
    assert "tiny-target-none FAILED" in text and "tiny-target-q8_0 FAILED" in text

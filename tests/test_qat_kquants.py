"""The K-quant grids (workbench.qat.kquants) against ggml's own quantizer: `ggml_quantize_chunk` from the
libggml-base that llama-cpp-python installed (the code llama-quantize runs, without an imatrix), read back
by gguf-py's `dequantize` — equal bit for bit, edge cases included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from workbench.qat import grid, kquants, native


@pytest.fixture(scope="module")
def ggml():
    lib = native.library()
    assert lib is not None, "llama-cpp-python's libggml-base"
    return lib


def ggml_values(lib, x: torch.Tensor, ggml_type: str) -> np.ndarray:
    kind = GGMLQuantizationType[ggml_type]
    data = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    block, size = GGML_QUANT_SIZES[kind]
    out = np.zeros(data.size // block * size, dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(kind), data.ctypes.data, out.ctypes.data, 0, *data.shape, None)
    assert written == out.size
    return quants.dequantize(out, kind).reshape(data.shape)


def edge_cases() -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    rows = torch.randn(12, 512, generator=g)
    rows[0] = 0  # an all-zero super-block: every scale 0
    rows[1, :256] = 0.3  # constant and positive: the min is clamped to 0
    rows[1, 256:] = -0.3  # constant and negative: a flat sub-block keeps its min
    rows[2] = torch.rand(512, generator=g) + 1  # all positive
    rows[3] = torch.randint(-3, 4, (512,), generator=g).float()  # levels land on halves: rounding ties
    rows[4, :256] = torch.tensor([0.75, -0.75] * 128)  # ties of magnitude between signs
    rows[5] *= 1e4  # wide range
    rows[6] *= 1e-7  # fp16 subnormal scales
    rows[7] = torch.randn(512, generator=g) ** 3  # heavy tails
    rows[8, ::37] = 40.0  # outliers
    rows[9, :32] = 0  # one zero sub-block among others
    rows[10, :16] = 1e-20  # a Q6_K group below its epsilon
    rows[11] = torch.linspace(-1, 1, 512)
    return rows


@pytest.mark.parametrize("target", sorted(grid.GRIDS))
def test_every_grid_equals_ggml_bit_for_bit(ggml, target):
    g = grid.GRIDS[target]
    rng = torch.Generator().manual_seed(0)
    for x in (torch.randn(64, 512, generator=rng), torch.randn(8, 256, generator=rng) * 40, edge_cases()):
        ours = g.values(x.clone()).numpy()
        theirs = ggml_values(ggml, x, g.ggml_type)
        mismatched = ~((ours == theirs) | (np.isnan(ours) & np.isnan(theirs)))
        assert not mismatched.any(), f"{target}: {mismatched.sum()} of {mismatched.size} values differ"


def test_on_cpu_training_rounds_with_ggml_itself_and_gets_the_torch_grids_values(monkeypatch):
    """`fake_quantize` on CPU calls libggml for the K-quants (rows split over threads); its values are the
    torch grids'. Both ways are tested for every grid: here through libggml, directly above."""
    assert native.available()
    calls = []
    monkeypatch.setattr(native, "values", lambda x, kind, wrapped=native.values: calls.append(kind) or wrapped(x, kind))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # 12 rows in 3 chunks
    for target, g in grid.GRIDS.items():
        for x in (torch.randn(12, 512, generator=torch.Generator().manual_seed(1)), edge_cases()):
            theirs = grid.fake_quantize(x, g, (torch.bfloat16,))
            ours = g.values(x.bfloat16().float())
            assert torch.equal(theirs.isnan(), ours.isnan()), target
            assert torch.equal(theirs.nan_to_num(), ours.nan_to_num()), target
    assert calls == [g.ggml_type for g in grid.GRIDS.values() if g.native for _ in range(2)]
    assert {"Q4_K", "Q6_K"} <= set(calls)
    with pytest.raises(ValueError, match="rows of 320 values do not divide into Q4_K blocks of 256"):
        native.values(torch.zeros(2, 320), "Q4_K")


def test_rows_that_do_not_divide_into_super_blocks_are_refused():
    with pytest.raises(ValueError, match="super-blocks of 256"):
        kquants.q4_k(torch.zeros(2, 576))
    assert not grid.fits((8, 576), grid.GRIDS["q4_k"]) and grid.fits((8, 1536), grid.GRIDS["q6_k"])


@pytest.fixture(scope="module")
def mixed_f16(tiny_llama_320, tmp_path_factory):
    from workbench.export import gguf
    from workbench.export.making import Written

    f16 = tmp_path_factory.mktemp("mixed") / "tiny-F16.gguf"
    gguf.convert(tiny_llama_320, f16, "f16").value_as(Written)
    return f16


def planned(f16, model, target, keep=()):
    from workbench.export import gguf
    from workbench.qat import mixture

    return mixture.plan_from(gguf.planned_types(f16, target, keep), f16, model, target)


def test_the_plan_is_llama_quantizes_own_choice_with_its_fallbacks(mixed_f16, tiny_llama_320):
    plan = planned(mixed_f16, tiny_llama_320, "q4_k_m")
    # rows of 512: the K-quants themselves, Q6_K for some of them by llama.cpp's rules
    downs = {plan.types[f"blk.{i}.ffn_down.weight"] for i in range(2)}
    assert downs <= {"q4_k", "q6_k"} and "q6_k" in downs
    # rows of 320: Q4_K falls back to q5_0, Q6_K (attention values, the tied output) to q8_0
    assert plan.types["blk.0.attn_q.weight"] == "q5_0" and plan.types["blk.0.ffn_up.weight"] == "q5_0"
    assert plan.types["blk.1.attn_v.weight"] == "q8_0" and plan.types["token_embd.weight"] == "q8_0"
    assert plan.types["output_norm.weight"] is None  # f32: not on a grid
    # the model's own names, with or without peft's wrapper
    assert plan.grid_of("model.layers.1.mlp.down_proj.weight") == plan.types["blk.1.ffn_down.weight"]
    assert plan.grid_of("base_model.model.model.layers.0.self_attn.q_proj.weight") == "q5_0"
    kept = planned(mixed_f16, tiny_llama_320, "q4_k_m", ("embeddings",))
    assert kept.types["token_embd.weight"] is None  # told to keep it f16, llama-quantize does
    assert planned(mixed_f16, tiny_llama_320, "q6_k").counts().keys() == {"q6_k", "q8_0"}


def test_the_grid_check_holds_a_mixture_file_to_the_plan(tmp_path, mixed_f16, tiny_llama_320):
    """An untrained model is its own merge: llama-quantize's Q4_K_M of it is the plan's rounding of every
    weight, bit for bit; a Q5_K_M file is refused, tensor by tensor, with the type training used."""
    from workbench import workers
    from workbench.export import gguf
    from workbench.qat.check import GridJob, GridResult

    plan = planned(mixed_f16, tiny_llama_320, "q4_k_m").save(tmp_path)
    results = {}
    for kind in ("q4_k_m", "q5_k_m"):
        path = tmp_path / f"tiny-{kind}.gguf"
        gguf.quantize(mixed_f16, path, kind).value_as(gguf.Quantized)
        job = GridJob(path, tiny_llama_320, "q4_k_m", embeddings=True, output=True, plan=plan)
        results[kind] = workers.run("qat.grid", job, name=kind).value_as(GridResult)
    assert results["q4_k_m"].status == "passed" and results["q4_k_m"].tensors == 2 * 7 + 1
    assert results["q5_k_m"].status == "failed"
    retyped = {r.tensor: (r.type, r.trained) for r in results["q5_k_m"].retyped}
    assert retyped["blk.0.attn_q.weight"] == ("Q5_1", "q5_0")


@pytest.mark.slow
def test_a_q4_k_m_qat_run_exports_a_file_on_its_mixture(tmp_path, tiny_llama_320):
    """The recipe trains each weight on the type llama-quantize gives it, after its supervised steps and
    distilling toward their adapter; that teacher is its plain twin's adapter, and the exported Q4_K_M holds
    exactly the roundings of the merged weights, every tensor (the grid check), with no importance matrix."""
    import json

    from safetensors.torch import load_file
    from test_qat import addition_recipe

    from workbench.core.recipe import load_recipe
    from workbench.core.store import Store
    from workbench.pipeline.runner import run_recipe
    from workbench.pipeline.stages.train import TEACHER_FILE

    qat = {"target": "q4_k_m", "steps": 2, "learning_rate": 5e-4, "distill": {"weight": 2.0}}
    recipe = addition_recipe(
        tmp_path,
        tiny_llama_320,
        train={"max_steps": 2, "qat": qat},
        merge={"dtype": "bfloat16"},
        export={"gguf": ["q4_k_m"], "smoke_prompts": 0},
    )
    home = tmp_path / "runs"
    run_recipe(load_recipe(recipe), home, stages=["export"])
    store = Store(home / "workbench.db")
    [variant] = [v for v in store.variants("tiny") if v.name.endswith("Q4_K_M.gguf")]
    assert variant.status == "done", variant.error
    grid_check = variant.meta["grid"]
    assert grid_check["status"] == "passed" and grid_check["tensors"] == 2 * 7 + 1, grid_check
    assert {"Q5_0", "Q8_0", "Q6_K"} <= set(variant.meta["tensor_types"])  # the mixture, not one type
    assert variant.meta["imatrix"] is None
    summary = json.loads((home / "tiny" / "train" / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["qat"]["steps"] == 2 and summary["qat"]["rounding"] == "libggml"
    assert summary["qat"]["on_grid"] == 15 and {"q5_0", "q8_0", "q6_k"} <= set(summary["qat"]["grids"])
    assert [e["step"] for e in store.events("tiny", stage="train", kind="qat_on")] == [2]
    plan = json.loads((home / "tiny" / "train" / "qat-types.json").read_text())
    assert plan["target"] == "q4_k_m" and plan["types"]["blk.0.attn_k.weight"] == "q5_0"
    history = json.loads((home / "tiny" / "train" / "log_history.json").read_text())
    kls = [entry["distill_kl"] for entry in history if "distill_kl" in entry]
    assert len(kls) == 2 and all(kl > 0 for kl in kls)  # logged from the switch on
    rates = [entry["learning_rate"] for entry in history if "learning_rate" in entry]

    # the plain twin trains the same supervised steps: its adapter is the teacher, its rates the first ones
    twin_qat = {**qat, "target": None}
    twin = addition_recipe(tmp_path, tiny_llama_320, name="twin", train={"max_steps": 2, "qat": twin_qat})
    run_recipe(load_recipe(twin), home, stages=["train"])
    plain = load_file(str(home / "twin" / "train" / "adapter_model.safetensors"))
    teacher = load_file(str(home / "tiny" / "train" / TEACHER_FILE))
    assert {name.replace(".default.", ".") for name in teacher} == set(plain)
    for name, value in teacher.items():
        assert torch.equal(value, plain[name.replace(".default.", ".")]), name
    twin_history = json.loads((home / "twin" / "train" / "log_history.json").read_text())
    assert rates[:2] == [entry["learning_rate"] for entry in twin_history if "learning_rate" in entry]
    assert rates[2] == pytest.approx(5e-4)  # the qat steps' own schedule, from their peak

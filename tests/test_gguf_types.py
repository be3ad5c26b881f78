"""The GGUF ladder: read from gguf-py, every rung offered by the llama-quantize set-up built, and the rungs
that need an importance matrix are exactly those llama-quantize refuses without one; recipes that ask for
one without a matrix are refused at validation, saying why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gguf import LlamaFileType

from workbench.core import gguf_types
from workbench.core.recipe import Recipe
from workbench.export import llamacpp_tools


def test_the_ladder_is_gguf_pys_file_types_less_those_for_other_models() -> None:
    names = {member.name.removeprefix("MOSTLY_") for member in LlamaFileType}
    assert {t.ftype for t in gguf_types.LADDER.values()} == names - set(gguf_types.NOT_ON_LADDER)
    for wanted in (
        "q8_0",
        "q6_k",
        "q5_k_m",
        "q4_k_m",
        "q4_0",
        "iq4_nl",
        "iq4_xs",
        "q3_k_m",
        "iq3_xxs",
        "q2_k",
        "iq2_m",
    ):
        assert wanted in gguf_types.LADDER
    q4 = gguf_types.LADDER["q4_k_m"]
    assert (q4.main_type, q4.bits, q4.block) == ("Q4_K", 4.5, 256)  # 144 bytes a block of 256
    assert gguf_types.LADDER["iq4_nl"].block == 32 and gguf_types.LADDER["q8_0"].bits == 8.5
    bits = [t.bits for t in gguf_types.LADDER.values()]
    assert bits == sorted(bits, reverse=True)


def dry_run(f16: Path, ftype: str) -> str:
    quantize = llamacpp_tools.binary("llama-quantize")
    done = subprocess.run([str(quantize), "--dry-run", str(f16), ftype], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def test_every_rung_is_offered_and_the_imatrix_rule_is_llama_quantizes(tiny_ggufs: dict[str, Path]) -> None:
    """On a model whose rows suit every block (256, 512 wide: no fallback), llama-quantize's dry run says which
    file types it would refuse without an importance matrix."""
    for rung in gguf_types.LADDER.values():
        said = dry_run(tiny_ggufs["f16"], rung.ftype)
        refused = "will require an imatrix" in said
        assert refused == rung.needs_imatrix, f"{rung.ftype}: llama-quantize says {refused}"


def recipe(**export: object) -> dict[str, object]:
    return {"name": "x", "base_model": "smollm2-135m-instruct", "data": {"path": "x.json"}, "export": export}


@pytest.mark.parametrize(
    ("export", "said"),
    [
        ({"gguf": ["iq2_m"], "imatrix": "none"}, "iq2_m needs an importance matrix (llama-quantize refuses"),
        ({"gguf": ["q4_k_m", "iq2_xs"], "imatrix_compare": ["none"]}, "export.imatrix_compare asks for none"),
        ({"gguf": ["tq1_0"]}, "'tq1_0' is not offered (ternary: for models trained ternary (BitNet))"),
        ({"gguf": ["q4_k_x"]}, "'q4_k_x' is not offered; choose from f16, bf16, q8_0"),
        ({"adapter_gguf": ["iq2_xxs"]}, "the adapter's base model is quantized without one"),
        ({"imatrix": "task", "imatrix_compare": ["task"]}, "repeats a calibration"),
        ({"imatrix": "none", "search": {"types": ["q4_0", "iq2_xs"]}}, "iq2_xs needs an importance matrix"),
        ({"imatrix": "none", "search": {"budgets": ["iq2_m"]}}, "export.search.budgets: iq2_m needs an importance"),
        ({"search": {"budgets": ["small"]}}, "budget 'small': expected a file type (q4_k_m), a size (95MiB)"),
        ({"search": {"types": ["q4_k_m"]}}, "'q4_k_m' is not a ggml type a tensor can take here"),
    ],
)
def test_recipes_asking_for_what_llama_quantize_refuses_are_refused_saying_why(
    export: dict[str, object], said: str
) -> None:
    with pytest.raises(ValueError) as caught:
        Recipe.model_validate(recipe(**export))
    assert said in str(caught.value)


def test_a_type_that_needs_a_matrix_is_accepted_with_one() -> None:
    made = Recipe.model_validate(recipe(gguf=["iq2_m", "q4_k_m"], imatrix="generic", imatrix_compare=["task"]))
    assert made.export.gguf == ["iq2_m", "q4_k_m"] and made.export.imatrix == "generic"

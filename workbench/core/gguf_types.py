"""llama.cpp's GGUF file types, the ladder a recipe's `export.gguf` picks from: names and sizes read from
gguf-py's constants (`LlamaFileType`, `GGML_QUANT_SIZES`), so a llama.cpp that adds a type adds it here.

A file type is a mixture: `llama-quantize` gives most weights the type's main ggml type and some others
a larger one (Q4_K_M: Q4_K with Q6_K for some attention and feed-forward weights), and falls back to
another where a row is not a multiple of the block. The bits here are the main type's, a nominal figure
for estimates; what a file holds is read back from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

# file types left off the ladder, and why: not for a dense model fine-tuned in 16 bits
NOT_ON_LADDER = {
    "ALL_F32": "a 32-bit file: twice F16's size for the same weights",
    "GUESSED": "not a type",
    "TQ1_0": "ternary: for models trained ternary (BitNet)",
    "TQ2_0": "ternary: for models trained ternary (BitNet)",
    "MXFP4_MOE": "for mixture-of-experts models",
    "NVFP4": "not offered by llama-quantize",
    "Q1_0": "1-bit: for models trained for it",
}
# mixtures named after no ggml type: their main type (llama.cpp's llama_ftype_get_default_type)
MAIN_TYPE = {"IQ3_XS": "IQ3_S", "IQ3_M": "IQ3_S", "IQ2_M": "IQ2_S"}
# llama-quantize refuses these without an importance matrix: their mixtures use IQ1_S, IQ1_M, IQ2_XXS,
# IQ2_XS, IQ2_S or IQ3_XXS weights, or Q2_K inside a Q2_K_S file (llama-quant.cpp's tensor_requires_imatrix;
# tests/test_gguf_types.py checks the set against `llama-quantize --dry-run`)
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"})
# types an importance matrix changes nothing for: 16-bit copies and Q8_0 (llama.cpp ignores it there)
IMATRIX_UNUSED = frozenset({"F16", "BF16", "Q8_0"})


# ggml types a searched recipe may give one tensor group (quantized, for dense weights); those llama-quantize
# refuses without an importance matrix, whatever the file type
SEARCH_TYPES = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "iq4_nl", "iq4_xs", "q3_k", "iq3_s",
                "iq3_xxs", "q2_k", "iq2_s", "iq2_xs", "iq2_xxs")  # fmt: skip
NEEDS_IMATRIX_TYPES = frozenset({"iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs"})
DEFAULT_SEARCH_TYPES = ("q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k")


@dataclass(frozen=True)
class FileType:
    """One rung of the ladder."""

    name: str  # as recipes write it: "q4_k_m"
    ftype: str  # as llama-quantize and LLAMA_FTYPE_MOSTLY_* name it: "Q4_K_M"
    main_type: str  # the ggml type of most weights: "Q4_K"
    bits: float  # the main type's bits per weight (nominal)
    needs_imatrix: bool  # refused without an importance matrix
    uses_imatrix: bool  # an importance matrix changes how it rounds

    @property
    def block(self) -> int:
        """Weights per block of the main type: a row must be a multiple of it, or that tensor falls back."""
        return GGML_QUANT_SIZES[GGMLQuantizationType[self.main_type]][0]


def bits_per_weight(ggml_type: str) -> float:
    """The storage of one weight in a ggml type ("Q4_K": 4.5), from its block size and bytes."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type.upper()]]
    return size * 8 / block


def block_of(ggml_type: str) -> int:
    return GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type.upper()]][0]


@dataclass(frozen=True)
class Budget:
    """A searched file's size limit: as large as llama-quantize's file of a type, a size, or bits per weight
    over the quantized tensors."""

    same_as: str | None = None  # a ladder name
    mib: float | None = None
    bpw: float | None = None

    @property
    def label(self) -> str:
        if self.same_as:
            return self.same_as.upper()
        return f"{self.mib:g}MIB" if self.mib is not None else f"{self.bpw:g}BPW"


def parse_budget(text: str) -> Budget:
    """`q4_k_m`, `95MiB`, `3.5bpw`; a ValueError says what was expected."""
    spoken = text.strip().lower()
    if spoken in LADDER:
        return Budget(same_as=spoken)
    for suffix in ("mib", "bpw"):
        if spoken.endswith(suffix):
            try:
                number = float(spoken.removesuffix(suffix))
            except ValueError:
                break
            if number > 0:
                return Budget(mib=number) if suffix == "mib" else Budget(bpw=number)
    raise ValueError(f"budget {text!r}: expected a file type (q4_k_m), a size (95MiB) or bits per weight (3.5bpw)")


def main_type(ftype: str) -> str:
    if ftype in MAIN_TYPE:
        return MAIN_TYPE[ftype]
    if ftype in GGMLQuantizationType.__members__:
        return ftype
    return ftype.rsplit("_", 1)[0]  # Q4_K_M -> Q4_K, Q2_K_S -> Q2_K


def _ladder() -> dict[str, FileType]:
    found = {}
    for member in LlamaFileType:
        ftype = member.name.removeprefix("MOSTLY_")
        if ftype in NOT_ON_LADDER:
            continue
        main = main_type(ftype)
        found[ftype.lower()] = FileType(
            name=ftype.lower(),
            ftype=ftype,
            main_type=main,
            bits=round(bits_per_weight(main), 2),
            needs_imatrix=ftype in NEEDS_IMATRIX,
            uses_imatrix=ftype not in IMATRIX_UNUSED,
        )
    return dict(sorted(found.items(), key=lambda item: -item[1].bits))


LADDER: dict[str, FileType] = _ladder()


def file_type(name: str) -> FileType:
    """A rung by its recipe name; a KeyError names the choices."""
    try:
        return LADDER[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a llama.cpp file type on the ladder ({', '.join(LADDER)})") from None

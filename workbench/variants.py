"""A Variant is one servable artifact of a run: the merged 16-bit model or a quantized export."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Variant:
    name: str  # e.g. SmolLM2-135M-Instruct-quickstart-Q4_K_M.gguf
    format: str
    path: str
    bits: float
    parent: str | None = None  # the variant it was made from
    size: int = 0
    quantizer: str | None = None  # e.g. llama.cpp
    quantizer_version: str | None = None
    seconds: float | None = None
    peak_mem_mb: float | None = None
    status: str = "done"  # done | failed
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    @property
    def is_reference(self) -> bool:
        """The merged model every variant is compared with."""
        return bool(self.meta.get("reference"))


def variant_name(base: str, run: str, suffix: str = "") -> str:
    """The usual hub naming: <Base>-<run>[-<QUANT>]."""
    return f"{base}-{run}{'-' + suffix if suffix else ''}"

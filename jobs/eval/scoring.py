"""Model maths of the eval stage and the Ray Data class that runs it.

Everything reduces to one primitive: the summed log-probability of a sequence's tokens from some position on,
given the tokens before them (`sequence_scores`). Text is scored in windows that start after a BOS token, so every
character of a document is predicted once; a multiple-choice answer is scored after its question. Greedy
generation uses transformers' `generate`.
"""

from __future__ import annotations

import gc
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

Scored = tuple[list[int], int]  # (token ids, index of the first token whose log-probability counts)


@dataclass(frozen=True)
class ScoreSettings:
    """What every scoring actor needs besides the rows (plain values, pickled to the actors)."""

    prompt_format: str  # "chat" | "plain"
    seq_len: int
    max_new_tokens: int
    batch_size: int
    use_gpu: bool = False


def sequence_scores(model: Any, sequences: list[Scored], batch_size: int, pad_id: int) -> list[tuple[float, int]]:
    """(summed log-prob, token count) of each sequence's scored tokens, in micro-batches of similar lengths."""
    import torch

    from jobs.train.losses import sequence_logps

    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(sequences)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, attention, scored = _padded([sequences[i] for i in chunk], pad_id, device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits
            sums = sequence_logps(logits, ids, scored, average=False)
        for i, total, count in zip(chunk, sums.tolist(), scored[:, 1:].sum(-1).tolist(), strict=True):
            out[i] = (total, int(count))
    return out


def _padded(rows: list[Scored], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids, attention mask and scored-token mask."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    scored = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (tokens, first) in enumerate(rows):
        assert first >= 1, "the first token has nothing before it to be predicted from"
        ids[row, : len(tokens)] = torch.tensor(tokens)
        attention[row, : len(tokens)] = 1
        scored[row, first : len(tokens)] = 1
    return ids.to(device), attention.to(device), scored.to(device)


def text_windows(ids: list[int], bos_id: int, seq_len: int) -> list[Scored]:
    """A document as consecutive windows of BOS + up to seq_len - 1 tokens, every token scored once."""
    step = seq_len - 1
    return [([bos_id, *ids[start : start + step]], 1) for start in range(0, len(ids), step)]


def choice_sequence(context: list[int], choice: list[int], seq_len: int) -> Scored:
    """Question + answer ids with only the answer scored; the question loses tokens from its start to fit."""
    choice = choice[: seq_len - 1]
    context = context[-(seq_len - len(choice)) :]
    return [*context, *choice], len(context)


class EvalModel:
    """A causal LM and its tokenizer from a Hugging Face directory, answering the three kinds of eval item."""

    def __init__(self, uri: str, settings: ScoreSettings) -> None:
        import torch

        from jobs.train.chat_data import ChatTemplate
        from jobs.train.model import ModelSource
        from jobs.train.packing import _tokenizer
        from jobs.train.sources import tokenizer_info

        info = tokenizer_info(uri, "models")
        self.settings = settings
        self.tokenizer = _tokenizer(info.tokenizer_json)
        self.template = ChatTemplate(info.chat_template, info.bos_token, info.eos_token) if info.chat_template else None
        device = torch.device("cuda" if settings.use_gpu else "cpu")
        self.model = ModelSource(pretrained_uri=uri).build(seed=0).to(device).eval().requires_grad_(False)
        self.bos_id = info.bos_id if info.bos_id is not None else info.eos_id
        self.pad_id = info.pad_id if info.pad_id is not None else info.eos_id
        self.stop_ids = stop_ids(info)
        limit = getattr(self.model.config, "max_position_embeddings", None) or settings.seq_len
        self.seq_len = min(settings.seq_len, limit)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def context(self, text: str) -> tuple[list[int], str]:
        """The ids a question or prompt is shown as, and the separator its answer follows."""
        if self.settings.prompt_format == "chat":
            assert self.template is not None, "models without a chat template are refused before scoring"
            rendered = self.template.render([{"role": "user", "content": text}], add_generation_prompt=True)
            return self.encode(rendered), ""
        return [self.bos_id, *self.encode(text)], "" if text[-1:].isspace() else " "

    def score_texts(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per document: negative log-likelihood (nats), tokens, characters and UTF-8 bytes."""
        windows = [text_windows(self.encode(p["text"]), self.bos_id, self.seq_len) for p in payloads]
        scores = iter(self.scores([w for doc in windows for w in doc]))
        results = []
        for payload, doc in zip(payloads, windows, strict=True):
            parts = [next(scores) for _ in doc]
            text = payload["text"]
            results.append({"nll": -sum(s for s, _ in parts), "tokens": sum(n for _, n in parts),
                            "chars": len(text), "bytes": len(text.encode("utf-8"))})  # fmt: skip
        return results

    def score_choices(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per question: the summed log-likelihood and token count of every choice after the question."""
        sequences, sizes = [], []
        for payload in payloads:
            context, sep = self.context(payload["question"])
            sizes.append(len(payload["choices"]))
            for choice in payload["choices"]:
                sequences.append(choice_sequence(context, self.encode(sep + choice), self.seq_len))
        scores = iter(self.scores(sequences))
        results = []
        for size in sizes:
            parts = [next(scores) for _ in range(size)]
            results.append({"logps": [s for s, _ in parts], "tokens": [n for _, n in parts]})
        return results

    def generate(self, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per prompt: the greedy answer (up to max_new_tokens, ending at a stop token) and its length in tokens."""
        import torch

        results = []
        keep = max(1, self.seq_len - self.settings.max_new_tokens)
        for payload in payloads:
            ids = torch.tensor([self.context(payload["prompt"])[0][-keep:]], device=self.model.device)
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.settings.max_new_tokens,
                do_sample=False, eos_token_id=list(self.stop_ids), pad_token_id=self.pad_id,
            )  # fmt: skip
            new = [t for t in out[0, ids.shape[1] :].tolist() if t not in self.stop_ids]
            results.append({"completion": self.tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new)})
        return results

    def scores(self, sequences: list[Scored]) -> list[tuple[float, int]]:
        return sequence_scores(self.model, sequences, self.settings.batch_size, self.pad_id)


def stop_ids(info: Any) -> tuple[int, ...]:
    """EOS plus the chat template's end-of-turn token: a base model answering a chat prompt must stop there too."""
    from jobs.train.post import stop_tokens
    from pipelines.errors import StageError

    try:
        return (info.eos_id, *stop_tokens(info, "models")) if info.chat_template else (info.eos_id,)
    except StageError:  # a template that cannot be split into turns has no end-of-turn token to find
        return (info.eos_id,)


TASKS = {"text": EvalModel.score_texts, "choice": EvalModel.score_choices, "generate": EvalModel.generate}


class ModelScorer:
    """Ray Data callable class: rows {model, task, index, payload (JSON)} -> {model, task, index, result (JSON)}.

    Rows arrive grouped by model, so an actor loads each model about once and holds one at a time."""

    def __init__(self, settings: ScoreSettings) -> None:
        self.settings = settings
        self.uri: str | None = None
        self.model: EvalModel | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = list(zip(batch["model"], batch["task"], batch["index"], batch["payload"], strict=True))
        out: dict[str, list[Any]] = {"model": [], "task": [], "index": [], "result": []}
        for (uri, task), group in itertools.groupby(rows, key=lambda row: (row[0], row[1])):
            group = list(group)
            results = TASKS[task](self.load(uri), [json.loads(row[3]) for row in group])
            for (_, _, index, _), result in zip(group, results, strict=True):
                out["model"].append(uri)
                out["task"].append(task)
                out["index"].append(int(index))
                out["result"].append(json.dumps(result))
        return {key: np.array(values, dtype=object if key != "index" else np.int64) for key, values in out.items()}

    def load(self, uri: str) -> EvalModel:
        if uri != self.uri:
            self.model = None
            gc.collect()  # free the previous model before the next one loads
            self.model, self.uri = EvalModel(uri, self.settings), uri
        assert self.model is not None
        return self.model

"""Per-item results to per-model metrics and the comparison table (results.md, results.json), plus the
per-question and per-prompt details (multiple_choice.jsonl, generations.jsonl)."""

from __future__ import annotations

import json
import math
from typing import Any

from jobs.eval.inputs import ModelRef, Question, Work
from pipelines import storage

Results = dict[str, list[dict[str, Any]]]  # task -> one result per item, in item order


def text_metrics(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Loss is nats per token; bits per character and per byte divide the same total by the text's length, so
    they compare models with different tokenizers."""
    nll = sum(r["nll"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    loss = nll / max(tokens, 1)
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_char": nll / math.log(2) / max(sum(r["chars"] for r in results), 1),
        "bits_per_byte": nll / math.log(2) / max(sum(r["bytes"] for r in results), 1),
        "text_tokens": tokens,
    }


def picks(question: Question, logps: list[float]) -> tuple[int, int]:
    """The choice with the highest summed log-likelihood, and the highest per character (lm-eval's acc_norm,
    which stops long answers losing just for having more tokens to pay for). Ties go to the first choice."""
    per_char = [lp / max(len(c), 1) for lp, c in zip(logps, question.choices, strict=True)]
    return _argmax(logps), _argmax(per_char)


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choice_metrics(questions: list[Question], results: list[dict[str, Any]]) -> dict[str, Any]:
    chosen = [picks(q, r["logps"]) for q, r in zip(questions, results, strict=True)]
    correct = sum(pick == q.answer for q, (pick, _) in zip(questions, chosen, strict=True))
    correct_norm = sum(pick == q.answer for q, (_, pick) in zip(questions, chosen, strict=True))
    return {"mc_accuracy": correct / len(questions), "mc_accuracy_norm": correct_norm / len(questions),
            "mc_correct": correct}  # fmt: skip


def model_row(model: ModelRef, work: Work, results: Results) -> dict[str, Any]:
    """One row of the table: the model and every metric measured for it."""
    row: dict[str, Any] = {"model": model.label, "uri": model.uri}
    if work.documents:
        row.update(text_metrics(results["text"]))
    if work.questions:
        row.update(choice_metrics(work.questions, results["choice"]))
    return row


def chance(questions: list[Question]) -> float:
    """Expected accuracy of picking a choice at random."""
    return sum(1 / len(q.choices) for q in questions) / len(questions)


def summary(models: list[ModelRef], work: Work, results: dict[str, Results]) -> dict[str, Any]:
    """What results.json holds: every model's row and what they were measured on."""
    out: dict[str, Any] = {"models": [model_row(m, work, results[m.uri]) for m in models]}
    if work.documents:
        out["text"] = {"documents": len(work.documents), "source": work.text_uri}
    if work.questions:
        out["multiple_choice"] = {"questions": len(work.questions), "chance": chance(work.questions)}
    if work.prompts:
        out["generations"] = [
            {"prompt": p, "answers": {m.label: results[m.uri]["generate"][i]["completion"] for m in models}}
            for i, p in enumerate(work.prompts)
        ]
    return out


COLUMNS = (  # (key, header, format)
    ("loss", "loss", "{:.4f}"),
    ("perplexity", "perplexity", "{:.2f}"),
    ("bits_per_char", "bits/char", "{:.4f}"),
    ("mc_accuracy", "MC accuracy", "{:.1%}"),
    ("mc_accuracy_norm", "MC accuracy (per char)", "{:.1%}"),
)


def markdown(title: str, table: dict[str, Any]) -> str:
    rows = table["models"]
    columns = [c for c in COLUMNS if c[0] in rows[0]]
    lines = [f"# {title}", "", "| model | " + " | ".join(h for _, h, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]  # fmt: skip
    for row in rows:
        lines.append(f"| {row['model']} | " + " | ".join(fmt.format(row[key]) for key, _, fmt in columns) + " |")
    lines.append("")
    if "text" in table:
        lines.append(f"Text: {table['text']['documents']} documents from {table['text']['source']}.")
    if "multiple_choice" in table:
        mc = table["multiple_choice"]
        lines.append(f"Multiple choice: {mc['questions']} questions; picking at random scores {mc['chance']:.1%}.")
    for item in table.get("generations", []):
        lines += ["", f"## {item['prompt']}", ""]
        for label, answer in item["answers"].items():
            lines.append(f"- **{label}**: {json.dumps(answer, ensure_ascii=False)}")
    return "\n".join(lines) + "\n"


def details(models: list[ModelRef], work: Work, results: dict[str, Results]) -> dict[str, str]:
    """multiple_choice.jsonl (every model's scores and picks per question) and generations.jsonl, as text."""
    mc, gen = [], []
    for m in models:
        for i, q in enumerate(work.questions):
            logps = results[m.uri]["choice"][i]["logps"]
            pick, pick_norm = picks(q, logps)
            mc.append({"model": m.label, "index": i, "question": q.question, "answer": q.answer, "pick": pick,
                       "pick_per_char": pick_norm, "logps": logps})  # fmt: skip
        for i, p in enumerate(work.prompts):
            gen.append({"model": m.label, "prompt": p, **results[m.uri]["generate"][i]})
    return {name: "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            for name, rows in (("multiple_choice.jsonl", mc), ("generations.jsonl", gen)) if rows}  # fmt: skip


def write(out_uri: str, title: str, models: list[ModelRef], work: Work, results: dict[str, Results]) -> dict:
    """Write the table and the details under `out_uri`; returns the table."""
    table = summary(models, work, results)
    storage.write_json(storage.join(out_uri, "results.json"), table)
    storage.write_text(storage.join(out_uri, "results.md"), markdown(title, table))
    for name, text in details(models, work, results).items():
        storage.write_text(storage.join(out_uri, name), text)
    return table

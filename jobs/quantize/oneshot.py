"""llm-compressor's `oneshot` on one model, run as a script by the quantize stage in llm-compressor's own libraries.

llm-compressor pins compressed-tensors and transformers versions that vLLM's do not match, so it cannot be
imported beside vLLM: `make install` puts it, with those pins, in a directory of its own (`<venv>/quantize`,
from infra/quantize-requirements.txt) that the stage puts first on this script's PYTHONPATH; torch comes from the
main environment. This file imports only the standard library at the top: the stage's process imports it to
find its path and to read `SCHEMES`.

    python oneshot.py --model DIR --out DIR --scheme w8a8-int8 --calibration rows.jsonl --seq-len 2048 ...

Calibration rows are JSON lines, each {"text": ...} or {"messages": [...]} (rendered with the chat template).
The last line printed is a JSON summary; a problem with the inputs exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# scheme -> (llm-compressor preset scheme, calibrated, SmoothQuant first)
SCHEMES = {
    "w8a8-int8": ("W8A8", True, True),
    "w4a16": ("W4A16", True, False),
    "fp8-dynamic": ("FP8_DYNAMIC", False, False),
}


def recipe(scheme: str, ignore: list[str], smoothing: float, dampening: float) -> list:
    """The modifiers llm-compressor's examples use for each scheme."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    preset, calibrated, smooth = SCHEMES[scheme]
    if not calibrated:
        return [QuantizationModifier(targets="Linear", scheme=preset, ignore=ignore)]
    gptq = GPTQModifier(targets="Linear", scheme=preset, ignore=ignore, dampening_frac=dampening)
    return [SmoothQuantModifier(smoothing_strength=smoothing), gptq] if smooth else [gptq]


def calibration_set(path: str, tokenizer, seq_len: int):
    """Token ids of every calibration row, as a `datasets.Dataset`; chat rows through the chat template."""
    from datasets import Dataset

    rows = []
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            if "messages" in row:
                if not tokenizer.chat_template:
                    fail(NO_TEMPLATE)
                text, special = tokenizer.apply_chat_template(row["messages"], tokenize=False), False
            else:
                text, special = row["text"], True
            ids = tokenizer(text, max_length=seq_len, truncation=True, add_special_tokens=special)["input_ids"]
            if len(ids) > 1:
                rows.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
    if not rows:
        fail("calibration.data: no row gave more than one token to calibrate on")
    return Dataset.from_list(rows)


NO_TEMPLATE = (
    "calibration.data holds chat rows, but the model's tokenizer has no chat template to render them; "
    "give plain-text rows (a text column) or a model with a chat template"
)


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--scheme", required=True, choices=sorted(SCHEMES))
    parser.add_argument("--calibration")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--ignore", default='["lm_head"]', help="JSON list of module names or 're:' patterns")
    parser.add_argument("--smoothing", type=float, default=0.8)
    parser.add_argument("--dampening", type=float, default=0.01)
    args = parser.parse_args(argv)

    started = time.time()
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    seq_len = min(args.seq_len, getattr(model.config, "max_position_embeddings", args.seq_len) or args.seq_len)
    modifiers = recipe(args.scheme, json.loads(args.ignore), args.smoothing, args.dampening)
    loaded = time.time()
    if SCHEMES[args.scheme][1]:
        dataset = calibration_set(args.calibration, tokenizer, seq_len)
        oneshot(model=model, dataset=dataset, recipe=modifiers, max_seq_length=seq_len,
                num_calibration_samples=len(dataset))  # fmt: skip
        samples = len(dataset)
    else:
        oneshot(model=model, recipe=modifiers)
        samples = 0
    quantized = time.time()
    model.save_pretrained(args.out, save_compressed=True)
    tokenizer.save_pretrained(args.out)
    times = {"load_s": loaded - started, "oneshot_s": quantized - loaded, "save_s": time.time() - quantized}
    print(json.dumps({"samples": samples, "seq_len": seq_len, **{k: round(v, 2) for k, v in times.items()}}))


if __name__ == "__main__":
    main()

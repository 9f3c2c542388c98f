# Everything a fresh machine needs goes through these targets: `make run`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
NATIVE := src/zeus/_native$(EXT_SUFFIX)
HTTPEXT := src/zeus/_http$(EXT_SUFFIX)
# These targets are development tools and may run as root (CI does): they let zeus run root
# workers.  Elsewhere zeus started as root refuses to unless --user or --allow-root is given.
export ZEUS_ALLOW_ROOT ?= 1

.PHONY: all install native run test unit lint typecheck check bench bench-http docs scaleout fuzz chaos slow soak drain reliability clean

all: install

# The editable install builds only the C extensions; the rule below adds the mypyc ones.
$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip "setuptools>=77" wheel
	ZEUS_PURE_PYTHON=1 $(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# The modules setup.py compiles with mypyc (its COMPILED list): an edit of one must rebuild,
# or the stale compiled module would shadow the edited source.
COMPILED_PY := $(shell sed -n 's/^    "\(src\/zeus\/.*\.py\)",$$/\1/p' setup.py)

# One setup.py run builds every extension (only the stale ones), for both targets at once.
$(NATIVE) $(HTTPEXT) &: src/zeus/_native.c src/zeus/_http.c $(COMPILED_PY) setup.py $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace
	touch $(NATIVE) $(HTTPEXT)
	@# built now, even those whose C did not change (an edited comment): fresh for tests/conftest.py
	@for f in $(COMPILED_PY:.py=$(EXT_SUFFIX)); do if [ -e $$f ]; then touch $$f; fi; done

install: $(STAMP) $(NATIVE) $(HTTPEXT)

native: $(NATIVE) $(HTTPEXT)

## run: serve the example app on http://127.0.0.1:8000
run: install
	$(BIN)/zeus serve examples.hello:app --bind 127.0.0.1:8000 --access-log

lint: install
	$(BIN)/ruff check src tests bench examples scripts reliability docs/mkdocs_hooks.py

typecheck: install
	$(BIN)/mypy

check: lint typecheck

## test: lint, types, and the whole test suite (unit, native, cross-process, end-to-end)
test: check
	$(BIN)/python -m pytest -q

## bench: the channel against Pipe/socketpair/memcpy; bench-http: Zeus against its peers (wrk)
bench: install
	$(BIN)/python bench/ipc.py

bench-http: install
	$(BIN)/python bench/http.py

## fuzz: the long runs of RELIABILITY.md "Hostile workers" and "Bad HTTP and fuzzing": the
## channel reader (100,000 seeded cases + 10,000 hypothesis cases), the HTTP front (100,000
## mutated requests) and 200 rounds of hostile workers under load
fuzz: install
	$(BIN)/python -m reliability.fuzz_channel --engine random --cases 100000
	$(BIN)/python -m reliability.fuzz_channel --cases 10000
	$(BIN)/python -m reliability.fuzz_http --cases 100000
	$(BIN)/python -m reliability.hostile --rounds 200

## chaos, slow, soak, drain: the long runs of RELIABILITY.md (each prints its table and exits
## non-zero if an invariant breaks); reliability: all four.  Extra options in CHAOS_ARGS,
## SLOW_ARGS, SOAK_ARGS, DRAIN_ARGS (e.g. CHAOS_ARGS="--quick", SOAK_ARGS="--requests 100000")
chaos: install
	$(BIN)/python -m reliability.chaos $(CHAOS_ARGS)

slow: install
	$(BIN)/python -m reliability.slow $(SLOW_ARGS)

soak: install
	$(BIN)/python -m reliability.soak $(SOAK_ARGS)

drain: install
	$(BIN)/python -m reliability.drain $(DRAIN_ARGS)

reliability: chaos slow soak drain

## docs: the documentation site into site/ (the configuration reference is generated)
docs: install
	$(BIN)/mkdocs build --strict --site-dir site

## scaleout: nginx in front of two zeus instances, one drained with TERM under load and
## restarted (apt-get installs nginx as root if missing); SCALEOUT_ARGS="--phase 10 ..."
scaleout: install
	$(BIN)/python scripts/scaleout.py $(SCALEOUT_ARGS)

clean:
	rm -rf $(VENV) build site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find src -name '*.so' -delete  # the C extensions and the mypyc-compiled modules

# Two commands do everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the extras `make` installs; requirements.lock pins every package they pull in
EXTRAS := index,serve,milvus,bench,dev,channels,teacher,tracing
LOCK := requirements.lock

.PHONY: install demo test bench lock clean

# Installs come from requirements.lock (exact versions, checked by tests/test_lock.py), so a fresh
# machine next month gets what CI tested; pyproject.toml keeps ranges for library users.
$(STAMP): pyproject.toml Makefile $(LOCK)
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c $(LOCK) --upgrade pip
	# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build
	$(BIN)/pip install -q -c $(LOCK) torch==2.13.0
	$(BIN)/pip install -q -c $(LOCK) -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/twotower demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/ml100k.py

# Re-resolve every dependency in a scratch venv (no constraints) and pin what it got.
lock:
	rm -rf .lock-venv && $(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q torch==2.13.0
	.lock-venv/bin/pip install -q -e '.[$(EXTRAS)]'
	.lock-venv/bin/python tools/write_lock.py $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .pytest_cache

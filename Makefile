# make setup: .venv with the pinned requirements (quick when already done); the rest run inside it.
PY := .venv/bin/python
STAMP := .venv/.requirements-installed

.PHONY: setup test lint bench

setup: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

test: setup
	TRITON_INTERPRET=1 $(PY) -m pytest tests

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) -m kernels.bench

# The two commands of the README: `make demo` (install, then run the MNIST audit) and
# `make test` (install, then run the test suite). Both create or reuse the venv in $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.auditai-installed
OUT ?= runs/mnist

.PHONY: venv demo test test-fast clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all,test]'
	# auto_LiRPA 0.3's metadata pins torch<1.13 and torchvision; it works on torch 2.13
	# through auditai_ops/verify/lirpa_compat.py, so it is installed without its pins.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps auto-lirpa==0.3
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/auditai run examples/mnist/audit.yaml --out $(OUT)

test: $(STAMP)
	$(PY) -m pytest || { status=$$?; [ $$status -ne 5 ] || echo "pytest collected no tests (exit code 5)" >&2; exit $$status; }

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) runs auditai-out .pytest_cache .hypothesis

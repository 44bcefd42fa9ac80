# The README's commands. Each target does its own set-up on a fresh machine:
# virtual environment from the lock file, generated protobuf code, trained models.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
PROTOS := $(wildcard protos/rhd/v1/*.proto)
GEN    := services/rhd/v1/rhd_pb2.py
VIEW_MODEL  := models/view/1/saved_model.pb
STUDY_MODEL := models/study/1/model.skops
VIEW_CODE   := $(wildcard services/rhd/synth/*.py) services/rhd/training/view.py services/rhd/training/provenance.py \
               services/rhd/view/model.py
STUDY_CODE  := $(wildcard services/rhd/*/ops.py) services/rhd/training/study.py services/rhd/training/report.py \
               services/rhd/inprocess.py

.PHONY: demo test bench setup models lint lock clean

demo: setup models
	$(BIN)/rhd demo

test: setup models
	$(BIN)/python -m pytest -q

setup: $(STAMP) $(GEN)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(UV) pip install -q --python $(BIN)/python -r requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

$(GEN): $(PROTOS) $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos --python_out=services --pyi_out=services $(PROTOS)

models: $(VIEW_MODEL) $(STUDY_MODEL)

$(VIEW_MODEL): $(VIEW_CODE) | setup
	rm -rf models/view/1 && $(BIN)/rhd train view

$(STUDY_MODEL): $(VIEW_MODEL) $(STUDY_CODE) | setup
	rm -rf models/study/1 && $(BIN)/rhd train study

lint: setup
	$(BIN)/ruff check services tests loadtest
	$(BIN)/mypy services/rhd/runtime

# Re-resolve the pinned versions after editing pyproject.toml.
lock: $(STAMP)
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) var models/view/[0-9]* models/study/[0-9]* $(GEN) services/rhd/v1/*_pb2.pyi

# Figures, not tests: per-frame cost of each stage's functions beside raw decode and HSV.
bench: setup
	$(BIN)/python loadtest/bench_stages.py

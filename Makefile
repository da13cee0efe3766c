# Every target creates .venv when it is missing and reinstalls when pyproject.toml changes.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo airflow test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# pip, not uv: pip takes the torch/torchvision pair from this machine's wheels instead of a CUDA download.
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	# setuptools leaves build metadata here; on sys.path (python -m from this folder) it lists our plugin a
	# second time, and Airflow's task-side plugin loader then drops the plugins after it (OpenLineage's listener).
	rm -rf airflow_tl.egg-info
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m airflow_tl.demo run

# Local S3 (seeded) and Airflow with our DAGs and dashboard on 127.0.0.1; Ctrl-C stops all of it.
airflow: $(STAMP)
	$(BIN)/python -m airflow_tl.demo airflow $(if $(PORT),--port $(PORT))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	@$(BIN)/python -m pytest; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests (exit 5): failing" >&2; fi; exit $$status

bench: $(STAMP)
	@set -e; for f in bench/bench_*.py; do echo "== $$f"; $(BIN)/python $$f; done

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache *.egg-info

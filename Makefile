# The two commands of the README: `make demo` and `make test`. Each sets itself up idempotently.
PY        ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP     := $(VENV)/.nernfast-installed

.PHONY: demo test bench check-cuda ctest setup clean

$(VENV)/.deps: Makefile pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q $(TORCH_PIN)
	$(VPY) -m pip install -q numpy pyyaml safetensors tqdm scikit-learn matplotlib pytest pytest-benchmark
	touch $@

# Rebuilt when sources of the extension change; CUDA opt-in (make test builds the CPU part only).
$(STAMP): $(VENV)/.deps setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu)
	NERNFAST_CUDA=$${NERNFAST_CUDA:-0} $(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(VPY) -m nernfast.train --recipe teacher_decoupled

test: $(STAMP)
	$(VPY) -m pytest tests -q --durations=15

bench: $(STAMP)
	$(VPY) -m pytest benchmarks -q

clean:
	rm -rf build *.egg-info nernfast/_C*.so $(STAMP)

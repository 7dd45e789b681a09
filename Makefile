# The two commands of the README: `make demo` and `make test`. Each sets itself up idempotently.
PY        ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
TORCH_PIN := torch==2.14.1 torchvision==0.29.1
STAMP     := $(VENV)/.nernfast-installed

.PHONY: demo test bench bench-tta data fashion-mnist compression compression-fashion-mnist readme-table check-cuda ctest setup clean

$(VENV)/.deps: Makefile pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q $(TORCH_PIN)
	$(VPY) -m pip install -q numpy pyyaml safetensors zstandard constriction torchao tqdm scikit-learn matplotlib pytest pytest-benchmark
	touch $@

# Rebuilt when sources of the extension change; CUDA opt-in (make test builds the CPU part only).
$(STAMP): $(VENV)/.deps setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/*.cu)
	NERNFAST_CUDA=$${NERNFAST_CUDA:-0} $(VPY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

setup: $(STAMP)

# Fashion-MNIST, the real workload: Debian's dataset-fashion-mnist (30 MB of IDX .gz files in
# /usr/share/datasets/fashion-mnist, where nernfast looks when no --data-root is given).
FMNIST_DIR := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
data:
	@if [ -f $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz ]; then echo "data: Fashion-MNIST is installed in $(FMNIST_DIR)"; \
	else echo "data: Fashion-MNIST missing: installing Debian's dataset-fashion-mnist with apt-get"; \
	  $(SUDO) apt-get install -y -q dataset-fashion-mnist || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }; fi

# The Fashion-MNIST results (docs/fashion-mnist.md): trains the runs that are missing (hours on 2 CPU
# cores; resumable run by run), then renders the page. RENDER=1 only renders.
fashion-mnist: $(STAMP) data
	$(VPY) experiments/fashion_mnist.py $(if $(RENDER),--render,)

# The compression comparisons of docs/compression.md (NNCodec in its own virtualenv, ../nncodec-venv; the runs
# and compact artefacts they need, skipping what exists): digits, and Fashion-MNIST (needs its runs' artefacts).
compression: $(STAMP)
	PY=$(VPY) bash benchmarks/compression_digits.sh
compression-fashion-mnist: $(STAMP) data
	PY=$(VPY) bash benchmarks/compression_fashion_mnist.sh

# The README's table of the recipes on the embedded default, regenerated from an empty cache.
readme-table: $(STAMP)
	$(VPY) experiments/digits_table.py

# Rerunning the demo replaces the previous demo run (--overwrite); `python -m nernfast.train` alone
# refuses to overwrite an existing run.
demo: $(STAMP)
	$(VPY) -m nernfast.train --recipe teacher_decoupled --overwrite

test: $(STAMP)
	$(VPY) -m pytest tests -q --durations=15

# The CPU throughput suite (benchmarks/RESULTS.md): writes benchmarks/results.json and prints the table,
# then the time to accuracy on the embedded default (~15 min on the 2-core CPU).
# Extra options via BENCH_ARGS, e.g. make bench BENCH_ARGS="--threads 1" on a busy machine.
bench: $(STAMP)
	$(VPY) benchmarks/run_bench.py $(BENCH_ARGS)
	$(VPY) benchmarks/time_to_accuracy.py --out benchmarks/time_to_accuracy_digits.json

# Time to accuracy on Fashion-MNIST (37 min on the 2-core Intel Xeon: decoupled's whole training, then the
# reference algorithm for 3x nernfast's time to the target); kept out of `make bench` for its length.
bench-tta: $(STAMP) data
	$(VPY) benchmarks/time_to_accuracy.py --dataset fashion-mnist --config fashion_mnist.yaml \
	  --out benchmarks/time_to_accuracy_fashion-mnist.json

# Compile check of the CUDA part (it cannot run here): builds the whole extension with its .cu for
# sm_90 only, with this machine's nvcc, into build/check-cuda (not into the package), then loads it
# and checks that CUDA kernels are registered for every op.
CHECK_CUDA_HOME ?= /usr/local/cuda
check-cuda: $(VENV)/.deps
	rm -rf build/check-cuda
	CUDA_HOME=$(CHECK_CUDA_HOME) PATH=$(CHECK_CUDA_HOME)/bin:$$PATH NERNFAST_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 \
	  $(VPY) setup.py -q build_ext --build-lib build/check-cuda/lib --build-temp build/check-cuda/tmp
	$(VPY) -c "import glob, torch; torch.ops.load_library(glob.glob('build/check-cuda/lib/nernfast/_C*.so')[0]); \
	  ops = ('scatter_rows', 'gather_rows', 'scatter_rows_into'); \
	  ok = [torch._C._dispatch_has_kernel_for_dispatch_key('nernfast::' + o, 'CUDA') for o in ops]; \
	  assert all(ok), dict(zip(ops, ok)); print('check-cuda: sm_90 build OK, CUDA kernels registered for', ops)"

# C++ test of the ops against libtorch (CMakeLists.txt, csrc/test/); not part of `make test`.
ctest: $(VENV)/.deps
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH="$$($(VPY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure

clean:
	rm -rf build *.egg-info nernfast/_C*.so $(STAMP)

# The README's two commands: `make demo` (the main job) and `make test` (the whole default suite).
# Everything is installed by this file into ./.venv, so a fresh clone needs only python3, a C compiler and
# (for the system packages below) apt-get.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD_DEPS := "scikit-build-core>=0.10" "numpy>=2.0" "scipy-openblas32>=0.3.27"
# With nvcc on the PATH the CUDA backend is built (CAPTIONAURA_CUDA=AUTO); cuBLAS comes from NVIDIA's wheel
# when the toolkit has none (the `cuda` extra in pyproject.toml).
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CUDA_BUILD_DEPS := $(if $(NVCC),"nvidia-cublas==13.*")
JOBS ?= 2

.PHONY: demo test install venv system-deps c-tests fuzz-smoke bench clean cuda-compile-check bench-cuda

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)

# Editable install: the build folder (build/<wheel tag>) is kept, so rebuilding after a C change is incremental.
install: $(PY)
	$(PY) -m pip install -q $(BUILD_DEPS) $(CUDA_BUILD_DEPS)
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PY) -m pip install -q --no-build-isolation -e ".[test]"

# Debian packages some tests need (Java for the COCO PTB tokenizer jar, Chromium for the web app's browser
# tests; clang for libFuzzer is installed by fuzz-smoke).
# Without root or apt the affected tests skip and say why.
system-deps:
	@command -v java >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq default-jre-headless) \
		|| echo "warning: Java not installed; PTB-parity tests will skip"
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "warning: chromium not installed; the web app's browser tests will skip"

# The C core's own tests, built with AddressSanitizer + UndefinedBehaviorSanitizer. Every tests/c/test_*.c
# is one program; it names the core sources it links in a comment line `CA_TEST_SOURCES: csrc/a.c ...`
# and optionally extra compiler/linker arguments in `CA_TEST_LIBS: ...`, shell-expanded with $$PY set to
# the venv's python (e.g. `CA_TEST_LIBS: -fopenmp -I$$($$PY -c "import scipy_openblas32 as s; print(s.get_include_dir())")`).
# A failed check, a non-zero exit or any sanitizer report fails the target (and `make test`).
CC ?= cc
C_TEST_DIR := tests/c/build
C_TEST_FLAGS := -std=c11 -g -O1 -Wall -Wextra -Wno-unused-parameter -Icsrc/include \
	-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
C_TEST_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1 \
	UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
c-tests:
	@mkdir -p $(C_TEST_DIR)
	@set -e; for t in tests/c/test_*.c; do \
	  [ -f "$$t" ] || continue; \
	  name=$$(basename $$t .c); \
	  srcs=$$(sed -n 's/^.*CA_TEST_SOURCES:\(.*\)$$/\1/p' $$t | head -n1 | sed 's|[[:space:]]*\*/[[:space:]]*$$||'); \
	  libs=$$(PY=$(PY) eval echo "$$(sed -n 's/^.*CA_TEST_LIBS:\(.*\)$$/\1/p' $$t | head -n1 | sed 's|\*/.*$$||')"); \
	  echo "c-tests: building $$name ($$srcs)"; \
	  $(CC) $(C_TEST_FLAGS) -o $(C_TEST_DIR)/$$name $$t $$srcs -lm $$libs; \
	  echo "c-tests: running $$name"; \
	  $(C_TEST_ENV) ./$(C_TEST_DIR)/$$name; \
	done

# A bounded fuzzing run (libFuzzer + ASan + UBSan) of the safetensors and config parsers, FUZZ_TIME seconds
# per target, from a temporary copy of the committed seed corpus (fuzz/corpus/<target>/) so it does not grow.
# Installs clang and its libFuzzer runtime with apt-get when missing; without them it warns and succeeds.
# A long run: make fuzz-smoke FUZZ_TIME=600 (or FUZZ_RUNS=1000000 for a fixed number of inputs).
FUZZ_TIME ?= 30
FUZZ_RUNS ?= -1
FUZZ_EXTRA ?=
FUZZ_DIR := fuzz/build
FUZZ_TARGETS := safetensors config
FUZZ_SOURCES := csrc/json.c csrc/safetensors.c csrc/safetensors_index.c csrc/config.c csrc/status.c
FUZZ_FLAGS := -std=c11 -g -O1 -Icsrc/include -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	-fno-omit-frame-pointer
fuzz-smoke:
	@mkdir -p $(FUZZ_DIR)
	@if ! command -v clang >/dev/null 2>&1; then \
	  echo "fuzz-smoke: clang not found, trying apt-get install clang"; \
	  (apt-get update -qq && apt-get install -y -qq clang) >/dev/null 2>&1 || true; \
	fi; \
	if ! command -v clang >/dev/null 2>&1; then \
	  echo "WARNING: fuzz-smoke skipped: clang is not installed and could not be installed (needs root + apt-get)"; \
	  exit 0; \
	fi; \
	printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { return 0; }\n' > $(FUZZ_DIR)/probe.c; \
	if ! clang -fsanitize=fuzzer $(FUZZ_DIR)/probe.c -o $(FUZZ_DIR)/probe >/dev/null 2>&1; then \
	  ver=$$(clang -dumpversion | cut -d. -f1); \
	  echo "fuzz-smoke: libFuzzer runtime missing, trying apt-get install libclang-rt-$$ver-dev"; \
	  (apt-get install -y -qq libclang-rt-$$ver-dev || (apt-get update -qq && apt-get install -y -qq libclang-rt-$$ver-dev)) >/dev/null 2>&1 || true; \
	fi; \
	if ! clang -fsanitize=fuzzer $(FUZZ_DIR)/probe.c -o $(FUZZ_DIR)/probe >/dev/null 2>&1; then \
	  echo "WARNING: fuzz-smoke skipped: clang cannot link libFuzzer (install libclang-rt-<version>-dev)"; \
	  exit 0; \
	fi; \
	set -e; for t in $(FUZZ_TARGETS); do \
	  clang $(FUZZ_FLAGS) -o $(FUZZ_DIR)/fuzz_$$t fuzz/fuzz_$$t.c $(FUZZ_SOURCES) -lm; \
	  work=$$(mktemp -d); cp fuzz/corpus/$$t/* $$work/; \
	  echo "fuzz-smoke: fuzz_$$t for $(FUZZ_TIME) s"; \
	  if ! UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ./$(FUZZ_DIR)/fuzz_$$t -max_total_time=$(FUZZ_TIME) \
	      -runs=$(FUZZ_RUNS) -dict=fuzz/json.dict -print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/ $(FUZZ_EXTRA) $$work \
	      > $(FUZZ_DIR)/fuzz_$$t.log 2>&1; then \
	    tail -n 60 $(FUZZ_DIR)/fuzz_$$t.log; rm -rf $$work; \
	    echo "fuzz-smoke: fuzz_$$t FAILED (crash input saved under $(FUZZ_DIR)/)"; exit 1; \
	  fi; \
	  grep -E "stat::number_of_executed_units|stat::peak_rss_mb|cov:" $(FUZZ_DIR)/fuzz_$$t.log | tail -n 3; \
	  rm -rf $$work; \
	done

# Every kernels/*.cu compiled on its own with warnings as errors, for each architecture of CMakeLists.txt,
# so a kernel that does not compile fails `make test` on machines with nvcc (no GPU needed).
CUDA_ARCHS ?= 80 90
CUDA_CHECK_DIR := build/cuda-compile-check
cuda-compile-check: install
	@if [ -z "$(NVCC)" ]; then echo "cuda-compile-check: skipped (nvcc not found)"; exit 0; fi; \
	inc=$$($(PY) -c "import nvidia.cu13 as c; print(list(c.__path__)[0] + '/include')" 2>/dev/null); \
	gencode=""; for a in $(CUDA_ARCHS); do gencode="$$gencode -gencode arch=compute_$$a,code=sm_$$a"; done; \
	mkdir -p $(CUDA_CHECK_DIR); \
	ls kernels/*.cu | xargs -P $(JOBS) -I{} sh -c 'echo "cuda-compile-check: {}"; \
	  $(NVCC) -std=c++17 -O3 '"$$gencode"' -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror \
	    -Icsrc/include -Ikernels '"$${inc:+-I$$inc}"' -c {} -o $(CUDA_CHECK_DIR)/$$(basename {} .cu).o' \
	  || { echo "cuda-compile-check: FAILED"; exit 1; }

test: install system-deps c-tests fuzz-smoke cuda-compile-check
	$(PY) -m pytest

demo: install
	$(PY) -m captionaura demo

bench: install
	$(PY) -m pip install -q "torch==2.13.0" "transformers>=4.57"
	$(PY) benchmarks/bench_lfm2.py

# The CUDA backend against PyTorch on the same GPU (exits with a message without one; needs a CUDA torch build).
bench-cuda: install
	$(PY) -m pip install -q torch "transformers>=4.57" "peft>=0.17"
	$(PY) benchmarks/bench_cuda.py

clean:
	rm -rf build $(VENV) .pytest_cache

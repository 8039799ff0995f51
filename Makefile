# Thin wrapper over CMake: `make` builds into build/, `make test` runs every
# test, `make demo` generates text with the default model.
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
MODEL ?= ../shared/models/llama/aidreams260K-f32.gguf
PROMPT ?= Echoes of
N ?= 48
# ON: compiler warnings are errors (KVLM_FATAL_WARNINGS; .ci/run builds that way)
FATAL_WARNINGS ?= OFF

.PHONY: all deps test-deps build test demo install sanitize tsan coverage fuzz fuzz-build fuzz-corpus exports \
	clean cross-arm64 test-arm64 test-arm64-ci

all: build

deps:
	@bash scripts/deps.sh build

test-deps:
	@bash scripts/deps.sh test

# configure quietly, but show warnings and errors (a missing package says which)
CONFIGURE = cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release -DKVLM_FATAL_WARNINGS=$(FATAL_WARNINGS) --log-level=WARNING

build: deps
	@$(CONFIGURE) -DKVLM_REQUIRE_TESTS=OFF
	@cmake --build $(BUILD) -j $(JOBS)

test: test-deps deps
	@$(CONFIGURE) -DKVLM_REQUIRE_TESTS=ON
	@cmake --build $(BUILD) -j $(JOBS)
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# Only what the demo needs (the CLI), quietly; no test-only package is required.
demo: deps
	@$(CONFIGURE) -DKVLM_REQUIRE_TESTS=OFF
	@cmake --build $(BUILD) -j $(JOBS) --target kvlm_cli -- --no-print-directory >/dev/null
	@$(BUILD)/bin/kvlm run -m $(MODEL) -p "$(PROMPT)" -n $(N)

# Installs the header, libkvlm.a, libkvlm.so, kvlm.pc, the CMake package and the kvlm binary
# under PREFIX (builds only those).
PREFIX ?= /usr/local
install: deps
	@$(CONFIGURE) -DKVLM_REQUIRE_TESTS=OFF
	@cmake --build $(BUILD) -j $(JOBS) --target kvlm kvlm_shared kvlm_cli -- --no-print-directory >/dev/null
	@cmake --install $(BUILD) --prefix $(PREFIX)

# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer. COVERAGE=ON also instruments it
# for gcov (what .ci/run does, then `scripts/coverage.sh --report build-san`: the coverage gate
# without running the suite a second time; docs/TESTING.md).
COVERAGE ?= OFF
sanitize: test-deps
	@cmake -S . -B build-san -DCMAKE_BUILD_TYPE=Debug -DKVLM_SANITIZE=ON -DKVLM_COVERAGE=$(COVERAGE) \
		-DKVLM_FATAL_WARNINGS=$(FATAL_WARNINGS) >/dev/null
	@cmake --build build-san -j $(JOBS)
	@if [ "$(COVERAGE)" = ON ]; then find build-san -name '*.gcda' -delete; fi # counters of this run only
	@cd build-san && ctest --output-on-failure -j $(JOBS)

# The tests that use threads (the pool, concurrent sessions on a shared cache,
# cancellation, batched decode, 2-thread eval, concurrent tokenizing, the disk tier's spilling thread)
# under ThreadSanitizer.
TSAN_TESTS ?= test_exact|test_session|test_generate|test_tokenizer|test_kv|test_disk
tsan: test-deps
	@bash scripts/deps.sh tsan
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DKVLM_TSAN=ON -DKVLM_FATAL_WARNINGS=$(FATAL_WARNINGS) >/dev/null
	@cmake --build build-tsan -j $(JOBS)
	@cd build-tsan && TSAN_OPTIONS="halt_on_error=1 abort_on_error=1 $(TSAN_OPTIONS)" \
		ctest --output-on-failure -j $(JOBS) -R '^($(TSAN_TESTS))$$'

# Line and branch coverage of the library (gcc --coverage, -O0, build-cov/): the suite, gcovr's
# per-file report (build-cov/coverage/) and the gate of scripts/coverage_gate.txt (docs/TESTING.md).
coverage:
	@bash scripts/deps.sh coverage
	@cmake -S . -B build-cov -DCMAKE_BUILD_TYPE=Debug -DKVLM_COVERAGE=ON -DKVLM_REQUIRE_TESTS=ON \
		-DKVLM_FATAL_WARNINGS=$(FATAL_WARNINGS) >/dev/null
	@cmake --build build-cov -j $(JOBS)
	@bash scripts/coverage.sh build-cov $(JOBS)

# libFuzzer targets (clang, ASan+UBSan): `make fuzz FUZZ_SECONDS=N` runs each for N seconds.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= gguf tokenizer session chat json_schema server http
fuzz-build:
	@bash scripts/deps.sh fuzz
	@cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=Release -DKVLM_FUZZ=ON \
		-DKVLM_FATAL_WARNINGS=$(FATAL_WARNINGS) >/dev/null
	@cmake --build build-fuzz -j $(JOBS)

fuzz: fuzz-build
	@bash fuzz/run.sh build-fuzz $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# Regenerates the seed corpora of fuzz/corpus/ (with build/bin/kvlm).
fuzz-corpus: build
	@bash fuzz/make_corpus.sh $(BUILD)/bin/kvlm

# What the library exports: libkvlm.a only kvlm_* (declared in kvlm.h) and kv_* names, libkvlm.so only
# the kvlm_* ones; lists the others.
exports: build
	@bash scripts/check_exports.sh $(BUILD)/libkvlm.a include/kvlm.h
	@bash scripts/check_exports.sh $(BUILD)/libkvlm.so include/kvlm.h

# ARM64: cross-compiled (cmake/aarch64.cmake: Debian's gcc-aarch64-linux-gnu and the arm64 multiarch
# libraries, scripts/deps.sh arm64) into build-arm64: the library, the CLI and the tests below.
# test-arm64 runs ARM_TESTS under qemu-aarch64 once per emulated CPU of ARM_CPUS, one per kernel
# level the dispatch picks (cortex-a53: NEON; neoverse-n1: + dotprod; max: everything qemu emulates,
# i8mm included, which runs the dotprod level), and ARM_E2E_TESTS (end to end: test_exact on the
# small models, a parity test) once per CPU of ARM_E2E_CPUS.
ARM_BUILD ?= build-arm64
ARM_TESTS ?= test_simd|test_quant|test_vmath
ARM_CPUS ?= cortex-a53 neoverse-n1 max
ARM_E2E_TESTS ?= test_exact|test_parity
ARM_E2E_CPUS ?= cortex-a53 max
ARM_TARGETS ?= kvlm_cli test_simd test_quant test_vmath test_exact test_parity
cross-arm64:
	@bash scripts/deps.sh arm64
	@cmake -S . -B $(ARM_BUILD) -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64.cmake -DCMAKE_BUILD_TYPE=Release \
		-DKVLM_FATAL_WARNINGS=$(FATAL_WARNINGS) -DKVLM_REQUIRE_TESTS=ON --log-level=WARNING
	@cmake --build $(ARM_BUILD) -j $(JOBS) --target $(ARM_TARGETS) -- --no-print-directory

test-arm64: cross-arm64
	@for cpu in $(ARM_CPUS); do \
		echo "== qemu-aarch64 -cpu $$cpu: $(ARM_TESTS)"; \
		(cd $(ARM_BUILD) && KVLM_QEMU_CPU=$$cpu ctest --output-on-failure -j $(JOBS) -R '^($(ARM_TESTS))$$') || exit 1; \
	done
	@for cpu in $(ARM_E2E_CPUS); do \
		echo "== qemu-aarch64 -cpu $$cpu: $(ARM_E2E_TESTS)"; \
		(cd $(ARM_BUILD) && KVLM_QEMU_CPU=$$cpu ctest --output-on-failure -j $(JOBS) -R '^($(ARM_E2E_TESTS))$$') || exit 1; \
	done

# CI's subset (.ci/run): the arm64-ci tests of tests/CMakeLists.txt (test_simd at cortex-a53 and max;
# test_quant, test_vmath and end to end the KVLM_ARM_CI_E2E cases of test_exact and test_parity at max),
# JOBS at a time, about 4 minutes on 2 idle cores (docs/BENCHMARKS.md, "ARM64").
test-arm64-ci: cross-arm64
	@cd $(ARM_BUILD) && ctest --output-on-failure -j $(JOBS) -L arm64-ci

clean:
	rm -rf $(BUILD) build-san build-tsan build-cov build-fuzz $(ARM_BUILD)

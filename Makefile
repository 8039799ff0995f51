# Thin wrapper over CMake: `make` builds into build/, `make test` runs every
# test, `make demo` generates text with the default model.
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
MODEL ?= ../shared/models/llama/aidreams260K-f32.gguf
PROMPT ?= Echoes of
N ?= 48

.PHONY: all deps test-deps build test demo sanitize clean

all: build

deps:
	@bash scripts/deps.sh build

test-deps:
	@bash scripts/deps.sh test

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: test-deps build
	@cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	@$(BUILD)/bin/kvlm run -m $(MODEL) -p "$(PROMPT)" -n $(N)

# The test suite under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitize: test-deps
	@cmake -S . -B build-san -DCMAKE_BUILD_TYPE=Debug -DKVLM_SANITIZE=ON >/dev/null
	@cmake --build build-san -j $(JOBS)
	@cd build-san && ctest --output-on-failure -j $(JOBS)

clean:
	rm -rf $(BUILD) build-san

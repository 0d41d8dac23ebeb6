# perflow - build, test, benchmark.
#
#   make            engine library + bin/perflow (CUDA parts only when nvcc is found)
#   make engine     the engine alone: needs only libc, OpenBLAS and jansson, so it
#                   also builds on a GPU machine without the worker's libraries
#   make test       installs missing Debian packages (ops/install-deps.sh), builds, runs every test
#   make bench      benchmarks against PyTorch (needs the reference venv: make deps-reference)
#   make fuzz       libFuzzer targets (clang, ASan, UBSan) in $(B)/fuzz/
#   make deps       Debian packages and the test tools' Python venv
#   make deps-reference   also the reference stack (torch, diffusers, transformers) in .venv
#
# Sources are found by wildcard: a new engine/*.c joins the library, a new
# tests/test_*.c becomes a test binary, a new tests/fuzz/fuzz_*.c a fuzz target.

B       ?= build
BIN     ?= bin
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-format-truncation -Wno-unused-parameter \
           -fopenmp -Iengine -MMD -MP
LDLIBS_ENGINE = -lopenblas -ljansson -lutf8proc -lpng -lm -fopenmp -lpthread
VENV    = .venv
PY      = $(VENV)/bin/python

# CUDA: built only where nvcc exists (a later issue fills kernels/).
NVCC := $(shell command -v nvcc 2>/dev/null)
CU_SRC := $(wildcard kernels/*.cu)
ifneq ($(NVCC),)
ifneq ($(CU_SRC),)
HAVE_CUDA = 1
endif
endif

ENGINE_SRC := $(wildcard engine/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(B)/%.o)
CLI_SRC    := $(wildcard cli/*.c)
CLI_OBJ    := $(CLI_SRC:%.c=$(B)/%.o)
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(B)/tests/%)
FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN   := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%)
BENCH_SRC  := $(wildcard tests/bench/bench_*.c)
BENCH_BIN  := $(BENCH_SRC:tests/bench/%.c=$(B)/bench/%)

ifeq ($(HAVE_CUDA),1)
CU_OBJ := $(CU_SRC:%.cu=$(B)/%.o)
ENGINE_OBJ += $(CU_OBJ)
CFLAGS += -DPF_HAVE_CUDA
LDLIBS_ENGINE += -lcudart -lcublas -lstdc++
endif

.PHONY: all engine test bench fuzz deps deps-reference demo clean asan info
all: info engine $(BIN)/perflow

info:
	@echo "perflow build: nvcc $(if $(NVCC),found at $(NVCC),not found)$(if $(HAVE_CUDA), - building CUDA backend,$(if $(NVCC), - no kernels yet, - CPU only))"

engine: $(B)/libperflow_engine.a

$(B)/libperflow_engine.a: $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(B)/kernels/%.o: kernels/%.cu
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -std=c++17 -Iengine -c $< -o $@

$(BIN)/perflow: $(CLI_OBJ) $(B)/libperflow_engine.a
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(B)/libperflow_engine.a $(LDLIBS_ENGINE)

$(B)/tests/%: tests/%.c $(B)/libperflow_engine.a tests/test_util.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(B)/libperflow_engine.a $(LDLIBS_ENGINE) -lcmocka

# ASan + UBSan build of the CLI, used by the hostile-input tests.
ASAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
asan: $(B)/asan/perflow
$(B)/asan/perflow: $(ENGINE_SRC) $(CLI_SRC) $(wildcard engine/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -O2 -MMD -MP,$(CFLAGS)) $(ASAN_FLAGS) -o $@ $(ENGINE_SRC) $(CLI_SRC) $(LDLIBS_ENGINE)

fuzz: $(FUZZ_BIN)
$(B)/fuzz/%: tests/fuzz/%.c $(ENGINE_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -O1 -g -Iengine -fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    -o $@ $< $(ENGINE_SRC) $(LDLIBS_ENGINE)

$(B)/bench/%: tests/bench/%.c $(B)/libperflow_engine.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(B)/libperflow_engine.a $(LDLIBS_ENGINE)

$(B)/.deps-stamp: ops/install-deps.sh
	sh ops/install-deps.sh
	@mkdir -p build && touch $@

deps: $(B)/.deps-stamp

deps-reference: deps
	sh ops/install-deps.sh --reference

test: $(B)/.deps-stamp all $(TEST_BIN) $(B)/asan/perflow $(FUZZ_BIN)
	PERFLOW=$(BIN)/perflow PERFLOW_ASAN=$(B)/asan/perflow sh tests/run_tests.sh $(TEST_BIN)

bench: all $(BENCH_BIN)
	@test -x $(PY) || { echo "make bench needs the reference stack: run 'make deps-reference' first"; exit 1; }
	sh tests/bench/run_bench.sh

demo: $(B)/.deps-stamp all
	PERFLOW=$(BIN)/perflow sh ops/demo.sh

clean:
	rm -rf build bin/perflow

-include $(ENGINE_OBJ:.o=.d) $(CLI_OBJ:.o=.d)

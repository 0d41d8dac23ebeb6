# perflow - build, test, benchmark.
#
#   make            engine library + bin/perflow (CUDA parts only when nvcc is found)
#   make engine     the engine alone: needs only libc, OpenBLAS, jansson, utf8proc,
#                   libpng and libjpeg, so it also builds on a GPU machine without
#                   the worker's libraries
#   make test       installs missing Debian packages (ops/install-deps.sh), builds, runs every test
#   make bench      benchmarks against PyTorch (needs the reference venv: make deps-reference)
#   make fuzz       libFuzzer targets (clang, ASan, UBSan) in $(B)/fuzz/
#   make deps       Debian packages and the test tools' Python venv
#   make deps-reference   also the reference stack (torch, diffusers, transformers) in .venv
#   make demo       installs what is missing, builds, runs ops/demo.sh
#   make chaos      the worker fleet under failure, with figures (ops/chaos.py; not part of make test)
#   make mutate     the mutation check: planted bugs the tests must catch (tests/mutate.sh; not part of make test)
#   make install    PREFIX=/usr/local DESTDIR=: programs, systemd units, schemas, an example
#                   settings file, man pages from --help, docs; make uninstall removes them
#
# Sources are found by wildcard: a new engine/*/*.c or common/*.c joins the library, a new
# tests/test_*.c becomes a test binary, a new tests/fuzz/fuzz_*.c a fuzz target.

B       ?= build
BIN     ?= bin
# engine/ holds one folder a concept (core: tensors, backends; formats: weights and
# their namings; models; pipeline: requests, sampler, provenance; image: input and
# resizing), each on the include path, so an include names its header alone.
ENGINE_INC := -Icommon -Iengine $(addprefix -I,$(patsubst %/,%,$(sort $(wildcard engine/*/))))
CC      ?= cc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wno-format-truncation -Wno-unused-parameter \
           -fopenmp $(ENGINE_INC) -MMD -MP $(EXTRA_CFLAGS)
# Where the configs the project ships for single-file checkpoints live (engine/formats/checkpoint.c;
# $PERFLOW_CONFIGS overrides it at run time).
CFLAGS  += -DPF_CONFIGS_DIR='"$(CURDIR)/configs"'
# EXTRA_CFLAGS / EXTRA_LDFLAGS: include and library dirs of libraries outside the
# system paths (tests/device/check.sh builds against unpacked Debian packages).
LDLIBS_ENGINE = $(EXTRA_LDFLAGS) -lopenblas -ljansson -lutf8proc -lpng -ljpeg -lm -fopenmp -lpthread
VENV    = .venv
PY      = $(VENV)/bin/python

# CUDA: built only where nvcc exists: on the PATH, in /usr/local/cuda, or in .cuda/
# (NVIDIA's PyPI wheels, installed by ops/install-deps.sh on machines without a
# toolkit). `make NVCC=` builds CPU only. The ASan and fuzz builds stay CPU-only
# (engine/core/device.c stands in for the backend).
ifeq ($(origin NVCC),undefined)
NVCC := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc),$(wildcard $(CURDIR)/.cuda/nvidia/cu13/bin/nvcc))
endif
CU_SRC := $(wildcard kernels/*.cu)
ifneq ($(NVCC),)
ifneq ($(CU_SRC),)
HAVE_CUDA = 1
endif
endif

# common/: what every layer uses (errors, durable file writes, backoff and clocks);
# built into the engine's library, the one every program and test links.
ENGINE_SRC := $(wildcard common/*.c engine/*.c engine/*/*.c)
ENGINE_OBJ := $(ENGINE_SRC:%.c=$(B)/%.o)
CLI_SRC    := $(wildcard cli/*.c)
CLI_OBJ    := $(CLI_SRC:%.c=$(B)/%.o)
# Storage (model cache, fetcher, S3 uploads): its own library, so that the engine
# builds without libcurl, hiredis and libcrypto.
STORAGE_SRC := $(wildcard storage/*.c)
STORAGE_OBJ := $(STORAGE_SRC:%.c=$(B)/%.o)
LDLIBS_STORAGE = -lcurl -lhiredis -lssl -lcrypto -lpthread
# Worker (bin/perflow-worker, the Kafka job loop) and the development broker:
# the worker library holds every worker/*.c but the two programs.
WORKER_SRC := $(filter-out worker/main.c worker/dev_broker.c,$(wildcard worker/*.c))
# The protocol between the CLI and the worker fleet (job schema parsing, status and
# result records, Redis keys and connections, output keys, the fleet's settings and
# log lines): its own library, so that bin/perflow links no worker object.
PROTOCOL_SRC := $(wildcard protocol/*.c)
PROTOCOL_OBJ := $(PROTOCOL_SRC:%.c=$(B)/%.o)
WORKER_OBJ := $(WORKER_SRC:%.c=$(B)/%.o)
LDLIBS_WORKER = -lrdkafka -lsystemd -lmicrohttpd -larchive
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(B)/tests/%)
FUZZ_SRC   := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN   := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/fuzz/%)
BENCH_SRC  := $(wildcard tests/bench/bench_*.c)
BENCH_BIN  := $(BENCH_SRC:tests/bench/%.c=$(B)/bench/%)

ifeq ($(HAVE_CUDA),1)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
CUDA_LIBDIR := $(firstword $(wildcard $(CUDA_HOME)/lib64 $(CUDA_HOME)/lib) $(CUDA_HOME)/lib64)
CU_OBJ := $(CU_SRC:%.cu=$(B)/%.o)
ENGINE_OBJ += $(CU_OBJ)
CFLAGS += -DPF_HAVE_CUDA
LDLIBS_CUDA = -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcublas -lcudart -lstdc++
# Ampere, Ada, Hopper (sm_90a: wgmma/setmaxnreg allowed) and PTX for later GPUs.
NVCC_ARCH = -gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_89,code=sm_89 \
            -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_90,code=compute_90
NVCCFLAGS = -O3 -std=c++17 -lineinfo --expt-relaxed-constexpr $(NVCC_ARCH) \
            -Xcompiler -fPIC,-Wall,-Wextra,-Wno-unused-parameter $(ENGINE_INC) -Ikernels -MMD -MP
endif

.PHONY: all engine worker test test-run bench fuzz deps deps-reference demo demo-run clean asan info install uninstall \
        chaos chaos-run mutate

# Objects follow the flags they were compiled with: where the flags change (nvcc
# installed or found since, `make NVCC=`, EXTRA_CFLAGS), every object is rebuilt,
# so a library never mixes CPU-only and CUDA objects (engine/core/device.c's
# stand-ins beside the kernels).
FLAGS_STAMP := $(B)/.flags
ifneq ($(file < $(FLAGS_STAMP)),$(CFLAGS) | $(NVCCFLAGS))
$(shell mkdir -p $(B))
$(file > $(FLAGS_STAMP),$(CFLAGS) | $(NVCCFLAGS))
endif
all: info engine $(BIN)/perflow worker

info:
	@echo "perflow build: nvcc $(if $(NVCC),found at $(NVCC),not found)$(if $(HAVE_CUDA), - building CUDA backend,$(if $(NVCC), - no kernels yet, - CPU only))"

engine: $(B)/libperflow_engine.a

$(B)/libperflow_engine.a: $(ENGINE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(B)/%.o: %.c $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(CLI_OBJ) $(STORAGE_OBJ): CFLAGS += -Istorage
# perflow submit and status use the protocol: the job parser, the fleet's settings, Redis records.
$(CLI_OBJ) $(PROTOCOL_OBJ): CFLAGS += -Istorage -Iprotocol

$(B)/libperflow_protocol.a: $(PROTOCOL_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(B)/libperflow_storage.a: $(STORAGE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(B)/kernels/%.o: kernels/%.cu $(FLAGS_STAMP)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BIN)/perflow: $(CLI_OBJ) $(B)/libperflow_protocol.a $(B)/libperflow_storage.a $(B)/libperflow_engine.a
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) -o $@ $(CLI_OBJ) $(B)/libperflow_protocol.a $(B)/libperflow_storage.a $(B)/libperflow_engine.a \
	    $(LDLIBS_ENGINE) $(LDLIBS_CUDA) $(LDLIBS_STORAGE) -lrdkafka

worker: $(BIN)/perflow-worker $(BIN)/perflow-dev-broker

$(WORKER_OBJ) $(B)/worker/main.o $(B)/worker/dev_broker.o: CFLAGS += -Istorage -Iprotocol -Iworker

$(B)/libperflow_worker.a: $(WORKER_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(BIN)/perflow-worker: $(B)/worker/main.o $(B)/libperflow_worker.a $(B)/libperflow_protocol.a $(B)/libperflow_storage.a \
    $(B)/libperflow_engine.a
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS_ENGINE) $(LDLIBS_CUDA) $(LDLIBS_STORAGE) $(LDLIBS_WORKER)

$(BIN)/perflow-dev-broker: $(B)/worker/dev_broker.o
	@mkdir -p $(BIN)
	$(CC) $(CFLAGS) -o $@ $^ $(EXTRA_LDFLAGS) -lrdkafka

$(B)/tests/test_worker_%: tests/test_worker_%.c $(B)/libperflow_worker.a $(B)/libperflow_protocol.a $(B)/libperflow_storage.a \
    $(B)/libperflow_engine.a tests/test_util.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Istorage -Iprotocol -Iworker -Itests -o $@ $< $(B)/libperflow_worker.a $(B)/libperflow_protocol.a \
	    $(B)/libperflow_storage.a \
	    $(B)/libperflow_engine.a $(LDLIBS_ENGINE) $(LDLIBS_CUDA) $(LDLIBS_STORAGE) $(LDLIBS_WORKER) -lcmocka

$(B)/tests/%: tests/%.c $(B)/libperflow_engine.a tests/test_util.h tests/pipeline_cases.h tests/refine_cases.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(B)/libperflow_engine.a $(LDLIBS_ENGINE) $(LDLIBS_CUDA) -lcmocka

$(B)/tests/test_storage_%: tests/test_storage_%.c $(B)/libperflow_protocol.a $(B)/libperflow_storage.a \
    $(B)/libperflow_engine.a tests/test_util.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Istorage -Iprotocol -Itests -o $@ $< $(B)/libperflow_protocol.a $(B)/libperflow_storage.a \
	    $(B)/libperflow_engine.a $(LDLIBS_ENGINE) \
	    $(LDLIBS_CUDA) $(LDLIBS_STORAGE) -lcmocka

# ASan + UBSan build of the CLI, used by the hostile-input tests.
ASAN_FLAGS = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
# The worker files the CLI's submit and status take (the rest needs librdkafka's consumer, systemd, microhttpd).
asan: $(B)/asan/perflow $(B)/asan/perflow-worker
$(B)/asan/perflow: $(ENGINE_SRC) $(CLI_SRC) $(STORAGE_SRC) $(PROTOCOL_SRC) $(wildcard common/*.h engine/*.h engine/*/*.h storage/*.h cli/*.h protocol/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -O2 -MMD -MP -DPF_HAVE_CUDA,$(CFLAGS)) -Istorage -Iprotocol $(ASAN_FLAGS) -o $@ $(ENGINE_SRC) \
	    $(CLI_SRC) $(STORAGE_SRC) $(PROTOCOL_SRC) $(LDLIBS_ENGINE) $(LDLIBS_STORAGE) -lrdkafka

# ASan + UBSan (with LeakSanitizer) build of the worker, for the soak test's
# leak check (tests/worker/test_soak.py): CPU only, like the CLI's.
$(B)/asan/perflow-worker: $(ENGINE_SRC) $(STORAGE_SRC) $(PROTOCOL_SRC) $(WORKER_SRC) worker/main.c \
    $(wildcard common/*.h engine/*.h engine/*/*.h storage/*.h protocol/*.h worker/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -O2 -MMD -MP -DPF_HAVE_CUDA,$(CFLAGS)) -Istorage -Iprotocol -Iworker $(ASAN_FLAGS) -o $@ $(ENGINE_SRC) \
	    $(STORAGE_SRC) $(PROTOCOL_SRC) $(WORKER_SRC) worker/main.c $(LDLIBS_ENGINE) $(LDLIBS_STORAGE) $(LDLIBS_WORKER)

fuzz: $(FUZZ_BIN)
$(B)/fuzz/%: tests/fuzz/%.c $(ENGINE_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -O1 -g -Wno-pass-failed $(ENGINE_INC) -fopenmp -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    -o $@ $< $(ENGINE_SRC) $(LDLIBS_ENGINE)

# Storage fuzz targets: the parsers only (no libcurl or hiredis in the fuzz build).
FUZZ_STORAGE_SRC = storage/url_policy.c storage/model_index.c storage/digest.c
$(B)/fuzz/fuzz_storage_%: tests/fuzz/fuzz_storage_%.c $(ENGINE_SRC) $(FUZZ_STORAGE_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -O1 -g -Wno-pass-failed $(ENGINE_INC) -Istorage -fopenmp -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -o $@ $< $(FUZZ_STORAGE_SRC) $(ENGINE_SRC) $(LDLIBS_ENGINE) -lcrypto

# The job parser's fuzz target: protocol/job.c and the storage parsers it calls.
FUZZ_JOB_SRC = protocol/job.c protocol/output_key.c storage/url_policy.c storage/model_source.c storage/model_index.c \
               storage/digest.c
$(B)/fuzz/fuzz_job: tests/fuzz/fuzz_job.c $(ENGINE_SRC) $(FUZZ_JOB_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -O1 -g -Wno-pass-failed $(ENGINE_INC) -Istorage -Iprotocol -fopenmp -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -o $@ $< $(FUZZ_JOB_SRC) $(ENGINE_SRC) $(LDLIBS_ENGINE) -lcrypto

# The Redis address parser (storage/redis_client.c), with the credentials it reads.
$(B)/fuzz/fuzz_redis_addr: tests/fuzz/fuzz_redis_addr.c storage/redis_client.c storage/credentials.c common/error.c
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -O1 -g $(ENGINE_INC) -Istorage -fsanitize=fuzzer,address,undefined \
	    -fno-sanitize-recover=undefined -o $@ $< storage/redis_client.c storage/credentials.c common/error.c \
	    -lhiredis -lssl -lcrypto -lpthread

# The prompt-file parser of perflow submit: itself, pf_fail and jansson.
$(B)/fuzz/fuzz_submit_prompts: tests/fuzz/fuzz_submit_prompts.c cli/submit_prompts.c cli/submit_prompts.h common/error.c
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -O1 -g -Wno-pass-failed $(ENGINE_INC) -Icli -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    -o $@ $< cli/submit_prompts.c common/error.c -ljansson

$(B)/bench/%: tests/bench/%.c $(B)/libperflow_engine.a tests/bench/bench_util.h
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests -o $@ $< $(B)/libperflow_engine.a $(LDLIBS_ENGINE) $(LDLIBS_CUDA)

$(B)/bench/bench_storage_%: tests/bench/bench_storage_%.c $(B)/libperflow_storage.a $(B)/libperflow_engine.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Istorage -Itests -o $@ $< $(B)/libperflow_storage.a $(B)/libperflow_engine.a $(LDLIBS_ENGINE) \
	    $(LDLIBS_CUDA) $(LDLIBS_STORAGE)

$(B)/.deps-stamp: ops/install-deps.sh ops/kafka/pom.xml
	sh ops/install-deps.sh
	@mkdir -p build && touch $@

deps: $(B)/.deps-stamp

deps-reference: deps
	sh ops/install-deps.sh --reference

# test, demo and chaos install what is missing first, then build in a second make:
# the first one decided before the install whether nvcc exists (ops/install-deps.sh
# puts it in .cuda/), and a fresh clone must compile the kernels too. The second
# builds on every core (the tests themselves run one at a time).
test: $(B)/.deps-stamp
	@$(MAKE) -j$$(nproc) --no-print-directory test-run

test-run: all $(TEST_BIN) $(B)/asan/perflow $(B)/asan/perflow-worker $(FUZZ_BIN)
	B=$(B) PERFLOW=$(BIN)/perflow PERFLOW_ASAN=$(B)/asan/perflow sh tests/run_tests.sh $(TEST_BIN)

bench: all $(BENCH_BIN)
	@test -x $(PY) || { echo "make bench needs the reference stack: run 'make deps-reference' first"; exit 1; }
	sh tests/bench/run_bench.sh

# The mutation check (tests/mutate.sh): each tests/mutations/*.patch is applied,
# built CPU-only in build-mutate/ and must fail the test it names; the source is
# restored after each. Not part of make test (time). MUTATIONS= picks patches.
mutate: $(B)/.deps-stamp
	B=build-mutate sh tests/mutate.sh $(MUTATIONS)

# The fleet under failure (ops/chaos.py) against Apache Kafka (ops/kafka.sh): 500
# jobs, 3 workers, a SIGKILL every 3 s, the broker killed and restarted, a worker
# stopped past its session, partitions added, and the other faults; prints the
# schedule and the figures. CHAOS_ARGS adds options (--jobs N --workers W
# --kill-every S --seed N --keep ...); CHAOS_BROKER= runs the dev broker's form.
CHAOS_BROKER ?= --kafka
chaos: $(B)/.deps-stamp
	@$(MAKE) --no-print-directory chaos-run

chaos-run: all
	$(PY) ops/chaos.py --bin $(BIN) $(CHAOS_BROKER) $(CHAOS_ARGS)

demo: $(B)/.deps-stamp
	@$(MAKE) -j$$(nproc) --no-print-directory demo-run

demo-run: all
	PERFLOW=$(BIN)/perflow sh ops/demo.sh

clean:
	rm -rf build build-mutate bin/perflow bin/perflow-worker bin/perflow-dev-broker

# ---- install ------------------------------------------------------------------
# Units go where systemd reads them: /lib/systemd/system for PREFIX=/usr, else
# PREFIX/lib/systemd/system (link or copy them to /etc/systemd/system, or set
# UNITDIR=/etc/systemd/system). Their ExecStart and docs point into PREFIX. The
# settings file the unit reads is /etc/perflow/worker.env: an example is put
# beside it, never over it.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
DATADIR    ?= $(PREFIX)/share/perflow
DOCDIR     ?= $(PREFIX)/share/doc/perflow
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR    ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
PROGRAMS    = perflow perflow-worker perflow-dev-broker
UNITS       = perflow-worker@.service perflow-workers.target
DOCS        = README.md ops/README.md systemd/README.md schemas/README.md

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DATADIR)/schemas/examples \
	    $(DESTDIR)$(DOCDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(SYSCONFDIR)/perflow
	install -m 755 $(addprefix $(BIN)/,$(PROGRAMS)) $(DESTDIR)$(BINDIR)/
	for u in $(UNITS); do \
	    sed -e 's|^ExecStart=/usr/local/bin/|ExecStart=$(BINDIR)/|' -e 's|file:///usr/local/share/doc/perflow/|file://$(DOCDIR)/|' \
	        systemd/$$u > $(DESTDIR)$(UNITDIR)/$$u && chmod 644 $(DESTDIR)$(UNITDIR)/$$u || exit 1; \
	done
	install -m 644 schemas/*.json $(DESTDIR)$(DATADIR)/schemas/
	cp -R configs $(DESTDIR)$(DATADIR)/configs && chmod -R u=rwX,go=rX $(DESTDIR)$(DATADIR)/configs
	install -m 644 schemas/examples/*.json $(DESTDIR)$(DATADIR)/schemas/examples/
	install -m 644 systemd/worker.env.example $(DESTDIR)$(SYSCONFDIR)/perflow/worker.env.example
	for d in $(DOCS); do install -D -m 644 $$d $(DESTDIR)$(DOCDIR)/$$d || exit 1; done
	sh ops/man.sh $(BIN) $(DESTDIR)$(MANDIR)/man1
	@echo "installed under $(DESTDIR)$(PREFIX) (units in $(DESTDIR)$(UNITDIR)); settings: copy" \
	    "$(SYSCONFDIR)/perflow/worker.env.example to worker.env (systemd/README.md)"

# Removes what install put there (a worker.env made from the example stays).
uninstall:
	rm -f $(addprefix $(DESTDIR)$(BINDIR)/,$(PROGRAMS)) $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS))
	rm -f $(DESTDIR)$(MANDIR)/man1/perflow.1 $(DESTDIR)$(MANDIR)/man1/perflow-*.1
	rm -f $(DESTDIR)$(SYSCONFDIR)/perflow/worker.env.example
	rm -rf $(DESTDIR)$(DATADIR) $(DESTDIR)$(DOCDIR)
	-rmdir $(DESTDIR)$(SYSCONFDIR)/perflow 2>/dev/null

# The two programs' mains and the test binaries too: a header that changes
# (worker_config.h's layout) must rebuild every object that includes it.
-include $(ENGINE_OBJ:.o=.d) $(CLI_OBJ:.o=.d) $(STORAGE_OBJ:.o=.d) $(WORKER_OBJ:.o=.d) $(PROTOCOL_OBJ:.o=.d) \
    $(B)/worker/main.d $(B)/worker/dev_broker.d $(TEST_BIN:=.d)

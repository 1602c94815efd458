# pushwire - server push over HTTP long-poll and WebSocket, behind nginx, on Redis.
#
#   make            build the binaries into build/
#   make run        build and start the whole stack (nginx, Redis, workers, relays)
#   make test       install what is missing, build with ASan/UBSan and -Werror,
#                   run the unit tests and the integration tests
#   make fuzz       run the libFuzzer targets for a bounded time
#   make bench      run the benchmark matrix (QUICK=1 for the short one)
#
# SAN=1 builds into build/asan with sanitizers and -Werror (what make test uses).

CC      ?= cc
SAN     ?= 0
WERROR  ?= 0
PYTHON  ?= /usr/bin/python3

WARN    = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
          -Wwrite-strings -Wvla -Wformat=2 -Wno-format-nonliteral
CSTD    = -std=c11 -D_GNU_SOURCE
DEPFLAGS = -MMD -MP

ifeq ($(SAN),1)
  BUILD   ?= build/asan
  OPT     = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
            -DPW_CHECK_INVARIANTS
  LDSAN   = -fsanitize=address,undefined
  WERROR  = 1
else
  BUILD   ?= build
  OPT     = -O2 -g
  LDSAN   =
endif
ifeq ($(WERROR),1)
  WARN   += -Werror
endif

CFLAGS  ?=
CFLAGS  += $(CSTD) $(OPT) $(WARN) $(DEPFLAGS)
LDFLAGS += $(LDSAN)

WORKER_LIBS = -lhiredis -ljansson
RELAY_LIBS  = -lhiredis -ljansson -lcrypto
ALL_LIBS    = -lhiredis -ljansson -lcrypto

MAINS     = src/worker_main.c src/relay_main.c
CORE_SRCS = $(filter-out $(MAINS),$(wildcard src/*.c))
CORE_OBJS = $(CORE_SRCS:src/%.c=$(BUILD)/obj/%.o)
UNIT_SRCS = $(wildcard tests/unit/test_*.c)
UNIT_BINS = $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

BINS = $(BUILD)/pushwire-worker $(if $(wildcard src/relay_main.c),$(BUILD)/pushwire-relay)

.PHONY: all run test check unit integration fuzz bench clean format deps help
all: $(BINS)

$(BUILD)/obj/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libpw.a: $(CORE_OBJS)
	@rm -f $@
	$(AR) rcs $@ $^

$(BUILD)/pushwire-worker: $(BUILD)/obj/worker_main.o $(BUILD)/libpw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(WORKER_LIBS)

$(BUILD)/pushwire-relay: $(BUILD)/obj/relay_main.o $(BUILD)/libpw.a
	$(CC) $(LDFLAGS) -o $@ $^ $(RELAY_LIBS)

$(BUILD)/tests/%.o: tests/unit/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc -c -o $@ $<

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(BUILD)/libpw.a
	$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(ALL_LIBS)

# The hub runs on a simulated Redis: hub_sim.o stands in for broker.o (the
# archive member is then never pulled in).
$(BUILD)/tests/test_hub: $(BUILD)/tests/test_hub.o $(BUILD)/tests/hub_sim.o $(BUILD)/libpw.a
	$(CC) $(LDFLAGS) -o $@ $^ -lcmocka $(ALL_LIBS)

deps:
	@scripts/install-deps

# make run: the whole stack in the foreground; Ctrl-C or SIGTERM stops it.
# exec: make passes SIGTERM to its recipe's shell, which would not pass it
# on to a child; exec'd, the supervisor is that process and gets it.
run: deps all
	@BUILD_DIR=$(BUILD) exec scripts/run-stack

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: all
	PW_BUILD=$(abspath $(BUILD)) PW_PLAIN_BUILD=$(or $(PW_PLAIN_BUILD),$(abspath build)) \
	  $(PYTHON) -m pytest -q -x -p no:cacheprovider tests/integration $(PYTEST_ARGS)

# The test command of the README: dependencies, sanitizer build, every test.
test check:
	@scripts/install-deps --test
	$(MAKE) all
	$(MAKE) SAN=1 unit
	$(MAKE) SAN=1 integration PW_PLAIN_BUILD=$(abspath build)
	scripts/run-fuzz $(or $(FUZZ_SECONDS),10)

fuzz:
	@scripts/run-fuzz $(or $(FUZZ_SECONDS),60)

bench: deps all
	@scripts/install-deps --bench
	@$(MAKE) -s -C bench
	BUILD_DIR=$(BUILD) $(PYTHON) bench/run $(if $(QUICK),--quick) $(BENCH_ARGS)

format:
	clang-format -i src/*.c src/*.h tests/unit/*.c

clean:
	rm -rf build

-include $(CORE_OBJS:.o=.d) $(BUILD)/obj/worker_main.d $(BUILD)/obj/relay_main.d $(UNIT_BINS:=.d) \
  $(BUILD)/tests/hub_sim.d

# repd — see README.md. `make test` installs what the tests need (as root) and runs them.
export PATH := /usr/bin:/usr/local/go/bin:$(PATH):/usr/sbin:/sbin
GO      ?= go
BIN     := bin
PKGS    := ./...
FUZZTIME ?= 10s
# urfave/cli's generators of man pages and Markdown, which repd and repctl do
# not use, out of the binaries: 3 ms less of every repctl start (22 vs 25 ms
# for repctl --help on the project's VM; blackfriday's init alone is 3.4 ms).
TAGS    := urfave_cli_no_docs

.PHONY: all build deps test test-short bench bench-quick demo run fuzz lint clean soak

all: build

build:
	$(GO) build -tags $(TAGS) -o $(BIN)/ ./cmd/...

deps:
	@scripts/deps.sh

# The README's test command. Race detector on; process-level tests start the
# real binaries and drive them with nbdinfo, nbdcopy, qemu-img/qemu-io and fio.
test: deps lint
	$(GO) test -race -count=1 -timeout 14m $(PKGS)

test-short:
	$(GO) test -short -count=1 $(PKGS)

bench: deps build
	$(GO) run ./bench $(BENCHFLAGS)

bench-quick: deps build
	$(GO) run ./bench --quick $(BENCHFLAGS)

# A scripted walk-through of failover on one machine.
demo: deps build
	scripts/demo.sh

# The main job on embedded defaults: a local two-node replicated device you
# can write to and fail over. Ctrl-C stops it.
run: deps build
	scripts/run.sh

# Random fault schedules against real repd processes (chaos/) for DURATION;
# prints scenarios run, faults injected, writes checked and violations (0).
DURATION ?= 5m
soak:
	$(GO) run ./chaos/cmd/soak -duration $(DURATION)

fuzz:
	@set -e; grep -r --include='*_test.go' -o '^func Fuzz[A-Za-z0-9_]*' . | sed 's|/[^/]*_test.go:func | |' | sort -u | \
	while read -r pkg spec; do \
	  echo "fuzz $$pkg $$spec ($(FUZZTIME))"; \
	  $(GO) test -run='^$$' -fuzz="^$$spec$$" -fuzztime=$(FUZZTIME) $$pkg; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@if command -v shellcheck >/dev/null; then shellcheck scripts/*.sh scripts/ocf/repd .ci/run; \
	  elif [ "$$CI" = true ]; then echo "shellcheck missing (scripts/deps.sh installs it)"; exit 1; fi

clean:
	rm -rf $(BIN) bench/out run

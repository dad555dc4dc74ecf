# The project's front door. `make demo` trains a demo run and serves the dashboard;
# `make test` sets up what is missing and runs every test. Both are idempotent.

SHELL := /bin/bash
CARGO ?= cargo
CHECKPOINTS ?= checkpoints
PORT ?= 8080
DEMO_EPOCHS ?= 12
DEMO_PRESET ?= small-labels

# The features the tests build with: the trainer's MPI data parallelism (its tests run
# `mpirun -n 2`). Every test target uses the same set, so nothing is compiled twice.
FEATURES ?= --features trainer/mpi

# Run a cargo without make's jobserver, so that it uses every core itself.
NO_JOBSERVER := env -u MAKEFLAGS -u MFLAGS -u CARGO_MAKEFLAGS

.PHONY: demo test lint unit e2e app serve bench setup cargo fuzz cuda gpu-check

## Build and start the server (the dashboard on :$(PORT) answers from then on), then build the
## app and the trainer and train the demo run (small preset) while the dashboard shows it
## (scripts/demo.sh). Needs only cargo: the app build sets up the wasm toolchain; the test
## tools (Python readers, Chromium) are not needed and not installed.
demo: cargo
	CARGO=$(CARGO) CHECKPOINTS=$(CHECKPOINTS) PORT=$(PORT) DEMO_EPOCHS=$(DEMO_EPOCHS) DEMO_PRESET=$(DEMO_PRESET) scripts/demo.sh

## Set up what is missing, then lint and run every test (native, wasm build, browser end-to-end),
## and build and check the CUDA binary with NCCL (no GPU needed: scripts/build-cuda.sh; the
## unoptimised cuda-check profile, since that binary only has to start). The GPU
## check is checked too: run with the CPU on both sides, every difference must be 0.
## The wasm app (its own target dir) builds while clippy checks the workspace: the two share no
## artefacts, so running them side by side fills the cores each leaves idle. Each cargo gets its
## own job slots (NO_JOBSERVER): sharing make's two would leave the builds half as wide.
test: setup
	$(MAKE) --no-print-directory -j2 --output-sync=target lint app
	$(CARGO) test --workspace $(FEATURES)
	DEVICE=cpu PRESET=tiny EPOCHS=1 OUT=target/gpu-check-cpu.md \
	    scripts/gpu-check.sh "$${CARGO_TARGET_DIR:-target}/debug/diffit"
	$(NO_JOBSERVER) scripts/fuzz.sh smoke
	CUDA_PROFILE=cuda-check CUDA_FEATURES=trainer/nccl CUDA_CLIPPY=1 $(NO_JOBSERVER) scripts/build-cuda.sh

cargo:
	@command -v cargo >/dev/null || { echo "cargo (rustup) is required: https://rustup.rs"; exit 1; }

setup: cargo
	scripts/setup-python.sh
	scripts/setup-mpi.sh
	scripts/browser-env.sh

lint:
	$(CARGO) fmt --all -- --check
	$(NO_JOBSERVER) $(CARGO) clippy --workspace --all-targets $(FEATURES) -- -D warnings

unit: app
	$(CARGO) test --workspace $(FEATURES)

## Only the browser end-to-end tests (real trainer + server + headless Chromium); `test` runs them too.
## `--workspace` keeps cargo's feature set identical to `make test`'s, so nothing is rebuilt twice.
e2e: setup
	scripts/build-app.sh
	$(CARGO) test --workspace $(FEATURES) -- runs_table errors_are_shown browser_sample

## A fuzzing campaign over every parser of user or network bytes (scripts/fuzz.sh; `test` runs
## its short smoke mode). FUZZ_SECONDS per target (default 600), caps FUZZ_RSS_MB/FUZZ_MALLOC_MB.
fuzz:
	$(NO_JOBSERVER) scripts/fuzz.sh campaign

## Side-by-side benchmarks (not part of `test`): writes bench/RESULTS.md, linked from the README.
bench:
	bench/run.sh

## The CUDA build of diffit (target/cuda/release/diffit), on any machine: scripts/build-cuda.sh.
cuda:
	$(NO_JOBSERVER) scripts/build-cuda.sh

## On a machine with an NVIDIA GPU: the same run on the GPU and the CPU, compared, then throughput.
gpu-check:
	scripts/gpu-check.sh

## Build the browser app into target/site (served by diffit-server by default).
app:
	$(NO_JOBSERVER) scripts/build-app.sh

serve:
	$(CARGO) run --release -p server --bin diffit-server -- --checkpoints $(CHECKPOINTS) --port $(PORT)

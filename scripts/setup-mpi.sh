#!/usr/bin/env bash
# Installs what the trainer's `mpi` feature builds and its tests run with, once: Debian's
# OpenMPI (mpirun, and mpicc, which the mpi crate's build asks for its flags) and libclang
# (for the crate's bindgen step).
set -euo pipefail
cd "$(dirname "$0")"
./apt-packages.sh setup-mpi openmpi-bin libopenmpi-dev libclang-dev

#!/usr/bin/env bash
# The whole test suite: the Rust kernels (cargo, no Python needed), then Python (pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked
python -m pytest "$@"

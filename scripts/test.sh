#!/usr/bin/env bash
# The whole test suite: style and lint gates (ruff, clippy), the Rust kernels (cargo, no
# Python needed), then Python (pytest, which also runs the README's and docs' examples).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff format --check .
ruff check .
cargo clippy --release --locked --all-targets --all-features -- -D warnings
cargo test --release --locked
python -m pytest "$@"

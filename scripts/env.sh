# Sourced by scripts/run, scripts/test and .ci/run: one build for all of them.
#
# Cargo builds for an explicit target (the host's own triple). Without one,
# `cargo build` shares units between build scripts and the code they build
# while `cargo check` (clippy) cannot, so clippy and the tests each ran
# RocksDB's C++ build (about 10 minutes on 2 cores). With it, the build
# scripts' inputs are the same for both. Binaries land in
# target/<host triple>/debug/.
CARGO_BUILD_TARGET="${CARGO_BUILD_TARGET:-$(rustc -vV | sed -n 's/^host: //p')}"
export CARGO_BUILD_TARGET
CUSTODY_BIN_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/$CARGO_BUILD_TARGET/debug"
export CUSTODY_BIN_DIR

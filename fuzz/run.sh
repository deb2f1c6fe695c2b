#!/usr/bin/env bash
# Builds every fuzz target once, then runs each for SECONDS (default 30).
#
#   fuzz/run.sh [SECONDS]
#
# Works on a stable toolchain: cargo-fuzz needs nightly-only flags, which
# RUSTC_BOOTSTRAP=1 unlocks, and no sanitizer runtime is needed because the
# targets are built with `-s none` (the library is safe Rust on every path
# the targets reach, so ASan would find nothing that bounds checks and the
# overflow checks do not; it would only slow the build and the runs).
#
# Each target reads its committed seeds from fuzz/corpus/<target>/ and writes
# what it discovers to fuzz/generated/<target>/ (not committed). A crash
# stops the script with the input saved under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"

export RUSTC_BOOTSTRAP=1
# Settings shared by build and run, so `run` reuses the build.
flags=(-s none --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi

cargo fuzz build "${flags[@]}"
for target in $(cargo fuzz list); do
    mkdir -p "generated/$target" "corpus/$target"
    echo "== fuzz $target for ${seconds}s"
    log="generated/$target.log"
    # Dictionaries: magics and edge seqs for the storage targets, edge
    # numbers and field names for the JSON ones.
    dict=(-dict=dict/json.dict)
    case "$target" in wal_* | snapshot) dict=(-dict=dict/storage.dict) ;; esac
    if ! cargo fuzz run "${flags[@]}" "$target" "generated/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=20 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
        tail -n 40 "$log"
        echo "fuzz target $target failed: the input is under fuzz/artifacts/$target/" >&2
        exit 1
    fi
    # The last status line: executions, coverage, corpus size.
    grep -E '^#[0-9]+ +DONE|^Done [0-9]+ runs' "$log" || tail -n 3 "$log"
done

#!/usr/bin/env bash
# Fuzz smoke: run every fuzz target of crates/tollgate-providers/fuzz for a
# bounded time and fail on any crash (panic, broken invariant, hang).
#
#   scripts/fuzz-smoke.sh                     # all targets, FUZZ_SECONDS each (default 20)
#   FUZZ_SECONDS=60 scripts/fuzz-smoke.sh stream_gemini chat_request
#
# Engines, picked automatically (FUZZ_MODE=auto), best first:
#   libfuzzer  coverage-guided `cargo +nightly fuzz` (libFuzzer). Needs a nightly
#              toolchain (`rustup toolchain list`) and cargo-fuzz, which this script
#              installs from crates.io (`cargo install cargo-fuzz --locked`) if missing.
#   bootstrap  no nightly: the same `cargo fuzz`, on the stable compiler with
#              RUSTC_BOOTSTRAP=1 (lets it take cargo-fuzz's -Z flags) and no sanitizer.
#   stable     neither builds: the same target bodies (src/lib.rs) in a `cargo test`
#              harness (tests/smoke.rs) on the fixture seeds and corpus/<target>, then
#              seeded xorshift mutations of them, for FUZZ_SECONDS each.
# Force one with FUZZ_MODE=libfuzzer|bootstrap|stable. Other knobs: FUZZ_SANITIZER
# (libfuzzer mode; default none: the project's crates forbid `unsafe`), FUZZ_SEED
# (stable mode), CARGO_TARGET_DIR (builds go to $CARGO_TARGET_DIR/fuzz-<mode>, else
# fuzz/target).
# New corpus entries go to fuzz/corpus/<target>, crashes to fuzz/artifacts/<target>
# (both ignored by git).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_DIR=$ROOT/crates/tollgate-providers/fuzz
FIXTURES=$ROOT/crates/tollgate-providers/tests/fixtures
SECS=${FUZZ_SECONDS:-20}
MODE=${FUZZ_MODE:-auto}
SANITIZER=${FUZZ_SANITIZER:-none}
ALL_TARGETS=(stream_openai stream_azure stream_anthropic stream_gemini chat_request chat_response sse_decoder)
if [ $# -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

log() { echo "fuzz-smoke: $*" >&2; }

case $SECS in '' | *[!0-9]*) log "FUZZ_SECONDS must be a whole number of seconds"; exit 2 ;; esac
for t in "${TARGETS[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $t "* ]] || { log "unknown target $t (known: ${ALL_TARGETS[*]})"; exit 2; }
done

have_nightly() {
    command -v rustup >/dev/null 2>&1 &&
        rustup toolchain list 2>/dev/null | grep -q '^nightly' &&
        cargo +nightly --version >/dev/null 2>&1
}

ensure_cargo_fuzz() {
    if cargo fuzz --version >/dev/null 2>&1; then
        return 0
    fi
    log "cargo-fuzz missing: cargo install cargo-fuzz --locked"
    cargo install cargo-fuzz --locked >&2 && cargo fuzz --version >/dev/null 2>&1
}

AUTO=0
if [ "$MODE" = auto ]; then
    AUTO=1
    if ! ensure_cargo_fuzz; then
        log "cargo-fuzz could not be installed: stable harness"
        MODE=stable
    elif have_nightly; then
        MODE=libfuzzer
    else
        log "no nightly toolchain (rustup toolchain list): cargo fuzz on stable with RUSTC_BOOTSTRAP=1"
        MODE=bootstrap
    fi
fi

set_dirs() {
    TARGET_DIR=${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz-$MODE}
    TARGET_DIR=${TARGET_DIR:-$FUZZ_DIR/target}
    LOG_DIR=$TARGET_DIR/smoke-logs
    mkdir -p "$LOG_DIR"
}
set_dirs
# Guard against a hang the engine does not catch: the run's budget plus building time.
GUARD=$((SECS + 600))

declare -a SUMMARY=()
FAILED=0
PASSED=0

# Seeds from the provider fixtures, with each target's control-byte prefix.
# Mirrors `seeds()` in fuzz/src/lib.rs (the stable harness uses that one).
write_seeds() {
    local t=$1 dir=$FUZZ_DIR/seeds/$1 prefix kinds files f case
    rm -rf "$dir" && mkdir -p "$dir"
    case $t in
        stream_openai) prefix='\x40\x00\x07\x01' kinds=(openai) files=(stream.sse) ;;
        stream_azure) prefix='\x40\x00\x07\x01' kinds=(azure openai) files=(stream.sse) ;;
        stream_anthropic) prefix='\x40\x00\x07\x01' kinds=(anthropic) files=(stream.sse) ;;
        stream_gemini) prefix='\x40\x00\x07\x01' kinds=(gemini) files=(stream.sse) ;;
        chat_request) prefix='' kinds=(openai azure anthropic gemini) files=(request.json embeddings_request.json) ;;
        chat_response) prefix='\x08' kinds=(openai azure anthropic gemini) files=(response.json error.json) ;;
        sse_decoder) prefix='\x40\x00\x00' kinds=(openai azure anthropic gemini) files=(stream.sse) ;;
    esac
    for k in "${kinds[@]}"; do
        for case in "$FIXTURES/$k"/*/; do
            for f in "${files[@]}"; do
                [ -f "$case$f" ] || continue
                { printf "$prefix"; cat "$case$f"; } >"$dir/$k-$(basename "$case")-$f"
            done
        done
    done
}

# Build every target with cargo fuzz; false when the toolchain cannot.
build_libfuzzer() {
    ensure_cargo_fuzz || return 1
    if [ "$MODE" = libfuzzer ]; then
        CARGO_FUZZ=(cargo +nightly fuzz)
    else
        # The stable compiler refuses cargo-fuzz's -Z flags unless told it is
        # bootstrapping. No sanitizer: the plainest build that still gets coverage.
        CARGO_FUZZ=(env RUSTC_BOOTSTRAP=1 cargo fuzz)
        SANITIZER=none
    fi
    FLAGS=(--fuzz-dir "$FUZZ_DIR" --target-dir "$TARGET_DIR" --sanitizer "$SANITIZER" --debug-assertions)
    log "engine: libFuzzer via ${CARGO_FUZZ[*]} ($(cargo fuzz --version 2>/dev/null)), sanitizer $SANITIZER, ${SECS}s per target"
    "${CARGO_FUZZ[@]}" build "${FLAGS[@]}" >&2
}

run_libfuzzer() {
    for t in "${TARGETS[@]}"; do
        write_seeds "$t"
        mkdir -p "$FUZZ_DIR/corpus/$t"
        local logf=$LOG_DIR/$t.log rc=0
        log "$t: running ${SECS}s"
        timeout --signal=KILL "$GUARD" "${CARGO_FUZZ[@]}" run "${FLAGS[@]}" "$t" \
            "$FUZZ_DIR/corpus/$t" "$FUZZ_DIR/seeds/$t" -- \
            -max_total_time="$SECS" -dict="$FUZZ_DIR/dict/sse_json.dict" \
            -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
            >"$logf" 2>&1 || rc=$?
        local execs cov
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logf" | grep -o '[0-9]*$' | tail -1 || true)
        cov=$(grep -o 'cov: [0-9]*' "$logf" | tail -1 | grep -o '[0-9]*' || true)
        if [ "$rc" = 0 ]; then
            PASSED=$((PASSED + 1))
            SUMMARY+=("$(printf '%-17s ok     %10s execs  cov %s' "$t" "${execs:-?}" "${cov:-?}")")
        else
            FAILED=$((FAILED + 1))
            SUMMARY+=("$(printf '%-17s FAILED (exit %s), log %s' "$t" "$rc" "$logf")")
            log "$t failed (exit $rc); end of its log:"
            tail -40 "$logf" >&2
        fi
    done
}

run_stable() {
    local cargo_args=(test --release --no-default-features --manifest-path "$FUZZ_DIR/Cargo.toml" --target-dir "$TARGET_DIR" --test smoke)
    log "engine: stable harness (seeded xorshift mutations, not coverage-guided), ${SECS}s per target"
    cargo "${cargo_args[@]}" --no-run >&2
    for t in "${TARGETS[@]}"; do
        local logf=$LOG_DIR/$t.log rc=0
        log "$t: running ${SECS}s"
        FUZZ_SECONDS=$SECS timeout --signal=KILL "$GUARD" cargo "${cargo_args[@]}" -- \
            --exact "$t" --nocapture --test-threads=1 >"$logf" 2>&1 || rc=$?
        local line
        line=$(grep -o "$t: [0-9]* inputs in [0-9]*s ([0-9]* seeds" "$logf" | tail -1 || true)
        if [ "$rc" = 0 ] && grep -q '1 passed' "$logf"; then
            PASSED=$((PASSED + 1))
            SUMMARY+=("$(printf '%-17s ok     %s)' "$t" "${line#"$t: "}")")
        else
            FAILED=$((FAILED + 1))
            SUMMARY+=("$(printf '%-17s FAILED (exit %s), log %s' "$t" "$rc" "$logf")")
            log "$t failed (exit $rc); end of its log:"
            tail -40 "$logf" >&2
        fi
    done
}

case $MODE in
    libfuzzer | bootstrap)
        if build_libfuzzer; then
            run_libfuzzer
        elif [ "$AUTO" = 1 ]; then
            log "cargo fuzz could not build the targets ($MODE): stable harness"
            MODE=stable
            set_dirs
            run_stable
        else
            log "cargo fuzz could not build the targets ($MODE)"
            exit 1
        fi
        ;;
    stable) run_stable ;;
    *) log "FUZZ_MODE must be auto, libfuzzer, bootstrap or stable"; exit 2 ;;
esac

echo "fuzz-smoke ($MODE, ${SECS}s per target):"
printf '  %s\n' "${SUMMARY[@]}"
echo "fuzz-smoke: $PASSED passed, $FAILED failed"
if [ "$FAILED" != 0 ]; then
    echo "fuzz-smoke: crash inputs are in $FUZZ_DIR/artifacts/ (logs in $LOG_DIR)"
    exit 1
fi

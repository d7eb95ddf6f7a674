# Shared by run_fuzzers.sh and bundle.sh (sourced, not run).

# libFuzzer options of every run: 10 s per input, 2 GiB RSS, inputs up to
# PT2SERVE_FUZZ_MAX_LEN bytes (default 8192), statistics at the end.
FUZZ_OPTS=(-timeout=10 -rss_limit_mb=2048 -max_len="${PT2SERVE_FUZZ_MAX_LEN:-8192}"
           -print_final_stats=1)

# count_failures ARTIFACT_DIR TARGET: the failing inputs libFuzzer left for
# TARGET. crash-, leak-, oom- and timeout- inputs are failures; slow-unit-
# ones are not (a process stopped for a while, e.g. by SIGSTOP, leaves one).
count_failures() {
  find "$1" -type f \( -name "$2-crash-*" -o -name "$2-leak-*" -o -name "$2-oom-*" \
    -o -name "$2-timeout-*" \) | wc -l
}

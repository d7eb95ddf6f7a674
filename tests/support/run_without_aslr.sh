#!/bin/sh
# Runs a ThreadSanitizer test binary with address randomization off, which
# gcc 12's TSan runtime needs on this kernel (see docs/sanitizers.md).
#   run_without_aslr.sh BINARY [ARGS...]
# Exits 77 (ctest: skipped, with the reason printed) where the environment
# forbids turning it off: Docker's default seccomp profile refuses the
# personality(ADDR_NO_RANDOMIZE) call that `setarch -R` makes.
if ! setarch "$(uname -m)" -R true 2>/dev/null; then
  echo "SKIPPED: setarch -R (personality ADDR_NO_RANDOMIZE) is not permitted here;" \
       "TSan cannot run. Run it where it is (e.g. scripts/sanitizers.sh tsan on a VM)."
  exit 77
fi
exec setarch "$(uname -m)" -R "$@"

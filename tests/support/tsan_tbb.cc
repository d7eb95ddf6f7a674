// ThreadSanitizer builds only (scripts/sanitizers.sh): oneTBB runs its work
// on the thread that waits for it. Compiled into every unit test binary; a
// no-op in the ordinary build.
//
// TSan sees synchronization only in instrumented code, and Debian's libtbb is
// not instrumented: handing a task_group task or a parallel_pipeline token to
// a TBB worker thread, and back, is invisible to it. Every value a task
// captures, and every stack slot reused after a pipeline returned, then looks
// like a race (30 reports in two tests on 2026-12-04, all of that kind). As
// OMP_NUM_THREADS=1 does for libgomp, one TBB thread keeps those paths on the
// calling thread: TSan checks everything else as before, and these paths
// serially. docs/sanitizers.md lists what runs in TBB tasks and why it is
// race-free.
#if defined(__SANITIZE_THREAD__)
#include <oneapi/tbb/global_control.h>

namespace {
const oneapi::tbb::global_control one_tbb_thread(
    oneapi::tbb::global_control::max_allowed_parallelism, 1);
}  // namespace
#endif

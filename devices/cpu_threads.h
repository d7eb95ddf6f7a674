// Intra-op (OpenMP) threads for CPU work started on the calling thread.
//
// The CPU kernels AOTInductor generates open `#pragma omp parallel` regions
// without a thread count, and ATen's CPU ops (and MKL through them) follow
// the same OpenMP setting, which is per thread. So the threads one runner
// call uses are decided by the thread that makes the call: in the daemon,
// the model's pool workers.
//
// Torch-free header; thread-safe (each call affects only its own thread).
#pragma once

namespace pt2serve {

// The count ATen gives a thread that never set one (OMP_NUM_THREADS, or
// MKL's default of one per physical core), read once per process. Call it
// before any SetThisThreadCpuThreads: it is captured on first use.
int DefaultCpuThreads();

// Makes CPU work started on this thread use `threads` intra-op threads
// (0 = DefaultCpuThreads()). Unlike a bare at::set_num_threads, the setting
// stays put: ATen's per-thread lazy initialisation (which resets a thread to
// the last count set by *any* thread) runs first, so another model's setting
// cannot leak into this thread later. REQUIRES: threads >= 0.
void SetThisThreadCpuThreads(int threads);

// The intra-op thread count CPU work started on this thread uses now.
int ThisThreadCpuThreads();

}  // namespace pt2serve

#include "devices/cpu_threads.h"

#include <ATen/Parallel.h>

namespace pt2serve {

int DefaultCpuThreads() {
  // The first thread to ask initialises itself from ATen's process-wide
  // default; nothing has called at::set_num_threads yet if this runs before
  // the first pool starts (Model::Load makes sure of that).
  static const int threads = at::get_num_threads();
  return threads;
}

void SetThisThreadCpuThreads(int threads) {
  const int wanted = threads > 0 ? threads : DefaultCpuThreads();
  // ATen resets a thread to the process-wide count the first time the thread
  // queries it (a thread_local flag inside libtorch; the inline
  // at::internal::lazy_init_num_threads compiled here would set a different
  // copy). Query once so that reset happens now, not after our setting.
  (void)at::get_num_threads();
  at::set_num_threads(wanted);
}

int ThisThreadCpuThreads() { return at::get_num_threads(); }

}  // namespace pt2serve

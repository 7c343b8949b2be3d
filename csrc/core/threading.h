// Threads: one OpenMP team per kernel call, never nested. The count comes from
// set_num_threads(), else COREFORMER_NUM_THREADS, else OpenMP's default.
#pragma once
#include <cstdint>

namespace cf {

constexpr int kMaxThreads = 4096;  // set_num_threads and COREFORMER_NUM_THREADS accept 1 to this

bool openmp_enabled();
int get_num_threads();
void set_num_threads(int n);  // 1 <= n <= kMaxThreads, else ValueError
// True in a process forked after this one's parent had run an OpenMP team: libgomp cannot start
// threads there (it would hang), so every kernel runs on one thread and set_num_threads keeps it at 1.
bool threads_lost_to_fork();
// Threads to use for `work` units of roughly `grain` cost each: 1 inside an OpenMP region
// (no nesting) or when the work is too small to pay for waking the team.
int threads_for(int64_t work, int64_t min_work_per_thread = 1);

// The calling thread's contiguous share [begin, end) of n items, the team splitting them evenly
// (inside a parallel region; the whole range outside one). For kernels whose threads must know their
// whole range up front, e.g. to fetch the next item or to read parts of it side by side.
struct Share {
  int64_t begin, end;
};
Share thread_share(int64_t n);

}  // namespace cf

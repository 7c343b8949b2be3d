#include "core/threading.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "core/error.h"
#include "core/notes.h"
#ifdef CF_HAVE_OPENMP
#include <omp.h>
#include <pthread.h>
#endif

namespace cf {
namespace {

int initial_threads() {
  if (const char* env = std::getenv("COREFORMER_NUM_THREADS"); env && *env) {  // empty: unset
    char* end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n >= 1 && n <= kMaxThreads) return static_cast<int>(n);
    note(cat("ignoring COREFORMER_NUM_THREADS=", env, " (an integer from 1 to ", kMaxThreads, ")"));
  }
#ifdef CF_HAVE_OPENMP
  return std::max(1, omp_get_max_threads());
#else
  return 1;
#endif
}

std::atomic<int>& thread_count() {
  static std::atomic<int> n{initial_threads()};
  return n;
}

// GNU OpenMP (libgomp) is not fork-safe: in a child forked after a parallel region of more than one
// thread ran, the next such region waits forever on the parent's team, which the child does not have
// (multiprocessing's default 'fork' start method on Linux, after the parent used coreformer). A child
// of such a process runs every kernel on one thread instead (as PyTorch does after fork).
std::atomic<bool> g_team_lost{false};

#ifdef CF_HAVE_OPENMP
std::atomic<bool> g_team_started{false};

void after_fork_in_child() {
  if (g_team_started.load(std::memory_order_relaxed)) {
    g_team_lost.store(true, std::memory_order_relaxed);
    thread_count().store(1, std::memory_order_relaxed);
  }
}
[[maybe_unused]] const int g_atfork_registered = pthread_atfork(nullptr, nullptr, after_fork_in_child);
#endif

}  // namespace

bool threads_lost_to_fork() { return g_team_lost.load(std::memory_order_relaxed); }

bool openmp_enabled() {
#ifdef CF_HAVE_OPENMP
  return true;
#else
  return false;
#endif
}

int get_num_threads() { return thread_count().load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  // A cap, as COREFORMER_NUM_THREADS has: past it OpenMP would spawn thousands of threads per call.
  CF_CHECK(n >= 1 && n <= kMaxThreads, ValueError, "num_threads must be between 1 and ", kMaxThreads, ", got ", n);
  thread_count().store(threads_lost_to_fork() ? 1 : n, std::memory_order_relaxed);
}

int threads_for(int64_t work, int64_t min_work_per_thread) {
#ifdef CF_HAVE_OPENMP
  if (omp_in_parallel()) return 1;
  int64_t by_work = std::max<int64_t>(1, work / std::max<int64_t>(1, min_work_per_thread));
  const int nt = static_cast<int>(std::min<int64_t>(get_num_threads(), by_work));
  if (nt > 1 && !g_team_started.load(std::memory_order_relaxed)) g_team_started.store(true, std::memory_order_relaxed);
  return nt;
#else
  (void)work; (void)min_work_per_thread;
  return 1;
#endif
}

Share thread_share(int64_t n) {
#ifdef CF_HAVE_OPENMP
  const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
  return {tid * n / nth, (tid + 1) * n / nth};
#else
  return {0, n};
#endif
}

}  // namespace cf

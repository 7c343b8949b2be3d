// Embedding lookup (row copies) and its backward (a deterministic scatter-add: each table row's
// gradient is summed by one thread, over its ids in order).
#include <cstring>
#include <memory>

#include "core/threading.h"
#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace cf::cpu::CF_ISA_NS {
namespace {

inline int64_t id_at(const void* ids, bool ids64, int64_t i) {
  return ids64 ? static_cast<const int64_t*>(ids)[i] : static_cast<const int32_t*>(ids)[i];
}

}  // namespace

void embedding(const EmbeddingArgs& a) {
  const int nt = threads_for(a.n * a.D, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < a.n; ++i)
    std::memcpy(a.out + i * a.D, a.table + id_at(a.ids, a.ids64, i) * a.D, sizeof(float) * a.D);
}

void embedding_backward(const EmbeddingBackwardArgs& a) {
  const int64_t n = a.n, V = a.V, D = a.D;
  // The positions of each id, in increasing order (a counting sort): start[v] .. start[v + 1].
  std::unique_ptr<int64_t[]> start(new int64_t[static_cast<size_t>(V + 1)]());
  std::unique_ptr<int64_t[]> order(new int64_t[static_cast<size_t>(n > 0 ? n : 1)]);
  for (int64_t i = 0; i < n; ++i) ++start[id_at(a.ids, a.ids64, i) + 1];
  for (int64_t v = 0; v < V; ++v) start[v + 1] += start[v];
  {
    std::unique_ptr<int64_t[]> fill(new int64_t[static_cast<size_t>(V > 0 ? V : 1)]);
    std::memcpy(fill.get(), start.get(), sizeof(int64_t) * static_cast<size_t>(V));
    for (int64_t i = 0; i < n; ++i) order[fill[id_at(a.ids, a.ids64, i)]++] = i;
  }
  const int nt = threads_for(V * D + n * D, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t v = 0; v < V; ++v) {
    float* dst = a.dtable + v * D;
    std::memset(dst, 0, sizeof(float) * D);
    if (v == a.padding_idx) continue;
    for (int64_t k = start[v]; k < start[v + 1]; ++k) {
      const float* src = a.dy + order[k] * D;
      int64_t j = 0;
      for (; j + Vec::W <= D; j += Vec::W) (Vec::load(dst + j) + Vec::load(src + j)).store(dst + j);
      for (; j < D; ++j) dst[j] += src[j];
    }
  }
}

}  // namespace cf::cpu::CF_ISA_NS

// Embedding lookup: rows of the table copied in order. The ids are range-checked in one pass
// before anything is written, so a bad id raises IndexError and leaves `out` untouched.
#include <cstring>

#include "core/threading.h"
#include "ops/common.h"

namespace cf::ops {
namespace {

template <class I>
void lookup(const I* ids, int64_t n, const TensorView& table, float* out) {
  const int64_t V = table.shape[0], D = table.shape[1];
  int64_t bad = -1;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || static_cast<int64_t>(ids[i]) >= V) { bad = i; break; }
  CF_CHECK(bad < 0, IndexError, "ids[", bad, "] (flat index) is ", static_cast<int64_t>(ids[bad]),
           ", outside the table's ", V, " rows [0, ", V, ")");
  const float* t = table.ptr<float>();
  const int nt = threads_for(n * D, 1 << 15);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * D, t + static_cast<int64_t>(ids[i]) * D, sizeof(float) * D);
}

}  // namespace

Shape embedding_shape(const TensorView& ids, const TensorView& table) {
  CF_CHECK(ids.dtype == DType::i32 || ids.dtype == DType::i64, TypeError, "ids must be an int32 or int64 array, got ",
           dtype_name(ids.dtype));
  expect_contiguous(ids, "ids");
  expect_float(table, "table");
  expect_ndim(table, 2, "table");
  Shape out = shape_of(ids);
  out.push_back(table.shape[1]);
  return out;
}

void embedding(const TensorView& ids, const TensorView& table, const TensorView& out) {
  expect_out(out, embedding_shape(ids, table), "embedding");
  const Device dev = common_device({{"ids", &ids}, {"table", &table}, {"out", &out}});
  if (on_gpu(dev)) {
    expect_same_dtype({{"out", &out}}, table.dtype);
    cuda::embedding(ids.data, ids.dtype == DType::i64, ids.numel(), table.data, table.shape[0], table.shape[1],
                    out.data, table.dtype, dev.index);
    return;
  }
  if (ids.dtype == DType::i32) lookup(ids.ptr<int32_t>(), ids.numel(), table, out.ptr<float>());
  else lookup(ids.ptr<int64_t>(), ids.numel(), table, out.ptr<float>());
}

}  // namespace cf::ops

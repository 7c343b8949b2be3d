// Embedding lookup and its backward (the kernels: csrc/cpu/embedding.cpp). The ids are range-checked in
// one pass before anything is written, so a bad id raises IndexError and leaves `out` untouched.
#include "ops/common.h"

namespace cf::ops {
namespace {

// IndexError naming the first id outside [0, V) (padding_idx aside: it may be any value)
template <class I>
void check_ids(const I* ids, int64_t n, int64_t V) {
  int64_t bad = -1;
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || static_cast<int64_t>(ids[i]) >= V) { bad = i; break; }
  CF_CHECK(bad < 0, IndexError, "ids[", bad, "] (flat index) is ", static_cast<int64_t>(ids[bad]),
           ", outside the table's ", V, " rows [0, ", V, ")");
}

void check_ids(const TensorView& ids, int64_t V) {
  if (ids.dtype == DType::i32) check_ids(ids.ptr<int32_t>(), ids.numel(), V);
  else check_ids(ids.ptr<int64_t>(), ids.numel(), V);
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
  check_ids(ids, table.shape[0]);
  cpu::EmbeddingArgs a;
  a.n = ids.numel();
  a.V = table.shape[0];
  a.D = table.shape[1];
  a.ids = ids.data;
  a.ids64 = ids.dtype == DType::i64;
  a.table = table.ptr<float>();
  a.out = out.ptr<float>();
  kernels().embedding(a);
}

void embedding_backward(const TensorView& ids, const TensorView& grad_output, int64_t num_embeddings,
                        int64_t padding_idx, const TensorView& out) {
  CF_CHECK(ids.dtype == DType::i32 || ids.dtype == DType::i64, TypeError, "ids must be an int32 or int64 array, got ",
           dtype_name(ids.dtype));
  expect_contiguous(ids, "ids");
  expect_float(grad_output, "grad_output");
  CF_CHECK(num_embeddings >= 0, ValueError, "num_embeddings must be >= 0, got ", num_embeddings);
  Shape want = shape_of(ids);
  CF_CHECK(grad_output.ndim == ids.ndim + 1 && Shape(grad_output.shape, grad_output.shape + ids.ndim) == want,
           ValueError, "grad_output must have shape ids.shape + (embedding_dim,) = ", shape_str(want),
           " + (D,), got ", grad_output.shape_str());
  const int64_t D = grad_output.size(-1);
  expect_out(out, {num_embeddings, D}, "embedding_backward");
  CF_CHECK(padding_idx >= -1 && padding_idx < num_embeddings, IndexError, "padding_idx ", padding_idx,
           " is outside the table's ", num_embeddings, " rows");
  cpu_only(common_device({{"ids", &ids}, {"grad_output", &grad_output}, {"out", &out}}), "the embedding's backward");
  check_ids(ids, num_embeddings);
  cpu::EmbeddingBackwardArgs a;
  a.n = ids.numel();
  a.V = num_embeddings;
  a.D = D;
  a.ids = ids.data;
  a.ids64 = ids.dtype == DType::i64;
  a.dy = grad_output.ptr<float>();
  a.dtable = out.ptr<float>();
  a.padding_idx = padding_idx;
  kernels().embedding_backward(a);
}

}  // namespace cf::ops

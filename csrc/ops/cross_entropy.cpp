// Cross-entropy over the last axis, as torch.nn.functional.cross_entropy (the kernel:
// csrc/cpu/cross_entropy.cpp): labels checked, the counted rows counted, the loss reduced in float64
// in row order (the same sum whatever the thread count).
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "ops/common.h"

namespace cf::ops {

CrossEntropyResult cross_entropy(const TensorView& logits, const TensorView& labels, int64_t ignore_index,
                                 float label_smoothing, Reduction reduction, const OptionalView& losses,
                                 const OptionalView& dlogits) {
  expect_float(logits, "logits");
  CF_CHECK(logits.ndim >= 1, ValueError, "logits must have at least 1 dimension (the classes), got a scalar");
  CF_CHECK(labels.dtype == DType::i64, TypeError, "labels must be int64, got ", dtype_name(labels.dtype));
  expect_contiguous(labels, "labels");
  const Shape want(logits.shape, logits.shape + logits.ndim - 1);
  CF_CHECK(shape_of(labels) == want, ValueError, "labels must have shape ", shape_str(want), " (logits ",
           logits.shape_str(), " without its last axis), got ", labels.shape_str());
  const int64_t C = logits.size(-1), rows = labels.numel();
  CF_CHECK(C >= 1, ValueError, "logits must have at least one class, got shape ", logits.shape_str());
  CF_CHECK(label_smoothing >= 0.0f && label_smoothing <= 1.0f, ValueError,
           "label_smoothing must be in [0, 1], got ", label_smoothing);
  if (losses) expect_out(*losses, want, "cross_entropy (losses)");
  if (dlogits) expect_out(*dlogits, shape_of(logits), "cross_entropy (dlogits)");
  cpu_only(common_device({{"logits", &logits}, {"labels", &labels}, {"losses", opt(losses)},
                          {"dlogits", opt(dlogits)}}),
           "cross_entropy");
  const int64_t* y = labels.ptr<int64_t>();
  int64_t counted = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (y[r] == ignore_index) continue;
    CF_CHECK(y[r] >= 0 && y[r] < C, IndexError, "labels[", r, "] (flat index) is ", y[r], ", outside the ", C,
             " classes [0, ", C, ") and not ignore_index (", ignore_index, ")");
    ++counted;
  }
  std::unique_ptr<float[]> own;
  float* per_row = losses ? losses->ptr<float>() : nullptr;
  if (!per_row) {
    own = scratch(rows > 0 ? rows : 1);
    per_row = own.get();
  }
  cpu::CrossEntropyArgs a;
  a.rows = rows;
  a.C = C;
  a.logits = logits.ptr<float>();
  a.labels = y;
  a.ignore_index = ignore_index;
  a.smoothing = label_smoothing;
  a.losses = per_row;
  a.dlogits = dlogits ? dlogits->ptr<float>() : nullptr;
  // the gradient of the reduced loss: the mean divides by the counted rows (no row counted: 0, as the
  // loss is NaN then, as torch's, and its gradient is taken as 0)
  a.grad_scale = reduction == Reduction::mean ? (counted ? 1.0f / static_cast<float>(counted) : 0.0f) : 1.0f;
  kernels().cross_entropy(a);
  double total = 0.0;
  for (int64_t r = 0; r < rows; ++r) total += per_row[r];
  CrossEntropyResult out;
  out.counted = counted;
  out.loss = reduction == Reduction::mean ? (counted ? total / static_cast<double>(counted)
                                                     : std::numeric_limits<double>::quiet_NaN())
                                          : total;
  return out;
}

}  // namespace cf::ops

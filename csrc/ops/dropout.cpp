#include <cmath>

#include "ops/backend.h"
#include "ops/common.h"
#include "ops/ops.h"

namespace cf::ops {

void dropout(const TensorView& x, double p, uint64_t seed, uint64_t offset, const TensorView& out,
             const OptionalView& mask) {
  CF_CHECK(p >= 0.0 && p <= 1.0, ValueError, "dropout probability p must be in [0, 1], got ", p);
  expect_float(x, "x");
  expect_out(out, shape_of(x), "dropout");
  CF_CHECK(out.is_contiguous(), ValueError, "dropout: out must be C-contiguous");
  if (mask) {
    CF_CHECK(mask->dtype == DType::u8 || mask->dtype == DType::boolean, TypeError, "mask must be uint8 or bool");
    CF_CHECK(shape_of(*mask) == shape_of(x) && mask->is_contiguous(), ValueError, "mask must be C-contiguous of shape ",
             x.shape_str());
  }
  cpu_only(common_device({{"x", &x}, {"out", &out}, {"mask", opt(mask)}}), "dropout");
  cpu::DropoutArgs a;
  a.n = x.numel();
  a.x = x.ptr<float>();
  a.y = out.ptr<float>();
  a.p = p;
  a.seed = seed;
  a.offset = offset;
  a.mask = mask ? static_cast<uint8_t*>(mask->data) : nullptr;
  kernels().dropout(a);
}

}  // namespace cf::ops

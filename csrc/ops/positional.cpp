// Sinusoidal positional encodings (Vaswani et al. 2017, 3.5):
//   pe[p, 2i] = sin(p / 10000^(2i/dim)),  pe[p, 2i+1] = cos(p / 10000^(2i/dim))
// computed in double and rounded once, so large positions stay accurate.
#include <cmath>

#include "core/threading.h"
#include "ops/common.h"

namespace cf::ops {

void sinusoidal_positions(int64_t num_positions, int64_t dim, const TensorView& out) {
  CF_CHECK(num_positions >= 0, ValueError, "num_positions must be >= 0, got ", num_positions);
  CF_CHECK(dim >= 1, ValueError, "dim must be >= 1, got ", dim);
  expect_out(out, {num_positions, dim}, "sinusoidal_positions");
  float* pe = out.ptr<float>();
  const int nt = threads_for(num_positions * dim, 1 << 14);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t p = 0; p < num_positions; ++p) {
    for (int64_t c = 0; c < dim; ++c) {
      const double freq = std::pow(10000.0, -static_cast<double>(c - (c & 1)) / static_cast<double>(dim));
      const double angle = static_cast<double>(p) * freq;
      pe[p * dim + c] = static_cast<float>((c & 1) ? std::cos(angle) : std::sin(angle));
    }
  }
}

}  // namespace cf::ops

// Packing Linear weights once, into the panel layout the GEMM reads (cpu::GemmArgs::wp):
// panel p holds columns [p*nr, p*nr + nr) of W^T over all of K, dst[p*K*nr + k*nr + j] = W[p*nr + j, k],
// zero past the last row of W. One-off work (model load), so plain loops, threaded over panels.
#include <cmath>
#include <cstdlib>
#include <type_traits>
#include <cstring>
#include <new>

#include "core/threading.h"
#include "ops/common.h"

namespace cf::ops {
namespace {

// float32 -> bfloat16, round to nearest even; NaN stays NaN (quiet).
inline uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

inline float from_bf16(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// Element k of row n, stored: inv_scale is 1/scale of the row for int8 (unused otherwise).
template <typename T>
inline T convert(float x, float inv_scale) {
  if constexpr (std::is_same_v<T, uint16_t>) {
    return to_bf16(x);
  } else if constexpr (std::is_same_v<T, int8_t>) {
    float q = std::nearbyint(x * inv_scale);
    return static_cast<int8_t>(q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q);
  } else {
    return x;
  }
}

template <typename T>
void pack(const float* src, int64_t s_row, int64_t s_col, int64_t rows, int64_t cols, int nr, T* dst,
          float* scales) {
  // W[n, k] = src[n*s_row + k*s_col]
  const int64_t np = (rows + nr - 1) / nr;
  if constexpr (std::is_same_v<T, float>) {
    if (s_row == 1 && !scales) {
      // The transpose of a row-major matrix (the backward's W and X, read as (in, out)): a panel's nr
      // values of each k are contiguous in the source, so each is one copy -- the row-by-row loop below
      // read them a cache line apiece (13 ms for a 768x3072 weight, now ~1 ms).
#pragma omp parallel for schedule(static) num_threads(threads_for(np * nr * cols, 1 << 16))
      for (int64_t p = 0; p < np; ++p) {
        T* d = dst + p * cols * nr;
        const int64_t n0 = p * nr, w = rows - n0 < nr ? rows - n0 : nr;
        for (int64_t k = 0; k < cols; ++k) {
          std::memcpy(d + k * nr, src + k * s_col + n0, sizeof(float) * static_cast<size_t>(w));
          for (int64_t j = w; j < nr; ++j) d[k * nr + j] = 0.0f;
        }
      }
      return;
    }
  }
#pragma omp parallel for schedule(static) num_threads(threads_for(np * nr * cols, 1 << 16))
  for (int64_t p = 0; p < np; ++p) {
    T* d = dst + p * cols * nr;
    for (int j = 0; j < nr; ++j) {
      const int64_t n = p * nr + j;
      if (n < rows) {
        const float* s = src + n * s_row;
        float inv = 1.0f;
        if (scales) {  // int8: symmetric, the row's largest magnitude maps to 127
          float amax = 0.0f;
          for (int64_t k = 0; k < cols; ++k) amax = std::fmax(amax, std::fabs(s[k * s_col]));
          const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
          scales[n] = scale;
          inv = 1.0f / scale;
        }
        for (int64_t k = 0; k < cols; ++k) d[k * nr + j] = convert<T>(s[k * s_col], inv);
      } else {
        if (scales) scales[n] = 0.0f;
        for (int64_t k = 0; k < cols; ++k) d[k * nr + j] = T(0);
      }
    }
  }
}

template <typename T>
void unpack(const T* src, const float* scales, int64_t rows, int64_t cols, int nr, float* dst) {
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * cols, 1 << 16))
  for (int64_t n = 0; n < rows; ++n) {
    const T* s = src + (n / nr) * cols * nr + n % nr;
    for (int64_t k = 0; k < cols; ++k) {
      if constexpr (std::is_same_v<T, uint16_t>) dst[n * cols + k] = from_bf16(s[k * nr]);
      else if constexpr (std::is_same_v<T, int8_t>) dst[n * cols + k] = static_cast<float>(s[k * nr]) * scales[n];
      else dst[n * cols + k] = s[k * nr];
    }
  }
}

int64_t elem_size(DType t) { return t == DType::bf16 ? 2 : t == DType::i8 ? 1 : 4; }

bool all_finite(const TensorView& w) {
  const float* p = w.ptr<float>();
  bool ok = true;
  for (int64_t i = 0; i < w.shape[0] && ok; ++i)
    for (int64_t k = 0; k < w.shape[1]; ++k)
      if (!std::isfinite(p[i * w.strides[0] + k * w.strides[1]])) { ok = false; break; }
  return ok;
}

// Memory for p's panels (and int8 scales after them, 64-byte aligned); sets p.data, p.scale_offset.
void* allocate(PackedWeight& p) {
  const int64_t padded_rows = (p.rows + p.nr - 1) / p.nr * p.nr;
  p.panel0 = 0;
  p.scale_offset = (padded_rows * p.cols * elem_size(p.dtype) + 63) / 64 * 64;
  const size_t bytes = static_cast<size_t>(p.scale_offset + (p.dtype == DType::i8 ? padded_rows * 4 : 0) + 63) / 64 * 64;
  void* mem = std::aligned_alloc(64, bytes == 0 ? 64 : bytes);
  if (!mem) throw std::bad_alloc();
  p.data = std::shared_ptr<void>(mem, std::free);
  return mem;
}

}  // namespace

int64_t PackedWeight::nbytes() const {
  const int64_t panels = (rows + nr - 1) / nr * nr;
  return panels * cols * elem_size(dtype) + (dtype == DType::i8 ? panels * 4 : 0);
}
const void* PackedWeight::ptr() const {
  return static_cast<const char*>(data.get()) + panel0 * cols * nr * elem_size(dtype);
}
const float* PackedWeight::scales() const {
  if (dtype != DType::i8) return nullptr;
  return reinterpret_cast<const float*>(static_cast<const char*>(data.get()) + scale_offset) + panel0 * nr;
}

PackedWeight pack_weight(const TensorView& weight, DType dtype, bool transposed) {
  expect_cpu(weight, "weight");
  expect_dtype(weight, DType::f32, "weight");
  expect_ndim(weight, 2, "weight");
  CF_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::i8, TypeError,
           "a weight packs to float32, bfloat16 or int8, not ", dtype_name(dtype));
  if (dtype == DType::i8)
    CF_CHECK(all_finite(weight), ValueError, "weight has inf or NaN values: int8 packing needs a finite weight");
  for (int i = 0; i < 2; ++i) CF_CHECK(weight.strides[i] >= 0, ValueError, "weight must not have negative strides");
  PackedWeight p;
  p.rows = weight.shape[transposed ? 1 : 0];
  p.cols = weight.shape[transposed ? 0 : 1];
  p.nr = kernels().gemm_nr;
  p.dtype = dtype;
  void* mem = allocate(p);
  const int64_t s_row = weight.strides[transposed ? 1 : 0], s_col = weight.strides[transposed ? 0 : 1];
  const float* src = weight.ptr<float>();
  if (dtype == DType::bf16)
    pack(src, s_row, s_col, p.rows, p.cols, p.nr, static_cast<uint16_t*>(mem), nullptr);
  else if (dtype == DType::i8)
    pack(src, s_row, s_col, p.rows, p.cols, p.nr, static_cast<int8_t*>(mem),
         reinterpret_cast<float*>(static_cast<char*>(mem) + p.scale_offset));
  else
    pack(src, s_row, s_col, p.rows, p.cols, p.nr, static_cast<float*>(mem), nullptr);
  return p;
}

void unpack_weight(const PackedWeight& w, const TensorView& out) {
  expect_out(out, {w.rows, w.cols}, "unpack");
  float* o = out.ptr<float>();
  if (w.dtype == DType::bf16) unpack(static_cast<const uint16_t*>(w.ptr()), nullptr, w.rows, w.cols, w.nr, o);
  else if (w.dtype == DType::i8) unpack(static_cast<const int8_t*>(w.ptr()), w.scales(), w.rows, w.cols, w.nr, o);
  else unpack(static_cast<const float*>(w.ptr()), nullptr, w.rows, w.cols, w.nr, o);
}

PackedWeight slice_rows(const PackedWeight& w, int64_t start, int64_t stop) {
  CF_CHECK(0 <= start && start <= stop && stop <= w.rows, IndexError, "rows [", start, ", ", stop,
           ") are out of range for a packed weight of ", w.rows, " rows");
  if (start % w.nr == 0) {
    PackedWeight v = w;
    v.panel0 += start / w.nr;
    v.rows = stop - start;
    return v;
  }
  // A new weight in the source's layout: the stored elements (and int8 scales) are copied, not
  // re-rounded.
  PackedWeight v = w;
  v.rows = stop - start;
  char* dst = static_cast<char*>(allocate(v));
  const int64_t es = elem_size(w.dtype), K = w.cols, nr = w.nr;
  std::memset(dst, 0, static_cast<size_t>(v.scale_offset));  // the last panel's columns past the rows are zero
  const char* src = static_cast<const char*>(w.ptr());
  for (int64_t r = 0; r < v.rows; ++r) {
    const int64_t n = start + r;
    const char* s = src + ((n / nr) * K * nr + n % nr) * es;
    char* d = dst + ((r / nr) * K * nr + r % nr) * es;
    for (int64_t k = 0; k < K; ++k) std::memcpy(d + k * nr * es, s + k * nr * es, es);
  }
  if (w.dtype == DType::i8)
    std::memcpy(dst + v.scale_offset, w.scales() + start, static_cast<size_t>(v.rows) * 4);
  return v;
}

int64_t packed_panel_bytes(const PackedWeight& w) {
  const int64_t padded_rows = (w.rows + w.nr - 1) / w.nr * w.nr;
  return checked_mul(checked_mul(padded_rows, w.cols, "a packed weight's element count"), elem_size(w.dtype),
                     "a packed weight's byte count");
}

PackedWeight packed_from_bytes(int64_t rows, int64_t cols, int nr, DType dtype, const void* panels, int64_t panel_bytes,
                               const void* scales, int64_t num_scales) {
  CF_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::i8, ValueError,
           "a packed weight is float32, bfloat16 or int8, not ", dtype_name(dtype));
  // bounds far past any weight, so the byte count below cannot overflow
  CF_CHECK(rows >= 0 && rows < (int64_t(1) << 31) && cols >= 0 && cols < (int64_t(1) << 31) && nr >= 1 && nr <= 1024,
           ValueError, "a packed weight's state has rows ", rows, ", cols ", cols, ", panel width ", nr);
  PackedWeight p;
  p.rows = rows;
  p.cols = cols;
  p.nr = nr;
  p.dtype = dtype;
  const int64_t want = packed_panel_bytes(p);
  CF_CHECK(panel_bytes == want, ValueError, "a packed weight of shape (", rows, ", ", cols, ") in ",
           dtype_name(dtype), " holds ", want, " bytes of panels, the state has ", panel_bytes);
  const int64_t want_scales = dtype == DType::i8 ? rows : 0;
  CF_CHECK(num_scales == want_scales, ValueError, "a packed weight of ", rows, " rows in ", dtype_name(dtype),
           " has ", want_scales, " scales, the state has ", num_scales);
  char* mem = static_cast<char*>(allocate(p));
  if (want) std::memcpy(mem, panels, static_cast<size_t>(want));
  if (dtype == DType::i8) {
    float* s = reinterpret_cast<float*>(mem + p.scale_offset);
    if (rows) std::memcpy(s, scales, static_cast<size_t>(rows) * 4);
    for (int64_t n = rows; n < (rows + nr - 1) / nr * nr; ++n) s[n] = 0.0f;  // as pack leaves them
  }
  return p;
}

int64_t WeightRef::rows() const { return packed ? packed->rows : array->shape[0]; }
int64_t WeightRef::cols() const { return packed ? packed->cols : array->shape[1]; }
std::string WeightRef::shape_str() const {
  if (!packed) return array->shape_str();
  const int64_t dims[2] = {packed->rows, packed->cols};
  return cf::shape_str(dims, 2);
}

void set_gemm_weight(cpu::GemmArgs& g, const WeightRef& w, int64_t row0, std::unique_ptr<float[]>& tmp) {
  const int64_t K = w.cols();
  if (!w.packed) {
    g.w = w.array->ptr<float>() + row0 * K;
    g.ldw = K;
    return;
  }
  const PackedWeight& p = *w.packed;
  if (p.nr == kernels().gemm_nr && row0 % p.nr == 0) {
    const int64_t offset = row0 / p.nr * K * p.nr * elem_size(p.dtype);
    g.wp = static_cast<const char*>(p.ptr()) + offset;
    g.wp_type = p.dtype == DType::bf16 ? cpu::GemmArgs::bf16 : p.dtype == DType::i8 ? cpu::GemmArgs::i8
                                                                                  : cpu::GemmArgs::f32;
    if (p.dtype == DType::i8) g.wp_scale = p.scales() + row0;
    return;
  }
  tmp = scratch(p.rows * K);
  unpack_weight(p, TensorView(tmp.get(), DType::f32, {p.rows, K}));
  g.w = tmp.get() + row0 * K;
  g.ldw = K;
}

}  // namespace cf::ops

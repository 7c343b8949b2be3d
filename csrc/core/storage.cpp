#include "core/storage.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "core/error.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace cf {
namespace {

float load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::f32: return static_cast<const float*>(p)[i];
    case DType::f64: return static_cast<float>(static_cast<const double*>(p)[i]);
    case DType::bf16: {
      uint32_t u = static_cast<uint32_t>(static_cast<const uint16_t*>(p)[i]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case DType::f16: {
      const uint16_t h = static_cast<const uint16_t*>(p)[i];
      const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
      uint32_t u;
      if (exp == 0x1f) u = sign | 0x7f800000u | (man << 13);  // inf, NaN
      else if (exp != 0) u = sign | ((exp + 112) << 23) | (man << 13);
      else if (man == 0) u = sign;
      else {  // subnormal: normalise
        int e = -1;
        uint32_t m = man;
        do { m <<= 1; ++e; } while (!(m & 0x400));
        u = sign | ((112 - e) << 23) | ((m & 0x3ff) << 13);
      }
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    default: return 0.0f;
  }
}

uint16_t to_bf16(float f) {  // round to nearest even; NaN stays a quiet NaN
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

uint16_t to_f16(float f) {  // round to nearest even, overflow to inf, subnormals kept
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to >= 65520: inf
  if (a >= 0x38800000u) {  // normal half
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1) - (112u << 23);
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  if (a < 0x33000000u) return static_cast<uint16_t>(sign);  // below half the smallest subnormal
  // subnormal half: shift the mantissa (with its implicit bit) into place, round to nearest even
  const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14..24
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

void store(void* p, DType t, int64_t i, float v) {
  switch (t) {
    case DType::f32: static_cast<float*>(p)[i] = v; break;
    case DType::f64: static_cast<double*>(p)[i] = v; break;
    case DType::bf16: static_cast<uint16_t*>(p)[i] = to_bf16(v); break;
    case DType::f16: static_cast<uint16_t*>(p)[i] = to_f16(v); break;
    default: break;
  }
}

}  // namespace

std::string device_str(Device d) {
  return d.type == DeviceType::cpu ? std::string("cpu") : "cuda:" + std::to_string(d.index);
}

std::shared_ptr<void> allocate(size_t bytes, Device device) {
  if (device.type == DeviceType::cpu) {
    CF_CHECK(bytes <= SIZE_MAX - 63, MemoryError, "could not allocate ", bytes, " bytes");
    const size_t n = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, n ? n : 64);
    if (!p) raise<MemoryError>("could not allocate ", bytes, " bytes of host memory");
    return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  }
  cuda::require_device(device.index);
  void* p = cuda::malloc(bytes, device.index);
  const int index = device.index;
  return std::shared_ptr<void>(p, [index](void* q) { cuda::free(q, index); });
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes) {
  if (bytes == 0) return;
  const bool dg = dst_device.type == DeviceType::cuda, sg = src_device.type == DeviceType::cuda;
  if (!dg && !sg) { std::memcpy(dst, src, bytes); return; }
  if (dg && sg) {
    // same device, or peer memory the driver maps (cudaMemcpy with UVA handles both)
    cuda::memcpy(dst, src, bytes, cuda::Copy::device_to_device, dst_device.index);
    return;
  }
  if (dg) cuda::memcpy(dst, src, bytes, cuda::Copy::host_to_device, dst_device.index);
  else cuda::memcpy(dst, src, bytes, cuda::Copy::device_to_host, src_device.index);
}

void copy_convert(const TensorView& src, const TensorView& dst) {
  CF_CHECK(src.device == dst.device, ValueError, "copy_convert: the source is on ", device_str(src.device),
           ", the destination on ", device_str(dst.device));
  CF_CHECK(src.numel() == dst.numel(), ValueError, "copy_convert: ", src.shape_str(), " and ", dst.shape_str(),
           " differ in size");
  if (dst.device.type == DeviceType::cuda) { cuda::copy(src, dst); return; }
  const int64_t n = dst.numel();
  const bool contiguous = src.is_contiguous();
  auto offset = [&](int64_t i) {
    if (contiguous) return i;
    int64_t off = 0;
    for (int d = src.ndim - 1; d >= 0; --d) {
      off += (i % src.shape[d]) * src.strides[d];
      i /= src.shape[d];
    }
    return off;
  };
  if (src.dtype != dst.dtype && is_floating(src.dtype) && is_floating(dst.dtype)) {
    for (int64_t i = 0; i < n; ++i) store(dst.data, dst.dtype, i, load(src.data, src.dtype, offset(i)));
    return;
  }
  CF_CHECK(src.dtype == dst.dtype, TypeError, "cannot convert ", dtype_name(src.dtype), " to ", dtype_name(dst.dtype));
  const size_t es = dtype_size(src.dtype);
  if (contiguous) { std::memcpy(dst.data, src.data, n * es); return; }
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(static_cast<char*>(dst.data) + i * es, static_cast<const char*>(src.data) + offset(i) * es, es);
}

}  // namespace cf

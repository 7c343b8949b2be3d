// TensorView: a non-owning view of strided memory on a device. The same type describes CPU and
// CUDA memory, forward inputs and (later) gradients: backward kernels take views of grad_out and
// of the saved inputs exactly as forward kernels take views of their inputs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/error.h"

namespace cf {

enum class DType : uint8_t { f32, f16, bf16, f64, i32, i64, u8, boolean, i8 };
enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
};

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "float32";
    case DType::f16: return "float16";
    case DType::bf16: return "bfloat16";
    case DType::f64: return "float64";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::boolean: return "bool";
    case DType::i8: return "int8";
  }
  return "?";
}

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::f16: case DType::bf16: return 2;
    case DType::u8: case DType::boolean: case DType::i8: return 1;
  }
  return 1;
}

inline bool is_floating(DType t) { return t == DType::f32 || t == DType::f16 || t == DType::bf16 || t == DType::f64; }

constexpr int kMaxDims = 8;

// A shape as Python prints a tuple: (2, 3), (5,), ().
inline std::string shape_str(const int64_t* dims, size_t n) {
  std::string s = "(";
  for (size_t i = 0; i < n; ++i) s += std::to_string(dims[i]) + (i + 1 < n ? ", " : n == 1 ? "," : "");
  return s + ")";
}

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::f32;
  Device device{};
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements, not bytes

  TensorView() = default;
  // A C-contiguous view.
  TensorView(void* p, DType t, std::initializer_list<int64_t> dims, Device dev = {})
      : data(p), dtype(t), device(dev), ndim(static_cast<int>(dims.size())) {
    int i = 0;
    for (int64_t d : dims) shape[i++] = d;
    set_contiguous_strides();
  }
  TensorView(void* p, DType t, int nd, const int64_t* dims, Device dev = {})
      : data(p), dtype(t), device(dev), ndim(nd) {
    CF_CHECK(nd >= 0 && nd <= kMaxDims, ValueError, "at most ", kMaxDims, " dimensions are supported, got ", nd);
    for (int i = 0; i < nd; ++i) shape[i] = dims[i];
    set_contiguous_strides();
  }

  void set_contiguous_strides() {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; --i) { strides[i] = s; s *= shape[i]; }
  }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  // Negative axes count from the end, as in numpy.
  int64_t size(int axis) const { return shape[axis < 0 ? axis + ndim : axis]; }
  int64_t stride(int axis) const { return strides[axis < 0 ? axis + ndim : axis]; }
  bool is_contiguous() const {
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != s) return false;
      s *= shape[i];
    }
    return true;
  }
  template <class T> T* ptr() const { return static_cast<T*>(data); }
  std::string shape_str() const { return cf::shape_str(shape, ndim); }
};

// A view that may be absent (an optional argument).
struct OptionalView {
  bool present = false;
  TensorView view;
  OptionalView() = default;
  OptionalView(const TensorView& v) : present(true), view(v) {}  // NOLINT: implicit on purpose
  explicit operator bool() const { return present; }
  const TensorView* operator->() const { return &view; }
  const TensorView& operator*() const { return view; }
};

inline void expect_dtype(const TensorView& t, DType want, const char* name) {
  CF_CHECK(t.dtype == want, TypeError, name, " must be ", dtype_name(want), ", got ", dtype_name(t.dtype));
}
inline void expect_cpu(const TensorView& t, const char* name) {
  CF_CHECK(t.device.type == DeviceType::cpu, ValueError, name, " is not in CPU memory");
}
inline void expect_contiguous(const TensorView& t, const char* name) {
  CF_CHECK(t.is_contiguous(), ValueError, name, " must be C-contiguous");
}

}  // namespace cf

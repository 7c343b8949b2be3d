#include "convert.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "core/storage.h"
#include "tensor.h"

namespace cf::pyext {
namespace {

PyObject* g_ndarray = nullptr;  // numpy.ndarray and numpy.asarray, kept for the life of the process
PyObject* g_asarray = nullptr;

// The dtype's byte order is the machine's ('=' native, '|' not applicable, or spelled out).
bool native_order(const py::dtype& dt) {
  const char bo = dt.byteorder();
  constexpr char kMachine = __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ ? '<' : '>';
  return bo == '=' || bo == '|' || bo == kMachine;
}

TensorView view_of(const py::array& a, DType t) {
  std::vector<int64_t> dims(a.shape(), a.shape() + a.ndim());
  CF_CHECK(a.ndim() <= kMaxDims, ValueError, "at most ", kMaxDims, " dimensions are supported, got ", a.ndim());
  return TensorView(const_cast<void*>(a.data()), t, static_cast<int>(a.ndim()), dims.data());
}

bool is_native_f32(const py::array& a) {
  const py::dtype dt = a.dtype();
  return dt.kind() == 'f' && dt.itemsize() == 4 && native_order(dt);
}

// The view of a float32 array with its own strides, or false when they are not whole elements,
// are negative, or the last axis is not contiguous.
bool strided_view(const py::array& a, TensorView& v, bool contiguous_last = true) {
  if (!is_native_f32(a) || a.ndim() > kMaxDims) return false;
  if (reinterpret_cast<uintptr_t>(a.data()) % alignof(float)) return false;
  std::vector<int64_t> dims(a.shape(), a.shape() + a.ndim());
  v = TensorView(const_cast<void*>(a.data()), DType::f32, static_cast<int>(a.ndim()), dims.data());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    const py::ssize_t st = a.strides(i);
    if (a.shape(i) <= 1) { v.strides[i] = 0; continue; }
    if (st < 0 || st % 4) return false;
    v.strides[i] = st / 4;
  }
  return !contiguous_last || a.ndim() == 0 || a.shape(a.ndim() - 1) <= 1 || v.strides[a.ndim() - 1] == 1;
}

// No two elements of the view share memory: sorted by stride, each axis steps past the whole
// extent of the axes inside it.
bool elements_distinct(const TensorView& v) {
  std::vector<int> axes;
  for (int i = 0; i < v.ndim; ++i)
    if (v.shape[i] > 1) axes.push_back(i);
  std::sort(axes.begin(), axes.end(), [&](int x, int y) { return v.strides[x] < v.strides[y]; });
  int64_t extent = 1;
  for (int i : axes) {
    if (v.strides[i] < extent) return false;
    extent = v.strides[i] * (v.shape[i] - 1) + extent;
  }
  return true;
}

// A conversion that copies an argument (another dtype, a strided or misaligned layout): handed to
// coreformer._log.copied, which logs it at DEBUG when the "coreformer" logger wants that (the check is
// in Python: this path already pays for a whole copy). Logging never fails an op.
void log_copy(const char* name, const py::array& from, const char* to) {
  static PyObject* copied = [] {
    try {
      return py::object(py::module_::import("coreformer._log").attr("copied")).release().ptr();
    } catch (py::error_already_set&) {  // the core imported on its own, without the package
      return static_cast<PyObject*>(nullptr);
    }
  }();
  if (!copied) return;
  try {
    py::tuple shape(from.ndim());
    for (py::ssize_t i = 0; i < from.ndim(); ++i) shape[i] = py::int_(from.shape(i));
    const py::handle log(copied);
    log(name, py::str(from.dtype()), shape, to);
  } catch (py::error_already_set&) {
  }
}

// c_array's result, logged when it is a copy.
template <class A>
A logged(A converted, const py::array& from, const char* name, const char* to) {
  if (converted.ptr() != from.ptr()) log_copy(name, from, to);
  return converted;
}

bool is_aligned(const py::array& a) {
  return a.size() == 0 || reinterpret_cast<uintptr_t>(a.data()) % static_cast<uintptr_t>(a.itemsize()) == 0;
}

// An exact numpy.ndarray as it is; anything else (lists, scalars, subclasses, objects with
// __array__) through numpy.asarray. An array whose data is not aligned to its dtype (a view at an odd
// byte offset of a buffer) is copied: the kernels load whole elements, and a misaligned float or
// int64 load is undefined behaviour (UBSan reports it; some instructions fault on it).
py::array as_array(py::handle obj, const char* name) {
  if (obj.is_none()) raise<TypeError>(name, " must be an array, got None");
  py::array a;
  if (Py_TYPE(obj.ptr()) == reinterpret_cast<PyTypeObject*>(g_ndarray)) {
    a = py::reinterpret_borrow<py::array>(obj);
  } else {
    try {
      a = py::reinterpret_steal<py::array>(py::handle(g_asarray)(obj).release());
    } catch (py::error_already_set& e) {
      // numpy's own verdicts (ValueError for ragged lists, MemoryError, ...) stand; anything else an
      // object's __array__ raised (a torch tensor that requires grad: RuntimeError) is a TypeError
      // naming the argument, with the original as its cause
      if (e.matches(PyExc_ValueError) || e.matches(PyExc_TypeError) || e.matches(PyExc_MemoryError) ||
          e.matches(PyExc_IndexError))
        throw;
      const std::string type = py::str(py::type::of(obj).attr("__name__"));
      py::raise_from(e, PyExc_TypeError, (std::string(name) + ": cannot convert a " + type + " to a numpy array").c_str());
      throw py::error_already_set();
    }
  }
  if (!is_aligned(a)) {
    log_copy(name, a, "an aligned array (the data started at an odd byte offset)");
    a = py::reinterpret_steal<py::array>(a.attr("copy")().release());
  }
  return a;
}

// `a` as a C-contiguous array of T: itself when it already is one, else numpy's conversion. A
// conversion that fails keeps numpy's exception -- a MemoryError for a copy larger than memory --
// where pybind11's array_t::ensure would swallow it and hand back a null array.
template <class T>
py::array_t<T, py::array::c_style | py::array::forcecast> c_array(const py::array& a) {
  return py::array_t<T, py::array::c_style | py::array::forcecast>(a);
}

char kind_of(const py::array& a) { return a.dtype().kind(); }

void expect_real(const py::array& a, const char* name) {
  const char k = kind_of(a);
  if (k == 'f' || k == 'i' || k == 'u' || k == 'b') return;
  std::string dt = py::str(a.dtype());
  raise<TypeError>(name, " must be a real numeric array, got dtype ", dt);
}

}  // namespace

void init_numpy() {
  py::module_ np = py::module_::import("numpy");
  g_ndarray = py::object(np.attr("ndarray")).release().ptr();
  g_asarray = py::object(np.attr("asarray")).release().ptr();
}

// A coreformer.Tensor argument as it is: the op checks its device and dtype.
static Arg tensor_arg(py::handle obj) { return {py::reinterpret_steal<py::array>(py::handle()), tensor_of(obj).view, py::reinterpret_borrow<py::object>(obj)}; }

Arg float_arg(py::handle obj, const char* name) {
  if (is_tensor(obj)) return tensor_arg(obj);
  py::array a = as_array(obj, name);
  expect_real(a, name);
  auto f = logged(c_array<float>(a), a, name, "float32, C-contiguous");
  return {f, view_of(f, DType::f32)};
}

Arg strided_float_arg(py::handle obj, const char* name) {
  if (is_tensor(obj)) return tensor_arg(obj);
  py::array a = as_array(obj, name);
  TensorView v;
  if (strided_view(a, v)) return {a, v};
  return float_arg(a, name);
}

Arg any_strided_float_arg(py::handle obj, const char* name) {
  if (is_tensor(obj)) return tensor_arg(obj);
  py::array a = as_array(obj, name);
  TensorView v;
  if (strided_view(a, v, /*contiguous_last=*/false)) return {a, v};
  return float_arg(a, name);
}

OptionalView optional_float(py::handle obj, const char* name, Arg& holder) {
  if (obj.is_none()) return {};
  holder = float_arg(obj, name);
  return holder.view;
}

OptionalView optional_mask(py::handle obj, const char* name, Arg& holder) {
  if (obj.is_none()) return {};
  if (is_tensor(obj)) {
    holder = tensor_arg(obj);
    return holder.view;
  }
  py::array a = as_array(obj, name);
  const char k = kind_of(a);
  if (k == 'b') {
    auto b = logged(c_array<bool>(a), a, name, "bool, C-contiguous");
    holder = {b, view_of(b, DType::boolean)};
    return holder.view;
  }
  if (k == 'f') return optional_float(a, name, holder);
  std::string dt = py::str(a.dtype());
  raise<TypeError>(name, " must be a bool array (True = attend) or a float array (added to the scores), got dtype ",
                   dt);
}

OptionalView optional_bool(py::handle obj, const char* name, Arg& holder) {
  if (obj.is_none()) return {};
  if (is_tensor(obj)) {
    holder = tensor_arg(obj);
    return holder.view;
  }
  py::array a = as_array(obj, name);
  expect_real(a, name);
  if (kind_of(a) != 'b') {
    log_copy(name, a, "bool (nonzero: True)");
    a = as_array(a.attr("__ne__")(0), name);  // a 0-d array's != gives a numpy scalar, not an array
  }
  auto b = logged(c_array<bool>(a), a, name, "bool, C-contiguous");
  holder = {b, view_of(b, DType::boolean)};
  return holder.view;
}

Arg ids_arg(py::handle obj, const char* name, bool int32_ok) {
  if (is_tensor(obj)) return tensor_arg(obj);
  py::array a = as_array(obj, name);
  const char k = kind_of(a);
  if (k != 'i' && k != 'u') {
    std::string dt = py::str(a.dtype());
    raise<TypeError>(name, " must be an integer array, got dtype ", dt);
  }
  if (k == 'u' && a.itemsize() == 8 && a.size() > 0) {
    // uint64 ids past int64's range would wrap to negative ones in the cast below: name the real value
    py::object flat = a.attr("ravel")();
    const auto at = flat.attr("argmax")().cast<int64_t>();
    const auto big = flat[py::int_(at)].cast<uint64_t>();
    if (big > static_cast<uint64_t>(INT64_MAX))
      raise<IndexError>(name, "[", at, "] (flat index) is ", big, ", outside any table's rows");
  }
  if (k == 'i' && a.itemsize() == 4 && int32_ok) {
    auto i = logged(c_array<int32_t>(a), a, name, "int32, C-contiguous");
    return {i, view_of(i, DType::i32)};
  }
  auto i = logged(c_array<int64_t>(a), a, name, "int64, C-contiguous");
  return {i, view_of(i, DType::i64)};
}

Arg inout_float_arg(py::handle obj, const char* name) {
  if (is_tensor(obj)) return tensor_arg(obj);  // written in place on its device; the op checks its dtype
  if (!py::isinstance<py::array>(obj)) raise<TypeError>(name, " must be a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!is_native_f32(a)) {
    std::string dt = py::str(a.dtype());
    raise<TypeError>(name, " must be a float32 array, got dtype ", dt);
  }
  if (!(a.flags() & py::array::c_style)) raise<ValueError>(name, " must be C-contiguous");
  if (!is_aligned(a)) raise<ValueError>(name, " must be aligned to 4 bytes (it is a view at an odd byte offset)");
  if (!a.writeable()) raise<ValueError>(name, " is read-only");
  return {a, view_of(a, DType::f32)};
}

namespace {
// The bytes an argument's view spans: [lo, hi) from its first to one past its last element.
bool span(const Arg& a, const char*& lo, const char*& hi) {
  if (!a.view.data || a.view.numel() == 0) return false;  // an absent optional argument has no data
  int64_t last = 0;
  for (int i = 0; i < a.view.ndim; ++i) last += (a.view.shape[i] - 1) * a.view.strides[i];
  lo = static_cast<const char*>(a.view.data);
  hi = lo + (last + 1) * static_cast<int64_t>(dtype_size(a.view.dtype));
  return true;
}
}  // namespace

bool overlap(const Arg& a, const Arg& b) {
  const char *a0, *a1, *b0, *b1;
  if (!span(a, a0, a1) || !span(b, b0, b1) || !(a.view.device == b.view.device)) return false;
  return a0 < b1 && b0 < a1;
}

Arg output(py::handle out, const std::vector<int64_t>& shape, const std::vector<const Arg*>& inputs, bool allow_same,
           const Arg* like) {
  if (!like)
    for (const Arg* in : inputs)
      if (in && in->tensor) { like = in; break; }
  if (like && !like->tensor) like = nullptr;
  const DType dtype = like ? like->view.dtype : DType::f32;
  if (out.is_none()) {
    if (like) {
      py::object t = new_tensor(shape, dtype, like->view.device);
      return tensor_arg(t);
    }
    py::array_t<float> r(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    return {r, view_of(r, DType::f32)};
  }
  Arg r;
  if (is_tensor(out)) {
    r = tensor_arg(out);
    CF_CHECK(r.view.dtype == dtype, TypeError, "out must be ", dtype_name(dtype), ", got ", dtype_name(r.view.dtype));
    CF_CHECK(!like || r.view.device == like->view.device, ValueError, "out is on ", device_str(r.view.device),
             " but the inputs are on ", device_str(like->view.device));
  } else {
    CF_CHECK(!like, TypeError, "out must be a coreformer.Tensor when the inputs are tensors");
    r = inout_float_arg(out, "out");
  }
  std::vector<int64_t> got(r.view.shape, r.view.shape + r.view.ndim);
  if (got != shape) {
    raise<ValueError>("out has shape ", r.view.shape_str(), " but the result has shape ",
                      TensorView(nullptr, DType::f32, static_cast<int>(shape.size()), shape.data()).shape_str());
  }
  for (const Arg* in : inputs) {
    if (!in || !overlap(r, *in)) continue;
    const bool same = in->view.data == r.view.data && in->view.numel() == r.view.numel() &&
                      in->view.dtype == r.view.dtype && in->view.is_contiguous();
    if (!(allow_same && same))
      raise<ValueError>("out overlaps an input array; pass a separate array", allow_same ? " (or exactly the input)" : "");
  }
  return r;
}

Arg strided_output(py::handle out, const std::vector<int64_t>& shape, const std::vector<const Arg*>& inputs) {
  bool tensors = is_tensor(out);
  for (const Arg* in : inputs) tensors = tensors || (in && in->tensor);
  if (tensors || out.is_none() || !py::isinstance<py::array>(out)) return output(out, shape, inputs);
  py::array a = py::reinterpret_borrow<py::array>(out);
  if (!is_native_f32(a)) return output(out, shape, inputs);  // its dtype error
  TensorView v;
  if (!strided_view(a, v) || !elements_distinct(v))
    raise<ValueError>("out must have a contiguous last axis, non-negative strides and no repeated elements");
  if (!a.writeable()) raise<ValueError>("out is read-only");
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != shape) {
    raise<ValueError>("out has shape ", v.shape_str(), " but the result has shape ",
                      TensorView(nullptr, DType::f32, static_cast<int>(shape.size()), shape.data()).shape_str());
  }
  // Overlap by address range, conservatively: the span from the first to one past the last element.
  auto span = [](const TensorView& t, const char*& lo, const char*& hi) {
    int64_t last = 0;
    for (int i = 0; i < t.ndim; ++i) last += (t.shape[i] - 1) * t.strides[i];
    lo = static_cast<const char*>(t.data);
    hi = lo + (last + 1) * 4;
  };
  const char *o0, *o1;
  span(v, o0, o1);
  for (const Arg* in : inputs) {
    if (!in || !in->array || in->view.numel() == 0 || v.numel() == 0) continue;
    const char *i0 = static_cast<const char*>(in->array.data()), *i1 = i0 + in->array.nbytes();
    if (in->view.dtype == DType::f32) span(in->view, i0, i1);
    if (o0 < i1 && i0 < o1) raise<ValueError>("out overlaps an input array; pass a separate array");
  }
  return {a, v};
}

}  // namespace cf::pyext

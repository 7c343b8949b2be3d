#include "convert.h"

#include <string>

#include "core/error.h"

namespace cf::pyext {
namespace {

TensorView view_of(const py::array& a, DType t) {
  std::vector<int64_t> dims(a.shape(), a.shape() + a.ndim());
  CF_CHECK(a.ndim() <= kMaxDims, ValueError, "at most ", kMaxDims, " dimensions are supported, got ", a.ndim());
  return TensorView(const_cast<void*>(a.data()), t, static_cast<int>(a.ndim()), dims.data());
}

py::array as_array(py::handle obj, const char* name) {
  if (obj.is_none()) raise<TypeError>(name, " must be an array, got None");
  py::array a = py::reinterpret_steal<py::array>(py::module_::import("numpy").attr("asarray")(obj).release());
  return a;
}

char kind_of(const py::array& a) { return a.dtype().kind(); }

void expect_real(const py::array& a, const char* name) {
  const char k = kind_of(a);
  if (k == 'f' || k == 'i' || k == 'u' || k == 'b') return;
  std::string dt = py::str(a.dtype());
  raise<TypeError>(name, " must be a real numeric array, got dtype ", dt);
}

}  // namespace

Arg float_arg(py::handle obj, const char* name) {
  py::array a = as_array(obj, name);
  expect_real(a, name);
  auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!f) throw py::error_already_set();
  return {f, view_of(f, DType::f32)};
}

OptionalView optional_float(py::handle obj, const char* name, Arg& holder) {
  if (obj.is_none()) return {};
  holder = float_arg(obj, name);
  return holder.view;
}

OptionalView optional_mask(py::handle obj, const char* name, Arg& holder) {
  if (obj.is_none()) return {};
  py::array a = as_array(obj, name);
  const char k = kind_of(a);
  if (k == 'b') {
    auto b = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(a);
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
  py::array a = as_array(obj, name);
  expect_real(a, name);
  if (kind_of(a) != 'b') a = py::reinterpret_steal<py::array>(a.attr("__ne__")(0).release());
  auto b = py::array_t<bool, py::array::c_style | py::array::forcecast>::ensure(a);
  holder = {b, view_of(b, DType::boolean)};
  return holder.view;
}

Arg ids_arg(py::handle obj, const char* name) {
  py::array a = as_array(obj, name);
  const char k = kind_of(a);
  if (k != 'i' && k != 'u') {
    std::string dt = py::str(a.dtype());
    raise<TypeError>(name, " must be an integer array, got dtype ", dt);
  }
  if (k == 'i' && a.itemsize() == 4) {
    auto i = py::array_t<int32_t, py::array::c_style | py::array::forcecast>::ensure(a);
    return {i, view_of(i, DType::i32)};
  }
  auto i = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(a);
  return {i, view_of(i, DType::i64)};
}

Arg output(py::handle out, const std::vector<int64_t>& shape, const std::vector<const Arg*>& inputs, bool allow_same) {
  if (out.is_none()) {
    py::array_t<float> r(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    return {r, view_of(r, DType::f32)};
  }
  if (!py::isinstance<py::array>(out)) raise<TypeError>("out must be a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(out);
  if (!(a.dtype().kind() == 'f' && a.itemsize() == 4 && a.dtype().attr("isnative").cast<bool>())) {
    std::string dt = py::str(a.dtype());
    raise<TypeError>("out must be a float32 array, got dtype ", dt);
  }
  if (!(a.flags() & py::array::c_style)) raise<ValueError>("out must be C-contiguous");
  if (!a.writeable()) raise<ValueError>("out is read-only");
  Arg r{a, view_of(a, DType::f32)};
  std::vector<int64_t> got(a.shape(), a.shape() + a.ndim());
  if (got != shape) {
    raise<ValueError>("out has shape ", r.view.shape_str(), " but the result has shape ",
                      TensorView(nullptr, DType::f32, static_cast<int>(shape.size()), shape.data()).shape_str());
  }
  const char* o0 = static_cast<const char*>(a.data());
  const char* o1 = o0 + a.nbytes();
  for (const Arg* in : inputs) {
    if (!in || !in->array) continue;
    const char* i0 = static_cast<const char*>(in->array.data());
    const char* i1 = i0 + in->array.nbytes();
    const bool overlap = o0 < i1 && i0 < o1 && a.nbytes() > 0 && in->array.nbytes() > 0;
    if (overlap && !(allow_same && o0 == i0 && o1 == i1))
      raise<ValueError>("out overlaps an input array; pass a separate array", allow_same ? " (or exactly the input)" : "");
  }
  return r;
}

}  // namespace cf::pyext

#include "tensor.h"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <string>

#include "core/error.h"
#include "core/storage.h"
#include "cuda/runtime.h"
#include "dlpack.h"

namespace cf::pyext {
namespace {

PyObject* g_tensor_type = nullptr;  // the registered class (kept for the life of the process)

Device parse_device(py::handle obj) {
  if (obj.is_none()) return {};
  CF_CHECK(py::isinstance<py::str>(obj), TypeError, "device must be a str ('cpu', 'cuda' or 'cuda:N'), got ",
           std::string(py::str(py::type::of(obj).attr("__name__"))));
  const std::string s = obj.cast<std::string>();
  if (s == "cpu") return {};
  if (s == "cuda") return {DeviceType::cuda, 0};
  if (s.rfind("cuda:", 0) == 0 && s.size() > 5 && s.find_first_not_of("0123456789", 5) == std::string::npos) {
    CF_CHECK(s.size() <= 5 + 9, ValueError, "device index ", s.substr(5), " is out of range");  // fits an int
    return {DeviceType::cuda, std::stoi(s.substr(5))};
  }
  raise<ValueError>("device must be 'cpu', 'cuda' or 'cuda:N', got '", s, "'");
}

DType parse_dtype(py::handle obj) {
  std::string name;
  if (py::isinstance<py::str>(obj)) name = obj.cast<std::string>();
  else name = py::str(py::module_::import("numpy").attr("dtype")(obj).attr("name"));
  if (name == "float32") return DType::f32;
  if (name == "float16") return DType::f16;
  if (name == "bfloat16") return DType::bf16;
  if (name == "int32") return DType::i32;
  if (name == "int64") return DType::i64;
  if (name == "bool") return DType::boolean;
  if (name == "uint8") return DType::u8;
  if (name == "int8") return DType::i8;
  raise<TypeError>("dtype must be float32, float16, bfloat16, int32, int64, int8, uint8 or bool, got '", name, "'");
}

// numpy dtype name for each dtype numpy has; bfloat16 arrives in numpy as float32 values.
const char* numpy_name(DType t) {
  switch (t) {
    case DType::f32: case DType::bf16: return "float32";
    case DType::f16: return "float16";
    case DType::f64: return "float64";
    case DType::i32: return "int32";
    case DType::i64: return "int64";
    case DType::u8: return "uint8";
    case DType::i8: return "int8";
    case DType::boolean: return "bool";
  }
  return "float32";
}

std::vector<int64_t> shape_vec(const TensorView& v) { return std::vector<int64_t>(v.shape, v.shape + v.ndim); }

size_t nbytes(const TensorView& v) { return static_cast<size_t>(v.numel()) * dtype_size(v.dtype); }

py::object make(Tensor t) { return py::cast(std::move(t)); }

// dst (contiguous, any device and dtype) = src (any strides, device and dtype), converted. Call
// without the GIL.
void convert_into(const TensorView& src, const TensorView& dst) {
  if (src.device == dst.device) {
    copy_convert(src, dst);
  } else if (src.dtype == dst.dtype && src.is_contiguous()) {
    copy_bytes(dst.data, dst.device, src.data, src.device, nbytes(src));
  } else if (dst.device.type == DeviceType::cpu) {  // GPU -> CPU: convert on the GPU, then copy
    std::shared_ptr<void> tmp = allocate(nbytes(dst), src.device);
    TensorView mid(tmp.get(), dst.dtype, src.ndim, src.shape, src.device);
    copy_convert(src, mid);
    copy_bytes(dst.data, dst.device, mid.data, mid.device, nbytes(dst));
  } else {  // CPU or another GPU -> this GPU: contiguous in the source's dtype, copy, convert here
    std::shared_ptr<void> tmp = allocate(nbytes(src), src.device);
    TensorView mid(tmp.get(), src.dtype, src.ndim, src.shape, src.device);
    copy_convert(src, mid);
    std::shared_ptr<void> tmp2 = allocate(nbytes(src), dst.device);
    copy_bytes(tmp2.get(), dst.device, mid.data, mid.device, nbytes(src));
    copy_convert(TensorView(tmp2.get(), src.dtype, src.ndim, src.shape, dst.device), dst);
  }
}

// A new contiguous tensor on `device` as `dtype` holding src's values.
py::object converted(const TensorView& src, DType dtype, Device device) {
  py::object r = new_tensor(shape_vec(src), dtype, device);
  const TensorView dst = tensor_of(r).view;
  py::gil_scoped_release nogil;
  convert_into(src, dst);
  return r;
}

// ---- DLPack ----

DLDataType dl_dtype(DType t) {
  switch (t) {
    case DType::f32: return {kDLFloat, 32, 1};
    case DType::f16: return {kDLFloat, 16, 1};
    case DType::bf16: return {kDLBfloat, 16, 1};
    case DType::f64: return {kDLFloat, 64, 1};
    case DType::i32: return {kDLInt, 32, 1};
    case DType::i64: return {kDLInt, 64, 1};
    case DType::i8: return {kDLInt, 8, 1};
    case DType::u8: return {kDLUInt, 8, 1};
    case DType::boolean: return {kDLBool, 8, 1};
  }
  return {kDLFloat, 32, 1};
}

DType from_dl_dtype(DLDataType d) {
  CF_CHECK(d.lanes == 1, TypeError, "from_dlpack: vector dtypes (lanes = ", d.lanes, ") are not supported");
  if (d.code == kDLFloat && d.bits == 32) return DType::f32;
  if (d.code == kDLFloat && d.bits == 16) return DType::f16;
  if (d.code == kDLBfloat && d.bits == 16) return DType::bf16;
  if (d.code == kDLFloat && d.bits == 64) return DType::f64;
  if (d.code == kDLInt && d.bits == 32) return DType::i32;
  if (d.code == kDLInt && d.bits == 64) return DType::i64;
  if (d.code == kDLInt && d.bits == 8) return DType::i8;
  if (d.code == kDLUInt && d.bits == 8) return DType::u8;
  if (d.code == kDLBool && d.bits == 8) return DType::boolean;
  raise<TypeError>("from_dlpack: unsupported dtype (code ", int(d.code), ", ", int(d.bits), " bits)");
}

template <class M>
struct Export {
  M managed{};
  std::shared_ptr<void> owner;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
};

template <class M>
M* export_tensor(const Tensor& t) {
  auto* e = new Export<M>();
  e->owner = t.owner;
  for (int i = 0; i < t.view.ndim; ++i) {
    e->shape[i] = t.view.shape[i];
    e->strides[i] = t.view.strides[i];
  }
  DLTensor& d = e->managed.dl_tensor;
  d.data = t.view.data;
  d.device = {t.view.device.type == DeviceType::cuda ? kDLCUDA : kDLCPU, t.view.device.index};
  d.ndim = t.view.ndim;
  d.dtype = dl_dtype(t.view.dtype);
  d.shape = e->shape;
  d.strides = e->strides;
  d.byte_offset = 0;
  e->managed.manager_ctx = e;
  e->managed.deleter = [](M* self) { delete static_cast<Export<M>*>(self->manager_ctx); };
  return &e->managed;
}

void legacy_capsule_destructor(PyObject* cap) {
  if (!PyCapsule_IsValid(cap, "dltensor")) return;  // consumed: renamed to used_dltensor
  auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
  if (m && m->deleter) m->deleter(m);
}

void versioned_capsule_destructor(PyObject* cap) {
  if (!PyCapsule_IsValid(cap, "dltensor_versioned")) return;
  auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
  if (m && m->deleter) m->deleter(m);
}

py::object dlpack(const Tensor& t, py::handle stream, py::handle max_version, py::handle dl_device, py::handle copy) {
  if (!dl_device.is_none()) {
    auto dev = dl_device.cast<std::pair<int, int>>();
    const int want = t.view.device.type == DeviceType::cuda ? kDLCUDA : kDLCPU;
    CF_CHECK(dev.first == want && dev.second == t.view.device.index, ValueError,
             "__dlpack__: exporting to another device (dl_device=(", dev.first, ", ", dev.second,
             ")) is not supported; use Tensor.to() first");
  }
  CF_CHECK(copy.is_none() || !copy.cast<bool>(), ValueError, "__dlpack__: copy=True is not supported (export shares memory)");
  if (t.view.device.type == DeviceType::cuda && !stream.is_none()) {
    // Our kernels run on the legacy default stream (1 in DLPack's numbering), which orders itself
    // with every blocking stream; any other stream the consumer names waits by a host sync.
    const int64_t s = stream.cast<int64_t>();
    CF_CHECK(s != 0, ValueError, "__dlpack__: stream=0 is not allowed for CUDA (use 1 for the legacy default stream)");
    if (s != 1 && s != -1) cuda::synchronize(t.view.device.index);
  }
  bool versioned = false;
  if (!max_version.is_none()) versioned = max_version.cast<std::pair<int, int>>().first >= 1;
  if (versioned) {
    auto* m = export_tensor<DLManagedTensorVersioned>(t);
    m->version = {1, 0};
    m->flags = 0;
    return py::reinterpret_steal<py::object>(PyCapsule_New(m, "dltensor_versioned", versioned_capsule_destructor));
  }
  return py::reinterpret_steal<py::object>(PyCapsule_New(export_tensor<DLManagedTensor>(t), "dltensor",
                                                         legacy_capsule_destructor));
}

// Calls a foreign deleter with the GIL held (numpy's and others' deleters release Python objects).
template <class M>
std::shared_ptr<void> foreign_owner(M* m) {
  return std::shared_ptr<void>(m, [](void* p) {
    auto* mm = static_cast<M*>(p);
    if (!mm->deleter) return;
    if (!Py_IsInitialized()) return;
    PyGILState_STATE st = PyGILState_Ensure();
    mm->deleter(mm);
    PyGILState_Release(st);
  });
}

TensorObject from_dlpack(py::handle obj) {
  if (is_tensor(obj)) return py::reinterpret_borrow<py::object>(obj);
  CF_CHECK(py::hasattr(obj, "__dlpack__"), TypeError, "from_dlpack: ",
           std::string(py::str(py::type::of(obj).attr("__name__"))), " does not implement __dlpack__");
  py::object stream = py::none();
  if (py::hasattr(obj, "__dlpack_device__")) {
    auto dev = obj.attr("__dlpack_device__")().cast<std::pair<int, int>>();
    if (dev.first == kDLCUDA) stream = py::int_(1);  // we compute on the legacy default stream
  }
  py::object cap;
  try {
    cap = obj.attr("__dlpack__")(py::arg("stream") = stream, py::arg("max_version") = py::make_tuple(1, 0));
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) throw;
    cap = stream.is_none() ? obj.attr("__dlpack__")() : obj.attr("__dlpack__")(py::arg("stream") = stream);
  }
  PyObject* c = cap.ptr();
  Tensor t;
  const DLTensor* d = nullptr;
  if (PyCapsule_IsValid(c, "dltensor_versioned")) {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(c, "dltensor_versioned"));
    CF_CHECK(m->version.major == 1, TypeError, "from_dlpack: DLPack version ", m->version.major, ".",
             m->version.minor, " is not supported (1.x is)");
    PyCapsule_SetName(c, "used_dltensor_versioned");
    t.owner = foreign_owner(m);
    d = &m->dl_tensor;
  } else if (PyCapsule_IsValid(c, "dltensor")) {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
    PyCapsule_SetName(c, "used_dltensor");
    t.owner = foreign_owner(m);
    d = &m->dl_tensor;
  } else {
    raise<TypeError>("from_dlpack: __dlpack__ did not return a DLPack capsule");
  }
  Device dev;
  if (d->device.device_type == kDLCUDA) dev = {DeviceType::cuda, d->device.device_id};
  else CF_CHECK(d->device.device_type == kDLCPU || d->device.device_type == kDLCUDAHost, ValueError,
                "from_dlpack: tensors on DLPack device type ", d->device.device_type, " are not supported (CPU and CUDA are)");
  CF_CHECK(d->ndim >= 0 && d->ndim <= kMaxDims, ValueError, "from_dlpack: at most ", kMaxDims,
           " dimensions are supported, got ", d->ndim);
  const DType dt = from_dl_dtype(d->dtype);
  TensorView v(static_cast<char*>(d->data) + d->byte_offset, dt, d->ndim, d->shape, dev);
  if (d->strides)
    for (int i = 0; i < d->ndim; ++i) v.strides[i] = d->strides[i];
  int64_t numel = 1;
  for (int i = 0; i < d->ndim; ++i) {
    CF_CHECK(d->shape[i] >= 0, ValueError, "from_dlpack: negative dimension ", d->shape[i]);
    numel = checked_mul(numel, d->shape[i], "from_dlpack: the element count");
  }
  // The kernels load whole elements: a view at an odd byte offset of a buffer would be undefined behaviour.
  CF_CHECK(numel == 0 || reinterpret_cast<uintptr_t>(v.data) % dtype_size(dt) == 0, ValueError,
           "from_dlpack: the data is not aligned to its ", dtype_size(dt), "-byte elements (copy it first)");
  if (v.is_contiguous()) {
    v.set_contiguous_strides();
    t.view = v;
    return make(std::move(t));
  }
  py::object r = converted(v, dt, dev);  // a strided view: one contiguous copy
  return r;
}

// The element count of a shape; ValueError for a negative dimension or a count past int64.
int64_t checked_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    CF_CHECK(d >= 0, ValueError, "negative dimension ", d);
    n = checked_mul(n, d, "the element count of the shape");
  }
  return n;
}

TensorObject reshape(const Tensor& t, const py::args& args) {
  std::vector<int64_t> shape;
  if (args.size() == 1 && !py::isinstance<py::int_>(args[0])) {
    for (py::handle h : args[0]) shape.push_back(h.cast<int64_t>());
  } else {
    for (py::handle h : args) shape.push_back(h.cast<int64_t>());
  }
  CF_CHECK(static_cast<int>(shape.size()) <= kMaxDims, ValueError, "at most ", kMaxDims, " dimensions are supported");
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      CF_CHECK(infer < 0, ValueError, "reshape: only one dimension can be -1");
      infer = static_cast<int>(i);
    } else {
      CF_CHECK(shape[i] >= 0, ValueError, "reshape: negative dimension ", shape[i]);
      known = checked_mul(known, shape[i], "reshape: the element count of the new shape");
    }
  }
  const int64_t n = t.view.numel();
  if (infer >= 0) {
    CF_CHECK(known > 0 && n % known == 0, ValueError, "reshape: cannot reshape ", t.view.shape_str(), " into the given shape");
    shape[infer] = n / known;
    known *= shape[infer];
  }
  CF_CHECK(known == n, ValueError, "reshape: cannot reshape a tensor of shape ", t.view.shape_str(), " (", n,
           " elements) into ", known, " elements");
  Tensor r;
  r.owner = t.owner;
  r.view = TensorView(t.view.data, t.view.dtype, static_cast<int>(shape.size()), shape.data(), t.view.device);
  return make(std::move(r));
}

// t[i] or t[a:b] along the first dimension: a view of the same memory (rows of a C-contiguous tensor
// are contiguous). How a model's one flat parameter buffer on a device hands out each weight.
TensorObject index_first(const Tensor& t, py::handle key) {
  CF_CHECK(t.view.ndim > 0, IndexError, "a 0-d tensor cannot be indexed");
  const int64_t n = t.view.shape[0];
  int64_t start = 0, stop = 0;
  bool drop = false;
  if (py::isinstance<py::slice>(key)) {
    py::ssize_t a = 0, b = 0, step = 0, len = 0;
    CF_CHECK(py::reinterpret_borrow<py::slice>(key).compute(static_cast<py::ssize_t>(n), &a, &b, &step, &len), ValueError,
             "tensor index: not a valid slice");
    CF_CHECK(step == 1, ValueError, "tensor index: only slices with step 1 are views, got step ", step);
    start = a;
    stop = a + len;
  } else {
    CF_CHECK(py::isinstance<py::int_>(key) && !py::isinstance<py::bool_>(key), TypeError,
             "a tensor is indexed by an int or a slice along its first dimension, got ",
             std::string(py::str(py::type::of(key).attr("__name__"))));
    int64_t i = key.cast<int64_t>();
    CF_CHECK(i >= -n && i < n, IndexError, "index ", i, " is out of range for the first dimension of a tensor of shape ",
             t.view.shape_str());
    start = i < 0 ? i + n : i;
    stop = start + 1;
    drop = true;
  }
  int64_t row = 1;
  for (int d = 1; d < t.view.ndim; ++d) row *= t.view.shape[d];
  std::vector<int64_t> shape(t.view.shape + (drop ? 1 : 0), t.view.shape + t.view.ndim);
  if (!drop) shape[0] = stop - start;
  Tensor r;
  r.owner = t.owner;
  r.view = TensorView(static_cast<char*>(t.view.data) + static_cast<size_t>(start * row) * dtype_size(t.view.dtype),
                      t.view.dtype, static_cast<int>(shape.size()), shape.data(), t.view.device);
  return make(std::move(r));
}

py::array to_numpy(const Tensor& t) {
  const DType host = t.view.dtype == DType::bf16 ? DType::f32 : t.view.dtype;
  py::array a(py::dtype(numpy_name(host)), shape_vec(t.view));
  const TensorView dst(a.mutable_data(), host, t.view.ndim, t.view.shape);
  {
    py::gil_scoped_release nogil;
    convert_into(t.view, dst);  // straight into the array: one copy
  }
  return std::move(a);
}

TensorObject tensor_from(py::handle data, py::handle device, py::handle dtype) {
  const Device dev = parse_device(device);
  if (dev.type == DeviceType::cuda) cuda::require_device(dev.index);
  if (is_tensor(data)) {
    const Tensor& t = tensor_of(data);
    return converted(t.view, dtype.is_none() ? t.view.dtype : parse_dtype(dtype), dev);
  }
  py::array a = py::module_::import("numpy").attr("asarray")(data);  // numpy's own error when it cannot
  const char k = a.dtype().kind();
  CF_CHECK(k == 'f' || k == 'i' || k == 'u' || k == 'b', TypeError, "data must be a real numeric array, got dtype ",
           std::string(py::str(a.dtype())));
  DType want;
  if (!dtype.is_none()) want = parse_dtype(dtype);
  else if (k == 'f') want = a.itemsize() == 2 ? DType::f16 : DType::f32;  // float64 -> float32, as the ops convert
  else if (k == 'b') want = DType::boolean;
  else if (k == 'i' && a.itemsize() == 4) want = DType::i32;
  else if (k == 'u' && a.itemsize() == 1) want = DType::u8;
  else if (k == 'i' && a.itemsize() == 1) want = DType::i8;
  else want = DType::i64;
  // host staging in a dtype numpy has, then one conversion (bfloat16 is made from float32)
  DType stage = want == DType::bf16 ? DType::f32 : want;
  if (k == 'f' && a.itemsize() == 8 && (want == DType::f32 || want == DType::f16 || want == DType::bf16))
    stage = DType::f64;  // round once, from the float64 values
  py::array h = a.attr("astype")(numpy_name(stage), py::arg("order") = "C");  // a new, aligned, C-contiguous copy
  CF_CHECK(h.ndim() <= kMaxDims, ValueError, "at most ", kMaxDims, " dimensions are supported, got ", h.ndim());
  std::vector<int64_t> shape(h.shape(), h.shape() + h.ndim());
  checked_numel(shape);
  TensorView src(const_cast<void*>(h.data()), stage, static_cast<int>(shape.size()), shape.data());
  return converted(src, want, dev);
}

}  // namespace

bool is_tensor(py::handle obj) {
  return g_tensor_type && PyObject_TypeCheck(obj.ptr(), reinterpret_cast<PyTypeObject*>(g_tensor_type));
}

Tensor& tensor_of(py::handle obj) { return obj.cast<Tensor&>(); }

py::object new_tensor(const std::vector<int64_t>& shape, DType dtype, Device device) {
  CF_CHECK(static_cast<int>(shape.size()) <= kMaxDims, ValueError, "at most ", kMaxDims, " dimensions are supported");
  Tensor t;
  const auto bytes = static_cast<size_t>(
      checked_mul(checked_numel(shape), static_cast<int64_t>(dtype_size(dtype)), "the tensor's byte count"));
  t.owner = allocate(bytes, device);
  t.view = TensorView(t.owner.get(), dtype, static_cast<int>(shape.size()), shape.data(), device);
  return make(std::move(t));
}

void refuse_direct_construction(py::handle cls, const char* how) {
  const std::string message = std::string(py::str(cls.attr("__name__"))) + " objects cannot be created directly: " + how;
  py::setattr(cls, "__new__", py::cpp_function([message](const py::args&, const py::kwargs&) -> py::object {
                raise<TypeError>(message);
              }));
}

void register_tensor(py::module_& m) {
  auto cls = py::class_<Tensor>(m, "Tensor", R"doc(Memory on a device (shape, dtype, device) that stays there across op calls.

Made by ``coreformer.tensor(data, device=..., dtype=...)``, ``coreformer.from_dlpack(x)`` or
returned by an op called with tensors. ``.numpy()`` copies to a numpy array, ``.to(device,
dtype)`` copies across devices or dtypes, and ``__dlpack__`` shares the memory with PyTorch,
CuPy, JAX or numpy without a copy.)doc");
  cls.def_property_readonly("shape", [](const Tensor& t) {
       py::tuple s(t.view.ndim);
       for (int i = 0; i < t.view.ndim; ++i) s[i] = py::int_(t.view.shape[i]);
       return s;
     })
      .def_property_readonly("dtype", [](const Tensor& t) { return std::string(dtype_name(t.view.dtype)); })
      .def_property_readonly("device", [](const Tensor& t) { return device_str(t.view.device); })
      .def_property_readonly("ndim", [](const Tensor& t) { return t.view.ndim; })
      .def_property_readonly("size", [](const Tensor& t) { return t.view.numel(); })
      .def_property_readonly("nbytes", [](const Tensor& t) { return nbytes(t.view); })
      .def("__len__", [](const Tensor& t) {
        CF_CHECK(t.view.ndim > 0, TypeError, "len() of a 0-d tensor");
        return t.view.shape[0];
      })
      .def("numpy", &to_numpy, "A copy as a numpy array in host memory (bfloat16 arrives as float32).")
      .def("__array__", [](const Tensor& t, py::handle dtype, py::handle) {
             py::object a = to_numpy(t);
             return dtype.is_none() ? a : a.attr("astype")(dtype);
           },
           py::arg("dtype") = py::none(), py::arg("copy") = py::none())
      .def("to",
           [](py::object self, py::handle device, py::handle dtype) -> TensorObject {
             const Tensor& t = tensor_of(self);
             const Device dev = device.is_none() ? t.view.device : parse_device(device);
             const DType dt = dtype.is_none() ? t.view.dtype : parse_dtype(dtype);
             if (dev == t.view.device && dt == t.view.dtype) return self;
             if (dev.type == DeviceType::cuda) cuda::require_device(dev.index);
             return converted(t.view, dt, dev);
           },
           py::arg("device") = py::none(), py::arg("dtype") = py::none(),
           "This tensor on `device` ('cpu', 'cuda', 'cuda:N') as `dtype`: itself when both already match, else a copy.")
      .def("__reduce__",
           [](const Tensor& t) -> py::tuple {  // pickle and copy: the values through host memory, back onto the same device
             return py::make_tuple(py::module_::import("coreformer._core").attr("tensor"),
                                   py::make_tuple(to_numpy(t), device_str(t.view.device), std::string(dtype_name(t.view.dtype))));
           })
      .def("reshape", &reshape, "A view of the same memory with another shape (one dimension may be -1).")
      .def("__getitem__", &index_first, py::arg("key"),
           "``t[i]`` or ``t[a:b]`` along the first dimension: a view of the same memory.")
      .def("__dlpack__", &dlpack, py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
           py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("__dlpack_device__", [](const Tensor& t) {
        return py::make_tuple(t.view.device.type == DeviceType::cuda ? int(kDLCUDA) : int(kDLCPU), t.view.device.index);
      })
      .def("__repr__", [](const Tensor& t) {
        return "Tensor(shape=" + t.view.shape_str() + ", dtype=" + dtype_name(t.view.dtype) + ", device='" +
               device_str(t.view.device) + "')";
      });
  refuse_direct_construction(cls, "use coreformer.tensor(data, device, dtype) or coreformer.from_dlpack(x)");
  g_tensor_type = cls.inc_ref().ptr();
  m.def("tensor", &tensor_from, py::arg("data"), py::arg("device") = "cpu", py::arg("dtype") = py::none());
  m.def("from_dlpack", &from_dlpack, py::arg("x"));
}

}  // namespace cf::pyext

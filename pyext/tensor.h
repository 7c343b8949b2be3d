// coreformer.Tensor: a handle to memory on a device (shape, dtype, device) that stays there across
// op calls -- the GPU's array type; on the CPU it works too. Converts to and from numpy and speaks
// DLPack both ways (zero-copy with PyTorch, CuPy, JAX, numpy).
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/typing.h>

#include <memory>
#include <vector>

#include "core/tensor.h"

namespace cf::pyext {

namespace py = pybind11;

struct Tensor {
  std::shared_ptr<void> owner;  // keeps the memory alive: our allocation, or a DLPack producer's tensor
  TensorView view;              // always C-contiguous
};

// A Python object holding a Tensor: named coreformer._core.Tensor in the generated stub.
using TensorObject = py::typing::Union<Tensor>;

void register_tensor(py::module_& m);
bool is_tensor(py::handle obj);
Tensor& tensor_of(py::handle obj);
// A new, uninitialised C-contiguous tensor, as a Python object.
py::object new_tensor(const std::vector<int64_t>& shape, DType dtype, Device device);

// Objects of a bound class that only the core makes (Tensor, PackedWeight): `Cls()` and
// `Cls.__new__(Cls)` raise TypeError saying `how` to make one. Without this they handed out an object
// whose C++ value was never constructed (its methods read garbage), and pickle's protocols 0 and 1
// (copyreg's object.__new__) aborted the interpreter. pybind11 builds the objects it returns without
// calling __new__, so those are unaffected.
void refuse_direct_construction(py::handle cls, const char* how);

}  // namespace cf::pyext

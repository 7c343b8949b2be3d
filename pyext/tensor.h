// coreformer.Tensor: a handle to memory on a device (shape, dtype, device) that stays there across
// op calls -- the GPU's array type; on the CPU it works too. Converts to and from numpy and speaks
// DLPack both ways (zero-copy with PyTorch, CuPy, JAX, numpy).
#pragma once
#include <pybind11/pybind11.h>

#include <memory>
#include <vector>

#include "core/tensor.h"

namespace cf::pyext {

namespace py = pybind11;

struct Tensor {
  std::shared_ptr<void> owner;  // keeps the memory alive: our allocation, or a DLPack producer's tensor
  TensorView view;              // always C-contiguous
};

void register_tensor(py::module_& m);
bool is_tensor(py::handle obj);
Tensor& tensor_of(py::handle obj);
// A new, uninitialised C-contiguous tensor, as a Python object.
py::object new_tensor(const std::vector<int64_t>& shape, DType dtype, Device device);

}  // namespace cf::pyext

// The training ops' bindings (pyext/train.cpp), added to coreformer._core by module.cpp.
#pragma once
#include <pybind11/pybind11.h>

namespace cf::pyext {

void register_train(pybind11::module_& m);

}  // namespace cf::pyext

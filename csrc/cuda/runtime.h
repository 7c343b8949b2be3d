// The CUDA runtime as the rest of the core sees it. Kernels arrive with the CUDA issue; today the
// backend reports how many devices it can use. Without a driver or GPU that number is 0.
#pragma once

namespace cf::cuda {

int device_count();

}  // namespace cf::cuda

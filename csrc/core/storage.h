// Owning memory on a device, for the Tensor handle: CPU memory 64-byte aligned, GPU memory from
// the CUDA runtime. Shared ownership so views (reshape, DLPack exports) keep it alive.
#pragma once
#include <cstddef>
#include <memory>

#include "core/tensor.h"

namespace cf {

// RuntimeError when the device cannot be used (no GPU, a build without CUDA) or is out of memory;
// MemoryError when host memory is.
std::shared_ptr<void> allocate(size_t bytes, Device device);
// Copies bytes between any two devices (a GPU copy waits for the kernels before it).
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t bytes);
// dst (C-contiguous) = src (any non-negative strides), converting between float dtypes (float32,
// float16, bfloat16; on the CPU float64 too) or copying others of the same dtype. Both on one device.
void copy_convert(const TensorView& src, const TensorView& dst);
std::string device_str(Device d);  // "cpu", "cuda:0"

}  // namespace cf

// cuBLAS for the GPU GEMM, loaded at run time (dlopen) rather than linked: a CUDA build then needs no
// cuBLAS headers or libraries to compile (CI's toolkit has none), a wheel runs where cuBLAS is missing
// (our own tensor-core kernel in csrc/cuda/gemm.cu takes over), and where it is present -- in the CUDA
// toolkit, or in NVIDIA's PyPI package that PyTorch also uses -- linear runs at cuBLAS's rate.
#pragma once
#include <string>
#include <vector>

#include "cuda/kernels.h"

namespace cf::cuda::blas {

// Directories to look in after the loader's own search (the Python package passes NVIDIA's PyPI
// package folders and CUDA_HOME); call before the first GEMM.
void set_search_dirs(std::vector<std::string> dirs);
// Whether cuBLAS is loaded (the first call tries to load it) and allowed: COREFORMER_CUBLAS=0 or
// set_enabled(false) sends every GEMM to coreformer's own kernels.
bool available();
bool set_enabled(bool on);  // returns the previous setting
std::string describe();     // "libcublas.so.13 (version 130100)", or why it is not in use

// c = A W^T, or c = A W^T + c when accumulate (row-major, K contiguous; bias, activation and residual
// are the caller's epilogue). False when cuBLAS cannot take it (not loaded, disabled, sizes past int).
bool gemm(const GemmArgs& g, bool accumulate);

}  // namespace cf::cuda::blas

// This ISA's kernel table (compiled once per ISA, as every file of csrc/cpu/): each entry of
// CF_CPU_KERNELS (kernels.h) points at the kernel of the same name in this ISA's namespace.
#include "cpu/kernels.h"

namespace cf::cpu::CF_ISA_NS {

const Kernels& kernel_table() {
  static const Kernels table = [] {
    Kernels k{};
    k.gemm_nr = gemm_nr;
#define CF_KERNEL_ENTRY(name, Args) k.name = &name;
    CF_CPU_KERNELS(CF_KERNEL_ENTRY)
#undef CF_KERNEL_ENTRY
    return k;
  }();
  return table;
}

}  // namespace cf::cpu::CF_ISA_NS

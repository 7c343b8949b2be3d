// Run-time choice of the CPU instruction set. The kernels are compiled once per ISA
// (csrc/cpu/*.cpp built three times with different -m flags); kernels() returns the table for
// the ISA in use: the best the CPU and OS support, or a lower one forced by COREFORMER_ISA.
#pragma once
#include <string>
#include <vector>

#include "cpu/kernels.h"

namespace cf {

enum class Isa { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(Isa isa);
Isa isa_from_name(const std::string& name);  // ValueError on an unknown name
Isa best_supported_isa();                    // what this CPU and OS can run (and this build has)
std::vector<Isa> supported_isas();
Isa active_isa();
void set_active_isa(Isa isa);                // ValueError if the CPU cannot run it
const cpu::Kernels& kernels();               // the table for active_isa()

}  // namespace cf

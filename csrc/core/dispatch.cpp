#include "core/dispatch.h"

#include <atomic>
#include <cstdlib>

#include "core/error.h"
#include "core/notes.h"
#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif

namespace cf {
namespace {

#if defined(__x86_64__) || defined(_M_X64)
uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}
#endif

// The instruction sets need CPU support *and* the OS saving the wider registers (XCR0).
Isa detect() {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return Isa::scalar;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), avx = c & (1u << 28);
  if (!osxsave || !avx || !fma) return Isa::scalar;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return Isa::scalar;  // SSE and AVX state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return Isa::scalar;
  const bool avx2 = b & (1u << 5);
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));  // F DQ BW VL
  if (avx512 && (xcr0 & 0xe6) == 0xe6) return Isa::avx512;  // opmask, ZMM_Hi256, Hi16_ZMM
  if (avx2) return Isa::avx2;
#endif
  return Isa::scalar;
}

bool built(Isa isa) {
  switch (isa) {
    case Isa::scalar: return true;
#ifdef CF_HAVE_AVX2
    case Isa::avx2: return true;
#endif
#ifdef CF_HAVE_AVX512
    case Isa::avx512: return true;
#endif
    default: return false;
  }
}

Isa initial_isa() {
  Isa best = best_supported_isa();
  if (const char* env = std::getenv("COREFORMER_ISA")) {
    try {
      Isa want = isa_from_name(env);
      if (static_cast<int>(want) <= static_cast<int>(best)) return want;
      note(cat("COREFORMER_ISA=", env, " is not supported on this CPU; using ", isa_name(best)));
    } catch (const ValueError& e) {
      note(cat("ignoring COREFORMER_ISA: ", e.what()));
    }
  }
  return best;
}

std::atomic<int>& active() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

const cpu::Kernels& table(Isa isa) {
#ifdef CF_HAVE_AVX2
  if (isa == Isa::avx2) return cpu::avx2::kernel_table();
#endif
#ifdef CF_HAVE_AVX512
  if (isa == Isa::avx512) return cpu::avx512::kernel_table();
#endif
  return cpu::scalar::kernel_table();
}

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

Isa isa_from_name(const std::string& name) {
  if (name == "scalar") return Isa::scalar;
  if (name == "avx2") return Isa::avx2;
  if (name == "avx512") return Isa::avx512;
  raise<ValueError>("unknown ISA '", name, "': expected 'scalar', 'avx2' or 'avx512'");
}

Isa best_supported_isa() {
  static const Isa best = [] {
    Isa isa = detect();
    while (!built(isa)) isa = static_cast<Isa>(static_cast<int>(isa) - 1);
    return isa;
  }();
  return best;
}

std::vector<Isa> supported_isas() {
  std::vector<Isa> r;
  for (int i = 0; i <= static_cast<int>(best_supported_isa()); ++i) r.push_back(static_cast<Isa>(i));
  return r;
}

Isa active_isa() { return static_cast<Isa>(active().load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  CF_CHECK(static_cast<int>(isa) <= static_cast<int>(best_supported_isa()), ValueError, "ISA '", isa_name(isa),
           "' is not supported on this CPU (best: '", isa_name(best_supported_isa()), "')");
  active().store(static_cast<int>(isa), std::memory_order_relaxed);
}

const cpu::Kernels& kernels() { return table(active_isa()); }

}  // namespace cf

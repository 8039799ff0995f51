/* kvlm.h: the library's version and what the kernel dispatch found on this CPU. */
#include "kvlm.h"
#include "quant/quant.h"

const char *kvlm_version(void) { return KVLM_VERSION_STRING; }

const char *kvlm_cpu_features(void) {
#if defined(__aarch64__)
    switch (kv_quant_best_isa()) {
    case KV_ISA_NEON_DOT: return "neon-dotprod (Advanced SIMD, dot product)";
    case KV_ISA_NEON: return "neon (Advanced SIMD)";
    default: return "scalar (no NEON kernels in this build)";
    }
#else
    switch (kv_quant_best_isa()) {
    case KV_ISA_AVX512: return "avx512 (AVX-512 F/BW/DQ/VL/VNNI, AVX2, FMA, F16C)";
    case KV_ISA_AVX2: return "avx2 (AVX2, FMA, F16C)";
    default: return "scalar (no AVX2/FMA/F16C kernels for this CPU or build)";
    }
#endif
}

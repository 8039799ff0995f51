/* The row-interleaved weight layout (quant.h): tiles of R rows, unit i of
 * row r of a tile of rr rows at (i * rr + r) * unit bytes from the tile's
 * start. Packing and unpacking only move whole units. */
#include <string.h>

#include "core/dtype.h"
#include "quant.h"
#include "quant_types.h"

size_t kv_il_unit(uint32_t type, int64_t n) {
    if (n <= 0) return 0;
    switch (type) {
    case KV_F32: return n % 16 ? 0 : 64;
    case KV_F16:
    case KV_BF16: return n % 16 ? 0 : 32;
    case KV_I2_S: return n % KV_QK_I2_S ? 0 : 32;
    case KV_Q8_0:
    case KV_Q4_0:
    case KV_Q4_1:
    case KV_Q5_0:
    case KV_Q5_1:
    case KV_Q2_K:
    case KV_Q3_K:
    case KV_Q4_K:
    case KV_Q5_K:
    case KV_Q6_K:
    case KV_TQ1_0:
    case KV_TQ2_0: {
        const kv_dtype_info *d = kv_dtype_get(type);
        if (!d || d->block_size <= 0 || n % d->block_size) return 0;
        return (size_t)d->type_size;
    }
    default: return 0;
    }
}

/* units per row (kv_il_unit nonzero) */
static int64_t units(uint32_t type, int64_t n) {
    if (type == KV_I2_S) return n / KV_QK_I2_S;
    if (type == KV_F32 || type == KV_F16 || type == KV_BF16) return n / 16;
    return n / kv_dtype_get(type)->block_size;
}

/* one tile: rr rows of nb units; rows[r] in the file layout, t the tile.
 * to_tile: rows -> tile, else tile -> rows. The unit sizes of the main
 * types are constants here, so each copy is a few moves, not a call. */
static void tile_copy(size_t U, int64_t nb, int rr, uint8_t *const *rows, uint8_t *t, int to_tile) {
#define MOVE(SZ)                                                                          \
    for (int64_t i = 0; i < nb; i++)                                                      \
        for (int r = 0; r < rr; r++) {                                                    \
            uint8_t *a = t + ((size_t)i * (size_t)rr + (size_t)r) * (SZ), *b = rows[r] + (size_t)i * (SZ); \
            if (to_tile) memcpy(a, b, (SZ));                                              \
            else memcpy(b, a, (SZ));                                                      \
        }
    switch (U) {
    case 18: MOVE(18) break;
    case 32: MOVE(32) break;
    case 34: MOVE(34) break;
    case 64: MOVE(64) break;
    case 66: MOVE(66) break;
    case 144: MOVE(144) break;
    default: MOVE(U) break;
    }
#undef MOVE
}

void kv_il_pack(uint32_t type, int64_t n, int64_t nrows, int R, const void *src, uint64_t src_stride, void *dst) {
    const size_t U = kv_il_unit(type, n);
    if (!U || R < 1 || R > 64) return;
    const int64_t nb = units(type, n);
    const uint64_t rb = (uint64_t)nb * U;
    uint8_t *rows[64];
    for (int64_t r0 = 0; r0 < nrows; r0 += R) {
        const int rr = nrows - r0 < R ? (int)(nrows - r0) : R;
        for (int r = 0; r < rr; r++) rows[r] = (uint8_t *)(uintptr_t)src + /* only read: to_tile */ (uint64_t)(r0 + r) * src_stride;
        tile_copy(U, nb, rr, rows, (uint8_t *)dst + (uint64_t)r0 * rb, 1);
    }
}

void kv_il_row(uint32_t type, int64_t n, int64_t nrows, int R, const void *il, int64_t row, void *dst) {
    const size_t U = kv_il_unit(type, n);
    if (!U || R < 1 || R > 64 || row < 0 || row >= nrows) return;
    const int64_t nb = units(type, n);
    const uint64_t rb = (uint64_t)nb * U;
    const int64_t r0 = row - row % R;
    const int rr = nrows - r0 < R ? (int)(nrows - r0) : R;
    const uint8_t *t = (const uint8_t *)il + (uint64_t)r0 * rb;
    const int q = (int)(row - r0);
    uint8_t *d = dst;
    for (int64_t i = 0; i < nb; i++) memcpy(d + (size_t)i * U, t + ((size_t)i * (size_t)rr + (size_t)q) * U, U);
}

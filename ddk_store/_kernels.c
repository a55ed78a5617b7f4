/* Compiled decode of the default encoding (topk-idsort-q8-tail), called through ctypes from ddk_store/kernels.py.
 *
 * The NumPy decode (encodings/floor_tail.py) makes five passes over a batch's (positions x K) entries: a lookup for
 * the log-probs, a lookup and a sum for the kept mass, a cumulative sum for the ids, and the rescale. This makes
 * one per position, with the position's K entries in L1 (measured in docs/benchmarks.md, store section).
 *
 * Per position p (K entries j):   id_j = sum_{i<=j} delta_i (mod 2^32, every id < 2^31)
 *                                 s    = sum_j plut[code_j]            (in double, four partial sums)
 *                                 r    = log(1 - exp(min(log_tail_p, 0))) - log(s), or 0 where not finite
 *                                 lp_j = lut[code_j] + (float)r
 * which is encodings/tail.py's rescale_shift and floor_tail.py's decode, written out. The caller checks shapes,
 * dtypes and contiguity; nothing here allocates, and ctypes releases the GIL around the call.
 */
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define DDK_DECODE_Q8_TAIL(NAME, DELTA_T)                                                                         \
    void NAME(const DELTA_T *deltas, const uint8_t *codes, const float *log_tail, const float *lut,              \
              const double *plut, int64_t positions, int64_t k, int32_t *ids, float *logprobs) {                  \
        for (int64_t p = 0; p < positions; p++) {                                                                \
            const DELTA_T *d = deltas + p * k;                                                                   \
            const uint8_t *c = codes + p * k;                                                                    \
            int32_t *id_out = ids + p * k;                                                                       \
            float *lp_out = logprobs + p * k;                                                                    \
            uint32_t id = 0;                                                                                     \
            for (int64_t j = 0; j < k; j++) {                                                                    \
                id += (uint32_t)d[j];                                                                            \
                id_out[j] = (int32_t)id;                                                                         \
            }                                                                                                    \
            double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0; /* independent chains: not one add per cycle-latency */ \
            int64_t j = 0;                                                                                       \
            for (; j + 4 <= k; j += 4) {                                                                         \
                s0 += plut[c[j]];                                                                                \
                s1 += plut[c[j + 1]];                                                                            \
                s2 += plut[c[j + 2]];                                                                            \
                s3 += plut[c[j + 3]];                                                                            \
            }                                                                                                    \
            for (; j < k; j++) s0 += plut[c[j]];                                                                 \
            double tail = log_tail[p] < 0.0f ? (double)log_tail[p] : 0.0; /* NaN -> 0: r is then not finite */   \
            double r = log(-expm1(tail)) - log((s0 + s1) + (s2 + s3));                                           \
            float shift = isfinite(r) ? (float)r : 0.0f;                                                         \
            for (j = 0; j < k; j++) lp_out[j] = lut[c[j]] + shift;                                               \
        }                                                                                                        \
    }

PyMODINIT_FUNC PyInit__kernels(void);

DDK_DECODE_Q8_TAIL(ddk_decode_q8_tail_u16, uint16_t)
DDK_DECODE_Q8_TAIL(ddk_decode_q8_tail_u32, uint32_t)

/* A module without Python-level functions: importable (so packaging tools treat it as the extension it is), its
 * file loaded by ctypes for the functions above. */
static struct PyModuleDef kernels_module = {PyModuleDef_HEAD_INIT, "_kernels",
                                            "ddk's compiled store kernels (loaded through ctypes).", -1, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }

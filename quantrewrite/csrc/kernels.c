/* quantrewrite's fused CPU kernels: plain C with OpenMP, called through ctypes (quantrewrite._kernel_loader).
 *
 * quantrewrite._kernel_build compiles this file with the system C compiler (-O3 -march=native
 * -ffp-contract=off -fopenmp) into a per-user cache. Every formula here must give the bits of the eager
 * torch / numpy formula that quantrewrite._kernels and quantrewrite.calib._kernels document: no contraction
 * into FMAs, no fast-math; the one FMA is the explicit fmaf() of the exact quotient. The OpenMP runtime is the
 * one torch already loaded (same soname), so torch.set_num_threads sets these kernels' threads too; built
 * without OpenMP (a compiler that lacks it), every kernel runs on the calling thread.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define QR_FAKE 1     /* divide back by the scale (fake quantization), else keep the integer grid values */
#define QR_CHECK 2    /* report whether some x < 0 */
#define QR_CLIP 4     /* report whether some x is not within [-amax, amax] (or is NaN) */
#define QR_PARALLEL 8 /* split the rows across the OpenMP threads */
#define QR_NEGATIVE 1 /* returned bits */
#define QR_OUTSIDE 2

/* Bumped whenever a signature changes: the loader refuses a library of another version. */
int qr_abi_version(void) { return 1; }

int qr_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* The bits of |v| as an int32: for v >= 0 and NaN these order as the values do, every NaN above +inf, so
 * abs_bits(x) > abs_bits(a) is exactly !(fabsf(x) <= a) for a >= 0. */
static inline int32_t abs_bits(float v) {
    int32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return bits & 0x7FFFFFFF;
}

/* q / s correctly rounded, from r = RN(1 / s) (Markstein; exact for |q| <= 65535, s in [2^-100, 2^100]). */
static inline float quotient(float q, float s, float r) {
    float y = q * r;
    float e = fmaf(-s, y, q); /* q - s * y, exact */
    return e != 0.0f ? fmaf(e, r, y) : y; /* e == 0: y is exact (and keeps the sign of a zero q) */
}

/* clamp(rint(v * s), lo, hi) in float32; a NaN stays NaN. */
static inline float grid_value(float v, float s, float lo, float hi) {
    float q = rintf(v * s);
    q = q < lo ? lo : q;
    return q > hi ? hi : q;
}

/* The max of abs_bits over a row (see quant_row). */
static inline int32_t max_abs_bits(const float *restrict x, int64_t width) {
    int32_t top = 0;
    for (int64_t i = 0; i < width; i++) {
        const int32_t bits = abs_bits(x[i]);
        top = bits > top ? bits : top;
    }
    return top;
}

/* One output value: the grid value of v, divided back by s when fake (a constant where this is inlined). */
static inline float grid_out(float v, float s, float r, float lo, float hi, int fake) {
    const float q = grid_value(v, s, lo, hi);
    return fake ? quotient(q, s, r) : q;
}

/* out = the grid's values of x, and, when `largest` is given, the max of abs_bits(x) in the same loop (a
 * store and one integer max reduction still vectorize together). */
static inline void grid_row(const float *restrict x, float *restrict out, int64_t width, float s, float r, float lo,
                            float hi, int fake, int32_t *largest) {
    if (largest == NULL) {
        for (int64_t i = 0; i < width; i++) out[i] = grid_out(x[i], s, r, lo, hi, fake);
        return;
    }
    int32_t top = 0;
    for (int64_t i = 0; i < width; i++) {
        const int32_t bits = abs_bits(x[i]);
        top = bits > top ? bits : top;
        out[i] = grid_out(x[i], s, r, lo, hi, fake);
    }
    *largest = top;
}

/* One row; returns the QR_NEGATIVE / QR_OUTSIDE bits asked for by flags. "Outside" is an integer max of
 * abs_bits over the row, compared once with amax's (measured on numba's twin of this loop: plain fake
 * quantization 1.00, with an or-reduction of !(|x| <= a) 1.22, with the max 1.02); the negative check, a
 * second reduction, gets its own loop. */
static int quant_row(const float *restrict x, float *restrict out, int64_t width, float s, float r, float a,
                     float lo, float hi, int flags) {
    int32_t largest = 0;
    int32_t *want_largest = (flags & QR_CLIP) ? &largest : NULL;
    if (s == 0.0f) {
        for (int64_t i = 0; i < width; i++) out[i] = 0.0f;
        if (want_largest != NULL) largest = max_abs_bits(x, width);
    } else if (flags & QR_FAKE) {
        grid_row(x, out, width, s, r, lo, hi, 1, want_largest);
    } else {
        grid_row(x, out, width, s, r, lo, hi, 0, want_largest);
    }
    int found = (flags & QR_CLIP) && largest > abs_bits(a) ? QR_OUTSIDE : 0;
    if (flags & QR_CHECK) {
        int negative = 0;
        for (int64_t i = 0; i < width; i++) negative |= x[i] < 0.0f;
        found |= negative ? QR_NEGATIVE : 0;
    }
    return found;
}

/* One bound quantization (built once per grid and input shape by quantrewrite._kernels.FusedQuant; the
 * field order is mirrored there). x and out are read as [rows, width], row k using channel k % channels,
 * followed by `tail` more elements quantized with channel 0 on the calling thread (per-tensor grids cut
 * into rows for the parallel loop). */
typedef struct {
    int64_t rows, width, channels, tail;
    const float *scale, *inv_scale, *amax; /* one value per channel; inv_scale = RN(1 / scale) */
    float lo, hi;                          /* the integer grid's bounds */
    int32_t flags;                         /* QR_FAKE | QR_CHECK | QR_PARALLEL */
} qr_plan;

/* sizeof(qr_plan): the loader checks its mirror of the struct against it. */
int64_t qr_plan_size(void) { return (int64_t)sizeof(qr_plan); }

/* Runs a plan; clip asks for QR_OUTSIDE. Returns the QR_NEGATIVE / QR_OUTSIDE bits found. */
int qr_quant(const qr_plan *plan, const float *x, float *out, int32_t clip) {
    const int64_t rows = plan->rows, width = plan->width, channels = plan->channels;
    const float *scale = plan->scale, *inv_scale = plan->inv_scale, *amax = plan->amax;
    const float lo = plan->lo, hi = plan->hi;
    const int flags = (plan->flags & ~QR_CLIP) | (clip ? QR_CLIP : 0);
    int found = 0;
    if (flags & QR_PARALLEL) {
#pragma omp parallel for schedule(static) reduction(| : found)
        for (int64_t row = 0; row < rows; row++) {
            const int64_t c = row % channels;
            found |= quant_row(x + row * width, out + row * width, width, scale[c], inv_scale[c], amax[c], lo, hi,
                               flags);
        }
    } else {
        for (int64_t row = 0; row < rows; row++) {
            const int64_t c = row % channels;
            found |= quant_row(x + row * width, out + row * width, width, scale[c], inv_scale[c], amax[c], lo, hi,
                               flags);
        }
    }
    if (plan->tail) {
        const int64_t done = rows * width;
        found |= quant_row(x + done, out + done, plan->tail, scale[0], inv_scale[0], amax[0], lo, hi, flags);
    }
    return found;
}

static inline void ste_row(const float *restrict x, const float *restrict grad, float *restrict out,
                           int64_t width, float a) {
    for (int64_t i = 0; i < width; i++) out[i] = fabsf(x[i]) <= a ? grad[i] : 0.0f;
}

/* out = grad where |x| <= the amax of the row's channel, else 0; x, grad and out viewed as [rows, width]. */
void qr_ste(const float *x, const float *grad, float *out, int64_t rows, int64_t width, int64_t channels,
            const float *amax, int parallel) {
    if (parallel && channels == 1) {
        const int64_t n = rows * width;
        const float a = amax[0];
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++) out[i] = fabsf(x[i]) <= a ? grad[i] : 0.0f;
    } else if (parallel) {
#pragma omp parallel for schedule(static)
        for (int64_t row = 0; row < rows; row++)
            ste_row(x + row * width, grad + row * width, out + row * width, width, amax[row % channels]);
    } else {
        for (int64_t row = 0; row < rows; row++)
            ste_row(x + row * width, grad + row * width, out + row * width, width, amax[row % channels]);
    }
}

/* Whether the nbytes at a and at b are equal (compared in blocks across the threads when parallel). */
int qr_same_bytes(const unsigned char *a, const unsigned char *b, int64_t nbytes, int parallel) {
    const int64_t block = 1 << 14;
    const int64_t blocks = nbytes / block;
    int differing = 0;
    if (parallel) {
#pragma omp parallel for schedule(static) reduction(| : differing)
        for (int64_t k = 0; k < blocks; k++) differing |= memcmp(a + k * block, b + k * block, block) != 0;
    } else if (blocks) {
        differing = memcmp(a, b, blocks * block) != 0;
    }
    const int64_t done = blocks * block;
    return !differing && memcmp(a + done, b + done, nbytes - done) == 0;
}

/* The bin of a = |x| (float64) over the edges: the first guess floor(a * scale) is off by at most one bin, and
 * only near an edge, where one comparison per side fixes it. */
static inline int64_t exact_bin(double a, const double *edges, int64_t nbins, double scale) {
    int64_t b = (int64_t)(a * scale);
    b = b < nbins - 1 ? b : nbins - 1;
    if (a < edges[b])
        b -= 1;
    else if (b < nbins - 1 && a >= edges[b + 1])
        b += 1;
    return b;
}

enum { COUNT_BLOCK = 1024, COUNT_WAYS = 4 };

/* Adds the bins of |x[0..n)| to counts (nbins int64), in blocks: first every element's guess in a loop that
 * vectorizes (the guess is sure unless it lies within `near` of an edge, or past the last bin), then the few
 * unsure ones exactly, then the increments, spread over COUNT_WAYS copies of the counts (`ways`, zeroed,
 * COUNT_WAYS * nbins) so that a run of one bin (the zeros of relu'd activations) is not one chain of
 * dependent increments. Measured on relu'd activations: 2.5x one loop doing all of it per element. */
static void count_block_wise(const float *restrict x, int64_t n, const double *restrict edges, int64_t nbins,
                             double scale, int64_t *restrict counts, int64_t *restrict ways) {
    const double near = 1e-9; /* the guess is off by far less than this */
    int32_t bins[COUNT_BLOCK], unsure[COUNT_BLOCK];
    for (int64_t start = 0; start < n; start += COUNT_BLOCK) {
        const int64_t m = n - start < COUNT_BLOCK ? n - start : COUNT_BLOCK;
        const float *block = x + start;
        int32_t any = 0;
        for (int64_t k = 0; k < m; k++) {
            const double t = fabs((double)block[k]) * scale;
            const int64_t b = (int64_t)t;
            const double f = t - (double)b;
            const int32_t u = ((f < near) & (b > 0)) | (f > 1.0 - near) | (b >= nbins);
            bins[k] = u ? 0 : (int32_t)b;
            unsure[k] = u;
            any |= u;
        }
        if (any) {
            for (int64_t k = 0; k < m; k++)
                if (unsure[k]) bins[k] = (int32_t)exact_bin(fabs((double)block[k]), edges, nbins, scale);
        }
        int64_t k = 0;
        for (; k + COUNT_WAYS <= m; k += COUNT_WAYS)
            for (int64_t w = 0; w < COUNT_WAYS; w++) ways[w * nbins + bins[k + w]] += 1;
        for (; k < m; k++) ways[bins[k]] += 1;
    }
    for (int64_t w = 0; w < COUNT_WAYS; w++)
        for (int64_t b = 0; b < nbins; b++) counts[b] += ways[w * nbins + b];
}

/* Counts of |x| (n float32) over nbins bins of float64 edges (bin b: edges[b] <= a < edges[b + 1], the last
 * bin closed; nbins < 2^31). out holds `chunks` rows of nbins counts (zeroed), one per parallel chunk of x.
 * Returns 0, or -1 when memory for the copies of the counts could not be had (nothing is counted then). */
int qr_count_abs(const float *x, int64_t n, const double *edges, int64_t nbins, double scale, int skip_zeros,
                 int64_t *out, int64_t chunks) {
    int failed = 0;
#pragma omp parallel for schedule(static) if (chunks > 1) reduction(| : failed)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t lo = c * n / chunks, hi = (c + 1) * n / chunks;
        int64_t *ways = calloc((size_t)(COUNT_WAYS * nbins), sizeof(int64_t));
        if (ways == NULL) {
            failed = 1;
            continue;
        }
        count_block_wise(x + lo, hi - lo, edges, nbins, scale, out + c * nbins, ways);
        free(ways);
        if (skip_zeros) {
            int64_t zeros = 0;
            for (int64_t k = lo; k < hi; k++) zeros += x[k] == 0.0f;
            out[c * nbins] -= zeros;
        }
    }
    return failed ? -1 : 0;
}

/* weight * (fake_quant(c) - c)^2, the fake quantization in float32 steps as fake_tensor_quant's. */
static inline double squared_error(float c, int64_t weight, float scale, float lo, float hi) {
    const float fq = scale != 0.0f ? grid_value(c, scale, lo, hi) / scale : 0.0f;
    const double d = (double)fq - (double)c;
    return (double)weight * d * d;
}

/* out[k] = sum_j counts[j] * (fake_quant(values[j], amax = candidates[k]) - values[j])^2 in float64. */
void qr_mse_errors(const int64_t *counts, const float *values, int64_t n, const float *candidates,
                   int64_t ncandidates, double *out, float lo, float hi) {
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < ncandidates; k++) {
        const float amax = candidates[k];
        const float scale = amax > 0x1p-24f ? hi / amax : 0.0f;
        double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0; /* four partial sums break the add latency chain */
        int64_t j = 0;
        for (; j + 4 <= n; j += 4) {
            a0 += squared_error(values[j], counts[j], scale, lo, hi);
            a1 += squared_error(values[j + 1], counts[j + 1], scale, lo, hi);
            a2 += squared_error(values[j + 2], counts[j + 2], scale, lo, hi);
            a3 += squared_error(values[j + 3], counts[j + 3], scale, lo, hi);
        }
        for (; j < n; j++) a0 += squared_error(values[j], counts[j], scale, lo, hi);
        out[k] = (a0 + a1) + (a2 + a3);
    }
}

/* KL(P || Q) for the candidates i = first + k * stride, k < nout (see quantrewrite.calib.histogram): NaN where
 * Q has no mass, +inf where P's last bin is empty while the tail is not; a compensated (Kahan) sum. */
void qr_entropy_divergences(const int64_t *bins, const double *log_bins, const int64_t *csum, const int64_t *cnz,
                            int64_t nbins, int64_t first, int64_t stride, int64_t nq, double *out, int64_t nout) {
    const int64_t total = csum[nbins];
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t k = 0; k < nout; k++) {
        const int64_t i = first + k * stride;
        const int64_t s = csum[i], tail = total - s;
        if (s == 0) {
            out[k] = NAN;
            continue;
        }
        if (bins[i - 1] == 0 && tail > 0) {
            out[k] = INFINITY;
            continue;
        }
        double acc = 0.0, comp = 0.0;
        for (int64_t g = 0; g < nq; g++) {
            const int64_t lo = (g * i + nq - 1) / nq, hi = ((g + 1) * i + nq - 1) / nq;
            const int64_t nonempty = cnz[hi] - cnz[lo];
            if (nonempty == 0) continue;
            const double log_mean = log((double)(csum[hi] - csum[lo]) / (double)nonempty);
            for (int64_t j = lo; j < hi; j++) {
                if (bins[j] == 0) continue;
                double y;
                if (j == i - 1) {
                    const double p = (double)(bins[j] + tail);
                    y = p * (log(p) - log_mean) - comp;
                } else {
                    y = (double)bins[j] * (log_bins[j] - log_mean) - comp;
                }
                const double t = acc + y;
                comp = (t - acc) - y;
                acc = t;
            }
        }
        out[k] = acc / (double)total + log((double)s / (double)total);
    }
}

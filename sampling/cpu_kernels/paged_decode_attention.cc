// Decode attention over the paged KV pool, read in place: an XLA FFI custom call for the CPU.
//
// For one decode step (one query per row) and one layer, computes the softmax state of each
// query head over the row's cached tokens (positions < cache_lens[b]):
//
//   inputs   q           f32 [B, K, G, H]   the step's queries by kv head and group (exact
//                                           upcast of the compute dtype)
//            k_pages     [L, P, S, K, H]     the whole pool, float32 or bfloat16 (not copied)
//            v_pages     [L, P, S, K, H]     same dtype and shape as k_pages
//            page_table  s32 [B, W]          row b's token at position p is in page
//                                            page_table[b, p / S], slot p % S
//            cache_lens  s32 [B]
//            layer       s32 []
//   attrs    scale       f32                 H**-0.5 as the caller rounds it
//            round_bf16  s32                 1: the compute dtype is bfloat16 (scores are
//                                            rounded to it, as the XLA path does), 0: float32
//   outputs  m    f32 [B, K, G]     max score (-1e30 for a row with nothing cached)
//            l    f32 [B, K, G]     sum of exp(score - m)
//            acc  f32 [B, K, G, H]  sum of exp(score - m) * value
//
// The caller (sampling/paged_cache.py) merges (m, l, acc) with the new token's own part by the
// same online-softmax rule its XLA loop uses.
//
// Why it exists: the XLA path gathers each block of pages into a new array (emitted as scalar
// loads on XLA:CPU) before its two dots. Here each page is read where it lies, once for the
// scores and once for the weighted sum, every (slot, kv head) vector of H values contiguous.
// Per row: pass 1 computes all scores into a scratch row [K * G, len], then the softmax state
// of each row of scores, then pass 2 accumulates p * value. The pages of a row are scattered
// over the pool, so each pass first reads a group of pages into the cache line by line,
// interleaved (see `touch_pages`), and then computes on them. With AVX2 + FMA (x86, and
// H % 8 == 0) the dots run 8 at a time and the softmax's exp is vectorized by hand; elsewhere
// portable loops that g++ vectorizes over H.
//
// Numerics, as the XLA path: scores are f32 dot products, rounded to the compute dtype, times
// `scale` in f32, rounded to the compute dtype again; softmax and the weighted sum in f32. The
// order of the sums differs from XLA's (float32 rounding, not semantics), and exp is a
// polynomial of at most about 2 ulp (XLA's own CPU exp is also an approximation).
//
// Single-threaded: the engine's CPU benchmark runs XLA on one core. Rows are independent, so a
// split over XLA's intra-op pool (the FFI's ThreadPool context) is possible later.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define PPP_AVX2 1
#endif

namespace ffi = xla::ffi;

namespace {

constexpr float kNeg = -1e30f;  // the XLA path's "masked" score and initial running max

inline float bf16_to_f32(uint16_t x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// float32 -> bfloat16 -> float32, round to nearest even (as XLA's convert). NaN stays NaN.
inline float round_to_bf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) return f;  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// exp(x) for x <= 0 (every argument here is score - max), branch-free so the loop calling it
// vectorizes: x = n ln2 + r with |r| <= ln2/2, e^r by its Taylor polynomial to r^7 (relative
// error below 1e-7 on that interval), 2^n by writing the exponent bits. Below -87 (where 2^n
// would leave the normal range) the result is 0.
inline float exp_nonpositive(float x) {
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;          // ln2 split so n * kLn2Hi is exact
  const float kLn2Lo = -2.12194440e-4f;
  float xc = std::max(x, -87.0f);
  float n = std::floor(xc * kLog2e + 0.5f);
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t e = static_cast<int32_t>(n) + 127;
  uint32_t bits = static_cast<uint32_t>(e) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < -87.0f ? 0.0f : p * two_n;
}

// ---- the two hot loops, over one page of one kv head ----------------------------------------
//
// A page holds `slots` vectors of H values per kv head at a stride of K * H (the pool's
// [S, K, H] layout); the G queries of the head are q[g * H ...]; scores go to
// sc[g * len + pos0 + s]. Portable versions first (auto-vectorized over H), then AVX2 ones:
// g++'s vectorized dot products each end in a dependent chain of FMAs and a horizontal sum,
// which kept the first version of this kernel at 3.2 GB/s, little better than XLA's gather;
// the AVX2 versions run 8 dot products side by side and keep the weighted sums in registers
// across the page's slots.

inline void qk_page_portable(const float* q, const float* keys, int64_t stride, int64_t slots,
                             int64_t G, int64_t H, float* sc, int64_t len, int64_t pos0) {
  for (int64_t s = 0; s < slots; ++s) {
    const float* key = keys + s * stride;
    for (int64_t g = 0; g < G; ++g) {
      const float* qv = q + g * H;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < H; ++i) dot += qv[i] * key[i];
      sc[g * len + pos0 + s] = dot;
    }
  }
}

inline void pv_page_portable(const float* p, const float* vals, int64_t stride, int64_t slots,
                             int64_t G, int64_t H, int64_t len, int64_t pos0, float* acc) {
  for (int64_t s = 0; s < slots; ++s) {
    const float* val = vals + s * stride;
    for (int64_t g = 0; g < G; ++g) {
      const float w = p[g * len + pos0 + s];
      float* a = acc + g * H;
#pragma omp simd
      for (int64_t i = 0; i < H; ++i) a[i] += w * val[i];
    }
  }
}

#ifdef PPP_AVX2
// The 8 sums of 8 vectors, in order: hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | the same for
// the upper 128 bits], so two rounds and one exchange of 128-bit halves finish all 8 at once.
inline __m256 hsum8(const __m256* v) {
  const __m256 t01 = _mm256_hadd_ps(v[0], v[1]), t23 = _mm256_hadd_ps(v[2], v[3]);
  const __m256 t45 = _mm256_hadd_ps(v[4], v[5]), t67 = _mm256_hadd_ps(v[6], v[7]);
  const __m256 u0 = _mm256_hadd_ps(t01, t23), u1 = _mm256_hadd_ps(t45, t67);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20),
                       _mm256_permute2f128_ps(u0, u1, 0x31));
}

// NG groups x NS slots = 8 dot products of length H (H % 8 == 0) side by side: 8 independent
// FMA chains, each key and query vector loaded once per 8 lanes and used NG or NS times.
template <int NG, int NS>
inline void qk_tile_avx2(const float* q, const float* key, int64_t stride, int64_t H, float* sc,
                         int64_t len) {
  static_assert(NG * NS == 8, "8 accumulators");
  __m256 acc[8];
  for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t i = 0; i < H; i += 8) {
    __m256 kv[NS];
    for (int s = 0; s < NS; ++s) kv[s] = _mm256_loadu_ps(key + s * stride + i);
    for (int g = 0; g < NG; ++g) {
      const __m256 qv = _mm256_loadu_ps(q + g * H + i);
      for (int s = 0; s < NS; ++s) acc[g * NS + s] = _mm256_fmadd_ps(qv, kv[s], acc[g * NS + s]);
    }
  }
  alignas(32) float out[8];
  _mm256_store_ps(out, hsum8(acc));
  for (int g = 0; g < NG; ++g)
    for (int s = 0; s < NS; ++s) sc[g * len + s] = out[g * NS + s];
}

// Groups in tiles of NG (G % NG == 0), slots in tiles of 8 / NG; leftover slots one at a time.
template <int NG>
inline void qk_page_tiles(const float* q, const float* keys, int64_t stride, int64_t slots,
                          int64_t G, int64_t H, float* sc, int64_t len, int64_t pos0) {
  constexpr int NS = 8 / NG;
  for (int64_t g = 0; g < G; g += NG) {
    int64_t s = 0;
    for (; s + NS <= slots; s += NS)
      qk_tile_avx2<NG, NS>(q + g * H, keys + s * stride, stride, H, sc + g * len + pos0 + s,
                           len);
    if (s < slots)
      qk_page_portable(q + g * H, keys + s * stride, stride, slots - s, NG, H,
                       sc + g * len, len, pos0 + s);
  }
}

inline void qk_page_avx2(const float* q, const float* keys, int64_t stride, int64_t slots,
                         int64_t G, int64_t H, float* sc, int64_t len, int64_t pos0) {
  if (G % 4 == 0) return qk_page_tiles<4>(q, keys, stride, slots, G, H, sc, len, pos0);
  if (G % 2 == 0) return qk_page_tiles<2>(q, keys, stride, slots, G, H, sc, len, pos0);
  qk_page_tiles<1>(q, keys, stride, slots, G, H, sc, len, pos0);
}

// NB groups x NC vectors of 8 lanes of H: NB * NC accumulators stay in registers across the
// page's slots, each an independent FMA chain (with 4, the chains' latency, not the FMA units,
// set the pace: NB * NC = 8 keeps both FMA units busy).
template <int NB, int NC>
inline void pv_groups_avx2(const float* p, const float* vals, int64_t stride, int64_t slots,
                           int64_t H, int64_t len, int64_t pos0, float* acc, int64_t i) {
  for (; i + 8 * NC <= H; i += 8 * NC) {
    __m256 a[NB][NC];
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < NC; ++c) a[j][c] = _mm256_loadu_ps(acc + j * H + i + 8 * c);
    for (int64_t s = 0; s < slots; ++s) {
      __m256 v[NC];
      for (int c = 0; c < NC; ++c) v[c] = _mm256_loadu_ps(vals + s * stride + i + 8 * c);
      for (int j = 0; j < NB; ++j) {
        const __m256 w = _mm256_broadcast_ss(p + j * len + pos0 + s);
        for (int c = 0; c < NC; ++c) a[j][c] = _mm256_fmadd_ps(w, v[c], a[j][c]);
      }
    }
    for (int j = 0; j < NB; ++j)
      for (int c = 0; c < NC; ++c) _mm256_storeu_ps(acc + j * H + i + 8 * c, a[j][c]);
  }
  if (NC > 1 && i < H) pv_groups_avx2<NB, 1>(p, vals, stride, slots, H, len, pos0, acc, i);
}

inline void pv_page_avx2(const float* p, const float* vals, int64_t stride, int64_t slots,
                         int64_t G, int64_t H, int64_t len, int64_t pos0, float* acc) {
  int64_t g = 0;
  for (; g + 4 <= G; g += 4)
    pv_groups_avx2<4, 2>(p + g * len, vals, stride, slots, H, len, pos0, acc + g * H, 0);
  for (; g < G; ++g)
    pv_groups_avx2<1, 8>(p + g * len, vals, stride, slots, H, len, pos0, acc + g * H, 0);
}
#endif

inline void qk_page(const float* q, const float* keys, int64_t stride, int64_t slots, int64_t G,
                    int64_t H, float* sc, int64_t len, int64_t pos0) {
#ifdef PPP_AVX2
  if (H % 8 == 0) return qk_page_avx2(q, keys, stride, slots, G, H, sc, len, pos0);
#endif
  qk_page_portable(q, keys, stride, slots, G, H, sc, len, pos0);
}

inline void pv_page(const float* p, const float* vals, int64_t stride, int64_t slots, int64_t G,
                    int64_t H, int64_t len, int64_t pos0, float* acc) {
#ifdef PPP_AVX2
  if (H % 8 == 0) return pv_page_avx2(p, vals, stride, slots, G, H, len, pos0, acc);
#endif
  pv_page_portable(p, vals, stride, slots, G, H, len, pos0, acc);
}

// ---- the softmax of one (head, group) row of scores ---------------------------------------
//
// In place: scores -> the model's cast points -> p = exp(s - m); writes m and l = sum(p).

inline void softmax_row_portable(float* row, int64_t len, float scale, bool round_bf16,
                                 int64_t from, float* m_io) {
  for (int64_t i = from; i < len; ++i)
    row[i] = round_bf16 ? round_to_bf16(round_to_bf16(row[i]) * scale) : row[i] * scale;
  float m = *m_io;
  for (int64_t i = from; i < len; ++i) m = std::max(m, row[i]);
  *m_io = m;
}

#ifdef PPP_AVX2
inline __m256 exp_nonpositive8(__m256 x) {  // exp_nonpositive, 8 lanes
  const __m256 lo = _mm256_set1_ps(-87.0f);
  const __m256 xc = _mm256_max_ps(x, lo);
  const __m256 n = _mm256_floor_ps(
      _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 y = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);  // 0 below -87
}

inline __m256 round_to_bf16_8(__m256 x) {  // round_to_bf16 for finite values, 8 lanes
  __m256i bits = _mm256_castps_si256(x);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  bits = _mm256_add_epi32(bits, _mm256_add_epi32(odd, _mm256_set1_epi32(0x7fff)));
  return _mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(int32_t(0xffff0000u))));
}
#endif

inline void softmax_row(float* row, int64_t len, float scale, bool round_bf16, float* m_out,
                        float* l_out) {
  float m = kNeg;
  int64_t i = 0;
#ifdef PPP_AVX2
  const __m256 vs = _mm256_set1_ps(scale);
  __m256 vm = _mm256_set1_ps(kNeg);
  for (; i + 8 <= len; i += 8) {
    __m256 x = _mm256_loadu_ps(row + i);
    x = round_bf16 ? round_to_bf16_8(_mm256_mul_ps(round_to_bf16_8(x), vs)) : _mm256_mul_ps(x, vs);
    _mm256_storeu_ps(row + i, x);
    vm = _mm256_max_ps(vm, x);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, vm);
  for (float v : lanes) m = std::max(m, v);
#endif
  softmax_row_portable(row, len, scale, round_bf16, i, &m);
  float l = 0.0f;
  i = 0;
#ifdef PPP_AVX2
  const __m256 vmax = _mm256_set1_ps(m);
  __m256 vl = _mm256_setzero_ps();
  for (; i + 8 <= len; i += 8) {
    const __m256 p = exp_nonpositive8(_mm256_sub_ps(_mm256_loadu_ps(row + i), vmax));
    _mm256_storeu_ps(row + i, p);
    vl = _mm256_add_ps(vl, p);
  }
  alignas(32) float sums[8];
  _mm256_store_ps(sums, vl);
  for (float v : sums) l += v;
#endif
  for (; i < len; ++i) {
    row[i] = exp_nonpositive(row[i] - m);
    l += row[i];
  }
  *m_out = m;
  *l_out = l;
}

// One page [S, K, H] as float32: the pool's own memory for float32, a converted copy in
// `scratch` for bfloat16.
inline const float* page_f32(const float* src, int64_t, float*) { return src; }

inline const float* page_f32(const uint16_t* src, int64_t n, float* scratch) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) scratch[i] = bf16_to_f32(src[i]);
  return scratch;
}

// ---- reading scattered pages --------------------------------------------------------------
//
// One core reads scattered 8 KB pages one at a time at about 8.9 GB/s here (Intel Xeon, KVM),
// but 4 at a time, line by line in turn, at 13.5 GB/s: the hardware prefetchers then follow
// 4 streams at once (`bench/decode_attention_harness.cc read`, docs/benchmarks.md). Software
// prefetches of whole pages, as this kernel used to issue, read at 8.4 GB/s. So each
// pass reads `kTouchPages` pages (32 KB in float32 at the multi-turn bench's shapes: they stay
// in the 48 KB L1) this way before computing on them; the arithmetic is unchanged.

constexpr int64_t kTouchPages = 4;

template <typename T>
inline void touch_pages(const T* const* pages, int64_t num, int64_t bytes) {
  float sink = 0.0f;
  for (int64_t off = 0; off < bytes; off += 64)
    for (int64_t j = 0; j < num; ++j)
      sink += *reinterpret_cast<const float*>(reinterpret_cast<const char*>(pages[j]) + off);
  volatile float keep = sink;  // keeps the loads: nothing else uses the sum
  (void)keep;
}

struct Dims {
  int64_t B, K, G, H, L, P, S, W;
};

// Row b, all kv heads and groups: two passes over the row's pages (keys, then values), the
// scores of the whole row kept in `scores` [K * G, len] in between (len <= W * S floats per
// head, a few hundred KB at most: cache-resident).
template <typename T>
void attend_row(const Dims& d, int64_t b, const float* q, const T* k_layer, const T* v_layer,
                const int32_t* page_table, int64_t len, float scale, bool round_bf16,
                std::vector<float>& scores, std::vector<float>& scratch, float* m_out,
                float* l_out, float* acc_out) {
  const int64_t K = d.K, G = d.G, H = d.H, S = d.S;
  const int64_t KG = K * G;
  float* acc = acc_out + b * KG * H;
  std::fill(acc, acc + KG * H, 0.0f);
  if (len <= 0) {  // nothing cached: the XLA loop's initial state
    std::fill(m_out + b * KG, m_out + (b + 1) * KG, kNeg);
    std::fill(l_out + b * KG, l_out + (b + 1) * KG, 0.0f);
    return;
  }
  scores.resize(static_cast<size_t>(KG * len));
  scratch.resize(static_cast<size_t>(S * K * H));  // one page, converted from bfloat16
  float* sc = scores.data();
  float* tmp = scratch.data();
  const float* qb = q + b * KG * H;
  const int32_t* pt = page_table + b * d.W;
  const int64_t num_pages = (len + S - 1) / S;
  const int64_t page_elems = S * K * H;

  // Out-of-range ids are clamped, as XLA's gather clamps its indices.
  auto page_of = [&](int64_t pi) {
    return std::min<int64_t>(std::max<int32_t>(pt[pi], 0), d.P - 1);
  };
  const int64_t page_bytes = page_elems * static_cast<int64_t>(sizeof(T));
  // At the first page of each group of kTouchPages: read the group into the cache (above).
  const T* group[kTouchPages];
  auto touch_group = [&](const T* base, int64_t pi) {
    if (pi % kTouchPages) return;
    const int64_t num = std::min(kTouchPages, num_pages - pi);
    for (int64_t j = 0; j < num; ++j) group[j] = base + page_of(pi + j) * page_elems;
    touch_pages<T>(group, num, page_bytes);
  };

  // Pass 1: scores, page by page (one page is S * K * H contiguous values).
  for (int64_t pi = 0; pi < num_pages; ++pi) {
    const int64_t page = page_of(pi);
    const int64_t slots = std::min(S, len - pi * S);
    touch_group(k_layer, pi);
    const float* kp = page_f32(k_layer + page * page_elems, slots * K * H, tmp);
    for (int64_t kh = 0; kh < K; ++kh)
      qk_page(qb + kh * G * H, kp + kh * H, K * H, slots, G, H, sc + kh * G * len, len, pi * S);
  }

  // Softmax state per (head, group): the model's cast points, the max, then p = exp(s - m)
  // in place of the scores.
  for (int64_t j = 0; j < KG; ++j)
    softmax_row(sc + j * len, len, scale, round_bf16, m_out + b * KG + j, l_out + b * KG + j);

  // Pass 2: acc[head, group, :] += p * value, page by page.
  for (int64_t pi = 0; pi < num_pages; ++pi) {
    const int64_t page = page_of(pi);
    const int64_t slots = std::min(S, len - pi * S);
    touch_group(v_layer, pi);
    const float* vp = page_f32(v_layer + page * page_elems, slots * K * H, tmp);
    for (int64_t kh = 0; kh < K; ++kh)
      pv_page(sc + kh * G * len, vp + kh * H, K * H, slots, G, H, len, pi * S, acc + kh * G * H);
  }
}

template <typename T>
void attend_all(const Dims& d, const float* q, const void* k_pages, const void* v_pages,
                const int32_t* page_table, const int32_t* cache_lens, int64_t layer, float scale,
                bool round_bf16, float* m, float* l, float* acc) {
  const int64_t layer_elems = d.P * d.S * d.K * d.H;
  const T* k_layer = static_cast<const T*>(k_pages) + layer * layer_elems;
  const T* v_layer = static_cast<const T*>(v_pages) + layer * layer_elems;
  std::vector<float> scores, scratch;
  for (int64_t b = 0; b < d.B; ++b) {
    const int64_t len = std::min<int64_t>(cache_lens[b], d.W * d.S);
    attend_row<T>(d, b, q, k_layer, v_layer, page_table, len, scale, round_bf16, scores,
                  scratch, m, l, acc);
  }
}

ffi::Error PagedDecodeAttentionImpl(ffi::Buffer<ffi::F32> q, ffi::AnyBuffer k_pages,
                                    ffi::AnyBuffer v_pages, ffi::Buffer<ffi::S32> page_table,
                                    ffi::Buffer<ffi::S32> cache_lens, ffi::Buffer<ffi::S32> layer,
                                    ffi::ResultBuffer<ffi::F32> m, ffi::ResultBuffer<ffi::F32> l,
                                    ffi::ResultBuffer<ffi::F32> acc, float scale,
                                    int32_t round_bf16) {
  auto qd = q.dimensions();
  auto kd = k_pages.dimensions();
  auto pd = page_table.dimensions();
  if (qd.size() != 4 || kd.size() != 5 || pd.size() != 2 || cache_lens.dimensions().size() != 1)
    return ffi::Error::InvalidArgument(
        "paged_decode_attention: expected q [B,K,G,H], pools [L,P,S,K,H], page_table [B,W], "
        "cache_lens [B]");
  Dims d{qd[0], qd[1], qd[2], qd[3], kd[0], kd[1], kd[2], pd[1]};
  if (kd[3] != d.K || kd[4] != d.H || pd[0] != d.B || cache_lens.dimensions()[0] != d.B)
    return ffi::Error::InvalidArgument("paged_decode_attention: inconsistent shapes");
  auto vd = v_pages.dimensions();
  if (v_pages.element_type() != k_pages.element_type() || vd.size() != 5 ||
      !std::equal(vd.begin(), vd.end(), kd.begin()))
    return ffi::Error::InvalidArgument("paged_decode_attention: k and v pools differ");
  const int64_t lyr = static_cast<int64_t>(layer.typed_data()[0]);
  if (lyr < 0 || lyr >= d.L)
    return ffi::Error::InvalidArgument("paged_decode_attention: layer out of range");
  switch (k_pages.element_type()) {
    case ffi::DataType::F32:
      attend_all<float>(d, q.typed_data(), k_pages.untyped_data(), v_pages.untyped_data(),
                        page_table.typed_data(), cache_lens.typed_data(), lyr, scale,
                        round_bf16 != 0, m->typed_data(), l->typed_data(), acc->typed_data());
      break;
    case ffi::DataType::BF16:
      attend_all<uint16_t>(d, q.typed_data(), k_pages.untyped_data(), v_pages.untyped_data(),
                           page_table.typed_data(), cache_lens.typed_data(), lyr, scale,
                           round_bf16 != 0, m->typed_data(), l->typed_data(),
                           acc->typed_data());
      break;
    default:
      return ffi::Error::InvalidArgument(
          "paged_decode_attention: the pool must be float32 or bfloat16");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(PppPagedDecodeAttention, PagedDecodeAttentionImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()   // q
                                  .Arg<ffi::AnyBuffer>()          // k_pages
                                  .Arg<ffi::AnyBuffer>()          // v_pages
                                  .Arg<ffi::Buffer<ffi::S32>>()   // page_table
                                  .Arg<ffi::Buffer<ffi::S32>>()   // cache_lens
                                  .Arg<ffi::Buffer<ffi::S32>>()   // layer
                                  .Ret<ffi::Buffer<ffi::F32>>()   // m
                                  .Ret<ffi::Buffer<ffi::F32>>()   // l
                                  .Ret<ffi::Buffer<ffi::F32>>()   // acc
                                  .Attr<float>("scale")
                                  .Attr<int32_t>("round_bf16"));

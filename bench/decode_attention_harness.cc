// The decode-attention kernel alone, without XLA: a standalone C++ timing harness.
//
// It #includes sampling/cpu_kernels/paged_decode_attention.cc and calls its `attend_all` for
// one decode step of every layer (32 rows, 8 layers, K=2, G=4, H=64, float32: the multi-turn
// bench's shapes), best of 7 timings of 5 steps, CPU time of the process. Page layouts:
//   random      every row's pages a random permutation of the pool (as bench/decode_attention.py)
//   sequential  one run of consecutive pages per row
//   same        every row reads the same 4 pages (cache-resident: the kernel's arithmetic alone)
// HUGE=1 in the environment allocates the pools 2 MiB-aligned with madvise(MADV_HUGEPAGE)
// (transparent huge pages where the system allows them), to see what TLB misses cost.
//
// Build and run from the repository root (one core; see docs/benchmarks.md for figures):
//   g++ -O3 -march=native -std=c++17 -fopenmp-simd -ffp-contract=fast -fno-math-errno \
//       -I"$(.venv/bin/python -c 'import jax; print(jax.ffi.include_dir())')" \
//       bench/decode_attention_harness.cc -o /tmp/decode_attention_harness
//   taskset -c 0 /tmp/decode_attention_harness 1000 16 random   # cached tokens, page size, layout
//
// Variants of the kernel can be timed by building with -DKERNEL_SRC='"path/to/variant.cc"'.
//
// The memory alone: `/tmp/decode_attention_harness read BYTES STREAMS` reads a 512 MiB buffer
// in chunks of BYTES in random order, STREAMS chunks at a time line by line in turn (what the
// kernel's `touch_pages` does), and prints GB/s; e.g. `read 8192 1` against `read 8192 4`.

#ifndef KERNEL_SRC
#define KERNEL_SRC "../sampling/cpu_kernels/paged_decode_attention.cc"
#endif
#include KERNEL_SRC

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <random>

namespace {

double cpu_now() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

template <class T>
struct PoolAlloc {
  using value_type = T;
  PoolAlloc() = default;
  template <class U>
  PoolAlloc(const PoolAlloc<U>&) {}
  T* allocate(size_t n) {
    const size_t huge = size_t(2) << 20;
    size_t bytes = (n * sizeof(T) + huge - 1) / huge * huge;
    void* p = aligned_alloc(huge, bytes);
    if (getenv("HUGE")) madvise(p, bytes, MADV_HUGEPAGE);
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { free(p); }
};
template <class A, class B>
bool operator==(const PoolAlloc<A>&, const PoolAlloc<B>&) { return true; }
template <class A, class B>
bool operator!=(const PoolAlloc<A>&, const PoolAlloc<B>&) { return false; }

}  // namespace

// Read-only bandwidth of `chunk`-byte pieces of a 512 MiB buffer in random order, `streams`
// pieces at a time, one cache line of each in turn. Best of 3 passes, wall time.
int read_test(int64_t chunk, int64_t streams) {
  const int64_t n = int64_t(512) << 20;
  if (chunk < 64 || chunk % 64 || chunk > n || streams < 1 || streams > n / chunk) {
    fprintf(stderr, "read BYTES STREAMS: BYTES a multiple of 64 up to %ld, STREAMS from 1 to "
            "512 MiB / BYTES; got %ld %ld\n", static_cast<long>(n), static_cast<long>(chunk),
            static_cast<long>(streams));
    return 2;
  }
  const int64_t pieces = n / chunk;
  std::vector<float, PoolAlloc<float>> buf(n / sizeof(float), 1.0f);
  std::vector<int64_t> order(pieces);
  for (int64_t i = 0; i < pieces; ++i) order[i] = i;
  std::mt19937 rng(1);
  std::shuffle(order.begin(), order.end(), rng);
  const char* base = reinterpret_cast<const char*>(buf.data());
  double best = 1e9;
  float sink = 0.0f;
  for (int rep = 0; rep < 3; ++rep) {
    timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t c = 0; c + streams <= pieces; c += streams)
      for (int64_t off = 0; off < chunk; off += 64)
        for (int64_t j = 0; j < streams; ++j)
          sink += *reinterpret_cast<const float*>(base + order[c + j] * chunk + off);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    best = std::min(best, (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
  }
  printf("read %ld-byte chunks in random order, %ld at a time: %.2f GB/s (check %g)\n",
         static_cast<long>(chunk), static_cast<long>(streams), n / best / 1e9, sink);
  return 0;
}

int main(int argc, char** argv) {
  if (argc > 1 && !strcmp(argv[1], "read"))
    return read_test(argc > 2 ? atoi(argv[2]) : 8192, argc > 3 ? atoi(argv[3]) : 1);
  const int64_t L = 8, B = 32, K = 2, G = 4, H = 64;
  const int64_t len = argc > 1 ? atoi(argv[1]) : 1000;
  const int64_t S = argc > 2 ? atoi(argv[2]) : 16;
  const char* layout = argc > 3 ? argv[3] : "random";
  const int64_t per_row = (1680 + S - 1) / S, P = 1 + B * per_row, W = per_row;
  std::vector<float, PoolAlloc<float>> kp(L * P * S * K * H), vp(kp.size());
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  for (auto& x : kp) x = normal(rng);
  for (auto& x : vp) x = normal(rng);
  std::vector<int32_t> ids(P - 1);
  for (int64_t i = 0; i < P - 1; ++i) ids[i] = static_cast<int32_t>(i + 1);
  if (!strcmp(layout, "random")) std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<int32_t> table(B * W), lens(B, static_cast<int32_t>(len));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t w = 0; w < W; ++w)
      table[b * W + w] = !strcmp(layout, "same") ? 1 + (w % 4) : ids[b * per_row + w];
  std::vector<float> q(B * K * G * H), m(B * K * G), l(B * K * G), acc(B * K * G * H);
  for (auto& x : q) x = 0.1f * normal(rng);
  const Dims d{B, K, G, H, L, P, S, W};
  double best = 1e9, check = 0;
  for (int rep = 0; rep < 7; ++rep) {
    const double t0 = cpu_now();
    for (int step = 0; step < 5; ++step)
      for (int64_t layer = 0; layer < L; ++layer) {
        attend_all<float>(d, q.data(), kp.data(), vp.data(), table.data(), lens.data(), layer,
                          0.125f, false, m.data(), l.data(), acc.data());
        check += acc[7] + l[3];
      }
    best = std::min(best, (cpu_now() - t0) / 5);
  }
  const double bytes = 2.0 * L * B * len * K * H * sizeof(float);
  printf("%s, %ld cached tokens, page %ld%s: %.1f ms/step, %.2f GB/s (check %g)\n", layout,
         static_cast<long>(len), static_cast<long>(S), getenv("HUGE") ? ", huge pages" : "",
         best * 1e3, bytes / best / 1e9, check);
  return 0;
}

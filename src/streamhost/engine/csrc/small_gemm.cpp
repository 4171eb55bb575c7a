// bf16 GEMM for a decode step's few rows on CPUs with AVX512-BF16 and no AMX: y = x W^T (+ b).
//
// Why: oneDNN's bf16 inner product pays a fixed cost per call (~20 us) that a one-token step's small
// layers never earn back (960x576: 38 us against 15 us here), and at 16 rows it reaches ~85% of what
// this loop does (docs/architecture.md, "Small-row GEMM without AMX"). With AMX tiles oneDNN's
// kernels are far faster and this one is not used.
//
// Layout: the weight [N, K] is packed once as [N/16][K/2][16][2]: for each block of 16 output
// columns, each pair of inputs holds the 16 columns' two weights side by side, which is the operand
// vdpbf16ps multiplies with a broadcast pair of x. A tile keeps MR rows x NB column blocks of float32
// sums in registers over the whole K; the sums are rounded to bf16 once, after the bias.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <utility>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 16;  // output columns per packed block

#if defined(__AVX512BF16__)
template <int MR, int NB>
void tile(const uint32_t* x, int64_t x_pairs_stride, const __m512i* w, int64_t pairs, const float* bias,
          c10::BFloat16* out, int64_t out_stride) {
  __m512 acc[MR][NB];
  for (int m = 0; m < MR; ++m)
    for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < pairs; ++kp) {
    __m512bh wv[NB];
    for (int b = 0; b < NB; ++b) wv[b] = (__m512bh)_mm512_loadu_si512(w + b * pairs + kp);
    for (int m = 0; m < MR; ++m) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[m * x_pairs_stride + kp]));
      for (int b = 0; b < NB; ++b) acc[m][b] = _mm512_dpbf16_ps(acc[m][b], xv, wv[b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const __m512 add = bias ? _mm512_loadu_ps(bias + b * kBlock) : _mm512_setzero_ps();
    for (int m = 0; m < MR; ++m) {
      // round to nearest even, as a cast to bf16 does
      const __m512i bits = _mm512_castps_si512(_mm512_add_ps(acc[m][b], add));
      const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
      const __m512i up = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m * out_stride + b * kBlock),
                          _mm512_cvtepi32_epi16(_mm512_srli_epi32(up, 16)));
    }
  }
}

using TileFn = void (*)(const uint32_t*, int64_t, const __m512i*, int64_t, const float*, c10::BFloat16*, int64_t);

template <int MR, int NB>
constexpr TileFn pick() {
  return &tile<MR, NB>;
}

// [MR - 1][NB - 1] for MR <= 8, NB <= 8
template <int MR, int... NBs>
constexpr std::array<TileFn, sizeof...(NBs)> row_of_tiles(std::integer_sequence<int, NBs...>) {
  return {pick<MR, NBs + 1>()...};
}
template <int... MRs>
constexpr std::array<std::array<TileFn, 8>, sizeof...(MRs)> tiles(std::integer_sequence<int, MRs...>) {
  return {row_of_tiles<MRs + 1>(std::make_integer_sequence<int, 8>{})...};
}
const auto kTiles = tiles(std::make_integer_sequence<int, 8>{});

// Column blocks per tile for a chunk of rows: registers hold rows x blocks sums (24 at most, with
// the weights and the broadcast beside them); fewer rows take more blocks, so a one-row step still
// has several independent sums in flight.
inline int blocks_for(int rows) { return rows >= 8 ? 3 : rows >= 4 ? 6 : 8; }
#endif

}  // namespace

bool small_gemm_supported() {
#if defined(__AVX512BF16__)
  return true;
#else
  return false;
#endif
}

at::Tensor pack_small_gemm(at::Tensor weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16, "weight must be bf16 [N, K]");
  const int64_t n = weight.size(0), k = weight.size(1);
  TORCH_CHECK(n % kBlock == 0 && k % 2 == 0, "N must be a multiple of 16 and K even");
  at::Tensor w = weight.contiguous();
  at::Tensor packed = at::empty({n / kBlock, k / 2, kBlock, 2}, weight.options());
  const uint16_t* src = reinterpret_cast<const uint16_t*>(w.data_ptr<c10::BFloat16>());
  uint16_t* dst = reinterpret_cast<uint16_t*>(packed.data_ptr<c10::BFloat16>());
  at::parallel_for(0, n / kBlock, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block)
      for (int64_t pair = 0; pair < k / 2; ++pair)
        for (int64_t col = 0; col < kBlock; ++col)
          for (int64_t j = 0; j < 2; ++j)
            dst[((block * (k / 2) + pair) * kBlock + col) * 2 + j] = src[(block * kBlock + col) * k + 2 * pair + j];
  });
  return packed;
}

// The packed weight back as a plain [N, K] float32 matrix (a prompt step's float32 GEMM reads it).
at::Tensor unpack_small_gemm_float(at::Tensor packed) {
  TORCH_CHECK(packed.dim() == 4 && packed.size(2) == kBlock && packed.size(3) == 2, "not a packed weight");
  const int64_t blocks = packed.size(0), pairs = packed.size(1), k = 2 * pairs;
  at::Tensor out = at::empty({blocks * kBlock, k}, packed.options().dtype(at::kFloat));
  const uint16_t* src = reinterpret_cast<const uint16_t*>(packed.data_ptr<c10::BFloat16>());
  uint32_t* dst = reinterpret_cast<uint32_t*>(out.data_ptr<float>());
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block)
      for (int64_t pair = 0; pair < pairs; ++pair)
        for (int64_t col = 0; col < kBlock; ++col)
          for (int64_t j = 0; j < 2; ++j)
            dst[(block * kBlock + col) * k + 2 * pair + j] =
                static_cast<uint32_t>(src[((block * pairs + pair) * kBlock + col) * 2 + j]) << 16;
  });
  return out;
}

at::Tensor small_gemm(at::Tensor x, at::Tensor packed, std::optional<at::Tensor> bias) {
  TORCH_CHECK(small_gemm_supported(), "small_gemm needs AVX512-BF16");
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kBFloat16 && x.stride(1) == 1, "x must be bf16 [M, K] rows");
  TORCH_CHECK(packed.dim() == 4 && packed.size(1) * 2 == x.size(1), "x's width differs from the weight's");
  const int64_t m = x.size(0), blocks = packed.size(0), pairs = packed.size(1), n = blocks * kBlock;
  at::Tensor float_bias;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == n, "bias must be [N]");
    float_bias = bias->to(at::kFloat).contiguous();
  }
  at::Tensor out = at::empty({m, n}, x.options());
  TORCH_CHECK(x.stride(0) % 2 == 0, "x's rows must start on pairs");
#if defined(__AVX512BF16__)
  const uint32_t* xd = reinterpret_cast<const uint32_t*>(x.data_ptr<c10::BFloat16>());
  const int64_t x_pairs_stride = x.stride(0) / 2;
  const __m512i* wd = reinterpret_cast<const __m512i*>(packed.data_ptr<c10::BFloat16>());
  const float* bd = float_bias.defined() ? float_bias.data_ptr<float>() : nullptr;
  c10::BFloat16* od = out.data_ptr<c10::BFloat16>();
  const int nb = blocks_for(static_cast<int>(std::min<int64_t>(m, 8)));
  const int64_t tiles_n = (blocks + nb - 1) / nb;
  at::parallel_for(0, tiles_n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t block = t * nb;
      const int blocks_here = static_cast<int>(std::min<int64_t>(nb, blocks - block));
      for (int64_t row = 0; row < m; row += 8) {
        const int rows_here = static_cast<int>(std::min<int64_t>(8, m - row));
        kTiles[rows_here - 1][blocks_here - 1](xd + row * x_pairs_stride, x_pairs_stride, wd + block * pairs, pairs,
                                               bd ? bd + block * kBlock : nullptr, od + row * n + block * kBlock, n);
      }
    }
  });
#endif
  return out;
}

TORCH_LIBRARY(streamhost_gemm, m) {
  m.def("supported() -> bool", small_gemm_supported);
  m.def("pack(Tensor weight) -> Tensor");
  m.def("unpack_float(Tensor packed) -> Tensor");
  m.def("small_gemm(Tensor x, Tensor packed, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(streamhost_gemm, CPU, m) {
  m.impl("pack", pack_small_gemm);
  m.impl("unpack_float", unpack_small_gemm_float);
  m.impl("small_gemm", small_gemm);
}

// The lean decoder layer's element-wise work, one op each instead of eight: RMSNorm (with the residual
// add before it), rotary embedding of q and k in place, SiLU-times-up, and the KV cache write.
//
// Why: in a decode step the GEMMs see a few rows, so each of the ~25 small torch ops per layer
// (casts, pow/mean/rsqrt, roll, mul/add, index_copy_) costs its dispatch and an OpenMP region more
// than its arithmetic (docs/architecture.md, "Fused layer ops"). Each op here reproduces the
// roundings of the torch expression it replaces (transformers' Llama modules): float32 where they
// compute in float32, a rounding to the model's dtype wherever a torch op would produce one, so
// greedy tokens stay those of transformers.
// No fused multiply-adds where torch rounds each product: float32 results stay those of its ops.
#pragma GCC optimize("fp-contract=off")

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/torch.h>

#include <cmath>
#include <type_traits>

#include "vec16.h"

namespace {

using streamhost_vec::to_float;

// bf16 and float32 take the AVX-512 loops (fp16 and float64 the scalar ones)
template <typename T>
constexpr bool kVectorised =
#if defined(__AVX512F__)
    std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, float>;
#else
    false;
#endif

template <typename T>
inline float f32(T x) {
  return to_float(x);
}

template <typename T>
inline T rounded(float x) {  // c10::BFloat16 / Half round to nearest even, as torch's casts do
  return static_cast<T>(x);
}

// Rows per parallel task: a decode step's few rows run inline (no OpenMP region at all).
inline int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(width, 1)); }

// transformers' LlamaRMSNorm on one row: y = x * rsqrt(mean(x^2) + eps) in float32, rounded to the
// dtype, then weight * y (a product in the dtype).
template <typename T>
inline void norm_row(const T* x, const T* weight, T* out, int64_t width, float eps) {
  double squares = 0.0;
  for (int64_t j = 0; j < width; ++j) {
    const float v = f32(x[j]);
    squares += static_cast<double>(v) * v;
  }
  const float inv = 1.f / std::sqrt(static_cast<float>(squares / width) + eps);
  for (int64_t j = 0; j < width; ++j) {
    const T normed = rounded<T>(f32(x[j]) * inv);
    out[j] = rounded<T>(f32(weight[j]) * f32(normed));
  }
}

template <typename T>
void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, at::Tensor& out, double eps) {
  const int64_t rows = x.size(0), width = x.size(1);
  const T* xd = x.data_ptr<T>();
  const T* wd = weight.data_ptr<T>();
  T* od = out.data_ptr<T>();
  const int64_t xs = x.stride(0), os = out.stride(0);
  at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) norm_row<T>(xd + i * xs, wd, od + i * os, width, static_cast<float>(eps));
  });
}

template <typename T>
void add_rms_norm_rows(const at::Tensor& h, const at::Tensor& delta, const at::Tensor& weight, at::Tensor& sum,
                       at::Tensor& out, double eps) {
  const int64_t rows = h.size(0), width = h.size(1);
  const T* hd = h.data_ptr<T>();
  const T* dd = delta.data_ptr<T>();
  const T* wd = weight.data_ptr<T>();
  T* sd = sum.data_ptr<T>();
  T* od = out.data_ptr<T>();
  const int64_t hs = h.stride(0), ds = delta.stride(0);
  at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* s = sd + i * width;
      for (int64_t j = 0; j < width; ++j) s[j] = rounded<T>(f32(hd[i * hs + j]) + f32(dd[i * ds + j]));
      norm_row<T>(s, wd, od + i * width, width, static_cast<float>(eps));
    }
  });
}

// x * cos + rotate_half(x) * sin with rotate_half's sign folded into signed_sin ([-sin1, sin2]):
// each product and the sum rounded to the dtype, as the three torch ops do.
template <typename T>
void rotary_rows(at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin, int64_t heads) {
  const int64_t tokens = x.size(0), dim = cos.size(1), half = dim / 2;
  T* xd = x.data_ptr<T>();
  const T* cd = cos.data_ptr<T>();
  const T* sd = signed_sin.data_ptr<T>();
  const int64_t xs = x.stride(0), cs = cos.stride(0), ss = signed_sin.stride(0);
  at::parallel_for(0, tokens, grain_rows(heads * dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const T* c = cd + t * cs;
      const T* s = sd + t * ss;
      for (int64_t head = 0; head < heads; ++head) {
        T* v = xd + t * xs + head * dim;
        int64_t j = 0;
#if defined(__AVX512F__)
        if constexpr (kVectorised<T>) {
          using namespace streamhost_vec;
          for (; j + 16 <= half; j += 16) {
            const __m512 a = load16(v + j), b = load16(v + j + half);
            const __m512 low = round_to(v, _mm512_add_ps(round_to(v, _mm512_mul_ps(a, load16(c + j))),
                                                         round_to(v, _mm512_mul_ps(b, load16(s + j)))));
            const __m512 high =
                round_to(v, _mm512_add_ps(round_to(v, _mm512_mul_ps(b, load16(c + j + half))),
                                          round_to(v, _mm512_mul_ps(a, load16(s + j + half)))));
            store16(v + j, low);
            store16(v + j + half, high);
          }
        }
#endif
        for (; j < half; ++j) {
          const float a = f32(v[j]), b = f32(v[j + half]);
          const T low = rounded<T>(f32(rounded<T>(a * f32(c[j]))) + f32(rounded<T>(b * f32(s[j]))));
          const T high =
              rounded<T>(f32(rounded<T>(b * f32(c[j + half]))) + f32(rounded<T>(a * f32(s[j + half]))));
          v[j] = low;
          v[j + half] = high;
        }
      }
    }
  });
}

// silu(gate) * up, gate and up the two halves of each row; silu rounded to the dtype first.
template <typename T>
void silu_mul_rows(const at::Tensor& gate_up, at::Tensor& out) {
  const int64_t rows = gate_up.size(0), width = out.size(1);
  const T* gd = gate_up.data_ptr<T>();
  T* od = out.data_ptr<T>();
  const int64_t gs = gate_up.stride(0);
  at::parallel_for(0, rows, grain_rows(2 * width), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* g = gd + i * gs;
      const T* u = g + width;
      T* o = od + i * width;
      int64_t j = 0;
#if defined(__AVX512F__)
      if constexpr (kVectorised<T>) {
        using namespace streamhost_vec;
        const __m512 one = _mm512_set1_ps(1.f), sign = _mm512_set1_ps(-0.f);
        for (; j + 16 <= width; j += 16) {
          const __m512 x = load16(g + j);
          // sigmoid from exp(-|x|) (never overflows): 1 / (1 + e) for x >= 0, e / (1 + e) below
          const __m512 e = streamhost_vec::exp_nonpositive(_mm512_or_ps(x, sign));
          const __m512 denominator = _mm512_add_ps(one, e);
          const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
          const __m512 sigmoid = _mm512_div_ps(_mm512_mask_blend_ps(negative, one, e), denominator);
          const __m512 activated = round_to(o, _mm512_mul_ps(x, sigmoid));
          store16(o + j, round_to(o, _mm512_mul_ps(activated, load16(u + j))));
        }
      }
#endif
      for (; j < width; ++j) {
        const float x = f32(g[j]);
        const T activated = rounded<T>(x / (1.f + std::exp(-x)));
        o[j] = rounded<T>(f32(activated) * f32(u[j]));
      }
    }
  });
}

template <typename T>
void write_kv_rows(at::Tensor& keys, at::Tensor& values, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& rows, const at::Tensor& positions) {
  const int64_t tokens = k.size(0), kv_heads = k.size(1), dim = k.size(2);
  const int64_t row_stride = keys.stride(0), head_stride = keys.stride(1);
  const int64_t* row_of = rows.data_ptr<int64_t>();
  const int64_t* pos_of = positions.data_ptr<int64_t>();
  T* kd = keys.data_ptr<T>();
  T* vd = values.data_ptr<T>();
  const T* ks = k.data_ptr<T>();
  const T* vs = v.data_ptr<T>();
  at::parallel_for(0, tokens, grain_rows(2 * kv_heads * dim), [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t base = row_of[t] * row_stride + pos_of[t] * dim;
      for (int64_t head = 0; head < kv_heads; ++head) {
        std::copy_n(ks + t * k.stride(0) + head * k.stride(1), dim, kd + base + head * head_stride);
        std::copy_n(vs + t * v.stride(0) + head * v.stride(1), dim, vd + base + head * head_stride);
      }
    }
  });
}

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, name, " must be [rows, width] with contiguous rows");
}

}  // namespace

at::Tensor rms_norm(at::Tensor x, at::Tensor weight, double eps) {
  check_rows(x, "x");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == x.size(1) && weight.scalar_type() == x.scalar_type(),
              "weight must be [width] in x's dtype");
  at::Tensor out = at::empty({x.size(0), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm",
                                  [&] { rms_norm_rows<scalar_t>(x, weight, out, eps); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm(at::Tensor h, at::Tensor delta, at::Tensor weight, double eps) {
  check_rows(h, "h");
  check_rows(delta, "delta");
  TORCH_CHECK(h.sizes() == delta.sizes() && h.scalar_type() == delta.scalar_type(), "h and delta differ");
  TORCH_CHECK(weight.is_contiguous() && weight.numel() == h.size(1) && weight.scalar_type() == h.scalar_type(),
              "weight must be [width] in h's dtype");
  at::Tensor sum = at::empty({h.size(0), h.size(1)}, h.options());
  at::Tensor out = at::empty({h.size(0), h.size(1)}, h.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "add_rms_norm",
                                  [&] { add_rms_norm_rows<scalar_t>(h, delta, weight, sum, out, eps); });
  return {sum, out};
}

void rotary_(at::Tensor x, at::Tensor cos, at::Tensor signed_sin, int64_t heads) {
  check_rows(x, "x");
  check_rows(cos, "cos");
  check_rows(signed_sin, "signed_sin");
  TORCH_CHECK(cos.size(0) == x.size(0) && signed_sin.sizes() == cos.sizes() && cos.size(1) % 2 == 0,
              "cos/sin must be [tokens, even head size]");
  TORCH_CHECK(heads * cos.size(1) <= x.size(1), "more heads than the row holds");
  TORCH_CHECK(cos.scalar_type() == x.scalar_type() && signed_sin.scalar_type() == x.scalar_type(), "dtypes differ");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rotary_",
                                  [&] { rotary_rows<scalar_t>(x, cos, signed_sin, heads); });
}

at::Tensor silu_mul(at::Tensor gate_up) {
  check_rows(gate_up, "gate_up");
  TORCH_CHECK(gate_up.size(1) % 2 == 0, "gate_up must hold two halves");
  at::Tensor out = at::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate_up.scalar_type(), "silu_mul",
                                  [&] { silu_mul_rows<scalar_t>(gate_up, out); });
  return out;
}

// keys/values [rows, KV, capacity, D] (contiguous); k/v [T, KV, D] with D contiguous; token t goes to
// row rows[t], position positions[t].
void write_kv(at::Tensor keys, at::Tensor values, at::Tensor k, at::Tensor v, at::Tensor rows, at::Tensor positions) {
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous() && keys.sizes() == values.sizes(),
              "the cache buffers must be contiguous and alike");
  TORCH_CHECK(k.dim() == 3 && v.sizes() == k.sizes() && k.stride(2) == 1 && v.stride(2) == 1, "k/v must be [T, KV, D]");
  TORCH_CHECK(k.size(1) == keys.size(1) && k.size(2) == keys.size(3), "k/v heads or size differ from the cache");
  TORCH_CHECK(k.scalar_type() == keys.scalar_type() && v.scalar_type() == keys.scalar_type(), "dtypes differ");
  TORCH_CHECK(rows.scalar_type() == at::kLong && positions.scalar_type() == at::kLong && rows.is_contiguous() &&
                  positions.is_contiguous() && rows.numel() == k.size(0) && positions.numel() == k.size(0),
              "rows/positions must be int64 [T]");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, k.scalar_type(), "write_kv",
                                  [&] { write_kv_rows<scalar_t>(keys, values, k, v, rows, positions); });
}

TORCH_LIBRARY(streamhost_layer, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("add_rms_norm(Tensor h, Tensor delta, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rotary_(Tensor(a!) x, Tensor cos, Tensor signed_sin, int heads) -> ()");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("write_kv(Tensor(a!) keys, Tensor(b!) values, Tensor k, Tensor v, Tensor rows, Tensor positions) -> ()");
}

TORCH_LIBRARY_IMPL(streamhost_layer, CPU, m) {
  m.impl("rms_norm", rms_norm);
  m.impl("add_rms_norm", add_rms_norm);
  m.impl("rotary_", rotary_);
  m.impl("silu_mul", silu_mul);
  m.impl("write_kv", write_kv);
}

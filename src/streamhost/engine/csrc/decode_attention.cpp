// Decode attention for a packed step: every one-token query against its own row of the KV buffer,
// reading exactly that row's length (no padding to a neighbour's length, no mask), all rows and
// KV heads of a layer in one call and one parallel region. Grouped-query heads that share a KV head
// are computed together, so each key and value row is read once per group. Scores and the softmax
// are float32; a row's result never depends on the other rows in the step (batch invariant).
// Why this exists and what it measured: docs/architecture.md, "Decode attention kernel".
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "vec16.h"

namespace {

using namespace streamhost_vec;

#if defined(__AVX512F__)
// softmax numerators of s[0:length] in place; returns their sum
inline float softmax_in_place(float* s, int64_t length) {
  __m512 top16 = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + 16 <= length; j += 16) top16 = _mm512_max_ps(top16, _mm512_loadu_ps(s + j));
  float top = _mm512_reduce_max_ps(top16);
  for (int64_t t = j; t < length; ++t) top = std::max(top, s[t]);
  const __m512 top_v = _mm512_set1_ps(top);
  __m512 sum16 = _mm512_setzero_ps();
  for (j = 0; j + 16 <= length; j += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j), top_v));
    _mm512_storeu_ps(s + j, e);
    sum16 = _mm512_add_ps(sum16, e);
  }
  float sum = _mm512_reduce_add_ps(sum16);
  for (; j < length; ++j) {
    s[j] = std::exp(s[j] - top);
    sum += s[j];
  }
  return sum;
}

// One (query token, KV head) item with the head size a multiple of 16 (64 and 128 in practice):
// scores of the group's queries for every key, the softmax, then the weighted sum of values, each
// key and value row converted to float once and used by every query of the group.
template <typename T>
void item_avx512(const float* q, const T* k_base, const T* v_base, int64_t length, int64_t group, int64_t dim,
                 float* scores, float* acc, float* total) {
  const int64_t chunks = dim / 16;
  for (int64_t j = 0; j < length; ++j) {
    const T* k = k_base + j * dim;
    __m512 sums[8];
    for (int64_t r = 0; r < group && r < 8; ++r) sums[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512 kv = load16(k + c * 16);
      for (int64_t r = 0; r < group && r < 8; ++r)
        sums[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * dim + c * 16), kv, sums[r]);
    }
    for (int64_t r = 0; r < group && r < 8; ++r) scores[r * length + j] = _mm512_reduce_add_ps(sums[r]);
    for (int64_t r = 8; r < group; ++r) {  // groups wider than 8 queries per KV head (rare): no register array
      __m512 sum = _mm512_setzero_ps();
      for (int64_t c = 0; c < chunks; ++c)
        sum = _mm512_fmadd_ps(_mm512_loadu_ps(q + r * dim + c * 16), load16(k + c * 16), sum);
      scores[r * length + j] = _mm512_reduce_add_ps(sum);
    }
  }
  for (int64_t r = 0; r < group; ++r) total[r] = softmax_in_place(scores + r * length, length);
  std::fill(acc, acc + group * dim, 0.f);
  for (int64_t j = 0; j < length; ++j) {
    const T* v = v_base + j * dim;
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512 vv = load16(v + c * 16);
      for (int64_t r = 0; r < group; ++r) {
        float* a = acc + r * dim + c * 16;
        _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(scores[r * length + j]), vv, _mm512_loadu_ps(a)));
      }
    }
  }
}
#endif

template <typename T>
void run(at::Tensor& out, const at::Tensor& query, const at::Tensor& keys, const at::Tensor& values,
         const at::Tensor& tokens, const at::Tensor& rows, const at::Tensor& lengths, double scale) {
  const int64_t n = tokens.size(0);
  const int64_t heads = query.size(1), dim = query.size(2);
  const int64_t kv_heads = keys.size(1), capacity = keys.size(2);
  const int64_t group = heads / kv_heads;
  const int64_t q_token = query.stride(0), q_head = query.stride(1);
  const int64_t o_token = out.stride(0), o_head = out.stride(1);
  const int64_t kv_row = keys.stride(0), kv_head = keys.stride(1);
  const T* q_data = query.data_ptr<T>();
  const T* k_data = keys.data_ptr<T>();
  const T* v_data = values.data_ptr<T>();
  T* o_data = out.data_ptr<T>();
  const int64_t* token_of = tokens.data_ptr<int64_t>();
  const int64_t* row_of = rows.data_ptr<int64_t>();
  const int64_t* length_of = lengths.data_ptr<int64_t>();
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, n * kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> q(group * dim), acc(group * dim), scores;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / kv_heads, g = item % kv_heads;
      const int64_t length = std::min(length_of[i], capacity);
      const T* k_base = k_data + row_of[i] * kv_row + g * kv_head;
      const T* v_base = v_data + row_of[i] * kv_row + g * kv_head;
      for (int64_t r = 0; r < group; ++r) {
        const T* src = q_data + token_of[i] * q_token + (g * group + r) * q_head;
        for (int64_t d = 0; d < dim; ++d) q[r * dim + d] = to_float(src[d]) * fscale;
      }
      scores.resize(group * length);
      std::vector<float> total(group, 0.f);
#if defined(__AVX512F__)
      if constexpr (!std::is_same_v<T, double>) {  // float32 lanes: doubles take the plain loops
        if (dim % 16 == 0) {
          item_avx512<T>(q.data(), k_base, v_base, length, group, dim, scores.data(), acc.data(), total.data());
        for (int64_t r = 0; r < group; ++r) {
          T* dst = o_data + token_of[i] * o_token + (g * group + r) * o_head;
          const float inv = total[r] > 0.f ? 1.f / total[r] : 0.f;
          for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<T>(acc[r * dim + d] * inv);
          }
          continue;
        }
      }
#endif
      for (int64_t j = 0; j < length; ++j) {
        const T* k = k_base + j * dim;
        for (int64_t r = 0; r < group; ++r) {
          const float* qr = q.data() + r * dim;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < dim; ++d) dot += qr[d] * to_float(k[d]);
          scores[r * length + j] = dot;
        }
      }
      for (int64_t r = 0; r < group; ++r) {
        float* s = scores.data() + r * length;
        float top = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < length; ++j) top = std::max(top, s[j]);
        float sum = 0.f;
        for (int64_t j = 0; j < length; ++j) {
          s[j] = std::exp(s[j] - top);
          sum += s[j];
        }
        total[r] = sum;
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t j = 0; j < length; ++j) {
        const T* v = v_base + j * dim;
        for (int64_t r = 0; r < group; ++r) {
          const float p = scores[r * length + j];
          float* a = acc.data() + r * dim;
#pragma omp simd
          for (int64_t d = 0; d < dim; ++d) a[d] += p * to_float(v[d]);
        }
      }
      for (int64_t r = 0; r < group; ++r) {
        T* dst = o_data + token_of[i] * o_token + (g * group + r) * o_head;
        const float inv = total[r] > 0.f ? 1.f / total[r] : 0.f;
        for (int64_t d = 0; d < dim; ++d) dst[d] = static_cast<T>(acc[r * dim + d] * inv);
      }
    }
  });
}

}  // namespace

// out [T, H, D] (written at ``tokens`` only), query [T, H, D], keys/values [rows, KV, capacity, D]
// with the last dimension contiguous; tokens/rows/lengths int64 [N]: query token i attends the
// first lengths[i] positions of row rows[i].
void decode_attention(at::Tensor out, at::Tensor query, at::Tensor keys, at::Tensor values, at::Tensor tokens,
                      at::Tensor rows, at::Tensor lengths, double scale) {
  TORCH_CHECK(query.dim() == 3 && out.dim() == 3 && keys.dim() == 4 && values.dim() == 4, "bad ranks");
  TORCH_CHECK(keys.strides() == values.strides() && keys.sizes() == values.sizes(), "keys and values differ in layout");
  TORCH_CHECK(query.stride(2) == 1 && out.stride(2) == 1 && keys.stride(3) == 1 && keys.stride(2) == keys.size(3),
              "the head dimension must be contiguous and a row's positions adjacent");
  TORCH_CHECK(query.size(1) % keys.size(1) == 0, "query heads must be a multiple of KV heads");
  TORCH_CHECK(query.scalar_type() == keys.scalar_type() && out.scalar_type() == keys.scalar_type(), "dtypes differ");
  TORCH_CHECK(tokens.scalar_type() == at::kLong && rows.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong,
              "indices must be int64");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "decode_attention", [&] {
    run<scalar_t>(out, query, keys, values, tokens.contiguous(), rows.contiguous(), lengths.contiguous(), scale);
  });
}

TORCH_LIBRARY(streamhost_kernels, m) {
  m.def("decode_attention(Tensor(a!) out, Tensor query, Tensor keys, Tensor values, Tensor tokens, Tensor rows, "
        "Tensor lengths, float scale) -> ()");
}

TORCH_LIBRARY_IMPL(streamhost_kernels, CPU, m) { m.impl("decode_attention", decode_attention); }

#include <cmath>

#include "ops/backend.h"
#include "ops/common.h"

namespace cf::ops {

Shape attention_shape(const TensorView& q, const TensorView& k, const TensorView& v, const OptionalView& mask) {
  expect_float_rows(q, "query");
  expect_float_rows(k, "key");
  expect_float_rows(v, "value");
  CF_CHECK(q.ndim == 3 || q.ndim == 4, ValueError,
           "query must be (B, H, Sq, D) or (H, Sq, D), got shape ", q.shape_str());
  CF_CHECK(k.ndim == q.ndim && v.ndim == q.ndim, ValueError, "query, key and value must have the same number of "
           "dimensions, got shapes ", q.shape_str(), ", ", k.shape_str(), ", ", v.shape_str());
  for (int i = 0; i < q.ndim - 2; ++i)
    CF_CHECK(q.shape[i] == k.shape[i] && q.shape[i] == v.shape[i], ValueError,
             "query, key and value must share their batch and head axes, got shapes ", q.shape_str(), ", ",
             k.shape_str(), ", ", v.shape_str());
  CF_CHECK(k.size(-1) == q.size(-1), ValueError, "key's last axis must equal query's (D): query ", q.shape_str(),
           ", key ", k.shape_str());
  CF_CHECK(v.size(-2) == k.size(-2), ValueError, "value must have as many rows as key (Sk): key ", k.shape_str(),
           ", value ", v.shape_str());
  Shape out = shape_of(q);
  out.back() = v.size(-1);
  if (mask) {
    const int64_t B = q.ndim == 4 ? q.shape[0] : 1, H = q.size(-3);
    broadcast_mask(*mask, B, H, q.size(-2), k.size(-2), "attn_mask", false);
  }
  return out;
}

void scaled_dot_product_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const OptionalView& mask, bool is_causal, std::optional<float> scale,
                                  const TensorView& out) {
  const Shape shape = attention_shape(q, k, v, mask);
  expect_float_rows(out, "out");
  CF_CHECK(shape_of(out) == shape, ValueError, "scaled_dot_product_attention: out has shape ", out.shape_str(),
           " but the result has shape ", shape_str(shape));
  const Device dev = common_device({{"query", &q}, {"key", &k}, {"value", &v}, {"attn_mask", opt(mask)}, {"out", &out}});
  if (on_gpu(dev)) expect_same_dtype({{"key", &k}, {"value", &v}, {"out", &out}}, q.dtype);
  // Any strides with a contiguous last axis: a head split out of a packed QKV projection or a
  // prefix of a preallocated KV cache is read in place.
  AttentionPlan a;
  const bool batched = q.ndim == 4;
  a.B = batched ? q.shape[0] : 1;
  a.H = q.size(-3); a.Sq = q.size(-2); a.Sk = k.size(-2); a.D = q.size(-1); a.Dv = v.size(-1);
  a.q = q.data; a.q_sb = batched ? q.stride(0) : 0; a.q_sh = q.stride(-3); a.q_ss = q.stride(-2);
  a.k = k.data; a.k_sb = batched ? k.stride(0) : 0; a.k_sh = k.stride(-3); a.k_ss = k.stride(-2);
  a.v = v.data; a.v_sb = batched ? v.stride(0) : 0; a.v_sh = v.stride(-3); a.v_ss = v.stride(-2);
  a.out = out.data; a.o_sb = batched ? out.stride(0) : 0; a.o_sh = out.stride(-3); a.o_ss = out.stride(-2);
  if (mask) a.mask = broadcast_mask(*mask, a.B, a.H, a.Sq, a.Sk, "attn_mask", false);
  a.causal = is_causal;
  a.scale = scale ? *scale : (a.D > 0 ? 1.0f / std::sqrt(static_cast<float>(a.D)) : 1.0f);
  Backend(dev, q.dtype).attention(a);
}

}  // namespace cf::ops

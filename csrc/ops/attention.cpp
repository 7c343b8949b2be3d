#include <cmath>

#include "ops/common.h"

namespace cf::ops {

Shape attention_shape(const TensorView& q, const TensorView& k, const TensorView& v, const OptionalView& mask) {
  expect_f32(q, "query");
  expect_f32(k, "key");
  expect_f32(v, "value");
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
  expect_out(out, attention_shape(q, k, v, mask), "scaled_dot_product_attention");
  cpu::AttentionArgs a;
  a.B = q.ndim == 4 ? q.shape[0] : 1;
  a.H = q.size(-3);
  a.Sq = q.size(-2);
  a.Sk = k.size(-2);
  a.D = q.size(-1);
  a.Dv = v.size(-1);
  a.q = q.ptr<float>(); a.q_sh = a.Sq * a.D; a.q_sb = a.H * a.q_sh; a.q_ss = a.D;
  a.k = k.ptr<float>(); a.k_sh = a.Sk * a.D; a.k_sb = a.H * a.k_sh; a.k_ss = a.D;
  a.v = v.ptr<float>(); a.v_sh = a.Sk * a.Dv; a.v_sb = a.H * a.v_sh; a.v_ss = a.Dv;
  a.out = out.ptr<float>(); a.o_sh = a.Sq * a.Dv; a.o_sb = a.H * a.o_sh; a.o_ss = a.Dv;
  if (mask) a.mask = broadcast_mask(*mask, a.B, a.H, a.Sq, a.Sk, "attn_mask", false);
  a.causal = is_causal;
  a.scale = scale ? *scale : (a.D > 0 ? 1.0f / std::sqrt(static_cast<float>(a.D)) : 1.0f);
  kernels().attention(a);
}

}  // namespace cf::ops

// torch.nn.MultiheadAttention's forward as one op: the projections are GEMMs straight into
// (B, S, E) buffers, and attention reads the heads out of them through strides -- head h of Q is
// columns [h*Dh, (h+1)*Dh) of each row -- and writes its output merged the same way, so heads are
// never split or merged by copying. Self-attention (query, key and value the same array) runs one
// packed QKV GEMM; cross-attention with key == value runs one K/V GEMM.
#include <cmath>

#include "ops/backend.h"
#include "ops/common.h"

namespace cf::ops {
namespace {

bool same_array(const TensorView& a, const TensorView& b) {
  return a.data == b.data && shape_of(a) == shape_of(b) && a.dtype == b.dtype;
}

}  // namespace

Shape multi_head_attention_shape(const TensorView& query, const TensorView& key, const TensorView& value,
                                 int64_t num_heads, const WeightRef& in_weight, const OptionalView& in_bias,
                                 const WeightRef& out_weight, const OptionalView& out_bias,
                                 const OptionalView& attn_mask, const OptionalView& key_padding_mask) {
  expect_float(query, "query");
  expect_float(key, "key");
  expect_float(value, "value");
  expect_ndim(query, 3, "query");
  expect_ndim(key, 3, "key");
  expect_ndim(value, 3, "value");
  const int64_t B = query.shape[0], Sq = query.shape[1], E = query.shape[2], Sk = key.shape[1];
  expect_num_heads(E, num_heads, "embed_dim");
  CF_CHECK(key.shape[0] == B && value.shape[0] == B, ValueError, "query, key and value must have the same batch size, "
           "got shapes ", query.shape_str(), ", ", key.shape_str(), ", ", value.shape_str());
  CF_CHECK(key.shape[2] == E && value.shape[2] == E, ValueError, "key and value must have embed_dim ", E,
           " like query, got shapes ", key.shape_str(), ", ", value.shape_str());
  CF_CHECK(value.shape[1] == Sk, ValueError, "key and value must have the same sequence length, got shapes ",
           key.shape_str(), ", ", value.shape_str());
  if (in_weight.array) expect_float(*in_weight.array, "in_weight");
  if (out_weight.array) expect_float(*out_weight.array, "out_weight");
  CF_CHECK((in_weight.packed || in_weight.array->ndim == 2) && in_weight.rows() == 3 * E && in_weight.cols() == E,
           ValueError, "in_weight must have shape (", 3 * E, ", ", E, "), got ", in_weight.shape_str());
  CF_CHECK((out_weight.packed || out_weight.array->ndim == 2) && out_weight.rows() == E && out_weight.cols() == E,
           ValueError,
           "out_weight must have shape (", E, ", ", E, "), got ", out_weight.shape_str());
  expect_vector(in_bias, 3 * E, "in_bias", "3 * embed_dim");
  expect_vector(out_bias, E, "out_bias", "embed_dim");
  check_mha_masks(attn_mask, key_padding_mask, B, num_heads, Sq, Sk);
  return shape_of(query);
}

void multi_head_attention(const TensorView& query, const TensorView& key, const TensorView& value,
                          int64_t num_heads, const WeightRef& in_weight, const OptionalView& in_bias,
                          const WeightRef& out_weight, const OptionalView& out_bias, const OptionalView& attn_mask,
                          const OptionalView& key_padding_mask, bool is_causal, const TensorView& out) {
  expect_out(out, multi_head_attention_shape(query, key, value, num_heads, in_weight, in_bias, out_weight, out_bias,
                                             attn_mask, key_padding_mask),
             "multi_head_attention");
  const int64_t B = query.shape[0], Sq = query.shape[1], E = query.shape[2], Sk = key.shape[1];
  const int64_t H = num_heads, Dh = E / H;
  const Device dev = common_device({{"query", &query}, {"key", &key}, {"value", &value},
                                    {"in_weight", in_weight.array}, {"in_bias", opt(in_bias)},
                                    {"out_weight", out_weight.array}, {"out_bias", opt(out_bias)},
                                    {"attn_mask", opt(attn_mask)}, {"key_padding_mask", opt(key_padding_mask)},
                                    {"out", &out}});
  if (on_gpu(dev))
    expect_same_dtype({{"key", &key}, {"value", &value}, {"in_weight", &gpu_weight(in_weight, "in_weight")},
                       {"in_bias", opt(in_bias)}, {"out_weight", &gpu_weight(out_weight, "out_weight")},
                       {"out_bias", opt(out_bias)}, {"out", &out}}, query.dtype);
  Backend be(dev, query.dtype);
  AttentionPlan a;
  a.B = B; a.H = H; a.Sq = Sq; a.Sk = Sk; a.D = Dh; a.Dv = Dh;
  const bool self_attention = same_array(query, key) && same_array(key, value);
  const int64_t q_elems = B * Sq * (self_attention ? 3 * E : E), kv_elems = self_attention ? 0 : B * Sk * 2 * E;
  void* const qbuf = be.scratch(q_elems + kv_elems + B * Sq * E);
  void* const kvbuf = be.at(qbuf, q_elems);
  void* const ctx = be.at(kvbuf, kv_elems);  // (B, Sq, E): the heads merged by the output strides
  if (self_attention) {
    be.gemm(query.data, B * Sq, E, in_weight, in_bias, 0, 3 * E, qbuf);
    a.q = qbuf; a.k = be.at(qbuf, E); a.v = be.at(qbuf, 2 * E);
    a.q_ss = a.k_ss = a.v_ss = 3 * E;
  } else {
    be.gemm(query.data, B * Sq, E, in_weight, in_bias, 0, E, qbuf);
    a.q = qbuf; a.q_ss = E;
    if (same_array(key, value)) {
      be.gemm(key.data, B * Sk, E, in_weight, in_bias, E, 2 * E, kvbuf);
      a.k = kvbuf; a.v = be.at(kvbuf, E); a.k_ss = a.v_ss = 2 * E;
    } else {
      be.gemm(key.data, B * Sk, E, in_weight, in_bias, E, E, kvbuf);
      be.gemm(value.data, B * Sk, E, in_weight, in_bias, 2 * E, E, be.at(kvbuf, B * Sk * E));
      a.k = kvbuf; a.v = be.at(kvbuf, B * Sk * E); a.k_ss = a.v_ss = E;
    }
  }
  a.q_sh = a.k_sh = a.v_sh = Dh;
  a.q_sb = Sq * a.q_ss; a.k_sb = Sk * a.k_ss; a.v_sb = Sk * a.v_ss;
  a.out = ctx; a.o_ss = E; a.o_sh = Dh; a.o_sb = Sq * E;
  set_mha_masks(a, attn_mask, key_padding_mask);
  a.causal = is_causal;
  a.scale = 1.0f / std::sqrt(static_cast<float>(Dh));
  be.attention(a);

  be.gemm(ctx, B * Sq, E, out_weight, out_bias, 0, E, out.data);
}

void check_mha_masks(const OptionalView& attn_mask, const OptionalView& key_padding_mask, int64_t B,
                     int64_t num_heads, int64_t Sq, int64_t Sk, const char* mask_name, const char* padding_name) {
  if (attn_mask) {
    const TensorView& m = *attn_mask;
    CF_CHECK((m.ndim == 2 && m.shape[0] == Sq && m.shape[1] == Sk) ||
                 (m.ndim == 3 && m.shape[0] == B * num_heads && m.shape[1] == Sq && m.shape[2] == Sk),
             ValueError, mask_name, " must have shape (", Sq, ", ", Sk, ") or (", B * num_heads, ", ", Sq, ", ", Sk,
             "), got ", m.shape_str());
    broadcast_mask(m.ndim == 3 ? as_4d(m, B, num_heads, Sq, Sk) : m, B, num_heads, Sq, Sk, mask_name, true);
  }
  if (key_padding_mask) {
    CF_CHECK(key_padding_mask->ndim == 2 && key_padding_mask->shape[0] == B && key_padding_mask->shape[1] == Sk,
             ValueError, padding_name, " must have shape (", B, ", ", Sk, "), got ", key_padding_mask->shape_str());
    broadcast_mask(as_4d(*key_padding_mask, B, 1, 1, Sk), B, num_heads, Sq, Sk, padding_name, true);
  }
}

void set_mha_masks(AttentionPlan& a, const OptionalView& attn_mask, const OptionalView& key_padding_mask) {
  const int64_t B = a.B, H = a.H, Sq = a.Sq, Sk = a.Sk;
  if (attn_mask) {
    // (B*H, Sq, Sk) is (B, H, Sq, Sk) in the same order; (Sq, Sk) broadcasts as it is.
    const TensorView m = attn_mask->ndim == 3 ? as_4d(*attn_mask, B, H, Sq, Sk) : *attn_mask;
    a.mask = broadcast_mask(m, B, H, Sq, Sk, "attn_mask", true);
  }
  if (key_padding_mask)
    a.mask2 = broadcast_mask(as_4d(*key_padding_mask, B, 1, 1, Sk), B, H, Sq, Sk, "key_padding_mask", true);
}

}  // namespace cf::ops

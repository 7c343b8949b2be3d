#include <cmath>
#include <vector>

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

namespace {

void check_attention_dropout(const cpu::AttentionDropout& d, Device dev) {
  CF_CHECK(std::isfinite(d.p) && d.p >= 0.0 && d.p < 1.0, ValueError, "dropout_p must be in [0, 1), got ", d.p);
  if (d.active()) cpu_only(dev, "attention's dropout");
}

// The lse array of a forward whose query is q: q's shape without its last axis.
void expect_lse(const TensorView& lse, const TensorView& q, const char* op) {
  Shape want = shape_of(q);
  want.pop_back();
  expect_float(lse, "lse");
  CF_CHECK(shape_of(lse) == want, ValueError, op, ": lse has shape ", lse.shape_str(), " but query ",
           q.shape_str(), " needs ", shape_str(want));
  CF_CHECK(lse.is_contiguous(), ValueError, op, ": lse must be C-contiguous");
}

}  // namespace

void scaled_dot_product_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const OptionalView& mask, bool is_causal, std::optional<float> scale,
                                  const TensorView& out, const OptionalView& lse, const cpu::AttentionDropout& dropout) {
  const Shape shape = attention_shape(q, k, v, mask);
  expect_float_rows(out, "out");
  CF_CHECK(shape_of(out) == shape, ValueError, "scaled_dot_product_attention: out has shape ", out.shape_str(),
           " but the result has shape ", shape_str(shape));
  const Device dev = common_device({{"query", &q}, {"key", &k}, {"value", &v}, {"attn_mask", opt(mask)}, {"out", &out}});
  if (on_gpu(dev)) expect_same_dtype({{"key", &k}, {"value", &v}, {"out", &out}}, q.dtype);
  if (lse) {
    expect_lse(*lse, q, "scaled_dot_product_attention");
    cpu_only(common_device({{"query", &q}, {"lse", opt(lse)}}), "attention's log-sum-exp output");
  }
  check_attention_dropout(dropout, dev);
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
  Backend(dev, q.dtype).attention(a, lse ? lse->ptr<float>() : nullptr, dropout);
}

void scaled_dot_product_attention_backward(const TensorView& grad_output, const TensorView& q, const TensorView& k,
                                           const TensorView& v, const OptionalView& output, const OptionalView& lse,
                                           const OptionalView& mask, bool is_causal, std::optional<float> scale,
                                           const TensorView& dq, const TensorView& dk, const TensorView& dv,
                                           const cpu::AttentionDropout& dropout) {
  const char* op = "scaled_dot_product_attention_backward";
  const Shape shape = attention_shape(q, k, v, mask);
  expect_float(grad_output, "grad_output");
  CF_CHECK(shape_of(grad_output) == shape, ValueError, op, ": grad_output has shape ", grad_output.shape_str(),
           " but the attention's output has shape ", shape_str(shape));
  CF_CHECK(grad_output.is_contiguous(), ValueError, op, ": grad_output must be C-contiguous");
  if (output) {
    expect_float(*output, "output");
    CF_CHECK(shape_of(*output) == shape, ValueError, op, ": output has shape ", output->shape_str(),
             " but the attention's output has shape ", shape_str(shape));
    CF_CHECK(output->is_contiguous(), ValueError, op, ": output must be C-contiguous");
  }
  if (lse) expect_lse(*lse, q, op);
  expect_out(dq, shape_of(q), op);
  expect_out(dk, shape_of(k), op);
  expect_out(dv, shape_of(v), op);
  for (const TensorView* t : {&dq, &dk, &dv}) CF_CHECK(t->is_contiguous(), ValueError, op, ": gradients must be C-contiguous");
  cpu_only(common_device({{"grad_output", &grad_output}, {"query", &q}, {"key", &k}, {"value", &v},
                          {"output", opt(output)}, {"lse", opt(lse)}, {"attn_mask", opt(mask)}, {"dq", &dq}}),
           "attention's backward");
  // Without the forward's output and log-sum-exp, run the forward for them.
  std::vector<float> o_buf, lse_buf;
  const float* o = output ? output->ptr<float>() : nullptr;
  const float* l = lse ? lse->ptr<float>() : nullptr;
  if (!output || !lse) {
    Shape lshape = shape_of(q);
    lshape.pop_back();
    TensorView ov(nullptr, DType::f32, static_cast<int>(shape.size()), shape.data());
    TensorView lv(nullptr, DType::f32, static_cast<int>(lshape.size()), lshape.data());
    o_buf.resize(static_cast<size_t>(ov.numel()));
    lse_buf.resize(static_cast<size_t>(lv.numel()));
    ov.data = o_buf.data();
    lv.data = lse_buf.data();
    scaled_dot_product_attention(q, k, v, mask, is_causal, scale, ov, lv, dropout);
    if (!output) o = o_buf.data();
    l = lse_buf.data();
  }
  cpu::AttentionBackwardArgs g;
  cpu::AttentionArgs& a = g.f;
  const bool batched = q.ndim == 4;
  a.B = batched ? q.shape[0] : 1;
  a.H = q.size(-3); a.Sq = q.size(-2); a.Sk = k.size(-2); a.D = q.size(-1); a.Dv = v.size(-1);
  a.q = q.ptr<float>(); a.q_sb = batched ? q.stride(0) : 0; a.q_sh = q.stride(-3); a.q_ss = q.stride(-2);
  a.k = k.ptr<float>(); a.k_sb = batched ? k.stride(0) : 0; a.k_sh = k.stride(-3); a.k_ss = k.stride(-2);
  a.v = v.ptr<float>(); a.v_sb = batched ? v.stride(0) : 0; a.v_sh = v.stride(-3); a.v_ss = v.stride(-2);
  if (mask) a.mask = broadcast_mask(*mask, a.B, a.H, a.Sq, a.Sk, "attn_mask", false);
  a.causal = is_causal;
  a.scale = scale ? *scale : (a.D > 0 ? 1.0f / std::sqrt(static_cast<float>(a.D)) : 1.0f);
  check_attention_dropout(dropout, Device{});
  a.dropout = dropout;
  g.o = o;
  g.lse = l;
  g.dout = grad_output.ptr<float>();
  g.dq = dq.ptr<float>();
  g.dk = dk.ptr<float>();
  g.dv = dv.ptr<float>();
  kernels().attention_backward(g);
}

}  // namespace cf::ops

// torch.nn.TransformerDecoderLayer's forward as one op, for the encoder-decoder's generation what
// encoder_layer.cpp is for GPT-2: one call per layer and step instead of a dozen, the self-attention's
// keys and values appended to the caller's cache, the cross-attention's projected from memory once
// (into the caller's cache) and reused at every later step. Written once for both devices over
// ops/backend.h.
//
//   post-LN: x1 = LN1(x + SA(x));  x2 = LN2(x1 + CA(x1, memory));  out = LN3(x2 + FFN(x2))
//   pre-LN:  x1 = x + SA(LN1(x));  x2 = x1 + CA(LN2(x1), memory);  out = x2 + FFN(LN3(x2))
#include <cmath>

#include "ops/common.h"
#include "ops/backend.h"

namespace cf::ops {
namespace {

Device decoder_device(const TensorView& x, const OptionalView& memory, const DecoderLayerWeights& w,
                      const OptionalView& tgt_mask, const OptionalView& tgt_kpm, const OptionalView& memory_mask,
                      const OptionalView& memory_kpm, const KVCacheRef* sc, const KVCacheRef* cc) {
  return common_device({{"x", &x}, {"memory", opt(memory)}, {"self_in_weight", w.self_in.array},
                        {"self_out_weight", w.self_out.array}, {"cross_in_weight", w.cross_in.array},
                        {"cross_out_weight", w.cross_out.array}, {"linear1_weight", w.linear1.array},
                        {"linear2_weight", w.linear2.array}, {"self_in_bias", opt(w.self_in_bias)},
                        {"self_out_bias", opt(w.self_out_bias)}, {"cross_in_bias", opt(w.cross_in_bias)},
                        {"cross_out_bias", opt(w.cross_out_bias)}, {"linear1_bias", opt(w.linear1_bias)},
                        {"linear2_bias", opt(w.linear2_bias)}, {"norm1_weight", opt(w.norm1_weight)},
                        {"norm1_bias", opt(w.norm1_bias)}, {"norm2_weight", opt(w.norm2_weight)},
                        {"norm2_bias", opt(w.norm2_bias)}, {"norm3_weight", opt(w.norm3_weight)},
                        {"norm3_bias", opt(w.norm3_bias)}, {"tgt_mask", opt(tgt_mask)},
                        {"tgt_key_padding_mask", opt(tgt_kpm)}, {"memory_mask", opt(memory_mask)},
                        {"memory_key_padding_mask", opt(memory_kpm)}, {"k_cache", sc ? &sc->k : nullptr},
                        {"v_cache", sc ? &sc->v : nullptr}, {"memory_k", cc ? &cc->k : nullptr},
                        {"memory_v", cc ? &cc->v : nullptr}});
}

void expect_decoder_dtypes(const TensorView& x, const OptionalView& memory, const DecoderLayerWeights& w,
                           const TensorView& out, const KVCacheRef* sc, const KVCacheRef* cc) {
  for (const auto& [ref, name] : {std::pair{&w.self_in, "self_in_weight"}, std::pair{&w.self_out, "self_out_weight"},
                                  std::pair{&w.cross_in, "cross_in_weight"}, std::pair{&w.cross_out, "cross_out_weight"},
                                  std::pair{&w.linear1, "linear1_weight"}, std::pair{&w.linear2, "linear2_weight"}})
    expect_same_dtype({{name, &gpu_weight(*ref, name)}}, x.dtype);
  expect_same_dtype({{"memory", opt(memory)}, {"self_in_bias", opt(w.self_in_bias)},
                     {"self_out_bias", opt(w.self_out_bias)}, {"cross_in_bias", opt(w.cross_in_bias)},
                     {"cross_out_bias", opt(w.cross_out_bias)}, {"linear1_bias", opt(w.linear1_bias)},
                     {"linear2_bias", opt(w.linear2_bias)}, {"norm1_weight", opt(w.norm1_weight)},
                     {"norm1_bias", opt(w.norm1_bias)}, {"norm2_weight", opt(w.norm2_weight)},
                     {"norm2_bias", opt(w.norm2_bias)}, {"norm3_weight", opt(w.norm3_weight)},
                     {"norm3_bias", opt(w.norm3_bias)}, {"out", &out}, {"k_cache", sc ? &sc->k : nullptr},
                     {"v_cache", sc ? &sc->v : nullptr}, {"memory_k", cc ? &cc->k : nullptr},
                     {"memory_v", cc ? &cc->v : nullptr}}, x.dtype);
}

// The keys' count the cross-attention sees: the cached ones, or memory's rows.
int64_t memory_len(const OptionalView& memory, const KVCacheRef* cc) {
  if (cc && cc->length > 0) return cc->length;
  return memory ? memory->shape[1] : 0;
}

// Attention over keys/values laid out (B, H, capacity, Dh) in a cache.
void read_cache(AttentionPlan& at, const KVCacheRef& c, int64_t H, int64_t Dh) {
  const int64_t cap = c.k.shape[2];
  at.k = c.k.data; at.v = c.v.data;
  at.k_sb = at.v_sb = H * cap * Dh;
  at.k_sh = at.v_sh = cap * Dh;
  at.k_ss = at.v_ss = Dh;
}

}  // namespace

Shape transformer_decoder_layer_shape(const TensorView& x, const OptionalView& memory, const DecoderLayerWeights& w,
                                      int64_t num_heads, const OptionalView& tgt_mask,
                                      const OptionalView& tgt_key_padding_mask, const OptionalView& memory_mask,
                                      const OptionalView& memory_key_padding_mask, const KVCacheRef* self_cache,
                                      const KVCacheRef* cross_cache) {
  decoder_device(x, memory, w, tgt_mask, tgt_key_padding_mask, memory_mask, memory_key_padding_mask, self_cache,
                 cross_cache);  // ValueError when they differ
  expect_float(x, "x");
  expect_ndim(x, 3, "x");
  const int64_t B = x.shape[0], T = x.shape[1], E = x.shape[2], F = w.linear1.rows();
  expect_num_heads(E, num_heads, "x's last axis");
  const int64_t Dh = E / num_heads;
  expect_matrix(w.self_in, 3 * E, E, "self_in_weight");
  expect_matrix(w.self_out, E, E, "self_out_weight");
  expect_matrix(w.cross_in, 3 * E, E, "cross_in_weight");
  expect_matrix(w.cross_out, E, E, "cross_out_weight");
  expect_matrix(w.linear1, F, E, "linear1_weight");
  expect_matrix(w.linear2, E, F, "linear2_weight");
  expect_vector(w.self_in_bias, 3 * E, "self_in_bias", "3 * x's last axis");
  expect_vector(w.self_out_bias, E, "self_out_bias", "x's last axis");
  expect_vector(w.cross_in_bias, 3 * E, "cross_in_bias", "3 * x's last axis");
  expect_vector(w.cross_out_bias, E, "cross_out_bias", "x's last axis");
  expect_vector(w.linear1_bias, F, "linear1_bias", "linear1_weight.shape[0]");
  expect_vector(w.linear2_bias, E, "linear2_bias", "x's last axis");
  expect_vector(w.norm1_weight, E, "norm1_weight", "x's last axis");
  expect_vector(w.norm1_bias, E, "norm1_bias", "x's last axis");
  expect_vector(w.norm2_weight, E, "norm2_weight", "x's last axis");
  expect_vector(w.norm2_bias, E, "norm2_bias", "x's last axis");
  expect_vector(w.norm3_weight, E, "norm3_weight", "x's last axis");
  expect_vector(w.norm3_bias, E, "norm3_bias", "x's last axis");
  int64_t past = 0;
  if (self_cache) {
    check_kv_cache(*self_cache, B, num_heads, Dh, T, "k_cache", "v_cache", "cache_length");
    past = self_cache->length;
  }
  const bool cached = cross_cache && cross_cache->length > 0;
  if (cached) {
    check_kv_cache(*cross_cache, B, num_heads, Dh, 0, "memory_k", "memory_v", "memory_length");
  } else {
    CF_CHECK(memory, ValueError, "memory is needed unless memory_k/memory_v hold its keys and values (memory_length > 0)");
    expect_float(*memory, "memory");
    CF_CHECK(memory->ndim == 3 && memory->shape[0] == B && memory->shape[2] == E, ValueError, "memory must be (", B,
             ", Sm, ", E, ") for x ", x.shape_str(), ", got ", memory->shape_str());
    if (cross_cache)
      check_kv_cache(*cross_cache, B, num_heads, Dh, memory->shape[1], "memory_k", "memory_v", "memory_length");
  }
  check_mha_masks(tgt_mask, tgt_key_padding_mask, B, num_heads, T, past + T, "tgt_mask", "tgt_key_padding_mask");
  check_mha_masks(memory_mask, memory_key_padding_mask, B, num_heads, T, memory_len(memory, cross_cache),
                  "memory_mask", "memory_key_padding_mask");
  return shape_of(x);
}

void transformer_decoder_layer(const TensorView& x, const OptionalView& memory, const DecoderLayerWeights& w,
                               const DecoderLayerOptions& opt, const OptionalView& tgt_mask,
                               const OptionalView& tgt_key_padding_mask, const OptionalView& memory_mask,
                               const OptionalView& memory_key_padding_mask, const TensorView& out,
                               const KVCacheRef* self_cache, const KVCacheRef* cross_cache) {
  expect_out(out,
             transformer_decoder_layer_shape(x, memory, w, opt.num_heads, tgt_mask, tgt_key_padding_mask, memory_mask,
                                             memory_key_padding_mask, self_cache, cross_cache),
             "transformer_decoder_layer");
  CF_CHECK(opt.eps1 >= 0.0f && opt.eps2 >= 0.0f && opt.eps3 >= 0.0f, ValueError, "eps must be >= 0, got ", opt.eps1,
           ", ", opt.eps2, " and ", opt.eps3);
  const int64_t B = x.shape[0], T = x.shape[1], E = x.shape[2], F = w.linear1.rows();
  const int64_t H = opt.num_heads, Dh = E / H;
  if (B * T == 0 || E == 0) return;
  const int64_t BT = B * T, Sm = memory_len(memory, cross_cache);
  const bool project_memory = !(cross_cache && cross_cache->length > 0);
  const Device dev = decoder_device(x, memory, w, tgt_mask, tgt_key_padding_mask, memory_mask,
                                    memory_key_padding_mask, self_cache, cross_cache);
  if (on_gpu(dev)) expect_decoder_dtypes(x, memory, w, out, self_cache, cross_cache);
  Backend be(dev, x.dtype);
  const int64_t kv_rows = project_memory ? B * Sm : 0;
  void* const qkv = be.scratch(BT * (8 * E + F) + kv_rows * 2 * E);  // (BT, 3E)
  void* const ctx = be.at(qkv, BT * 3 * E);  // (BT, E)
  void* const a = be.at(ctx, BT * E);        // (BT, E)
  void* const x1 = be.at(a, BT * E);         // (BT, E) after self-attention
  void* const x2 = be.at(x1, BT * E);        // (BT, E) after cross-attention
  void* const h = be.at(x2, BT * E);         // (BT, F)
  void* const kv = be.at(h, BT * F);         // (B*Sm, 2E) memory's keys and values, when projected here
  const void* const xin = x.data;
  void* const y = out.data;  // may be x: x is last read as the self-attention's residual
  const float scale = 1.0f / std::sqrt(static_cast<float>(Dh));

  // self-attention
  if (opt.norm_first) {
    be.norm(xin, BT, E, w.norm1_weight, w.norm1_bias, opt.eps1, a);
    be.gemm(a, BT, E, w.self_in, w.self_in_bias, 0, 3 * E, qkv);
  } else {
    be.gemm(xin, BT, E, w.self_in, w.self_in_bias, 0, 3 * E, qkv);
  }
  AttentionPlan at;
  at.B = B; at.H = H; at.Sq = at.Sk = T; at.D = at.Dv = Dh;
  at.q = qkv; at.k = be.at(qkv, E); at.v = be.at(qkv, 2 * E);
  at.q_ss = at.k_ss = at.v_ss = 3 * E;
  at.q_sh = at.k_sh = at.v_sh = at.o_sh = Dh;
  at.q_sb = at.k_sb = at.v_sb = T * 3 * E;
  at.out = ctx; at.o_ss = E; at.o_sb = T * E;
  at.causal = opt.tgt_is_causal;
  at.scale = scale;
  if (self_cache) {
    be.kv_append(be.at(qkv, E), be.at(qkv, 2 * E), 3 * E, *self_cache, B, T, H, Dh, self_cache->length);
    at.Sk = self_cache->length + T;
    read_cache(at, *self_cache, H, Dh);
  }
  set_mha_masks(at, tgt_mask, tgt_key_padding_mask);
  be.attention(at);
  be.gemm(ctx, BT, E, w.self_out, w.self_out_bias, 0, E, a);
  const void* cross_in;  // the cross-attention's query input
  if (opt.norm_first) {
    be.norm(a, BT, E, w.norm2_weight, w.norm2_bias, opt.eps2, a, xin, x1);  // x1 = a + x; a = LN2(x1)
    cross_in = a;
  } else {
    be.norm(a, BT, E, w.norm1_weight, w.norm1_bias, opt.eps1, x1, xin);  // x1 = LN1(a + x)
    cross_in = x1;
  }

  // cross-attention: queries from the target, keys and values from memory (projected once)
  be.gemm(cross_in, BT, E, w.cross_in, w.cross_in_bias, 0, E, qkv);  // (BT, E) into qkv's space
  AttentionPlan ca;
  ca.B = B; ca.H = H; ca.Sq = T; ca.Sk = Sm; ca.D = ca.Dv = Dh;
  ca.q = qkv; ca.q_ss = E; ca.q_sh = Dh; ca.q_sb = T * E;
  ca.out = ctx; ca.o_ss = E; ca.o_sh = Dh; ca.o_sb = T * E;
  ca.scale = scale;
  ca.causal = opt.memory_is_causal;
  if (project_memory) {
    be.gemm(memory->data, B * Sm, E, w.cross_in, w.cross_in_bias, E, 2 * E, kv);  // K | V per row
    if (cross_cache) {
      be.kv_append(kv, be.at(kv, E), 2 * E, *cross_cache, B, Sm, H, Dh, 0);
      read_cache(ca, *cross_cache, H, Dh);
    } else {
      ca.k = kv; ca.v = be.at(kv, E);
      ca.k_ss = ca.v_ss = 2 * E; ca.k_sh = ca.v_sh = Dh; ca.k_sb = ca.v_sb = Sm * 2 * E;
    }
  } else {
    read_cache(ca, *cross_cache, H, Dh);
  }
  set_mha_masks(ca, memory_mask, memory_key_padding_mask);
  be.attention(ca);
  be.gemm(ctx, BT, E, w.cross_out, w.cross_out_bias, 0, E, a);

  // feed-forward
  if (opt.norm_first) {
    be.norm(a, BT, E, w.norm3_weight, w.norm3_bias, opt.eps3, a, x1, x2);  // x2 = a + x1; a = LN3(x2)
    be.gemm(a, BT, E, w.linear1, w.linear1_bias, 0, F, h, opt.act);
    be.gemm(h, BT, F, w.linear2, w.linear2_bias, 0, E, y, Activation::none, x2);
  } else {
    be.norm(a, BT, E, w.norm2_weight, w.norm2_bias, opt.eps2, x2, x1);  // x2 = LN2(a + x1)
    be.gemm(x2, BT, E, w.linear1, w.linear1_bias, 0, F, h, opt.act);
    be.gemm(h, BT, F, w.linear2, w.linear2_bias, 0, E, a);
    be.norm(a, BT, E, w.norm3_weight, w.norm3_bias, opt.eps3, y, x2);
  }
}

}  // namespace cf::ops

// torch.nn.TransformerEncoderLayer's forward as one op, the way torch's fast path
// (_transformer_encoder_layer_fwd) and CTranslate2's encoder layer run it: the whole layer is one
// call, so a short input (one 32-token sentence: 5 ops per layer of 20-200 us each) pays for one
// argument conversion and one GIL release instead of five. A residual add rides in the LayerNorm
// that follows it (its first sweep), not in the GEMM before: MiniLM measured 1.5-2% faster so, one
// sentence and a padded batch alike, than with the add in the GEMM's epilogue (bench/RESULTS.md).
// The activations live in a workspace kept per calling thread, reused from layer to layer. The layer is
// written once for both devices over ops/backend.h.
//
//   post-LN: x1 = LN1(x + SA(x));        out = LN2(x1 + FFN(x1))
//   pre-LN:  x1 = x + SA(LN1(x));        out = x1 + FFN(LN2(x1))
#include <cmath>
#include <cstring>
#include <utility>

#include "ops/common.h"
#include "ops/backend.h"

namespace cf::ops {
namespace {

// Sequence boundaries: int32 or int64 (n + 1,), 0 first, T last, non-decreasing.
int64_t seq_at(const TensorView& cu, int64_t i) {
  const int64_t at = i * cu.strides[0];
  return cu.dtype == DType::i32 ? cu.ptr<const int32_t>()[at] : cu.ptr<const int64_t>()[at];
}



// Every argument's device but cu_seqlens' (host metadata, read by the host on either device).
Device layer_device(const TensorView& x, const EncoderLayerWeights& w, const OptionalView& attn_mask,
                    const OptionalView& key_padding_mask, const KVCacheRef* cache) {
  return common_device({{"x", &x}, {"in_weight", w.in_weight.array}, {"out_weight", w.out_weight.array},
                        {"linear1_weight", w.linear1_weight.array}, {"linear2_weight", w.linear2_weight.array},
                        {"in_bias", ops::opt(w.in_bias)}, {"out_bias", ops::opt(w.out_bias)},
                        {"linear1_bias", ops::opt(w.linear1_bias)}, {"linear2_bias", ops::opt(w.linear2_bias)},
                        {"norm1_weight", ops::opt(w.norm1_weight)}, {"norm1_bias", ops::opt(w.norm1_bias)},
                        {"norm2_weight", ops::opt(w.norm2_weight)}, {"norm2_bias", ops::opt(w.norm2_bias)},
                        {"attn_mask", opt(attn_mask)}, {"key_padding_mask", opt(key_padding_mask)},
                        {"k_cache", cache ? &cache->k : nullptr}, {"v_cache", cache ? &cache->v : nullptr}});
}

// On a GPU the float arguments share the layer's dtype; a PackedWeight is CPU memory.
void expect_layer_dtypes(const TensorView& x, const EncoderLayerWeights& w, const TensorView& out,
                         const KVCacheRef* cache) {
  for (const auto& [ref, name] : {std::pair{&w.in_weight, "in_weight"}, std::pair{&w.out_weight, "out_weight"},
                                  std::pair{&w.linear1_weight, "linear1_weight"},
                                  std::pair{&w.linear2_weight, "linear2_weight"}})
    expect_same_dtype({{name, &gpu_weight(*ref, name)}}, x.dtype);
  expect_same_dtype({{"in_bias", ops::opt(w.in_bias)}, {"out_bias", ops::opt(w.out_bias)},
                     {"linear1_bias", ops::opt(w.linear1_bias)}, {"linear2_bias", ops::opt(w.linear2_bias)},
                     {"norm1_weight", ops::opt(w.norm1_weight)}, {"norm1_bias", ops::opt(w.norm1_bias)},
                     {"norm2_weight", ops::opt(w.norm2_weight)}, {"norm2_bias", ops::opt(w.norm2_bias)},
                     {"out", &out}, {"k_cache", cache ? &cache->k : nullptr},
                     {"v_cache", cache ? &cache->v : nullptr}}, x.dtype);
}

}  // namespace

Shape transformer_encoder_layer_shape(const TensorView& x, const EncoderLayerWeights& w, int64_t num_heads,
                                      const OptionalView& attn_mask, const OptionalView& key_padding_mask,
                                      const OptionalView& cu_seqlens, const KVCacheRef* cache) {
  layer_device(x, w, attn_mask, key_padding_mask, cache);  // ValueError when they differ
  expect_float(x, "x");
  CF_CHECK(x.ndim == (cu_seqlens ? 2 : 3), ValueError, "x must be ",
           cu_seqlens ? "(T, E) with cu_seqlens" : "(B, S, E)", ", got shape ", x.shape_str());
  const int64_t E = x.size(-1), F = w.linear1_weight.rows();
  expect_num_heads(E, num_heads, "x's last axis");
  expect_matrix(w.in_weight, 3 * E, E, "in_weight");
  expect_matrix(w.out_weight, E, E, "out_weight");
  expect_matrix(w.linear1_weight, F, E, "linear1_weight");
  expect_matrix(w.linear2_weight, E, F, "linear2_weight");
  expect_vector(w.in_bias, 3 * E, "in_bias", "3 * x's last axis");
  expect_vector(w.out_bias, E, "out_bias", "x's last axis");
  expect_vector(w.linear1_bias, F, "linear1_bias", "linear1_weight.shape[0]");
  expect_vector(w.linear2_bias, E, "linear2_bias", "x's last axis");
  expect_vector(w.norm1_weight, E, "norm1_weight", "x's last axis");
  expect_vector(w.norm1_bias, E, "norm1_bias", "x's last axis");
  expect_vector(w.norm2_weight, E, "norm2_weight", "x's last axis");
  expect_vector(w.norm2_bias, E, "norm2_bias", "x's last axis");
  CF_CHECK(!(cache && cu_seqlens), ValueError, "a KV cache cannot be combined with cu_seqlens");
  if (cu_seqlens) {
    const TensorView& cu = *cu_seqlens;
    CF_CHECK(!attn_mask && !key_padding_mask, ValueError,
             "attn_mask and key_padding_mask cannot be combined with cu_seqlens (each sequence attends to itself)");
    expect_cpu(cu, "cu_seqlens");
    CF_CHECK(cu.dtype == DType::i32 || cu.dtype == DType::i64, TypeError, "cu_seqlens must be int32 or int64, got ",
             dtype_name(cu.dtype));
    CF_CHECK(cu.ndim == 1 && cu.shape[0] >= 1, ValueError, "cu_seqlens must be 1-D with at least one entry, got shape ",
             cu.shape_str());
    const int64_t n = cu.shape[0], T = x.shape[0];
    CF_CHECK(seq_at(cu, 0) == 0 && seq_at(cu, n - 1) == T, ValueError, "cu_seqlens must start at 0 and end at ", T,
             " (x's rows), got ", seq_at(cu, 0), " ... ", seq_at(cu, n - 1));
    for (int64_t i = 1; i < n; ++i)
      CF_CHECK(seq_at(cu, i) >= seq_at(cu, i - 1), ValueError, "cu_seqlens must be non-decreasing, got ",
               seq_at(cu, i - 1), " then ", seq_at(cu, i), " at index ", i);
  } else {
    const int64_t B = x.shape[0], S = x.shape[1];
    int64_t past = 0;
    if (cache) {
      check_kv_cache(*cache, B, num_heads, E / num_heads, S, "k_cache", "v_cache", "cache_length");
      past = cache->length;
    }
    check_mha_masks(attn_mask, key_padding_mask, B, num_heads, S, past + S);
  }
  return shape_of(x);
}

void transformer_encoder_layer(const TensorView& x, const EncoderLayerWeights& w, const EncoderLayerOptions& opt,
                               const OptionalView& attn_mask, const OptionalView& key_padding_mask,
                               const OptionalView& cu_seqlens, const TensorView& out, const KVCacheRef* cache) {
  expect_out(out,
             transformer_encoder_layer_shape(x, w, opt.num_heads, attn_mask, key_padding_mask, cu_seqlens, cache),
             "transformer_encoder_layer");
  CF_CHECK(opt.eps1 >= 0.0f && opt.eps2 >= 0.0f, ValueError, "eps must be >= 0, got ", opt.eps1, " and ", opt.eps2);
  const int64_t E = x.size(-1), F = w.linear1_weight.rows(), T = x.numel() / (E ? E : 1);
  const int64_t H = opt.num_heads, Dh = E / H;
  if (T == 0 || E == 0) return;
  const Device dev = layer_device(x, w, attn_mask, key_padding_mask, cache);
  if (on_gpu(dev)) expect_layer_dtypes(x, w, out, cache);
  Backend be(dev, x.dtype);
  // the activations: per calling thread on the CPU, kept from call to call (layer after layer: a padded
  // batch of 32 x 100 tokens needs ~50 MB, whose page faults would cost ~5% of a layer each time)
  void* const qkv = be.scratch(T * (6 * E + F));  // (T, 3E)
  void* const ctx = be.at(qkv, T * 3 * E);        // (T, E) attention's merged heads
  void* const a = be.at(ctx, T * E);              // (T, E)
  void* const x1 = be.at(a, T * E);               // (T, E) the residual stream after attention
  void* const h = be.at(x1, T * E);               // (T, F)
  const void* const xin = x.data;
  void* const y = out.data;  // may be x: x is last read by the norm after the out projection

  if (opt.norm_first) {
    be.norm(xin, T, E, w.norm1_weight, w.norm1_bias, opt.eps1, a);
    be.gemm(a, T, E, w.in_weight, w.in_bias, 0, 3 * E, qkv);
  } else {
    be.gemm(xin, T, E, w.in_weight, w.in_bias, 0, 3 * E, qkv);
  }

  AttentionPlan at;
  at.H = H; at.D = at.Dv = Dh;
  at.q_ss = at.k_ss = at.v_ss = 3 * E;
  at.q_sh = at.k_sh = at.v_sh = at.o_sh = Dh;
  at.o_ss = E;
  at.causal = opt.is_causal;
  at.scale = opt.scale ? *opt.scale : 1.0f / std::sqrt(static_cast<float>(Dh));
  if (cu_seqlens) {  // one attention per sequence, on its rows
    for (int64_t i = 0; i + 1 < cu_seqlens->shape[0]; ++i) {
      const int64_t r0 = seq_at(*cu_seqlens, i), len = seq_at(*cu_seqlens, i + 1) - r0;
      if (len == 0) continue;
      at.B = 1; at.Sq = at.Sk = len;
      at.q = be.at(qkv, r0 * 3 * E); at.k = be.at(at.q, E); at.v = be.at(at.q, 2 * E);
      at.q_sb = at.k_sb = at.v_sb = len * 3 * E;
      at.out = be.at(ctx, r0 * E); at.o_sb = len * E;
      be.attention(at);
    }
  } else {
    const int64_t B = x.shape[0], S = x.shape[1];
    at.B = B; at.Sq = at.Sk = S;
    at.q = qkv; at.k = be.at(qkv, E); at.v = be.at(qkv, 2 * E);
    at.q_sb = at.k_sb = at.v_sb = S * 3 * E;
    at.out = ctx; at.o_sb = S * E;
    if (cache) {  // the new keys and values join the cache; attention reads them all from there
      const int64_t cap = cache->k.shape[2], past = cache->length;
      be.kv_append(be.at(qkv, E), be.at(qkv, 2 * E), 3 * E, *cache, B, S, H, Dh, past);
      at.Sk = past + S;
      at.k = cache->k.data; at.v = cache->v.data;
      at.k_sb = at.v_sb = H * cap * Dh;
      at.k_sh = at.v_sh = cap * Dh;
      at.k_ss = at.v_ss = Dh;
    }
    set_mha_masks(at, attn_mask, key_padding_mask);
    be.attention(at);
  }

  be.gemm(ctx, T, E, w.out_weight, w.out_bias, 0, E, a);
  if (opt.norm_first) {
    be.norm(a, T, E, w.norm2_weight, w.norm2_bias, opt.eps2, a, xin, x1);  // x1 = a + x; a = LN2(x1)
    be.gemm(a, T, E, w.linear1_weight, w.linear1_bias, 0, F, h, opt.act);
    be.gemm(h, T, F, w.linear2_weight, w.linear2_bias, 0, E, y, Activation::none, x1);
  } else {
    be.norm(a, T, E, w.norm1_weight, w.norm1_bias, opt.eps1, x1, xin);
    be.gemm(x1, T, E, w.linear1_weight, w.linear1_bias, 0, F, h, opt.act);
    be.gemm(h, T, F, w.linear2_weight, w.linear2_bias, 0, E, a);
    be.norm(a, T, E, w.norm2_weight, w.norm2_bias, opt.eps2, y, x1);
  }
}

}  // namespace cf::ops

// The C++ API of coreformer: one function per op. Each checks shapes and dtypes once (typed
// errors naming the argument and the shapes), then dispatches on device and ISA to a kernel.
// `*_shape` functions validate the arguments and return the output's shape, so a caller (the
// Python binding) can allocate the output before calling the op.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "cpu/kernels.h"

namespace cf::ops {

using Shape = std::vector<int64_t>;
using cpu::Activation;

Activation activation_from_name(const std::string& name);  // "none"|"relu"|"gelu"|"gelu_tanh"

// A Linear weight (out, in) packed once, ahead of the calls that use it, into the GEMM's panel
// layout (cpu::GemmArgs::wp) -- so no call repacks it -- in float32, bfloat16 (half the bytes to
// stream per token when decoding) or int8 (a quarter: symmetric, one float32 scale per output row,
// max|row| / 127). Products and sums stay float32 whatever the storage. Immutable once made, so any
// number of threads may use one at once. The layout belongs to the ISA it was packed for
// (`nr`); if the active ISA changes, ops unpack it to a temporary and stay correct, only slower.
struct PackedWeight {
  int64_t rows = 0, cols = 0;  // (out, in)
  int nr = 0;                  // panel width
  DType dtype = DType::f32;    // f32, bf16 or i8
  std::shared_ptr<void> data;  // shared by row slices
  int64_t panel0 = 0;          // this weight's first panel in data
  int64_t scale_offset = 0;    // int8: bytes from data to the per-row scales (float32, padded like the panels)
  int64_t nbytes() const;
  const void* ptr() const;     // the first panel
  const float* scales() const; // int8: the first row's scale, else nullptr
};
// weight (out, in), or with `transposed` (in, out) -- GPT-2's Conv1D layout, packed without a
// transposed copy. Any strides; dtype f32, bf16 (rounds to nearest even) or i8 (rounds to nearest;
// the weight must be finite).
PackedWeight pack_weight(const TensorView& weight, DType dtype, bool transposed);
// The weight back as float32 (rows, cols): bf16 widened exactly, int8 times its row's scale.
void unpack_weight(const PackedWeight& w, const TensorView& out);
// Rows [start, stop): a view sharing the memory when start begins a panel, else a packed copy.
PackedWeight slice_rows(const PackedWeight& w, int64_t start, int64_t stop);
// Serialising (pickle): w's own panels as stored (ceil(rows / nr) * nr * cols elements) and, for int8,
// its rows' scales; packed_from_bytes makes the same weight from them, exactly (ValueError when the
// sizes do not fit the shape: a corrupt or foreign state).
int64_t packed_panel_bytes(const PackedWeight& w);
PackedWeight packed_from_bytes(int64_t rows, int64_t cols, int nr, DType dtype, const void* panels, int64_t panel_bytes,
                               const void* scales, int64_t num_scales);

// A Linear weight as ops take it: a float32 C-contiguous (out, in) array or a PackedWeight.
struct WeightRef {
  const TensorView* array = nullptr;
  const PackedWeight* packed = nullptr;
  WeightRef(const TensorView& a) : array(&a) {}    // NOLINT: implicit on purpose
  WeightRef(const PackedWeight& p) : packed(&p) {}  // NOLINT
  int64_t rows() const;
  int64_t cols() const;
  std::string shape_str() const;
};

// y (..., out) = act(x (..., in) @ weight (out, in)^T + bias (out,)) + residual (..., out)
Shape linear_shape(const TensorView& x, const WeightRef& weight, const OptionalView& bias,
                   const OptionalView& residual);
void linear(const TensorView& x, const WeightRef& weight, const OptionalView& bias, Activation act,
            const OptionalView& residual, const TensorView& out);

// q (B,H,Sq,D) or (H,Sq,D); k (..,Sk,D); v (..,Sk,Dv); attn_mask bool (True = attend) or float
// (added), broadcastable to (B,H,Sq,Sk). scale defaults to 1/sqrt(D).
Shape attention_shape(const TensorView& q, const TensorView& k, const TensorView& v, const OptionalView& mask);
// lse: optional (B,H,Sq) (or (H,Sq)) float32, C-contiguous, on the CPU: each query row's log-sum-exp of its
// scaled, masked scores (-inf for a row with nothing to attend), what the backward recomputes P from.
// dropout (training, CPU only): on the probabilities, from a counter-based stream (cpu::AttentionDropout).
void scaled_dot_product_attention(const TensorView& q, const TensorView& k, const TensorView& v,
                                  const OptionalView& mask, bool is_causal, std::optional<float> scale,
                                  const TensorView& out, const OptionalView& lse = OptionalView(),
                                  const cpu::AttentionDropout& dropout = {});
// Its backward: dq, dk, dv (the shapes of q, k, v; C-contiguous) from grad_output (out's shape), the
// forward's output (its inputs are recomputed into it when absent) and optionally its lse. CPU only.
void scaled_dot_product_attention_backward(const TensorView& grad_output, const TensorView& q, const TensorView& k,
                                           const TensorView& v, const OptionalView& output, const OptionalView& lse,
                                           const OptionalView& mask, bool is_causal, std::optional<float> scale,
                                           const TensorView& dq, const TensorView& dk, const TensorView& dv,
                                           const cpu::AttentionDropout& dropout = {});

// torch.nn.MultiheadAttention(batch_first=True) forward, inference: query (B,Sq,E), key (B,Sk,E),
// value (B,Sk,E); in_weight (3E,E), in_bias (3E,), out_weight (E,E), out_bias (E,);
// attn_mask (Sq,Sk) or (B*num_heads,Sq,Sk), bool True = may NOT attend (torch's convention) or
// float added; key_padding_mask (B,Sk), bool True = padding, or float added.
Shape multi_head_attention_shape(const TensorView& query, const TensorView& key, const TensorView& value,
                                 int64_t num_heads, const WeightRef& in_weight, const OptionalView& in_bias,
                                 const WeightRef& out_weight, const OptionalView& out_bias,
                                 const OptionalView& attn_mask, const OptionalView& key_padding_mask);
void multi_head_attention(const TensorView& query, const TensorView& key, const TensorView& value,
                          int64_t num_heads, const WeightRef& in_weight, const OptionalView& in_bias,
                          const WeightRef& out_weight, const OptionalView& out_bias, const OptionalView& attn_mask,
                          const OptionalView& key_padding_mask, bool is_causal, const TensorView& out);

// The weights of one torch.nn.TransformerEncoderLayer: self_attn's packed in_proj (3E, E) and
// out_proj (E, E), linear1 (F, E), linear2 (E, F), norm1 and norm2 (E,); every bias and norm
// parameter optional.
struct EncoderLayerWeights {
  WeightRef in_weight, out_weight, linear1_weight, linear2_weight;
  OptionalView in_bias, out_bias, linear1_bias, linear2_bias, norm1_weight, norm1_bias, norm2_weight, norm2_bias;
  EncoderLayerWeights(const WeightRef& in_w, const WeightRef& out_w, const WeightRef& l1_w, const WeightRef& l2_w)
      : in_weight(in_w), out_weight(out_w), linear1_weight(l1_w), linear2_weight(l2_w) {}
};
struct EncoderLayerOptions {
  int64_t num_heads = 1;
  Activation act = Activation::relu;
  bool norm_first = false;  // pre-LN (GPT-2 style) instead of post-LN (Vaswani, BERT)
  float eps1 = 1e-5f, eps2 = 1e-5f;  // norm1's and norm2's
  bool is_causal = false;
  std::optional<float> scale;  // of the attention scores; default 1/sqrt(E / num_heads)
};
// A self-attention layer's KV cache: keys and values (B, H, capacity, Dh), float32 C-contiguous,
// positions [0, length) filled. The layer writes its S new keys and values at [length, length + S)
// and attends to all length + S (the caller then counts them in).
struct KVCacheRef {
  TensorView k, v;
  int64_t length = 0;
};
// torch.nn.TransformerEncoderLayer(batch_first=True).forward (inference) in one op, as torch's own
// fast path (_transformer_encoder_layer_fwd) runs it: x (B, S, E), or x (T, E) holding sequences
// one after another with cu_seqlens (int32/int64 (n+1,): sequence i is rows [cu[i], cu[i+1]); each
// attends within itself only -- a padded batch without its padding). attn_mask and key_padding_mask
// follow multi_head_attention, over the cache's positions too (not with cu_seqlens). With a
// cache (and is_causal) it is a decoder-only (GPT) block decoding S new positions. out has x's
// shape and may be x itself.
Shape transformer_encoder_layer_shape(const TensorView& x, const EncoderLayerWeights& w, int64_t num_heads,
                                      const OptionalView& attn_mask, const OptionalView& key_padding_mask,
                                      const OptionalView& cu_seqlens, const KVCacheRef* cache = nullptr);
void transformer_encoder_layer(const TensorView& x, const EncoderLayerWeights& w, const EncoderLayerOptions& opt,
                               const OptionalView& attn_mask, const OptionalView& key_padding_mask,
                               const OptionalView& cu_seqlens, const TensorView& out,
                               const KVCacheRef* cache = nullptr);

// The weights of one torch.nn.TransformerDecoderLayer: self_attn's packed in_proj (3E, E) and out_proj
// (E, E), multihead_attn's (cross-attention) the same, linear1 (F, E), linear2 (E, F), norm1..3 (E,);
// every bias and norm parameter optional.
struct DecoderLayerWeights {
  WeightRef self_in, self_out, cross_in, cross_out, linear1, linear2;
  OptionalView self_in_bias, self_out_bias, cross_in_bias, cross_out_bias, linear1_bias, linear2_bias;
  OptionalView norm1_weight, norm1_bias, norm2_weight, norm2_bias, norm3_weight, norm3_bias;
  DecoderLayerWeights(const WeightRef& si, const WeightRef& so, const WeightRef& ci, const WeightRef& co,
                      const WeightRef& l1, const WeightRef& l2)
      : self_in(si), self_out(so), cross_in(ci), cross_out(co), linear1(l1), linear2(l2) {}
};
struct DecoderLayerOptions {
  int64_t num_heads = 1;
  Activation act = Activation::relu;
  bool norm_first = false;
  float eps1 = 1e-5f, eps2 = 1e-5f, eps3 = 1e-5f;
  bool tgt_is_causal = false;
  bool memory_is_causal = false;  // bottom-right over memory's positions, as torch's flag means
};
// torch.nn.TransformerDecoderLayer(batch_first=True).forward (inference) in one op:
//   post-LN: x1 = LN1(x + SA(x)); x2 = LN2(x1 + CA(x1, memory)); out = LN3(x2 + FFN(x2))
//   pre-LN:  x1 = x + SA(LN1(x)); x2 = x1 + CA(LN2(x1), memory); out = x2 + FFN(LN3(x2))
// x (B, T, E), memory (B, Sm, E). tgt_mask/tgt_key_padding_mask and memory_mask/memory_key_padding_mask
// follow multi_head_attention (over the self cache's positions too); tgt_is_causal is bottom-right.
// self_cache: the self-attention's keys/values (as the encoder layer's KV cache). cross_cache: the
// cross-attention's keys/values of memory -- with length 0 the op projects memory and writes them at
// [0, Sm) (the caller then sets the length to Sm), with length > 0 it reads them and memory may be absent.
// out has x's shape and may be x itself.
Shape transformer_decoder_layer_shape(const TensorView& x, const OptionalView& memory, const DecoderLayerWeights& w,
                                      int64_t num_heads, const OptionalView& tgt_mask,
                                      const OptionalView& tgt_key_padding_mask, const OptionalView& memory_mask,
                                      const OptionalView& memory_key_padding_mask, const KVCacheRef* self_cache,
                                      const KVCacheRef* cross_cache);
void transformer_decoder_layer(const TensorView& x, const OptionalView& memory, const DecoderLayerWeights& w,
                               const DecoderLayerOptions& opt, const OptionalView& tgt_mask,
                               const OptionalView& tgt_key_padding_mask, const OptionalView& memory_mask,
                               const OptionalView& memory_key_padding_mask, const TensorView& out,
                               const KVCacheRef* self_cache, const KVCacheRef* cross_cache);

// query (B,Sq,Dq), keys (B,Sk,Dk), values (B,Sk,Dv), w_query (A,Dq), w_key (A,Dk), v (A,),
// mask bool (B,Sk) or (B,Sq,Sk), True = attend. out (B,Sq,Dv); weights (B,Sq,Sk) optional.
// The gradients of additive_attention: dquery, dkeys, dvalues, dw_query, dw_key, dv (each its input's shape).
void additive_attention_backward(const TensorView& grad_output, const TensorView& query, const TensorView& keys,
                                 const TensorView& values, const TensorView& w_query, const TensorView& w_key,
                                 const TensorView& v, const OptionalView& mask, const TensorView& dquery,
                                 const TensorView& dkeys, const TensorView& dvalues, const TensorView& dw_query,
                                 const TensorView& dw_key, const TensorView& dv);
Shape additive_attention_shape(const TensorView& query, const TensorView& keys, const TensorView& values,
                               const TensorView& w_query, const TensorView& w_key, const TensorView& v,
                               const OptionalView& mask);
void additive_attention(const TensorView& query, const TensorView& keys, const TensorView& values,
                        const TensorView& w_query, const TensorView& w_key, const TensorView& v,
                        const OptionalView& mask, const TensorView& out, const OptionalView& weights);

// with_sum: the caller also wants x + residual back (a pre-LN block's next residual), which needs a residual.
void layer_norm_check(const TensorView& x, const OptionalView& weight, const OptionalView& bias,
                      const OptionalView& residual, float eps, bool with_sum = false);
void layer_norm(const TensorView& x, const OptionalView& weight, const OptionalView& bias,
                const OptionalView& residual, float eps, const TensorView& out, const OptionalView& sum_out);

int softmax_axis(const TensorView& x, int64_t axis);  // normalised axis; IndexError when out of range
void softmax(const TensorView& x, int64_t axis, const TensorView& out);

void activation(const TensorView& x, Activation act, const TensorView& out);

// ---- backward (training) ----
// out = grad_output * act'(x), x the activation's input.
void activation_backward(const TensorView& x, const TensorView& grad_output, Activation act, const TensorView& out);
// linear's backward: for y = act(x @ weight.T + bias), with pre_activation the value before act (needed
// only with one): dx (x's shape), dw (weight's) and db (weight.shape[0]), new values (not accumulated).
void linear_backward(const TensorView& grad_output, const TensorView& x, const TensorView& weight,
                     const OptionalView& pre_activation, Activation act, const TensorView& dx, const TensorView& dw,
                     const TensorView& db);
// LayerNorm's backward over the last axis of x (+ residual: then dx is the gradient of both): dx, and
// the weight's (when there is one) and the bias's gradients (n,). The statistics are recomputed from x.
void layer_norm_backward(const TensorView& grad_output, const TensorView& x, const OptionalView& weight,
                         const OptionalView& residual, float eps, const TensorView& dx, const OptionalView& dweight,
                         const TensorView& dbias);
// out = output * (grad_output - sum(grad_output * output)) along `axis`, output the softmax's result.
void softmax_backward(const TensorView& output, const TensorView& grad_output, int64_t axis, const TensorView& out);

// ids int32/int64 of any shape, table (V, D) -> out (*ids.shape, D); IndexError outside [0, V).
Shape embedding_shape(const TensorView& ids, const TensorView& table);
void embedding(const TensorView& ids, const TensorView& table, const TensorView& out);
// The table's gradient (num_embeddings, D) from grad_output (ids.shape + (D,)): rows summed per id in
// order of appearance (deterministic); padding_idx's row (-1: none) gets none.
void embedding_backward(const TensorView& ids, const TensorView& grad_output, int64_t num_embeddings,
                        int64_t padding_idx, const TensorView& out);

enum class Reduction { mean, sum, none };
struct CrossEntropyResult {
  double loss = 0.0;    // mean or sum (none: the sum too; the per-row losses are in `losses`)
  int64_t counted = 0;  // rows whose label is not ignore_index
};
// Cross-entropy of logits (..., C) against int64 labels (...), with torch's ignore_index and
// label_smoothing; optionally each row's loss and the gradient of the reduced loss (of the sum for
// Reduction::none) with respect to the logits.
CrossEntropyResult cross_entropy(const TensorView& logits, const TensorView& labels, int64_t ignore_index,
                                 float label_smoothing, Reduction reduction, const OptionalView& losses,
                                 const OptionalView& dlogits);

// out = dropout(x): each element kept with probability 1 - p (scaled by 1 / (1 - p)) by the Philox stream of
// `seed` from word `offset` (csrc/cpu/dropout.cpp); the backward is the same call on the gradient. mask
// (optional, uint8 of x's shape): 1 where kept. out may be x.
void dropout(const TensorView& x, double p, uint64_t seed, uint64_t offset, const TensorView& out,
             const OptionalView& mask);

// Optimiser steps over a parameter group (one core call per group per step; see csrc/cpu/optim.cpp).
// params, grads and the state lists are parallel: each param a contiguous float32 CPU array written in
// place, its grad (and each state buffer) of the same shape; state buffers are written in place too.
struct AdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01;
  int64_t step = 1;
  bool maximize = false;
};
void adamw_step(const std::vector<TensorView>& params, const std::vector<TensorView>& grads,
                const std::vector<TensorView>& exp_avgs, const std::vector<TensorView>& exp_avg_sqs,
                const AdamWHyper& h);
struct SGDHyper {
  double lr = 1e-3, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false, first_step = false, maximize = false;
};
// momentum_buffers: empty without momentum, else one per param
void sgd_step(const std::vector<TensorView>& params, const std::vector<TensorView>& grads,
              const std::vector<TensorView>& momentum_buffers, const SGDHyper& h);
// The norm (2 or inf) of all the arrays together, in float64 from fixed chunks in order (NaN if any is).
double total_norm(const std::vector<TensorView>& xs, bool inf_norm);
// Every element of every array multiplied by s (in place).
void scale_all(const std::vector<TensorView>& xs, float s);

// out (x's shape without its last axis), int64: the index of each row's largest value (the first on ties;
// NaN counts as the largest, as numpy's argmax). Greedy decoding on a GPU brings back only these.
void argmax(const TensorView& x, const TensorView& out);

// (num_positions, dim): sin on even columns, cos on odd (Vaswani et al. 2017, section 3.5).
void sinusoidal_positions(int64_t num_positions, int64_t dim, const TensorView& out);

// Checks that `out` has the shape and dtype an op produces.
void expect_out(const TensorView& out, const Shape& shape, const char* op);

}  // namespace cf::ops

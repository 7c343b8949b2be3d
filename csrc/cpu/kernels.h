// The CPU kernel table. Each kernel source in csrc/cpu/ is compiled once per ISA into the
// namespace cf::cpu::<isa>; dispatch.cpp collects the three tables and picks one at run time.
// Arguments are plain structs of pointers, sizes and strides (in elements), already checked
// by csrc/ops/: kernels trust them.
#pragma once
#include <cstdint>

namespace cf::cpu {

enum class Activation : int { none = 0, relu = 1, gelu = 2, gelu_tanh = 3 };

// C (M,N) = act(A (M,K) @ W (N,K)^T + bias (N)) + residual (M,N)
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const float* a = nullptr; int64_t lda = 0;
  bool a_km = false;  // a is (K, M) row-major: the product reads A^T (the weight gradient's dZ^T) in place
  const float* w = nullptr; int64_t ldw = 0;
  bool w_kn = false;  // w is (K, N) row-major -- C = A w, the backward's dX = dZ W and dW = dZ^T X -- packed
                      // by the GEMM from contiguous runs (no transposed copy of it made first)
  float* c = nullptr; int64_t ldc = 0;
  const float* bias = nullptr;       // optional
  const float* residual = nullptr;  // optional, added after the activation
  int64_t ldr = 0;
  Activation act = Activation::none;
  // Optional: W packed once ahead of time (ops::PackedWeight, made for this ISA's kNR) instead of
  // w/ldw. Panel p (columns [p*NR, p*NR+NR), zero past N) holds all of K: wp[p*K*NR + k*NR + j].
  // wp points at the first panel of the columns in use.
  const void* wp = nullptr;
  enum WType : int { f32 = 0, bf16 = 1, i8 = 2 } wp_type = f32;  // bf16: the top half of a float32
  // int8 only: column j of the product is scaled by wp_scale[j] (per output row of W, symmetric),
  // padded like the panels; points at the scale of the first column in use.
  const float* wp_scale = nullptr;
};

// A mask broadcast to (B, H, Sq, Sk) by its strides (0 on broadcast axes).
struct MaskArgs {
  enum Kind : int { none = 0, boolean = 1, additive = 2 } kind = none;
  const void* data = nullptr;   // uint8 (0/1) for boolean, float for additive
  int64_t sb = 0, sh = 0, sq = 0, sk = 0;
  bool true_means_masked = false;  // boolean only: torch.nn.MultiheadAttention's convention
};

// Dropout on attention's probabilities (training, CPU): probability (b, h, i, j) is kept, times 1 / (1 - p),
// when word offset + ((b H + h) Sq + i) Sk + j of stream `seed` is below (1 - p) 2^32 -- ops.dropout's rule
// over the (B, H, Sq, Sk) probabilities, so the backward recomputes the mask from (seed, offset). The
// softmax's normaliser is the row's undropped sum: softmax, then dropout, as torch's attention layers.
struct AttentionDropout {
  double p = 0.0;  // in [0, 1)
  uint64_t seed = 0, offset = 0;
  bool active() const { return p > 0.0; }
};

// out (B,H,Sq,Dv) = softmax(scale * q k^T + masks) v, with strides for b, h and s (the last axis is contiguous).
struct AttentionArgs {
  int64_t B = 0, H = 0, Sq = 0, Sk = 0, D = 0, Dv = 0;
  const float* q = nullptr; int64_t q_sb = 0, q_sh = 0, q_ss = 0;
  const float* k = nullptr; int64_t k_sb = 0, k_sh = 0, k_ss = 0;
  const float* v = nullptr; int64_t v_sb = 0, v_sh = 0, v_ss = 0;
  float* out = nullptr; int64_t o_sb = 0, o_sh = 0, o_ss = 0;
  MaskArgs mask, mask2;  // mask2: a second mask (key padding in multi-head attention)
  bool causal = false;   // bottom-right aligned: query i sees keys j <= i + Sk - Sq
  float scale = 1.0f;
  float* lse = nullptr;  // optional (B,H,Sq) contiguous: each row's log-sum-exp of its scaled, masked scores
                         // (natural log; -inf for a row with nothing to attend), what the backward needs
  AttentionDropout dropout;  // applied to the probabilities when active (the lse stays the undropped one's)
};

// The backward of `attention` (FlashAttention-2's, on the CPU): f holds the forward's inputs (f.out and
// f.lse unused); o and dout (B,H,Sq,Dv), dq (B,H,Sq,D), dk (B,H,Sk,D), dv (B,H,Sk,Dv) all contiguous.
// lse (the forward's, (B,H,Sq)) is required: the probabilities are recomputed from it.
struct AttentionBackwardArgs {
  AttentionArgs f;
  const float* o = nullptr;
  const float* dout = nullptr;
  const float* lse = nullptr;
  float* dq = nullptr;
  float* dk = nullptr;
  float* dv = nullptr;
};

// Additive attention after the projections: qp (B,Sq,A), kp (B,Sk,A), all contiguous.
struct AdditiveArgs {
  int64_t B = 0, Sq = 0, Sk = 0, A = 0, Dv = 0;
  const float* qp = nullptr;
  const float* kp = nullptr;
  const float* v_vec = nullptr;      // (A,)
  const float* values = nullptr;     // (B,Sk,Dv)
  const uint8_t* mask = nullptr;     // optional, True = attend, strides below
  int64_t m_sb = 0, m_sq = 0;        // key axis stride is 1
  float* out = nullptr;              // (B,Sq,Dv)
  float* weights = nullptr;          // optional (B,Sq,Sk)
};

// The backward of `additive_attention` after the projections (f's fields; f.out and f.weights unused):
// dout (B,Sq,Dv) in; dqp (B,Sq,A), dkp (B,Sk,A), dvalues (B,Sk,Dv), dv_vec (A,) out. The probabilities are
// recomputed row by row; a task is a batch entry (it owns its dkp and dvalues rows), dv_vec sums the batch
// entries' parts in order: the same on any thread count.
struct AdditiveBackwardArgs {
  AdditiveArgs f;
  const float* dout = nullptr;
  float* dqp = nullptr;
  float* dkp = nullptr;
  float* dvalues = nullptr;
  float* dv_vec = nullptr;
};

// Rows of length n: y = (x + residual - mean) / sqrt(var + eps) * weight + bias.
struct LayerNormArgs {
  int64_t rows = 0, n = 0;
  const float* x = nullptr;
  const float* residual = nullptr;  // optional
  const float* weight = nullptr;    // optional
  const float* bias = nullptr;      // optional
  float* y = nullptr;
  float* sum_out = nullptr;         // optional, only with a residual: x + residual
  float eps = 1e-5f;
};

// LayerNorm's backward over rows of length n, s = x (+ residual) the normalised input: with
// xhat = (s - mean) * rstd and g = dy * weight, dx = rstd * (g - mean(g) - xhat * mean(g * xhat));
// dweight = sum over rows of dy * xhat, dbias = sum of dy (either may be null). mean and rstd are
// recomputed from s exactly as the forward computes them.
struct LayerNormBackwardArgs {
  int64_t rows = 0, n = 0;
  const float* x = nullptr;
  const float* residual = nullptr;  // optional
  const float* weight = nullptr;    // optional (ones)
  const float* dy = nullptr;
  float* dx = nullptr;
  float* dweight = nullptr;         // optional
  float* dbias = nullptr;           // optional
  float eps = 1e-5f;
};

// out (n, D) = rows ids[i] of table (V, D); ids int32 or int64, already checked to lie in [0, V).
struct EmbeddingArgs {
  int64_t n = 0, V = 0, D = 0;
  const void* ids = nullptr;
  bool ids64 = true;
  const float* table = nullptr;
  float* out = nullptr;
};

// The embedding's backward: dtable (V, D) = the sum, for each row v, of dy's rows i with ids[i] == v, in
// increasing i (rows no id names, and padding_idx's, are 0). Each thread owns whole table rows: no
// atomics, and the same sums in the same order whatever the thread count.
struct EmbeddingBackwardArgs {
  int64_t n = 0, V = 0, D = 0;
  const void* ids = nullptr;
  bool ids64 = true;
  const float* dy = nullptr;   // (n, D)
  float* dtable = nullptr;     // (V, D)
  int64_t padding_idx = -1;    // -1: none
};

// Cross-entropy over the last axis of logits (rows, C) against int64 labels (rows,), as torch's: each
// counted row's loss is -(1 - s) log p[label] - s/C sum_c log p[c] (s the label smoothing); rows whose
// label is ignore_index count for nothing. Two passes over a row: its logsumexp, then the loss and, when
// dlogits is given, (p - (1 - s) onehot - s/C) * grad_scale (0 for ignored rows). Labels are checked.
struct CrossEntropyArgs {
  int64_t rows = 0, C = 0;
  const float* logits = nullptr;
  const int64_t* labels = nullptr;
  int64_t ignore_index = -100;
  float smoothing = 0.0f;
  float* losses = nullptr;     // (rows,): each row's loss (0 where ignored)
  float* dlogits = nullptr;    // optional (rows, C)
  float grad_scale = 1.0f;     // what each counted row's gradient is multiplied by (1 / count for the mean)
};

// out (n) = the sum over rows of x (rows, n): a bias's gradient. Summed in fixed blocks of rows, then the
// blocks in order (float64), so the result does not depend on the thread count.
struct ColumnSumArgs {
  int64_t rows = 0, n = 0;
  const float* x = nullptr;
  float* out = nullptr;
};

// Dropout: y = x * keep / (1 - p), keep = (Philox word of element offset + i under seed) < (1 - p) 2^32, the
// same stream on any thread count; the backward is the same call on the gradient (the mask recomputed).
// mask (optional, n bytes): 1 where kept.
struct DropoutArgs {
  int64_t n = 0;
  const float* x = nullptr;
  float* y = nullptr;      // may be x
  double p = 0.0;          // in [0, 1] (1: everything dropped)
  uint64_t seed = 0, offset = 0;
  uint8_t* mask = nullptr;
};

// One parameter tensor of an optimiser step: n floats of the parameter, its gradient and up to two state
// buffers (AdamW: exp_avg in m, exp_avg_sq in v; SGD: the momentum buffer in m), all contiguous.
struct OptimTensor {
  float* param = nullptr;
  const float* grad = nullptr;
  float* m = nullptr;
  float* v = nullptr;
  int64_t n = 0;
};

// torch.optim.AdamW's update (decoupled weight decay) of every tensor of a parameter group, in one call:
//   p *= 1 - lr wd;  m += (1 - b1)(g - m);  v = b2 v + (1 - b2) g^2;
//   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
struct AdamWArgs {
  const OptimTensor* tensors = nullptr;
  int64_t count = 0;
  // doubles, as torch's Python floats: 1 - beta2 from a float32 beta2 would be off by 1e-5 relative
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;        // t, counted from 1
  bool maximize = false;
};

// torch.optim.SGD's update: d = g + wd p; with momentum, m = d on the first step, else
// m = momentum m + (1 - dampening) d, and d = m (or d + momentum m with nesterov); p -= lr d.
struct SGDArgs {
  const OptimTensor* tensors = nullptr;
  int64_t count = 0;
  double lr = 1e-3, momentum = 0.0, dampening = 0.0, weight_decay = 0.0;
  bool nesterov = false, first_step = false, maximize = false;
};

// Over `count` tensors x[i] (n[i] floats each): sum of squares (norm_type 2) or max |x| (inf) into *out, in
// float64, from fixed chunks summed in order (the same on any thread count); then, with scale != 1, every
// element multiplied by scale (clip_grad_norm_'s two passes).
struct MultiNormArgs {
  float* const* x = nullptr;
  const int64_t* n = nullptr;
  int64_t count = 0;
  bool inf_norm = false;
  double* out = nullptr;   // the reduction; null: only scale
  float scale = 1.0f;      // applied when out is null
};

// Softmax over the middle axis of (outer, n, inner).
struct SoftmaxArgs {
  int64_t outer = 0, n = 0, inner = 0;
  const float* x = nullptr;
  float* y = nullptr;
};

struct ActivationArgs {
  int64_t n = 0;
  const float* x = nullptr;
  float* y = nullptr;
  Activation act = Activation::none;
};

// dx = dy * act'(x), elementwise over n (x the activation's input).
struct ActivationBackwardArgs {
  int64_t n = 0;
  const float* x = nullptr;
  const float* dy = nullptr;
  float* dx = nullptr;
  Activation act = Activation::none;
};

// Softmax's backward over the middle axis of (outer, n, inner): dx = y * (dy - sum_j(dy_j * y_j)), y the
// forward's output.
struct SoftmaxBackwardArgs {
  int64_t outer = 0, n = 0, inner = 0;
  const float* y = nullptr;
  const float* dy = nullptr;
  float* dx = nullptr;
};

// Every kernel of the table, once: X(name, Args) for each `void name(const Args&)`. The struct below, the
// per-ISA declarations and each ISA's table (csrc/cpu/table.cpp, compiled once per ISA) are made from it,
// so a new kernel is one line here and its definition beside its forward.
#define CF_CPU_KERNELS(X)                 \
  X(gemm, GemmArgs)                       \
  X(attention, AttentionArgs)             \
  X(attention_backward, AttentionBackwardArgs) \
  X(additive_attention, AdditiveArgs)     \
  X(additive_attention_backward, AdditiveBackwardArgs) \
  X(layer_norm, LayerNormArgs)            \
  X(softmax, SoftmaxArgs)                 \
  X(activation, ActivationArgs)           \
  X(activation_backward, ActivationBackwardArgs) \
  X(softmax_backward, SoftmaxBackwardArgs)      \
  X(layer_norm_backward, LayerNormBackwardArgs) \
  X(embedding, EmbeddingArgs)                   \
  X(embedding_backward, EmbeddingBackwardArgs)  \
  X(cross_entropy, CrossEntropyArgs)            \
  X(column_sum, ColumnSumArgs)                  \
  X(dropout, DropoutArgs)                       \
  X(adamw, AdamWArgs)                           \
  X(sgd, SGDArgs)                               \
  X(multi_norm, MultiNormArgs)

struct Kernels {
  int gemm_nr;  // the panel width GemmArgs::wp must be packed with
#define CF_KERNEL_POINTER(name, Args) void (*name)(const Args&);
  CF_CPU_KERNELS(CF_KERNEL_POINTER)
#undef CF_KERNEL_POINTER
};

#define CF_KERNEL_DECLARATION(name, Args) void name(const Args&);
#define CF_DECLARE_KERNELS(ns)          \
  namespace ns {                        \
  extern const int gemm_nr;             \
  CF_CPU_KERNELS(CF_KERNEL_DECLARATION) \
  const Kernels& kernel_table();        \
  }
CF_DECLARE_KERNELS(scalar)
CF_DECLARE_KERNELS(avx2)
CF_DECLARE_KERNELS(avx512)
#undef CF_DECLARE_KERNELS
#undef CF_KERNEL_DECLARATION

}  // namespace cf::cpu

// Optimiser steps and gradient norms over lists of arrays: argument checks, then one kernel call.
#include <cmath>
#include <string>
#include <vector>

#include "ops/backend.h"
#include "ops/common.h"
#include "ops/ops.h"

namespace cf::ops {
namespace {

std::string item(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

// A float32, C-contiguous CPU array of `shape` (the first list's element i: nullptr)
void expect_like(const TensorView& t, const char* list, size_t i, const TensorView* like, const char* like_list) {
  const std::string name = item(list, i);
  expect_float(t, name.c_str());
  cpu_only(t.device, "the optimisers");
  if (like)
    CF_CHECK(shape_of(t) == shape_of(*like), ValueError, name, " has shape ", t.shape_str(), " but ",
             item(like_list, i), " has shape ", like->shape_str());
}

void expect_parallel(const std::vector<TensorView>& params, const std::vector<TensorView>& other, const char* name) {
  CF_CHECK(other.size() == params.size(), ValueError, name, " has ", other.size(), " arrays but params has ",
           params.size());
}

std::vector<cpu::OptimTensor> optim_tensors(const std::vector<TensorView>& params, const std::vector<TensorView>& grads,
                                            const std::vector<TensorView>* m, const char* m_name,
                                            const std::vector<TensorView>* v, const char* v_name) {
  expect_parallel(params, grads, "grads");
  if (m) expect_parallel(params, *m, m_name);
  if (v) expect_parallel(params, *v, v_name);
  std::vector<cpu::OptimTensor> out(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    expect_like(params[i], "params", i, nullptr, nullptr);
    expect_like(grads[i], "grads", i, &params[i], "params");
    out[i].param = params[i].ptr<float>();
    out[i].grad = grads[i].ptr<float>();
    out[i].n = params[i].numel();
    if (m) {
      expect_like((*m)[i], m_name, i, &params[i], "params");
      out[i].m = (*m)[i].ptr<float>();
    }
    if (v) {
      expect_like((*v)[i], v_name, i, &params[i], "params");
      out[i].v = (*v)[i].ptr<float>();
    }
  }
  return out;
}

}  // namespace

void adamw_step(const std::vector<TensorView>& params, const std::vector<TensorView>& grads,
                const std::vector<TensorView>& exp_avgs, const std::vector<TensorView>& exp_avg_sqs,
                const AdamWHyper& h) {
  CF_CHECK(h.step >= 1, ValueError, "step must be >= 1 (the count of steps including this one), got ", h.step);
  const std::vector<cpu::OptimTensor> ts = optim_tensors(params, grads, &exp_avgs, "exp_avgs", &exp_avg_sqs, "exp_avg_sqs");
  cpu::AdamWArgs a;
  a.tensors = ts.data();
  a.count = static_cast<int64_t>(ts.size());
  a.lr = h.lr; a.beta1 = h.beta1; a.beta2 = h.beta2; a.eps = h.eps; a.weight_decay = h.weight_decay;
  a.step = h.step;
  a.maximize = h.maximize;
  kernels().adamw(a);
}

void sgd_step(const std::vector<TensorView>& params, const std::vector<TensorView>& grads,
              const std::vector<TensorView>& momentum_buffers, const SGDHyper& h) {
  const bool momentum = h.momentum != 0.0f;
  CF_CHECK(momentum || momentum_buffers.empty(), ValueError, "momentum_buffers must be empty without momentum");
  const std::vector<cpu::OptimTensor> ts =
      optim_tensors(params, grads, momentum ? &momentum_buffers : nullptr, "momentum_buffers", nullptr, nullptr);
  cpu::SGDArgs a;
  a.tensors = ts.data();
  a.count = static_cast<int64_t>(ts.size());
  a.lr = h.lr; a.momentum = h.momentum; a.dampening = h.dampening; a.weight_decay = h.weight_decay;
  a.nesterov = h.nesterov; a.first_step = h.first_step; a.maximize = h.maximize;
  kernels().sgd(a);
}

namespace {
cpu::MultiNormArgs norm_args(const std::vector<TensorView>& xs, std::vector<float*>& ptrs, std::vector<int64_t>& ns) {
  for (size_t i = 0; i < xs.size(); ++i) {
    expect_like(xs[i], "grads", i, nullptr, nullptr);
    ptrs.push_back(xs[i].ptr<float>());
    ns.push_back(xs[i].numel());
  }
  cpu::MultiNormArgs a;
  a.x = ptrs.data();
  a.n = ns.data();
  a.count = static_cast<int64_t>(xs.size());
  return a;
}
}  // namespace

double total_norm(const std::vector<TensorView>& xs, bool inf_norm) {
  std::vector<float*> ptrs;
  std::vector<int64_t> ns;
  cpu::MultiNormArgs a = norm_args(xs, ptrs, ns);
  double r = 0.0;
  a.inf_norm = inf_norm;
  a.out = &r;
  kernels().multi_norm(a);
  return inf_norm ? r : std::sqrt(r);
}

void scale_all(const std::vector<TensorView>& xs, float s) {
  std::vector<float*> ptrs;
  std::vector<int64_t> ns;
  cpu::MultiNormArgs a = norm_args(xs, ptrs, ns);
  a.scale = s;
  kernels().multi_norm(a);
}

}  // namespace cf::ops

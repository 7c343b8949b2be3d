#include <vector>

#include "ops/backend.h"
#include "ops/common.h"
#include "ops/ops.h"

namespace cf::ops {

Shape additive_attention_shape(const TensorView& query, const TensorView& keys, const TensorView& values,
                               const TensorView& w_query, const TensorView& w_key, const TensorView& v,
                               const OptionalView& mask) {
  expect_float(query, "query");
  expect_float(keys, "keys");
  expect_float(values, "values");
  expect_float(w_query, "w_query");
  expect_float(w_key, "w_key");
  expect_float(v, "v");
  expect_ndim(query, 3, "query");
  expect_ndim(keys, 3, "keys");
  expect_ndim(values, 3, "values");
  expect_ndim(w_query, 2, "w_query");
  expect_ndim(w_key, 2, "w_key");
  const int64_t B = query.shape[0], Sq = query.shape[1], Sk = keys.shape[1], A = w_query.shape[0];
  CF_CHECK(keys.shape[0] == B && values.shape[0] == B, ValueError, "query, keys and values must have the same batch "
           "size, got shapes ", query.shape_str(), ", ", keys.shape_str(), ", ", values.shape_str());
  CF_CHECK(values.shape[1] == Sk, ValueError, "values must have as many rows as keys: keys ", keys.shape_str(),
           ", values ", values.shape_str());
  CF_CHECK(w_query.shape[1] == query.shape[2], ValueError, "w_query must have shape (A, ", query.shape[2],
           ") for query ", query.shape_str(), ", got ", w_query.shape_str());
  CF_CHECK(w_key.shape[0] == A && w_key.shape[1] == keys.shape[2], ValueError, "w_key must have shape (", A, ", ",
           keys.shape[2], ") for keys ", keys.shape_str(), " and w_query ", w_query.shape_str(), ", got ",
           w_key.shape_str());
  CF_CHECK(v.ndim == 1 && v.shape[0] == A, ValueError, "v must have shape (", A, ",) to match w_query ",
           w_query.shape_str(), ", got ", v.shape_str());
  if (mask) {
    const TensorView& m = *mask;
    CF_CHECK(m.dtype == DType::boolean, TypeError, "mask must be a bool array, got ", dtype_name(m.dtype));
    expect_contiguous(m, "mask");
    CF_CHECK((m.ndim == 2 && m.shape[0] == B && m.shape[1] == Sk) ||
                 (m.ndim == 3 && m.shape[0] == B && m.shape[1] == Sq && m.shape[2] == Sk),
             ValueError, "mask must have shape (", B, ", ", Sk, ") or (", B, ", ", Sq, ", ", Sk, "), got ",
             m.shape_str());
  }
  return {B, Sq, values.shape[2]};
}

void additive_attention(const TensorView& query, const TensorView& keys, const TensorView& values,
                        const TensorView& w_query, const TensorView& w_key, const TensorView& v,
                        const OptionalView& mask, const TensorView& out, const OptionalView& weights) {
  const Shape shape = additive_attention_shape(query, keys, values, w_query, w_key, v, mask);
  expect_out(out, shape, "additive_attention");
  const int64_t B = query.shape[0], Sq = query.shape[1], Sk = keys.shape[1], A = w_query.shape[0];
  if (weights) {
    expect_float(*weights, "weights");
    CF_CHECK(shape_of(*weights) == (Shape{B, Sq, Sk}), ValueError, "weights must have shape ",
             shape_str({B, Sq, Sk}), ", got ", weights->shape_str());
  }
  const Device dev = common_device({{"query", &query}, {"keys", &keys}, {"values", &values}, {"w_query", &w_query},
                                    {"w_key", &w_key}, {"v", &v}, {"mask", opt(mask)}, {"out", &out},
                                    {"weights", opt(weights)}});
  if (on_gpu(dev))
    expect_same_dtype({{"keys", &keys}, {"values", &values}, {"w_query", &w_query}, {"w_key", &w_key}, {"v", &v},
                       {"out", &out}, {"weights", opt(weights)}}, query.dtype);
  // The projections are ordinary GEMMs; the O(B Sq Sk A) tanh part is the kernel.
  Backend be(dev, query.dtype);
  void* const qp = be.scratch(B * Sq * A + B * Sk * A);
  void* const kp = be.at(qp, B * Sq * A);
  be.gemm(query.data, B * Sq, query.shape[2], w_query, {}, 0, A, qp);
  be.gemm(keys.data, B * Sk, keys.shape[2], w_key, {}, 0, A, kp);
  const int64_t m_sb = mask && mask->ndim == 2 ? Sk : Sq * Sk, m_sq = mask && mask->ndim == 2 ? 0 : Sk;
  if (on_gpu(dev)) {
    cuda::AdditiveArgs a;
    a.B = B; a.Sq = Sq; a.Sk = Sk; a.A = A; a.Dv = values.shape[2];
    a.qp = qp; a.kp = kp; a.v_vec = v.data; a.values = values.data;
    a.mask = mask ? mask->ptr<uint8_t>() : nullptr; a.m_sb = m_sb; a.m_sq = m_sq;
    a.out = out.data;
    a.weights = weights ? weights->data : nullptr;
    a.dtype = query.dtype;
    a.device = dev.index;
    cuda::additive_attention(a);
    return;
  }
  cpu::AdditiveArgs a;
  a.B = B; a.Sq = Sq; a.Sk = Sk; a.A = A; a.Dv = values.shape[2];
  a.qp = static_cast<const float*>(qp); a.kp = static_cast<const float*>(kp);
  a.v_vec = v.ptr<float>(); a.values = values.ptr<float>();
  a.mask = mask ? mask->ptr<uint8_t>() : nullptr; a.m_sb = m_sb; a.m_sq = m_sq;
  a.out = out.ptr<float>();
  a.weights = weights ? weights->ptr<float>() : nullptr;
  kernels().additive_attention(a);
}

void additive_attention_backward(const TensorView& grad_output, const TensorView& query, const TensorView& keys,
                                 const TensorView& values, const TensorView& w_query, const TensorView& w_key,
                                 const TensorView& v, const OptionalView& mask, const TensorView& dquery,
                                 const TensorView& dkeys, const TensorView& dvalues, const TensorView& dw_query,
                                 const TensorView& dw_key, const TensorView& dv) {
  const Shape shape = additive_attention_shape(query, keys, values, w_query, w_key, v, mask);
  expect_float(grad_output, "grad_output");
  CF_CHECK(shape_of(grad_output) == shape, ValueError, "grad_output has shape ", grad_output.shape_str(),
           " but additive_attention's output has shape ", shape_str(shape));
  const char* op = "additive_attention_backward";
  expect_out(dquery, shape_of(query), op);
  expect_out(dkeys, shape_of(keys), op);
  expect_out(dvalues, shape_of(values), op);
  expect_out(dw_query, shape_of(w_query), op);
  expect_out(dw_key, shape_of(w_key), op);
  expect_out(dv, shape_of(v), op);
  cpu_only(common_device({{"grad_output", &grad_output}, {"query", &query}, {"keys", &keys}, {"values", &values},
                          {"w_query", &w_query}, {"w_key", &w_key}, {"v", &v}, {"mask", opt(mask)}}),
           "additive attention's backward");
  const int64_t B = query.shape[0], Sq = query.shape[1], Sk = keys.shape[1], A = w_query.shape[0];
  // the projections again (two GEMMs), then the O(B Sq Sk A) part, then the projections' backward
  std::vector<float> buf(static_cast<size_t>(2 * (B * Sq * A + B * Sk * A) + A));
  float* qp = buf.data();
  float* kp = qp + B * Sq * A;
  float* dqp = kp + B * Sk * A;
  float* dkp = dqp + B * Sq * A;
  float* db = dkp + B * Sk * A;  // the projections have no bias: a scratch for linear_backward's
  Backend be(Device{}, DType::f32);
  be.gemm(query.data, B * Sq, query.shape[2], w_query, {}, 0, A, qp);
  be.gemm(keys.data, B * Sk, keys.shape[2], w_key, {}, 0, A, kp);
  cpu::AdditiveBackwardArgs g;
  cpu::AdditiveArgs& a = g.f;
  a.B = B; a.Sq = Sq; a.Sk = Sk; a.A = A; a.Dv = values.shape[2];
  a.qp = qp; a.kp = kp; a.v_vec = v.ptr<float>(); a.values = values.ptr<float>();
  a.mask = mask ? mask->ptr<uint8_t>() : nullptr;
  a.m_sb = mask && mask->ndim == 2 ? Sk : Sq * Sk;
  a.m_sq = mask && mask->ndim == 2 ? 0 : Sk;
  g.dout = grad_output.ptr<float>();
  g.dqp = dqp; g.dkp = dkp; g.dvalues = dvalues.ptr<float>(); g.dv_vec = dv.ptr<float>();
  kernels().additive_attention_backward(g);
  const TensorView dqp_v(dqp, DType::f32, {B, Sq, A}), dkp_v(dkp, DType::f32, {B, Sk, A}), db_v(db, DType::f32, {A});
  linear_backward(dqp_v, query, w_query, OptionalView(), Activation::none, dquery, dw_query, db_v);
  linear_backward(dkp_v, keys, w_key, OptionalView(), Activation::none, dkeys, dw_key, db_v);
}

}  // namespace cf::ops

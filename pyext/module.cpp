// coreformer._core: conversion, argument checking and GIL release around the C++ ops; no arithmetic.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <optional>
#include <string>

#include "convert.h"
#include "tensor.h"
#include "train.h"
#include "core/dispatch.h"
#include "core/error.h"
#include "core/notes.h"
#include "core/threading.h"
#include "ops/ops.h"
#include "cuda/blas.h"
#include "cuda/runtime.h"

#ifndef COREFORMER_VERSION
#define COREFORMER_VERSION "0.0.0"
#endif

namespace py = pybind11;
using cf::OptionalView;
using cf::pyext::Arg;

namespace {

cf::ops::Activation activation_arg(py::handle act) {
  if (act.is_none()) return cf::ops::Activation::none;
  if (!py::isinstance<py::str>(act)) cf::raise<cf::TypeError>("activation must be None or a str, got ", std::string(py::str(py::type::of(act).attr("__name__"))));
  const std::string name = act.cast<std::string>();
  if (name == "none") cf::raise<cf::ValueError>("activation must be None, 'relu', 'gelu' or 'gelu_tanh', got 'none'");
  return cf::ops::activation_from_name(name);
}

// A Linear weight argument: a PackedWeight (used as it is) or anything float_arg converts.
using WeightIn = py::typing::Union<cf::pyext::ArrayLike, cf::pyext::Tensor, cf::ops::PackedWeight>;
struct WeightArg {
  Arg arg;
  const cf::ops::PackedWeight* packed = nullptr;
  cf::ops::WeightRef ref() const { return packed ? cf::ops::WeightRef(*packed) : cf::ops::WeightRef(arg.view); }
};

WeightArg weight_arg(py::handle obj, const char* name) {
  WeightArg w;
  if (py::isinstance<cf::ops::PackedWeight>(obj)) w.packed = &obj.cast<const cf::ops::PackedWeight&>();
  else w.arg = cf::pyext::float_arg(obj, name);
  return w;
}

cf::DType pack_dtype(py::handle dtype) {
  std::string name = py::str(dtype);
  if (!py::isinstance<py::str>(dtype)) name = py::str(py::module_::import("numpy").attr("dtype")(dtype).attr("name"));
  if (name == "float32") return cf::DType::f32;
  if (name == "bfloat16") return cf::DType::bf16;
  if (name == "int8") return cf::DType::i8;
  cf::raise<cf::ValueError>("dtype must be 'float32', 'bfloat16' or 'int8', got '", name, "'");
}

cf::ops::PackedWeight pack_weight(const cf::pyext::ArrayIn& weight, py::handle dtype, bool transposed) {
  const cf::DType t = pack_dtype(dtype);
  Arg wa = cf::pyext::any_strided_float_arg(weight, "weight");  // w.T of a mapped (in, out) file: no copy
  py::gil_scoped_release nogil;
  return cf::ops::pack_weight(wa.view, t, transposed);
}

// A PackedWeight as pickle keeps it: (version 1, rows, cols, panel width, dtype, panels, scales) -- the
// stored bytes, exact whatever the dtype. packed_from_state reads it back, refusing (ValueError) a
// state whose sizes do not fit its shape (corrupt, or from a version that stores something else).
py::tuple packed_state(const cf::ops::PackedWeight& w) {
  const auto* panels = static_cast<const char*>(w.ptr());
  const float* sc = w.scales();
  return py::make_tuple(1, w.rows, w.cols, w.nr, std::string(cf::dtype_name(w.dtype)),
                        py::bytes(panels, static_cast<size_t>(cf::ops::packed_panel_bytes(w))),
                        py::bytes(reinterpret_cast<const char*>(sc), sc ? static_cast<size_t>(w.rows) * 4 : 0));
}

cf::ops::PackedWeight packed_from_state(const py::tuple& t) {
  CF_CHECK(t.size() == 7 && py::isinstance<py::int_>(t[0]) && t[0].cast<py::int_>().equal(py::int_(1)), ValueError,
           "not a PackedWeight state this version of coreformer reads");
  for (int i = 1; i < 4; ++i)
    CF_CHECK(py::isinstance<py::int_>(t[i]), ValueError, "a PackedWeight state holds integers in 1..3");
  CF_CHECK(py::isinstance<py::bytes>(t[5]) && py::isinstance<py::bytes>(t[6]), ValueError,
           "a PackedWeight state holds its panels and scales as bytes");
  const std::string panels = t[5].cast<std::string>(), scales = t[6].cast<std::string>();
  CF_CHECK(scales.size() % 4 == 0, ValueError, "a PackedWeight state's scales are float32");
  auto count = [](py::handle h) {
    try {
      return h.cast<int64_t>();
    } catch (const py::cast_error&) {
      cf::raise<cf::ValueError>("a PackedWeight state's sizes are beyond any weight: ", std::string(py::repr(h)));
    }
  };
  const int64_t rows = count(t[1]), cols = count(t[2]), nr = count(t[3]);
  CF_CHECK(nr >= 1 && nr <= 1024, ValueError, "a PackedWeight state's panel width is ", nr);
  return cf::ops::packed_from_bytes(rows, cols, static_cast<int>(nr), pack_dtype(t[4]), panels.data(),
                                    static_cast<int64_t>(panels.size()), scales.data(),
                                    static_cast<int64_t>(scales.size() / 4));
}

cf::pyext::FloatArray unpack_weight(const cf::ops::PackedWeight& w) {
  Arg oa = cf::pyext::output(py::none(), {w.rows, w.cols}, {});
  {
    py::gil_scoped_release nogil;
    cf::ops::unpack_weight(w, oa.view);
  }
  return oa.result();
}

py::dict info() {
  py::dict d;
  d["version"] = COREFORMER_VERSION;
  d["isa"] = cf::isa_name(cf::active_isa());
  py::list supported;
  for (cf::Isa i : cf::supported_isas()) supported.append(cf::isa_name(i));
  d["isa_supported"] = supported;
  d["num_threads"] = cf::get_num_threads();
  d["openmp"] = cf::openmp_enabled();
  d["cuda_built"] = cf::cuda::built();
  d["cuda_devices"] = cf::cuda::device_count();
  return d;
}

cf::pyext::ArrayOut linear(const cf::pyext::ArrayIn& x, const WeightIn& weight, const cf::pyext::OptionalArrayIn& bias, const py::typing::Optional<py::str>& activation, const cf::pyext::OptionalArrayIn& residual,
                  const cf::pyext::OptionalOut& out) {
  Arg xa = cf::pyext::float_arg(x, "x"), ba, ra;
  WeightArg wa = weight_arg(weight, "weight");
  OptionalView b = cf::pyext::optional_float(bias, "bias", ba);
  OptionalView r = cf::pyext::optional_float(residual, "residual", ra);
  const auto act = activation_arg(activation);
  Arg oa = cf::pyext::output(out, cf::ops::linear_shape(xa.view, wa.ref(), b, r), {&xa, &wa.arg, &ba, &ra});
  {
    py::gil_scoped_release nogil;
    cf::ops::linear(xa.view, wa.ref(), b, act, r, oa.view);
  }
  return oa.result();
}

cf::pyext::ArrayOut sdpa(const cf::pyext::ArrayIn& q, const cf::pyext::ArrayIn& k, const cf::pyext::ArrayIn& v, const cf::pyext::OptionalArrayIn& attn_mask, bool is_causal, const py::typing::Optional<py::float_>& scale,
                const cf::pyext::OptionalOut& out) {
  Arg qa = cf::pyext::strided_float_arg(q, "query"), ka = cf::pyext::strided_float_arg(k, "key"),
      va = cf::pyext::strided_float_arg(v, "value"), ma;
  OptionalView m = cf::pyext::optional_mask(attn_mask, "attn_mask", ma);
  std::optional<float> s;
  if (!scale.is_none()) {
    s = scale.cast<float>();
    CF_CHECK(std::isfinite(*s), ValueError, "scale must be finite, got ", *s);
  }
  Arg oa = cf::pyext::strided_output(out, cf::ops::attention_shape(qa.view, ka.view, va.view, m), {&qa, &ka, &va, &ma});
  {
    py::gil_scoped_release nogil;
    cf::ops::scaled_dot_product_attention(qa.view, ka.view, va.view, m, is_causal, s, oa.view);
  }
  return oa.result();
}

cf::pyext::ArrayOut mha(const cf::pyext::ArrayIn& query, const cf::pyext::ArrayIn& key, const cf::pyext::ArrayIn& value, int64_t num_heads, const WeightIn& in_weight,
               const cf::pyext::OptionalArrayIn& in_bias, const WeightIn& out_weight, const cf::pyext::OptionalArrayIn& out_bias, const cf::pyext::OptionalArrayIn& attn_mask,
               const cf::pyext::OptionalArrayIn& key_padding_mask, bool is_causal) {
  // The same object passed as query/key/value is converted once, so the core sees one array and
  // runs the fused QKV projection.
  Arg qa = cf::pyext::float_arg(query, "query");
  Arg ka = key.is(query) ? qa : cf::pyext::float_arg(key, "key");
  Arg va = value.is(query) ? qa : value.is(key) ? ka : cf::pyext::float_arg(value, "value");
  WeightArg iwa = weight_arg(in_weight, "in_weight"), owa = weight_arg(out_weight, "out_weight");
  Arg iba, oba, ma, kpa;
  OptionalView ib = cf::pyext::optional_float(in_bias, "in_bias", iba);
  OptionalView ob = cf::pyext::optional_float(out_bias, "out_bias", oba);
  OptionalView m = cf::pyext::optional_mask(attn_mask, "attn_mask", ma);
  OptionalView kpm = cf::pyext::optional_mask(key_padding_mask, "key_padding_mask", kpa);
  const auto shape = cf::ops::multi_head_attention_shape(qa.view, ka.view, va.view, num_heads, iwa.ref(), ib,
                                                         owa.ref(), ob, m, kpm);
  Arg oa = cf::pyext::output(py::none(), shape, {}, false, &qa);
  {
    py::gil_scoped_release nogil;
    cf::ops::multi_head_attention(qa.view, ka.view, va.view, num_heads, iwa.ref(), ib, owa.ref(), ob, m, kpm,
                                  is_causal, oa.view);
  }
  return oa.result();
}

// A layer's KV cache argument pair: both or neither; converted as arrays or Tensors written in place.
bool cache_args(py::handle k, py::handle v, const char* k_name, const char* v_name, Arg& ka, Arg& va,
                cf::ops::KVCacheRef& ref, int64_t length) {
  CF_CHECK(k.is_none() == v.is_none(), ValueError, k_name, " and ", v_name, " go together: pass both or neither");
  if (k.is_none()) return false;
  ka = cf::pyext::inout_float_arg(k, k_name);
  va = cf::pyext::inout_float_arg(v, v_name);
  CF_CHECK(!cf::pyext::overlap(ka, va), ValueError, k_name, " and ", v_name, " must not share memory");
  ref.k = ka.view;
  ref.v = va.view;
  ref.length = length;
  return true;
}

cf::pyext::ArrayOut encoder_layer(const cf::pyext::ArrayIn& x, int64_t num_heads, const WeightIn& in_weight, const cf::pyext::OptionalArrayIn& in_bias,
                         const WeightIn& out_weight, const cf::pyext::OptionalArrayIn& out_bias, const WeightIn& linear1_weight, const cf::pyext::OptionalArrayIn& linear1_bias,
                         const WeightIn& linear2_weight, const cf::pyext::OptionalArrayIn& linear2_bias, const cf::pyext::OptionalArrayIn& norm1_weight,
                         const cf::pyext::OptionalArrayIn& norm1_bias, const cf::pyext::OptionalArrayIn& norm2_weight, const cf::pyext::OptionalArrayIn& norm2_bias, const py::typing::Optional<py::str>& activation,
                         bool norm_first, float norm1_eps, float norm2_eps, const cf::pyext::OptionalArrayIn& attn_mask, const cf::pyext::OptionalArrayIn& key_padding_mask, bool is_causal,
                         const cf::pyext::OptionalArrayIn& cu_seqlens, const py::typing::Optional<py::float_>& scale, const cf::pyext::OptionalArrayIn& k_cache, const cf::pyext::OptionalArrayIn& v_cache,
                         int64_t cache_length, const cf::pyext::OptionalOut& out) {
  Arg xa = cf::pyext::float_arg(x, "x");
  WeightArg iwa = weight_arg(in_weight, "in_weight"), owa = weight_arg(out_weight, "out_weight"),
            l1a = weight_arg(linear1_weight, "linear1_weight"), l2a = weight_arg(linear2_weight, "linear2_weight");
  cf::ops::EncoderLayerWeights w(iwa.ref(), owa.ref(), l1a.ref(), l2a.ref());
  Arg held[8], ma, kpa, cua;
  w.in_bias = cf::pyext::optional_float(in_bias, "in_bias", held[0]);
  w.out_bias = cf::pyext::optional_float(out_bias, "out_bias", held[1]);
  w.linear1_bias = cf::pyext::optional_float(linear1_bias, "linear1_bias", held[2]);
  w.linear2_bias = cf::pyext::optional_float(linear2_bias, "linear2_bias", held[3]);
  w.norm1_weight = cf::pyext::optional_float(norm1_weight, "norm1_weight", held[4]);
  w.norm1_bias = cf::pyext::optional_float(norm1_bias, "norm1_bias", held[5]);
  w.norm2_weight = cf::pyext::optional_float(norm2_weight, "norm2_weight", held[6]);
  w.norm2_bias = cf::pyext::optional_float(norm2_bias, "norm2_bias", held[7]);
  cf::ops::EncoderLayerOptions opt;
  opt.num_heads = num_heads;
  opt.act = activation_arg(activation);
  opt.norm_first = norm_first;
  opt.eps1 = norm1_eps;
  opt.eps2 = norm2_eps;
  opt.is_causal = is_causal;
  if (!scale.is_none()) {
    opt.scale = scale.cast<float>();
    CF_CHECK(std::isfinite(*opt.scale), ValueError, "scale must be finite, got ", *opt.scale);
  }
  Arg kca, vca;
  cf::ops::KVCacheRef cache;
  const bool has_cache = cache_args(k_cache, v_cache, "k_cache", "v_cache", kca, vca, cache, cache_length);
  OptionalView m = cf::pyext::optional_mask(attn_mask, "attn_mask", ma);
  OptionalView kpm = cf::pyext::optional_mask(key_padding_mask, "key_padding_mask", kpa);
  OptionalView cu;
  if (!cu_seqlens.is_none()) {
    cua = cf::pyext::ids_arg(cu_seqlens, "cu_seqlens");
    cu = cua.view;
  }
  const cf::ops::KVCacheRef* cp = has_cache ? &cache : nullptr;
  const auto shape = cf::ops::transformer_encoder_layer_shape(xa.view, w, num_heads, m, kpm, cu, cp);
  // The caches are written: they must not share memory with anything the layer reads.
  std::vector<const Arg*> reads{&xa, &iwa.arg, &owa.arg, &l1a.arg, &l2a.arg, &ma, &kpa, &cua};
  for (const Arg& a : held) reads.push_back(&a);
  for (const Arg* a : reads)
    CF_CHECK(!cf::pyext::overlap(*a, kca) && !cf::pyext::overlap(*a, vca), ValueError,
             "k_cache and v_cache must not share memory with the layer's other arguments (x included)");
  // out may be x itself (the layer reads x before it writes out), but nothing else it reads or writes
  reads.front() = &kca;
  reads.push_back(&vca);
  Arg oa = cf::pyext::output(out, shape, reads);
  if (!out.is_none()) cf::pyext::output(out, shape, {&xa}, /*allow_same=*/true);
  {
    py::gil_scoped_release nogil;
    cf::ops::transformer_encoder_layer(xa.view, w, opt, m, kpm, cu, oa.view, cp);
  }
  return oa.result();
}

cf::pyext::ArrayOut decoder_layer(const cf::pyext::ArrayIn& x, const cf::pyext::OptionalArrayIn& memory, int64_t num_heads, const WeightIn& self_in_weight,
                         const cf::pyext::OptionalArrayIn& self_in_bias, const WeightIn& self_out_weight, const cf::pyext::OptionalArrayIn& self_out_bias,
                         const WeightIn& cross_in_weight, const cf::pyext::OptionalArrayIn& cross_in_bias, const WeightIn& cross_out_weight,
                         const cf::pyext::OptionalArrayIn& cross_out_bias, const WeightIn& linear1_weight, const cf::pyext::OptionalArrayIn& linear1_bias,
                         const WeightIn& linear2_weight, const cf::pyext::OptionalArrayIn& linear2_bias, const cf::pyext::OptionalArrayIn& norm1_weight,
                         const cf::pyext::OptionalArrayIn& norm1_bias, const cf::pyext::OptionalArrayIn& norm2_weight, const cf::pyext::OptionalArrayIn& norm2_bias, const cf::pyext::OptionalArrayIn& norm3_weight,
                         const cf::pyext::OptionalArrayIn& norm3_bias, const py::typing::Optional<py::str>& activation, bool norm_first, float eps1, float eps2,
                         float eps3, const cf::pyext::OptionalArrayIn& tgt_mask, const cf::pyext::OptionalArrayIn& tgt_key_padding_mask, const cf::pyext::OptionalArrayIn& memory_mask,
                         const cf::pyext::OptionalArrayIn& memory_key_padding_mask, bool tgt_is_causal, bool memory_is_causal, const cf::pyext::OptionalArrayIn& k_cache,
                         const cf::pyext::OptionalArrayIn& v_cache, int64_t cache_length, const cf::pyext::OptionalArrayIn& memory_k, const cf::pyext::OptionalArrayIn& memory_v,
                         int64_t memory_length, const cf::pyext::OptionalOut& out) {
  Arg xa = cf::pyext::float_arg(x, "x"), ma;
  OptionalView mem = cf::pyext::optional_float(memory, "memory", ma);
  WeightArg siw = weight_arg(self_in_weight, "self_in_weight"), sow = weight_arg(self_out_weight, "self_out_weight"),
            ciw = weight_arg(cross_in_weight, "cross_in_weight"), cow = weight_arg(cross_out_weight, "cross_out_weight"),
            l1w = weight_arg(linear1_weight, "linear1_weight"), l2w = weight_arg(linear2_weight, "linear2_weight");
  cf::ops::DecoderLayerWeights w(siw.ref(), sow.ref(), ciw.ref(), cow.ref(), l1w.ref(), l2w.ref());
  Arg held[12];
  w.self_in_bias = cf::pyext::optional_float(self_in_bias, "self_in_bias", held[0]);
  w.self_out_bias = cf::pyext::optional_float(self_out_bias, "self_out_bias", held[1]);
  w.cross_in_bias = cf::pyext::optional_float(cross_in_bias, "cross_in_bias", held[2]);
  w.cross_out_bias = cf::pyext::optional_float(cross_out_bias, "cross_out_bias", held[3]);
  w.linear1_bias = cf::pyext::optional_float(linear1_bias, "linear1_bias", held[4]);
  w.linear2_bias = cf::pyext::optional_float(linear2_bias, "linear2_bias", held[5]);
  w.norm1_weight = cf::pyext::optional_float(norm1_weight, "norm1_weight", held[6]);
  w.norm1_bias = cf::pyext::optional_float(norm1_bias, "norm1_bias", held[7]);
  w.norm2_weight = cf::pyext::optional_float(norm2_weight, "norm2_weight", held[8]);
  w.norm2_bias = cf::pyext::optional_float(norm2_bias, "norm2_bias", held[9]);
  w.norm3_weight = cf::pyext::optional_float(norm3_weight, "norm3_weight", held[10]);
  w.norm3_bias = cf::pyext::optional_float(norm3_bias, "norm3_bias", held[11]);
  cf::ops::DecoderLayerOptions opt;
  opt.num_heads = num_heads;
  opt.act = activation_arg(activation);
  opt.norm_first = norm_first;
  opt.eps1 = eps1;
  opt.eps2 = eps2;
  opt.eps3 = eps3;
  opt.tgt_is_causal = tgt_is_causal;
  opt.memory_is_causal = memory_is_causal;
  Arg tma, tka, mma, mka, kca, vca, mkc, mvc;
  OptionalView tm = cf::pyext::optional_mask(tgt_mask, "tgt_mask", tma);
  OptionalView tk = cf::pyext::optional_mask(tgt_key_padding_mask, "tgt_key_padding_mask", tka);
  OptionalView mm = cf::pyext::optional_mask(memory_mask, "memory_mask", mma);
  OptionalView mk = cf::pyext::optional_mask(memory_key_padding_mask, "memory_key_padding_mask", mka);
  cf::ops::KVCacheRef sc, cc;
  const bool has_sc = cache_args(k_cache, v_cache, "k_cache", "v_cache", kca, vca, sc, cache_length);
  const bool has_cc = cache_args(memory_k, memory_v, "memory_k", "memory_v", mkc, mvc, cc, memory_length);
  const cf::ops::KVCacheRef* scp = has_sc ? &sc : nullptr;
  const cf::ops::KVCacheRef* ccp = has_cc ? &cc : nullptr;
  const auto shape = cf::ops::transformer_decoder_layer_shape(xa.view, mem, w, num_heads, tm, tk, mm, mk, scp, ccp);
  // the caches are written: they must not share memory with anything the layer reads, nor each other
  std::vector<const Arg*> reads{&xa, &ma, &siw.arg, &sow.arg, &ciw.arg, &cow.arg, &l1w.arg, &l2w.arg,
                                &tma, &tka, &mma, &mka};
  for (const Arg& a : held) reads.push_back(&a);
  for (const Arg* c : {&kca, &vca, &mkc, &mvc}) {
    for (const Arg* a : reads)
      CF_CHECK(!cf::pyext::overlap(*a, *c), ValueError,
               "the caches must not share memory with the layer's other arguments (x and memory included)");
  }
  for (const Arg* c : {&kca, &vca})
    for (const Arg* d : {&mkc, &mvc})
      CF_CHECK(!cf::pyext::overlap(*c, *d), ValueError, "k_cache/v_cache and memory_k/memory_v must not share memory");
  reads.front() = &kca;  // out may be x itself, but nothing else the layer reads or writes
  for (const Arg* c : {&vca, &mkc, &mvc}) reads.push_back(c);
  Arg oa = cf::pyext::output(out, shape, reads, false, &xa);
  if (!out.is_none()) cf::pyext::output(out, shape, {&xa}, /*allow_same=*/true, &xa);
  {
    py::gil_scoped_release nogil;
    cf::ops::transformer_decoder_layer(xa.view, mem, w, opt, tm, tk, mm, mk, oa.view, scp, ccp);
  }
  return oa.result();
}

py::object additive(const cf::pyext::ArrayIn& query, const cf::pyext::ArrayIn& keys, const cf::pyext::ArrayIn& values, const cf::pyext::ArrayIn& w_query, const cf::pyext::ArrayIn& w_key,
                    const cf::pyext::ArrayIn& v, const cf::pyext::OptionalArrayIn& mask, bool return_weights) {
  Arg qa = cf::pyext::float_arg(query, "query"), ka = cf::pyext::float_arg(keys, "keys"),
      va = cf::pyext::float_arg(values, "values"), wqa = cf::pyext::float_arg(w_query, "w_query"),
      wka = cf::pyext::float_arg(w_key, "w_key"), vva = cf::pyext::float_arg(v, "v"), ma;
  OptionalView m = cf::pyext::optional_bool(mask, "mask", ma);
  const auto shape = cf::ops::additive_attention_shape(qa.view, ka.view, va.view, wqa.view, wka.view, vva.view, m);
  Arg oa = cf::pyext::output(py::none(), shape, {}, false, &qa);
  Arg wa;
  OptionalView w;
  if (return_weights) {
    wa = cf::pyext::output(py::none(), {shape[0], shape[1], ka.view.shape[1]}, {}, false, &qa);
    w = wa.view;
  }
  {
    py::gil_scoped_release nogil;
    cf::ops::additive_attention(qa.view, ka.view, va.view, wqa.view, wka.view, vva.view, m, oa.view, w);
  }
  if (return_weights) return py::make_tuple(oa.result(), wa.result());
  return oa.result();
}

py::object layer_norm(const cf::pyext::ArrayIn& x, const cf::pyext::OptionalArrayIn& weight, const cf::pyext::OptionalArrayIn& bias, float eps, const cf::pyext::OptionalArrayIn& residual,
                      bool return_sum, const cf::pyext::OptionalOut& out) {
  Arg xa = cf::pyext::float_arg(x, "x"), wa, ba, ra;
  OptionalView w = cf::pyext::optional_float(weight, "weight", wa);
  OptionalView b = cf::pyext::optional_float(bias, "bias", ba);
  OptionalView r = cf::pyext::optional_float(residual, "residual", ra);
  cf::ops::layer_norm_check(xa.view, w, b, r, eps, return_sum);
  const cf::ops::Shape shape(xa.view.shape, xa.view.shape + xa.view.ndim);
  Arg oa = cf::pyext::output(out, shape, {&xa, &wa, &ba, &ra}, /*allow_same=*/true);
  Arg sa;
  OptionalView s;
  if (return_sum) {
    sa = cf::pyext::output(py::none(), shape, {}, false, &xa);
    s = sa.view;
  }
  {
    py::gil_scoped_release nogil;
    cf::ops::layer_norm(xa.view, w, b, r, eps, oa.view, s);
  }
  if (return_sum) return py::make_tuple(oa.result(), sa.result());
  return oa.result();
}

cf::pyext::ArrayOut softmax(const cf::pyext::ArrayIn& x, int64_t axis, const cf::pyext::OptionalOut& out) {
  Arg xa = cf::pyext::float_arg(x, "x");
  cf::ops::softmax_axis(xa.view, axis);
  Arg oa = cf::pyext::output(out, {xa.view.shape, xa.view.shape + xa.view.ndim}, {&xa}, true);
  {
    py::gil_scoped_release nogil;
    cf::ops::softmax(xa.view, axis, oa.view);
  }
  return oa.result();
}

cf::pyext::ArrayOut activation(const cf::pyext::ArrayIn& x, cf::ops::Activation act, const cf::pyext::OptionalOut& out) {
  Arg xa = cf::pyext::float_arg(x, "x");
  Arg oa = cf::pyext::output(out, {xa.view.shape, xa.view.shape + xa.view.ndim}, {&xa}, true);
  {
    py::gil_scoped_release nogil;
    cf::ops::activation(xa.view, act, oa.view);
  }
  return oa.result();
}

cf::pyext::ArrayOut gelu(const cf::pyext::ArrayIn& x, const std::string& approximate, const cf::pyext::OptionalOut& out) {
  if (approximate == "none") return activation(x, cf::ops::Activation::gelu, out);
  if (approximate == "tanh") return activation(x, cf::ops::Activation::gelu_tanh, out);
  cf::raise<cf::ValueError>("approximate must be 'none' or 'tanh', got '", approximate, "'");
}

cf::pyext::ArrayOut embedding(const cf::pyext::ArrayIn& ids, const cf::pyext::ArrayIn& table) {
  Arg ia = cf::pyext::ids_arg(ids, "ids"), ta = cf::pyext::float_arg(table, "table");
  Arg oa = cf::pyext::output(py::none(), cf::ops::embedding_shape(ia.view, ta.view), {}, false, &ta);
  {
    py::gil_scoped_release nogil;
    cf::ops::embedding(ia.view, ta.view, oa.view);
  }
  return oa.result();
}

py::typing::Union<py::array_t<int64_t>, cf::pyext::Tensor> argmax(const cf::pyext::ArrayIn& x) {
  Arg xa = cf::pyext::float_arg(x, "x");
  CF_CHECK(xa.view.ndim >= 1, ValueError, "argmax: x must have at least 1 dimension, got a scalar");
  const std::vector<int64_t> shape(xa.view.shape, xa.view.shape + xa.view.ndim - 1);
  py::object result;
  cf::TensorView ov;
  if (xa.tensor) {  // the indices stay on x's device
    result = cf::pyext::new_tensor(shape, cf::DType::i64, xa.view.device);
    ov = cf::pyext::tensor_of(result).view;
  } else {
    py::array_t<int64_t> a(std::vector<py::ssize_t>(shape.begin(), shape.end()));
    ov = cf::TensorView(a.mutable_data(), cf::DType::i64, static_cast<int>(shape.size()), shape.data());
    result = std::move(a);
  }
  {
    py::gil_scoped_release nogil;
    cf::ops::argmax(xa.view, ov);
  }
  return result;
}

cf::pyext::FloatArray sinusoidal(int64_t n, int64_t dim) {
  CF_CHECK(n >= 0, ValueError, "num_positions must be >= 0, got ", n);
  CF_CHECK(dim >= 1, ValueError, "dim must be >= 1, got ", dim);
  Arg oa = cf::pyext::output(py::none(), {n, dim}, {});
  {
    py::gil_scoped_release nogil;
    cf::ops::sinusoidal_positions(n, dim, oa.view);
  }
  return oa.result();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "coreformer's C++ core (see coreformer.ops for the documented API)";
  cf::pyext::init_numpy();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const cf::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const cf::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const cf::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what());
    } catch (const cf::RuntimeError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    } catch (const cf::MemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });

  cf::pyext::register_tensor(m);
  m.def("info", &info);
  m.def("empty_cache", [](int device) {
          py::gil_scoped_release nogil;
          return cf::cuda::empty_cache(device);
        }, py::arg("device") = -1);
  m.def("_cuda_gemm", []() {  // which GEMM linear uses on a GPU; loads cuBLAS if it was not yet
    return cf::cuda::blas::available() ? "cublas: " + cf::cuda::blas::describe()
                                       : "coreformer kernels (" + cf::cuda::blas::describe() + ")";
  });
  m.def("_cublas_search_dirs", &cf::cuda::blas::set_search_dirs, py::arg("dirs"));
  m.def("_set_cublas", &cf::cuda::blas::set_enabled, py::arg("enabled"),
        "Whether linear on a GPU may use cuBLAS (the tests run both paths); returns the previous setting.");
  m.def("synchronize", [](int device) {
          cf::cuda::require_device(device);
          py::gil_scoped_release nogil;
          cf::cuda::synchronize(device);
        }, py::arg("device") = 0, "Waits for the GPU work coreformer queued on cuda:device.");
  m.def("get_num_threads", &cf::get_num_threads);
  m.def("_gemm_panel_width", [] { return cf::kernels().gemm_nr; }, "The active ISA's GEMM panel width.");
  m.def("_startup_notes", &cf::take_notes, "What the core noticed at start-up (environment variables it could "
        "not follow), once: coreformer logs them.");
  m.def("set_num_threads", &cf::set_num_threads, py::arg("n"));
  m.def("_threads_lost_to_fork", &cf::threads_lost_to_fork);
  m.def("_set_isa", [](const std::string& name) { cf::set_active_isa(cf::isa_from_name(name)); }, py::arg("name"));

  const auto none = py::none();
  py::class_<cf::ops::PackedWeight>(m, "PackedWeight",
                                    "A Linear weight (out, in) packed once for the GEMM (see coreformer.ops.pack_weight).")
      .def_property_readonly("shape", [](const cf::ops::PackedWeight& w) { return py::make_tuple(w.rows, w.cols); })
      .def_property_readonly("dtype", [](const cf::ops::PackedWeight& w) { return std::string(cf::dtype_name(w.dtype)); })
      .def_property_readonly("nbytes", &cf::ops::PackedWeight::nbytes)
      .def_property_readonly("panel_width", [](const cf::ops::PackedWeight& w) { return w.nr; },
                             "Columns per GEMM panel it was packed for (the ISA's; another width is unpacked at use).")
      .def("unpack", &unpack_weight, "The weight as a new float32 (out, in) array (bfloat16 widened exactly).")
      .def("__len__", [](const cf::ops::PackedWeight& w) { return w.rows; })
      .def("__getitem__",
           [](const cf::ops::PackedWeight& w, const py::slice& rows) {
             py::ssize_t start, stop, step, len;
             if (!rows.compute(static_cast<py::ssize_t>(w.rows), &start, &stop, &step, &len)) throw py::error_already_set();
             CF_CHECK(step == 1, ValueError, "a PackedWeight is sliced by contiguous rows, got step ", step);
             if (len <= 0) stop = start;
             return cf::ops::slice_rows(w, start, stop);
           },
           "Rows start:stop (out features), sharing memory when the slice starts a panel.")
      .def("__reduce__",
           [](const cf::ops::PackedWeight& w) -> py::tuple {  // pickle and copy, by every protocol: the stored bytes
             return py::make_tuple(py::module_::import("coreformer.ops").attr("_packed_weight_from_state"),
                                   py::make_tuple(packed_state(w)));
           })
      .def("__repr__", [](const cf::ops::PackedWeight& w) {
        return "PackedWeight(shape=(" + std::to_string(w.rows) + ", " + std::to_string(w.cols) + "), dtype=" +
               cf::dtype_name(w.dtype) + ")";
      });
  cf::pyext::refuse_direct_construction(m.attr("PackedWeight"), "use coreformer.ops.pack_weight(weight)");
  m.def("_packed_weight_from_state", &packed_from_state, py::arg("state"),
        "The PackedWeight whose __reduce__ gave `state` (pickle's reconstructor).");
  m.def("pack_weight", &pack_weight, py::arg("weight"), py::arg("dtype") = "float32", py::arg("transposed") = false);
  m.def("linear", &linear, py::arg("x"), py::arg("weight"), py::arg("bias") = none, py::arg("activation") = none,
        py::arg("residual") = none, py::arg("out") = none);
  m.def("scaled_dot_product_attention", &sdpa, py::arg("query"), py::arg("key"), py::arg("value"),
        py::arg("attn_mask") = none, py::arg("is_causal") = false, py::arg("scale") = none, py::arg("out") = none);
  m.def("multi_head_attention", &mha, py::arg("query"), py::arg("key"), py::arg("value"), py::arg("num_heads"),
        py::arg("in_weight"), py::arg("in_bias"), py::arg("out_weight"), py::arg("out_bias"),
        py::arg("attn_mask") = none, py::arg("key_padding_mask") = none, py::arg("is_causal") = false);
  m.def("transformer_encoder_layer", &encoder_layer, py::arg("x"), py::arg("num_heads"), py::arg("in_weight"),
        py::arg("in_bias"), py::arg("out_weight"), py::arg("out_bias"), py::arg("linear1_weight"),
        py::arg("linear1_bias"), py::arg("linear2_weight"), py::arg("linear2_bias"), py::arg("norm1_weight"),
        py::arg("norm1_bias"), py::arg("norm2_weight"), py::arg("norm2_bias"), py::arg("activation") = "relu",
        py::arg("norm_first") = false, py::arg("norm1_eps") = 1e-5, py::arg("norm2_eps") = 1e-5,
        py::arg("attn_mask") = none,
        py::arg("key_padding_mask") = none, py::arg("is_causal") = false, py::arg("cu_seqlens") = none,
        py::arg("scale") = none, py::arg("k_cache") = none, py::arg("v_cache") = none, py::arg("cache_length") = 0,
        py::arg("out") = none);
  m.def("transformer_decoder_layer", &decoder_layer, py::arg("x"), py::arg("memory"), py::arg("num_heads"),
        py::arg("self_in_weight"), py::arg("self_in_bias"), py::arg("self_out_weight"), py::arg("self_out_bias"),
        py::arg("cross_in_weight"), py::arg("cross_in_bias"), py::arg("cross_out_weight"), py::arg("cross_out_bias"),
        py::arg("linear1_weight"), py::arg("linear1_bias"), py::arg("linear2_weight"), py::arg("linear2_bias"),
        py::arg("norm1_weight"), py::arg("norm1_bias"), py::arg("norm2_weight"), py::arg("norm2_bias"),
        py::arg("norm3_weight"), py::arg("norm3_bias"), py::arg("activation") = "relu", py::arg("norm_first") = false,
        py::arg("eps1") = 1e-5, py::arg("eps2") = 1e-5, py::arg("eps3") = 1e-5, py::arg("tgt_mask") = none,
        py::arg("tgt_key_padding_mask") = none, py::arg("memory_mask") = none,
        py::arg("memory_key_padding_mask") = none, py::arg("tgt_is_causal") = false,
        py::arg("memory_is_causal") = false, py::arg("k_cache") = none,
        py::arg("v_cache") = none, py::arg("cache_length") = 0, py::arg("memory_k") = none,
        py::arg("memory_v") = none, py::arg("memory_length") = 0, py::arg("out") = none);
  m.def("additive_attention", &additive, py::arg("query"), py::arg("keys"), py::arg("values"), py::arg("w_query"),
        py::arg("w_key"), py::arg("v"), py::arg("mask") = none, py::arg("return_weights") = false);
  m.def("layer_norm", &layer_norm, py::arg("x"), py::arg("weight") = none, py::arg("bias") = none,
        py::arg("eps") = 1e-5, py::arg("residual") = none, py::arg("return_sum") = false, py::arg("out") = none);
  m.def("softmax", &softmax, py::arg("x"), py::arg("axis") = -1, py::arg("out") = none);
  m.def("gelu", &gelu, py::arg("x"), py::arg("approximate") = "none", py::arg("out") = none);
  m.def("relu",
        [](const cf::pyext::ArrayIn& x, const cf::pyext::OptionalOut& out) {
          return activation(x, cf::ops::Activation::relu, out);
        },
        py::arg("x"), py::arg("out") = none);
  m.def("embedding", &embedding, py::arg("ids"), py::arg("table"));
  m.def("argmax", &argmax, py::arg("x"));
  m.def("sinusoidal_positions", &sinusoidal, py::arg("num_positions"), py::arg("dim"));
  cf::pyext::register_train(m);
}

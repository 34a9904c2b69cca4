// The weighted sum at the end of a split-attention block, as one MXNet operator.
//
//   out[b, c, :] = sum_r  w[b, k, r, i] * x[b, r*C + c, :]      with c = k*(C/K) + i
//
// x is the (B, R*C, H, W) output of the grouped convolution; w holds the softmax attention in fc2's
// channel order [K][R][C/K] (any shape with B*K*R*(C/K) elements).  In standard operators this is a
// split (a copy of x), R broadcast multiplies and an add_n: four passes over x.  Here it is one read
// of x and one write of out; the backward pass reads x and dout once for both gradients.
//
// Loaded with mx.library.load (see resnest_gluon/ops/__init__.py).  Built against the lib_api.h and
// lib_api.cc that ship in the MXNet wheel.  Floating point follows the naive graph exactly in the
// forward pass: products are rounded before they are added (the build passes -ffp-contract=off).
// With RESNEST_WITH_CUDA (an MXNet built with CUDA, and nvcc), the GPU kernels of
// split_attention_cuda.cu are registered too.

#include <omp.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "lib_api.h"

using mxnet::ext::MXContext;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

using Attrs = std::unordered_map<std::string, std::string>;

#ifdef RESNEST_WITH_CUDA
extern "C" int resnest_split_attention_forward_cuda(int dtype, const void* x, const void* w, void* out,
                                                    int64_t batch, int64_t radix, int64_t cardinality,
                                                    int64_t channels, int64_t spatial, void* stream);
extern "C" int resnest_split_attention_backward_cuda(int dtype, const void* dout, const void* x, const void* w,
                                                     void* dx, void* dw, int64_t batch, int64_t radix,
                                                     int64_t cardinality, int64_t channels, int64_t spatial,
                                                     void* stream);
extern "C" const char* resnest_cuda_error_string(int code);
#endif

namespace {

// Below this many elements of out, one thread is faster than waking the others.
constexpr int64_t kParallelMin = 1 << 15;

struct Dims {
  int64_t batch, radix, cardinality, channels, spatial;
  int64_t per_group() const { return channels / cardinality; }
  int64_t rows() const { return batch * channels; }
  // Offset of w[b, k, r, i] for output row (b, c).
  int64_t weight(int64_t b, int64_t c, int64_t r) const {
    const int64_t k = c / per_group(), i = c % per_group();
    return ((b * cardinality + k) * radix + r) * per_group() + i;
  }
  // Offset of the first element of x[b, r*C + c, :].
  int64_t input(int64_t b, int64_t c, int64_t r) const {
    return ((b * radix + r) * channels + c) * spatial;
  }
};

bool read_int(const Attrs& attrs, const char* key, int64_t* value) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    MX_ERROR_MSG << "split_attention_sum: attribute '" << key << "' is required";
    return false;
  }
  try {
    *value = std::stoll(it->second);
  } catch (...) {
    MX_ERROR_MSG << "split_attention_sum: attribute '" << key << "' is not an integer: " << it->second;
    return false;
  }
  if (*value < 1) {
    MX_ERROR_MSG << "split_attention_sum: attribute '" << key << "' must be >= 1, got " << *value;
    return false;
  }
  return true;
}

bool read_dims(const Attrs& attrs, const std::vector<int64_t>& x, int64_t w_size, Dims* d) {
  if (!read_int(attrs, "radix", &d->radix) || !read_int(attrs, "cardinality", &d->cardinality)) {
    return false;
  }
  if (x.size() < 2) {
    MX_ERROR_MSG << "split_attention_sum: x must have a channel axis, got " << x.size() << " dims";
    return false;
  }
  d->batch = x[0];
  d->spatial = 1;
  for (size_t i = 2; i < x.size(); ++i) d->spatial *= x[i];
  if (x[1] % (d->radix * d->cardinality)) {
    MX_ERROR_MSG << "split_attention_sum: x has " << x[1] << " channels, which do not divide by radix "
                 << d->radix << " x cardinality " << d->cardinality;
    return false;
  }
  d->channels = x[1] / d->radix;
  if (w_size != d->batch * d->radix * d->channels) {
    MX_ERROR_MSG << "split_attention_sum: the weights have " << w_size << " elements, expected batch x "
                 << "radix x channels = " << d->batch * d->radix * d->channels;
    return false;
  }
  return true;
}

// Each row kernel is compiled for AVX-512, AVX2 and plain x86-64; the loader picks one per CPU.
template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) void sum_row(
    const T* x, int64_t radix_stride, const T* w, int64_t w_stride, int64_t radix, int64_t n, T* out) {
  const T w0 = w[0];
  for (int64_t j = 0; j < n; ++j) out[j] = w0 * x[j];
  for (int64_t r = 1; r < radix; ++r) {
    const T wr = w[r * w_stride];
    const T* xr = x + r * radix_stride;
    for (int64_t j = 0; j < n; ++j) out[j] += wr * xr[j];
  }
}

template <typename T>
__attribute__((target_clones("avx512f", "avx2", "default"))) T grad_row(
    const T* x, const T* dout, T w, int64_t n, T* dx) {
  T dot = 0;
  for (int64_t j = 0; j < n; ++j) {
    dx[j] = w * dout[j];
    dot += x[j] * dout[j];
  }
  return dot;
}

template <typename T>
void forward_cpu(const Dims& d, const T* x, const T* w, T* out) {
  const int64_t rows = d.rows(), n = d.spatial;
  const int64_t radix_stride = d.channels * n, w_stride = d.per_group();
#pragma omp parallel for schedule(static) if (rows * n >= kParallelMin)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / d.channels, c = row % d.channels;
    sum_row(x + d.input(b, c, 0), radix_stride, w + d.weight(b, c, 0), w_stride, d.radix, n,
            out + row * n);
  }
}

template <typename T>
void backward_cpu(const Dims& d, const T* dout, const T* x, const T* w, T* dx, T* dw) {
  const int64_t rows = d.rows(), n = d.spatial;
#pragma omp parallel for schedule(static) if (rows * n * d.radix >= kParallelMin)
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t b = row / d.channels, c = row % d.channels;
    for (int64_t r = 0; r < d.radix; ++r) {
      const int64_t xi = d.input(b, c, r), wi = d.weight(b, c, r);
      dw[wi] = grad_row(x + xi, dout + row * n, w[wi], n, dx + xi);
    }
  }
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  int64_t value;
  if (!read_int(attrs, "radix", &value) || !read_int(attrs, "cardinality", &value)) return MX_FAIL;
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

bool cpu_type(int t) { return t == mxnet::ext::kFloat32 || t == mxnet::ext::kFloat64; }

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  const int t = (*in)[0];
#ifdef RESNEST_WITH_CUDA
  const bool known = cpu_type(t) || t == mxnet::ext::kFloat16;  // float16 on GPUs only (see forward)
#else
  const bool known = cpu_type(t);
#endif
  if (!known) {
    MX_ERROR_MSG << "split_attention_sum takes float32 or float64 (and float16 on GPUs), got dtype code " << t
                 << "; resnest_gluon.set_fused_sum(net, False) switches back to the standard operators";
    return MX_FAIL;
  }
  if ((*in)[1] != t) {
    MX_ERROR_MSG << "split_attention_sum: x and the weights must have one dtype";
    return MX_FAIL;
  }
  (*out)[0] = t;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const std::vector<int64_t> x((*in)[0].begin(), (*in)[0].end());
  int64_t w_size = 1;
  for (unsigned int v : (*in)[1]) w_size *= v;
  Dims d;
  if (!read_dims(attrs, x, w_size, &d)) return MX_FAIL;
  std::vector<unsigned int> shape((*in)[0]);
  shape[1] = static_cast<unsigned int>(d.channels);
  (*out)[0] = shape;
  return MX_SUCCESS;
}

// The dims of a call, and whether the CPU kernels take its dtype (float16 reaches here only on a CUDA build).
bool read_cpu_dims(const Attrs& attrs, const MXTensor& x, const MXTensor& w, Dims* d) {
  if (!read_dims(attrs, x.shape, w.size(), d)) return false;
  if (cpu_type(x.dtype)) return true;
  MX_ERROR_MSG << "split_attention_sum: the CPU kernel takes float32 or float64";
  return false;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource&) {
  MXTensor &x = (*inputs)[0], &w = (*inputs)[1], &out = (*outputs)[0];
  Dims d;
  if (!read_cpu_dims(attrs, x, w, &d)) return MX_FAIL;
  if (x.dtype == mxnet::ext::kFloat32) {
    forward_cpu(d, x.data<float>(), w.data<float>(), out.data<float>());
  } else {
    forward_cpu(d, x.data<double>(), w.data<double>(), out.data<double>());
  }
  return MX_SUCCESS;
}

// inputs: the gradient of out, then x and w; outputs: the gradients of x and w.
MXReturnValue backward(const Attrs& attrs, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                       const OpResource&) {
  MXTensor &dout = (*inputs)[0], &x = (*inputs)[1], &w = (*inputs)[2];
  MXTensor &dx = (*outputs)[0], &dw = (*outputs)[1];
  Dims d;
  if (!read_cpu_dims(attrs, x, w, &d)) return MX_FAIL;
  if (x.dtype == mxnet::ext::kFloat32) {
    backward_cpu(d, dout.data<float>(), x.data<float>(), w.data<float>(), dx.data<float>(),
                 dw.data<float>());
  } else {
    backward_cpu(d, dout.data<double>(), x.data<double>(), w.data<double>(), dx.data<double>(),
                 dw.data<double>());
  }
  return MX_SUCCESS;
}

#ifdef RESNEST_WITH_CUDA
MXReturnValue cuda_status(int code) {
  if (code == 0) return MX_SUCCESS;
  MX_ERROR_MSG << "split_attention_sum: CUDA error " << code << ": " << resnest_cuda_error_string(code);
  return MX_FAIL;
}

MXReturnValue forward_gpu(const Attrs& attrs, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                          const OpResource& res) {
  MXTensor &x = (*inputs)[0], &w = (*inputs)[1], &out = (*outputs)[0];
  Dims d;
  if (!read_dims(attrs, x.shape, w.size(), &d)) return MX_FAIL;
  return cuda_status(resnest_split_attention_forward_cuda(x.dtype, x.data_ptr, w.data_ptr, out.data_ptr, d.batch,
                                                          d.radix, d.cardinality, d.channels, d.spatial,
                                                          res.get_cuda_stream()));
}

MXReturnValue backward_gpu(const Attrs& attrs, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                           const OpResource& res) {
  MXTensor &dout = (*inputs)[0], &x = (*inputs)[1], &w = (*inputs)[2];
  MXTensor &dx = (*outputs)[0], &dw = (*outputs)[1];
  Dims d;
  if (!read_dims(attrs, x.shape, w.size(), &d)) return MX_FAIL;
  return cuda_status(resnest_split_attention_backward_cuda(
      x.dtype, dout.data_ptr, x.data_ptr, w.data_ptr, dx.data_ptr, dw.data_ptr, d.batch, d.radix, d.cardinality,
      d.channels, d.spatial, res.get_cuda_stream()));
}
#endif

}  // namespace

REGISTER_OP(split_attention_sum)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
#ifdef RESNEST_WITH_CUDA
    .setForward(forward_gpu, "gpu")
    .setBackward(backward_gpu, "gpu")
#endif
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

MXReturnValue initialize(int version) {
  if (version < 10900) {
    MX_ERROR_MSG << "split_attention_sum needs MXNet >= 1.9, found version code " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

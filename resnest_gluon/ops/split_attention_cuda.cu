// CUDA kernels of split_attention_sum (see split_attention.cc for the operator and its layout).
//
// Built only where nvcc exists and MXNet was built with CUDA, with --fmad=false so that float32 products are
// rounded before they are added, as in the standard operators. float16 accumulates in float32.
// Each launcher returns a cudaError_t code (0: success) and runs on MXNet's stream.

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

struct Dims {
  int64_t batch, radix, cardinality, channels, spatial;
  __device__ int64_t weight(int64_t b, int64_t c, int64_t r) const {
    const int64_t per_group = channels / cardinality;
    return ((b * cardinality + c / per_group) * radix + r) * per_group + c % per_group;
  }
};

template <typename T> struct Acc { using type = T; };
template <> struct Acc<__half> { using type = float; };

template <typename T> __device__ typename Acc<T>::type load(const T* p) { return *p; }
template <> __device__ float load(const __half* p) { return __half2float(*p); }
template <typename T> __device__ void store(T* p, typename Acc<T>::type v) { *p = v; }
template <> __device__ void store(__half* p, float v) { *p = __float2half(v); }

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 65535 ? blocks : 65535);  // grid-stride loops cover the rest
}

template <typename T>
__global__ void forward_kernel(Dims d, const T* x, const T* w, T* out) {
  const int64_t n = d.batch * d.channels * d.spatial;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t s = idx % d.spatial, row = idx / d.spatial, c = row % d.channels, b = row / d.channels;
    typename Acc<T>::type acc = 0;
    for (int64_t r = 0; r < d.radix; ++r) {
      acc += load(w + d.weight(b, c, r)) * load(x + ((b * d.radix + r) * d.channels + c) * d.spatial + s);
    }
    store(out + idx, acc);
  }
}

// dx[b, r*C + c, s] = w[b, k, r, i] * dout[b, c, s]
template <typename T>
__global__ void grad_x_kernel(Dims d, const T* dout, const T* w, T* dx) {
  const int64_t n = d.batch * d.radix * d.channels * d.spatial;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t s = idx % d.spatial, rc = (idx / d.spatial) % (d.radix * d.channels);
    const int64_t b = idx / (d.spatial * d.radix * d.channels), r = rc / d.channels, c = rc % d.channels;
    store(dx + idx, load(w + d.weight(b, c, r)) * load(dout + (b * d.channels + c) * d.spatial + s));
  }
}

// dw[b, k, r, i] = sum_s x[b, r*C + c, s] * dout[b, c, s]: one block per (b, r, c), a tree sum in shared memory.
template <typename T>
__global__ void grad_w_kernel(Dims d, const T* dout, const T* x, T* dw) {
  using A = typename Acc<T>::type;
  __shared__ A partial[kThreads];
  const int64_t brc = blockIdx.x, c = brc % d.channels, r = (brc / d.channels) % d.radix;
  const int64_t b = brc / (d.channels * d.radix);
  const T* xs = x + brc * d.spatial;
  const T* gs = dout + (b * d.channels + c) * d.spatial;
  A sum = 0;
  for (int64_t s = threadIdx.x; s < d.spatial; s += blockDim.x) sum += load(xs + s) * load(gs + s);
  partial[threadIdx.x] = sum;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) store(dw + d.weight(b, c, r), partial[0]);
}

template <typename T>
int forward(Dims d, const void* x, const void* w, void* out, cudaStream_t stream) {
  forward_kernel<T><<<blocks_for(d.batch * d.channels * d.spatial), kThreads, 0, stream>>>(
      d, static_cast<const T*>(x), static_cast<const T*>(w), static_cast<T*>(out));
  return cudaGetLastError();
}

template <typename T>
int backward(Dims d, const void* dout, const void* x, const void* w, void* dx, void* dw, cudaStream_t stream) {
  const T *g = static_cast<const T*>(dout), *xs = static_cast<const T*>(x), *ws = static_cast<const T*>(w);
  grad_x_kernel<T><<<blocks_for(d.batch * d.radix * d.channels * d.spatial), kThreads, 0, stream>>>(
      d, g, ws, static_cast<T*>(dx));
  const int64_t rows = d.batch * d.radix * d.channels;
  if (rows > 2147483647) return cudaErrorInvalidConfiguration;
  grad_w_kernel<T><<<static_cast<unsigned int>(rows), kThreads, 0, stream>>>(d, g, xs, static_cast<T*>(dw));
  return cudaGetLastError();
}

}  // namespace

// dtype: MXNet's codes (0 float32, 1 float64, 2 float16).
extern "C" int resnest_split_attention_forward_cuda(int dtype, const void* x, const void* w, void* out,
                                                    int64_t batch, int64_t radix, int64_t cardinality,
                                                    int64_t channels, int64_t spatial, void* stream) {
  const Dims d{batch, radix, cardinality, channels, spatial};
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == 0) return forward<float>(d, x, w, out, s);
  if (dtype == 1) return forward<double>(d, x, w, out, s);
  if (dtype == 2) return forward<__half>(d, x, w, out, s);
  return cudaErrorInvalidValue;
}

extern "C" int resnest_split_attention_backward_cuda(int dtype, const void* dout, const void* x, const void* w,
                                                     void* dx, void* dw, int64_t batch, int64_t radix,
                                                     int64_t cardinality, int64_t channels, int64_t spatial,
                                                     void* stream) {
  const Dims d{batch, radix, cardinality, channels, spatial};
  auto s = static_cast<cudaStream_t>(stream);
  if (dtype == 0) return backward<float>(d, dout, x, w, dx, dw, s);
  if (dtype == 1) return backward<double>(d, dout, x, w, dx, dw, s);
  if (dtype == 2) return backward<__half>(d, dout, x, w, dx, dw, s);
  return cudaErrorInvalidValue;
}

extern "C" const char* resnest_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

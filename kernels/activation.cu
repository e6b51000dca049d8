// Activation kernels: fp32 math on each element, grid-stride loops (memory bound: one read per input, one write;
// the GeLU's optional bias is (cols) fp32, read through the cache).
#include "kernels/activation.cuh"
#include "kernels/device_utils.cuh"

namespace cuboid::kernels::activation {

namespace {
constexpr float GELU_SCALE = 0.7978845608028654f; // sqrt(2 / pi)
constexpr float GELU_CUBIC = 0.044715f;

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
} // namespace

// ---- kernels

// BIAS: v = x[idx] + bias[idx % cols]. The column advances with the grid stride (one 64-bit modulo per thread,
// then an add and a compare per element) instead of a 64-bit modulo per element.
template <typename T, bool BIAS>
__global__ void __launch_bounds__(Config::THREADS)
    gelu_forward_kernel(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ bias, std::int64_t n,
                        std::int64_t cols) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  [[maybe_unused]] std::int64_t col = 0;
  [[maybe_unused]] std::int64_t col_step = 0;
  if constexpr (BIAS) {
    col = idx % cols;
    col_step = stride % cols;
  }
  for (; idx < n; idx += stride) {
    float v = detail::to_float(x[idx]);
    if constexpr (BIAS) {
      v += bias[col];
      col += col_step;
      col -= col >= cols ? cols : 0;
    }
    y[idx] = detail::from_float<T>(0.5f * v * (1.0f + tanhf(GELU_SCALE * (v + GELU_CUBIC * v * v * v))));
  }
}

template <typename T, bool BIAS>
__global__ void __launch_bounds__(Config::THREADS)
    gelu_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                         const float* __restrict__ bias, std::int64_t n, std::int64_t cols) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  [[maybe_unused]] std::int64_t col = 0;
  [[maybe_unused]] std::int64_t col_step = 0;
  if constexpr (BIAS) {
    col = idx % cols;
    col_step = stride % cols;
  }
  for (; idx < n; idx += stride) {
    float v = detail::to_float(x[idx]);
    if constexpr (BIAS) {
      v += bias[col];
      col += col_step;
      col -= col >= cols ? cols : 0;
    }
    const float t = tanhf(GELU_SCALE * (v + GELU_CUBIC * v * v * v));
    const float dinner = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * v * v);
    const float g = detail::to_float(dy[idx]);
    dx[idx] = detail::from_float<T>(g * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner));
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    swiglu_forward_kernel(T* __restrict__ y, const T* __restrict__ gate, const T* __restrict__ up, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const float g = detail::to_float(gate[idx]);
    y[idx] = detail::from_float<T>(g * sigmoid(g) * detail::to_float(up[idx]));
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    swiglu_backward_kernel(T* __restrict__ dgate, T* __restrict__ dup, const T* __restrict__ dy,
                           const T* __restrict__ gate, const T* __restrict__ up, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const float g = detail::to_float(gate[idx]);
    const float d = detail::to_float(dy[idx]);
    const float s = sigmoid(g);
    dup[idx] = detail::from_float<T>(d * g * s);
    dgate[idx] = detail::from_float<T>(d * detail::to_float(up[idx]) * s * (1.0f + g * (1.0f - s)));
  }
}

// ---- launchers

template <typename T> void gelu_forward(const GeluForwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  if (args.bias != nullptr) {
    gelu_forward_kernel<T, true><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.x, args.bias, args.n,
                                                                                args.cols);
  } else {
    gelu_forward_kernel<T, false><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.x, nullptr, args.n, 0);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void gelu_backward(const GeluBackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  if (args.bias != nullptr) {
    gelu_backward_kernel<T, true><<<args.grid(), Config::THREADS, 0, stream>>>(args.dx, args.dy, args.x, args.bias,
                                                                                 args.n, args.cols);
  } else {
    gelu_backward_kernel<T, false><<<args.grid(), Config::THREADS, 0, stream>>>(args.dx, args.dy, args.x, nullptr,
                                                                                  args.n, 0);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void swiglu_forward(const SwigluForwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  swiglu_forward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.gate, args.up, args.n);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void swiglu_backward(const SwigluBackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  swiglu_backward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.dgate, args.dup, args.dy, args.gate,
                                                                           args.up, args.n);
  CUDA_CHECK(cudaGetLastError());
}

template void gelu_forward<float>(const GeluForwardArgs<float>&, cudaStream_t);
template void gelu_forward<bf16>(const GeluForwardArgs<bf16>&, cudaStream_t);
template void gelu_backward<float>(const GeluBackwardArgs<float>&, cudaStream_t);
template void gelu_backward<bf16>(const GeluBackwardArgs<bf16>&, cudaStream_t);
template void swiglu_forward<float>(const SwigluForwardArgs<float>&, cudaStream_t);
template void swiglu_forward<bf16>(const SwigluForwardArgs<bf16>&, cudaStream_t);
template void swiglu_backward<float>(const SwigluBackwardArgs<float>&, cudaStream_t);
template void swiglu_backward<bf16>(const SwigluBackwardArgs<bf16>&, cudaStream_t);

} // namespace cuboid::kernels::activation

// RMSNorm kernels; see layernorm.cu for the thread-owns-columns argument behind the unsynchronised partials.
#include "kernels/device_utils.cuh"
#include "kernels/rmsnorm.cuh"

namespace cuboid::kernels::rmsnorm {

// ---- kernels

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    forward_kernel(T* __restrict__ y, float* __restrict__ rstd, const T* __restrict__ x, const float* __restrict__ w,
                   std::int64_t cols) {
  __shared__ float scratch[detail::WARP_SIZE];
  const std::int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  float sq = 0.0f;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    const float v = detail::to_float(xr[col]);
    sq += v * v;
  }
  const float rs = rsqrtf(detail::block_sum(sq, scratch) / static_cast<float>(cols) + Config::EPS);
  T* yr = y + row * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    yr[col] = detail::from_float<T>(detail::to_float(xr[col]) * rs * w[col]);
  }
  if (threadIdx.x == 0) {
    rstd[row] = rs;
  }
}

template <typename T, typename DY>
__global__ void __launch_bounds__(Config::THREADS)
    backward_kernel(T* __restrict__ dx, float* __restrict__ dw, const DY* __restrict__ dy, const T* __restrict__ x,
                    const float* __restrict__ w, const float* __restrict__ rstd, std::int64_t rows,
                    std::int64_t cols) {
  extern __shared__ float pdw[]; // (C) partial dw of this block
  __shared__ float scratch[detail::WARP_SIZE];
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    pdw[col] = 0.0f;
  }
  const auto inv_cols = 1.0f / static_cast<float>(cols);
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const DY* dyr = dy + row * cols;
    const T* xr = x + row * cols;
    const float rs = rstd[row];
    float s_dxhat_xhat = 0.0f;
    for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
      s_dxhat_xhat += detail::to_float(dyr[col]) * w[col] * detail::to_float(xr[col]) * rs;
    }
    const float mean_dxhat_xhat = detail::block_sum(s_dxhat_xhat, scratch) * inv_cols;
    T* dxr = dx + row * cols;
    for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
      const float g = detail::to_float(dyr[col]);
      const float xhat = detail::to_float(xr[col]) * rs;
      dxr[col] = detail::from_float<T>(detail::to_float(dxr[col]) + rs * (g * w[col] - xhat * mean_dxhat_xhat));
      pdw[col] += g * xhat;
    }
  }
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    atomicAdd(dw + col, pdw[col]);
  }
}

// ---- launchers

template <typename T> void forward(const ForwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  forward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.rstd, args.x, args.w, args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T, typename DY> void backward(const BackwardArgs<T, DY>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  const std::size_t smem = args.smem_bytes();
  CUDA_CHECK(cudaFuncSetAttribute(backward_kernel<T, DY>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)));
  backward_kernel<T, DY><<<args.grid(), Config::THREADS, smem, stream>>>(args.dx, args.dw, args.dy, args.x, args.w,
                                                                       args.rstd, args.rows, args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template void forward<float>(const ForwardArgs<float>&, cudaStream_t);
template void forward<bf16>(const ForwardArgs<bf16>&, cudaStream_t);
template void backward<float, float>(const BackwardArgs<float, float>&, cudaStream_t);
template void backward<bf16, bf16>(const BackwardArgs<bf16, bf16>&, cudaStream_t);
template void backward<bf16, float>(const BackwardArgs<bf16, float>&, cudaStream_t);

} // namespace cuboid::kernels::rmsnorm

// Layer norm kernels. Columns are strided over the threads, so each thread always owns the same columns: the
// shared-memory dw / db partials of the backward need no synchronisation between rows.
#include "kernels/device_utils.cuh"
#include "kernels/layernorm.cuh"

namespace cuboid::kernels::layernorm {

// ---- kernels

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    forward_kernel(T* __restrict__ y, float* __restrict__ mean, float* __restrict__ rstd, const T* __restrict__ x,
                   const float* __restrict__ w, const float* __restrict__ b, std::int64_t cols) {
  __shared__ float scratch[detail::WARP_SIZE];
  const std::int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  const auto inv_cols = 1.0f / static_cast<float>(cols);
  float sum = 0.0f;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    sum += detail::to_float(xr[col]);
  }
  const float mu = detail::block_sum(sum, scratch) * inv_cols;
  float sq = 0.0f;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    const float d = detail::to_float(xr[col]) - mu;
    sq += d * d;
  }
  const float rs = rsqrtf(detail::block_sum(sq, scratch) * inv_cols + Config::EPS);
  T* yr = y + row * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    yr[col] = detail::from_float<T>((detail::to_float(xr[col]) - mu) * rs * w[col] + b[col]);
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

template <typename T, typename DY>
__global__ void __launch_bounds__(Config::THREADS)
    backward_kernel(T* __restrict__ dx, float* __restrict__ dw, float* __restrict__ db, const DY* __restrict__ dy,
                    const T* __restrict__ x, const float* __restrict__ w, const float* __restrict__ mean,
                    const float* __restrict__ rstd, std::int64_t rows, std::int64_t cols) {
  extern __shared__ float partial[]; // dw partial (C), then db partial (C)
  __shared__ float scratch[detail::WARP_SIZE];
  float* pdw = partial;
  float* pdb = partial + cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    pdw[col] = 0.0f;
    pdb[col] = 0.0f;
  }
  const auto inv_cols = 1.0f / static_cast<float>(cols);
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const DY* dyr = dy + row * cols;
    const T* xr = x + row * cols;
    const float mu = mean[row];
    const float rs = rstd[row];
    float s_dxhat = 0.0f;
    float s_dxhat_xhat = 0.0f;
    for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
      const float xhat = (detail::to_float(xr[col]) - mu) * rs;
      const float dxhat = detail::to_float(dyr[col]) * w[col];
      s_dxhat += dxhat;
      s_dxhat_xhat += dxhat * xhat;
    }
    const float mean_dxhat = detail::block_sum(s_dxhat, scratch) * inv_cols;
    const float mean_dxhat_xhat = detail::block_sum(s_dxhat_xhat, scratch) * inv_cols;
    T* dxr = dx + row * cols;
    for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
      const float g = detail::to_float(dyr[col]);
      const float xhat = (detail::to_float(xr[col]) - mu) * rs;
      const float dxhat = g * w[col];
      dxr[col] = detail::from_float<T>(detail::to_float(dxr[col]) + rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
      pdw[col] += g * xhat;
      pdb[col] += g;
    }
  }
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    atomicAdd(dw + col, pdw[col]);
    atomicAdd(db + col, pdb[col]);
  }
}

// ---- launchers

template <typename T> void forward(const ForwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  forward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.mean, args.rstd, args.x, args.w, args.b,
                                                                   args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T, typename DY> void backward(const BackwardArgs<T, DY>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  const std::size_t smem = args.smem_bytes();
  // Above 48 KiB of dynamic shared memory a kernel must opt in (CUDA C++ Programming Guide, "Shared Memory").
  CUDA_CHECK(cudaFuncSetAttribute(backward_kernel<T, DY>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)));
  backward_kernel<T, DY><<<args.grid(), Config::THREADS, smem, stream>>>(args.dx, args.dw, args.db, args.dy, args.x,
                                                                       args.w, args.mean, args.rstd, args.rows,
                                                                       args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template void forward<float>(const ForwardArgs<float>&, cudaStream_t);
template void forward<bf16>(const ForwardArgs<bf16>&, cudaStream_t);
template void backward<float, float>(const BackwardArgs<float, float>&, cudaStream_t);
template void backward<bf16, bf16>(const BackwardArgs<bf16, bf16>&, cudaStream_t);
template void backward<bf16, float>(const BackwardArgs<bf16, float>&, cudaStream_t);

} // namespace cuboid::kernels::layernorm

// Embedding lookups (gather) and their scatter-add backward. One block per row; columns are strided over the
// threads so that a warp reads 32 consecutive elements (coalesced). Backward scatters with fp32 atomicAdd because
// several rows may carry the same token.
#include "kernels/device_utils.cuh"
#include "kernels/embedding.cuh"

namespace cuboid::kernels::embedding {

// ---- kernels

template <typename T, typename W>
__global__ void __launch_bounds__(Config::THREADS)
    forward_kernel(T* __restrict__ out, const std::int32_t* __restrict__ tokens, const W* __restrict__ table,
                   std::int64_t vocab_rows, std::int64_t cols, std::int64_t vocab_start) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t local = static_cast<std::int64_t>(tokens[row]) - vocab_start;
  const bool in_shard = local >= 0 && local < vocab_rows;
  T* dst = out + row * cols;
  const W* src = table + (in_shard ? local : 0) * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    dst[col] = detail::from_float<T>(in_shard ? detail::to_float(src[col]) : 0.0f); // exact: W widens into T
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    backward_kernel(float* __restrict__ dtable, const std::int32_t* __restrict__ tokens, const T* __restrict__ dout,
                    std::int64_t vocab_rows, std::int64_t cols, std::int64_t vocab_start) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t local = static_cast<std::int64_t>(tokens[row]) - vocab_start;
  if (local < 0 || local >= vocab_rows) {
    return;
  }
  float* dst = dtable + local * cols;
  const T* src = dout + row * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    atomicAdd(dst + col, detail::to_float(src[col]));
  }
}

template <typename T, typename W>
__global__ void __launch_bounds__(Config::THREADS)
    position_forward_kernel(T* __restrict__ x, const W* __restrict__ pos, std::int64_t cols, std::int64_t first_row,
                            std::int64_t batch) {
  const std::int64_t row = blockIdx.x;
  const W* src = pos + ((first_row + row) / batch) * cols;
  T* dst = x + row * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    dst[col] = detail::from_float<T>(detail::to_float(dst[col]) + detail::to_float(src[col]));
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    position_backward_kernel(float* __restrict__ dpos, const T* __restrict__ dx, std::int64_t cols,
                             std::int64_t first_row, std::int64_t batch) {
  const std::int64_t row = blockIdx.x;
  float* dst = dpos + ((first_row + row) / batch) * cols;
  const T* src = dx + row * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    atomicAdd(dst + col, detail::to_float(src[col]));
  }
}

// ---- launchers

template <typename T, typename W> void forward(const ForwardArgs<T, W>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  forward_kernel<T, W><<<args.grid(), Config::THREADS, 0, stream>>>(args.out, args.tokens, args.table,
                                                                      args.vocab_rows, args.cols, args.vocab_start);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void backward(const BackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  backward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.dtable, args.tokens, args.dout,
                                                                    args.vocab_rows, args.cols, args.vocab_start);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T, typename W> void position_forward(const PositionForwardArgs<T, W>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  position_forward_kernel<T, W><<<args.grid(), Config::THREADS, 0, stream>>>(args.x, args.pos, args.cols,
                                                                               args.first_row, args.batch);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void position_backward(const PositionBackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  position_backward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.dpos, args.dx, args.cols,
                                                                             args.first_row, args.batch);
  CUDA_CHECK(cudaGetLastError());
}

template void forward<float, float>(const ForwardArgs<float, float>&, cudaStream_t);
template void forward<bf16, bf16>(const ForwardArgs<bf16, bf16>&, cudaStream_t);
template void forward<float, bf16>(const ForwardArgs<float, bf16>&, cudaStream_t);
template void backward<float>(const BackwardArgs<float>&, cudaStream_t);
template void backward<bf16>(const BackwardArgs<bf16>&, cudaStream_t);
template void position_forward<float, float>(const PositionForwardArgs<float, float>&, cudaStream_t);
template void position_forward<bf16, bf16>(const PositionForwardArgs<bf16, bf16>&, cudaStream_t);
template void position_forward<float, bf16>(const PositionForwardArgs<float, bf16>&, cudaStream_t);
template void position_backward<float>(const PositionBackwardArgs<float>&, cudaStream_t);
template void position_backward<bf16>(const PositionBackwardArgs<bf16>&, cudaStream_t);

} // namespace cuboid::kernels::embedding

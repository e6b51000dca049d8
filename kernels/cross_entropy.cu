// Cross-entropy kernels: one block per row with block reductions in fp32. The target logit is read before the
// exponentiation (from the same shifted value the CPU op stores), so the loss does not suffer bf16 rounding of exp.
#include "kernels/cross_entropy.cuh"
#include "kernels/device_utils.cuh"

namespace cuboid::kernels::cross_entropy {

// ---- kernels

template <typename T>
__global__ void __launch_bounds__(Config::THREADS) row_max_kernel(float* __restrict__ row_max,
                                                                   const T* __restrict__ logits, std::int64_t cols) {
  __shared__ float scratch[detail::WARP_SIZE];
  const std::int64_t row = blockIdx.x;
  const T* lr = logits + row * cols;
  float mx = -INFINITY;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    mx = fmaxf(mx, detail::to_float(lr[col]));
  }
  mx = detail::block_max(mx, scratch);
  if (threadIdx.x == 0) {
    row_max[row] = mx;
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    exp_sums_kernel(T* __restrict__ logits, float* __restrict__ sums, const float* __restrict__ row_max,
                    const std::int32_t* __restrict__ targets, std::int64_t rows, std::int64_t cols,
                    std::int64_t vocab_start) {
  __shared__ float scratch[detail::WARP_SIZE];
  const std::int64_t row = blockIdx.x;
  T* lr = logits + row * cols;
  const float mx = row_max[row];
  const std::int64_t target = static_cast<std::int64_t>(targets[row]) - vocab_start;
  float sum = 0.0f;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    const float shifted = detail::to_float(lr[col]) - mx;
    if (col == target) {
      sums[rows + row] = shifted; // exactly one thread of one TP rank owns the target
    }
    const float e = expf(shifted);
    sum += e;
    lr[col] = detail::from_float<T>(e);
  }
  sum = detail::block_sum(sum, scratch);
  if (threadIdx.x == 0) {
    sums[row] = sum;
    if (target < 0 || target >= cols) {
      sums[rows + row] = 0.0f;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    loss_normalize_kernel(float* __restrict__ losses, T* __restrict__ probs, const float* __restrict__ sums,
                          std::int64_t rows, std::int64_t cols) {
  const std::int64_t row = blockIdx.x;
  const float total = sums[row];
  const float inv = 1.0f / total;
  T* pr = probs + row * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    pr[col] = detail::from_float<T>(detail::to_float(pr[col]) * inv);
  }
  if (threadIdx.x == 0) {
    losses[row] = logf(total) - sums[rows + row];
  }
}

// No __restrict__: dlogits may alias probs (each element is read and written by the same thread).
template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    backward_kernel(T* dlogits, const T* probs, const std::int32_t* __restrict__ targets, std::int64_t cols,
                    std::int64_t vocab_start, float scale) {
  const std::int64_t row = blockIdx.x;
  const std::int64_t target = static_cast<std::int64_t>(targets[row]) - vocab_start;
  const T* pr = probs + row * cols;
  T* dr = dlogits + row * cols;
  for (std::int64_t col = threadIdx.x; col < cols; col += blockDim.x) {
    const float p = detail::to_float(pr[col]) * scale;
    dr[col] = detail::from_float<T>(col == target ? p - scale : p);
  }
}

// ---- launchers

template <typename T> void row_max(const RowMaxArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  row_max_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.row_max, args.logits, args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void exp_sums(const ExpSumsArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  exp_sums_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.logits, args.sums, args.row_max, args.targets,
                                                                    args.rows, args.cols, args.vocab_start);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void loss_normalize(const LossNormalizeArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  loss_normalize_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.losses, args.probs, args.sums, args.rows,
                                                                          args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void backward(const BackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  backward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.dlogits, args.probs, args.targets, args.cols,
                                                                    args.vocab_start, args.scale);
  CUDA_CHECK(cudaGetLastError());
}

template void row_max<float>(const RowMaxArgs<float>&, cudaStream_t);
template void row_max<bf16>(const RowMaxArgs<bf16>&, cudaStream_t);
template void exp_sums<float>(const ExpSumsArgs<float>&, cudaStream_t);
template void exp_sums<bf16>(const ExpSumsArgs<bf16>&, cudaStream_t);
template void loss_normalize<float>(const LossNormalizeArgs<float>&, cudaStream_t);
template void loss_normalize<bf16>(const LossNormalizeArgs<bf16>&, cudaStream_t);
template void backward<float>(const BackwardArgs<float>&, cudaStream_t);
template void backward<bf16>(const BackwardArgs<bf16>&, cudaStream_t);

} // namespace cuboid::kernels::cross_entropy

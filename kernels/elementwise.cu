// Elementwise helpers of the training runtime (see elementwise.cuh). Memory bound; grid-stride loops; column sums
// reduce a tile of columns over a chunk of rows per block (elementwise.cuh Config) and add one atomic per column and
// chunk; device sums reduce per block and add one atomic per block (the order of those additions is not
// deterministic: rounding-level differences only).
#include "kernels/device_utils.cuh"
#include "kernels/elementwise.cuh"

namespace cuboid::kernels::elementwise {

// ---- kernels

template <typename T>
__global__ void __launch_bounds__(Config::THREADS) bias_add_kernel(T* __restrict__ y, const float* __restrict__ bias,
                                                                   std::int64_t rows, std::int64_t cols) {
  const std::int64_t n = rows * cols;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    y[idx] = detail::from_float<T>(detail::to_float(y[idx]) + bias[idx % cols]);
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    residual_add_kernel(T* out, const T* x, const float* __restrict__ partial, const float* __restrict__ bias,
                        std::int64_t rows, std::int64_t cols) {
  const std::int64_t n = rows * cols;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const float b = bias != nullptr ? bias[idx % cols] : 0.0f;
    out[idx] = detail::from_float<T>(detail::to_float(x[idx]) + (partial[idx] + b));
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::COLUMN_THREADS)
    column_sum_kernel(float* __restrict__ dbias, const T* __restrict__ dy, std::int64_t rows, std::int64_t cols) {
  constexpr int PER_LANE = Config::COLUMN_TILE / detail::WARP_SIZE;
  __shared__ float partial[Config::COLUMN_WARPS][Config::COLUMN_TILE];
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const std::int64_t col0 = static_cast<std::int64_t>(blockIdx.x) * Config::COLUMN_TILE;
  const std::int64_t chunk = ceil_div(rows, static_cast<std::int64_t>(gridDim.y));
  const std::int64_t row_begin = static_cast<std::int64_t>(blockIdx.y) * chunk;
  const std::int64_t row_end = row_begin + chunk < rows ? row_begin + chunk : rows;
  float acc[PER_LANE] = {};
  for (std::int64_t r = row_begin + warp; r < row_end; r += Config::COLUMN_WARPS) {
    const T* row = dy + r * cols;
    for (int j = 0; j < PER_LANE; ++j) {
      const std::int64_t c = col0 + j * detail::WARP_SIZE + lane;
      if (c < cols) {
        acc[j] += detail::to_float(row[c]);
      }
    }
  }
  for (int j = 0; j < PER_LANE; ++j) {
    partial[warp][j * detail::WARP_SIZE + lane] = acc[j];
  }
  __syncthreads();
  if (warp == 0) {
    for (int j = 0; j < PER_LANE; ++j) {
      const int t = j * detail::WARP_SIZE + lane;
      const std::int64_t c = col0 + t;
      if (c < cols) {
        float total = 0.0f;
        for (int w = 0; w < Config::COLUMN_WARPS; ++w) {
          total += partial[w][t];
        }
        if (gridDim.y == 1) {
          dbias[c] += total;
        } else {
          atomicAdd(dbias + c, total);
        }
      }
    }
  }
}

__global__ void __launch_bounds__(Config::THREADS)
    sum_kernel(float* __restrict__ acc, const float* __restrict__ x, std::int64_t n, float scale, bool square) {
  __shared__ float scratch[detail::WARP_SIZE];
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  float local = 0.0f;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    local += square ? x[idx] * x[idx] : x[idx];
  }
  const float total = detail::block_sum(local, scratch);
  if (threadIdx.x == 0) {
    atomicAdd(acc, scale * total);
  }
}

// ---- launchers

template <typename T> void bias_add(const BiasAddArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  bias_add_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.bias, args.rows, args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void residual_add(const ResidualAddArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  residual_add_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.out, args.x, args.partial, args.bias,
                                                                      args.rows, args.cols);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void column_sum(const ColumnSumArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  column_sum_kernel<T><<<args.grid(), Config::COLUMN_THREADS, 0, stream>>>(args.dbias, args.dy, args.rows, args.cols);
  CUDA_CHECK(cudaGetLastError());
}

void sum(const SumArgs& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  sum_kernel<<<args.grid(), Config::THREADS, 0, stream>>>(args.acc, args.x, args.n, args.scale, args.square);
  CUDA_CHECK(cudaGetLastError());
}

template void bias_add<float>(const BiasAddArgs<float>&, cudaStream_t);
template void bias_add<bf16>(const BiasAddArgs<bf16>&, cudaStream_t);
template void residual_add<float>(const ResidualAddArgs<float>&, cudaStream_t);
template void residual_add<bf16>(const ResidualAddArgs<bf16>&, cudaStream_t);
template void column_sum<float>(const ColumnSumArgs<float>&, cudaStream_t);
template void column_sum<bf16>(const ColumnSumArgs<bf16>&, cudaStream_t);

} // namespace cuboid::kernels::elementwise

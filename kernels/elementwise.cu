// Elementwise helpers of the training runtime (see elementwise.cuh). Memory bound; grid-stride loops; column sums
// reduce a tile of columns over a chunk of rows per block (elementwise.cuh Config) and add one atomic per column and
// chunk; device sums reduce per block and add one atomic per block (the order of those additions is not
// deterministic: rounding-level differences only). The bias and residual adds have a vector form that moves 16
// bytes per access (8 bf16 or 4 fp32: device_utils.cuh VEC), for HBM bandwidth; the launcher takes it when cols is
// a multiple of the vector width (a vector never straddles a row) and every pointer is 16-byte aligned, else the
// scalar form. Both forms do the same fp32 additions per element, so their results are bit-identical.
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

// Vector forms: thread `vec` handles elements [vec * VEC<T>, (vec + 1) * VEC<T>) of the vecs = rows * cols / VEC<T>;
// col_vecs = cols / VEC<T>. The vector's column advances with the grid stride (one 64-bit modulo per thread) instead
// of a modulo per vector.
template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    bias_add_vec_kernel(T* __restrict__ y, const float* __restrict__ bias, std::int64_t vecs, std::int64_t col_vecs) {
  constexpr int W = detail::VEC<T>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t vec = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  detail::ColumnCursor column(vec, stride, col_vecs);
  for (; vec < vecs; vec += stride) {
    float v[W];
    float b[W];
    detail::unpack<T>(reinterpret_cast<const uint4*>(y)[vec], v);
    detail::unpack_fp32_of<T>(reinterpret_cast<const uint4*>(bias), column.col, b);
    for (int k = 0; k < W; ++k) {
      v[k] = v[k] + b[k];
    }
    reinterpret_cast<uint4*>(y)[vec] = detail::pack<T>(v);
    column.advance();
  }
}

// BIAS: with a (cols) bias (col_vecs > 0), else x + partial; out may alias x (each thread reads its vector of x
// before it writes the same vector of out).
template <typename T, bool BIAS>
__global__ void __launch_bounds__(Config::THREADS)
    residual_add_vec_kernel(T* out, const T* x, const float* __restrict__ partial, const float* __restrict__ bias,
                            std::int64_t vecs, std::int64_t col_vecs) {
  constexpr int W = detail::VEC<T>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t vec = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  [[maybe_unused]] detail::ColumnCursor column(vec, stride, BIAS ? col_vecs : 0);
  for (; vec < vecs; vec += stride) {
    float v[W];
    float p[W];
    float b[W] = {}; // 0.0f without a bias, as the scalar kernel adds
    detail::unpack<T>(reinterpret_cast<const uint4*>(x)[vec], v);
    detail::unpack_fp32_of<T>(reinterpret_cast<const uint4*>(partial), vec, p);
    if constexpr (BIAS) {
      detail::unpack_fp32_of<T>(reinterpret_cast<const uint4*>(bias), column.col, b);
      column.advance();
    }
    for (int k = 0; k < W; ++k) {
      v[k] = v[k] + (p[k] + b[k]);
    }
    reinterpret_cast<uint4*>(out)[vec] = detail::pack<T>(v);
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

// The vector paths need cols a multiple of VEC<T> and every pointer 16-byte aligned (detail::vector_path); their grid
// covers the rows * cols / VEC<T> vectors (grid_stride_grid of them, at most MAX_BLOCKS blocks), not Args::grid(),
// which covers the elements and stays the scalar path's grid.

template <typename T> void bias_add(const BiasAddArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  constexpr int W = detail::VEC<T>;
  const std::int64_t n = args.rows * args.cols;
  if (detail::vector_path<T>(n, args.cols, {args.y, args.bias})) {
    const dim3 grid = grid_stride_grid(n / W, Config::THREADS, Config::MAX_BLOCKS);
    bias_add_vec_kernel<T><<<grid, Config::THREADS, 0, stream>>>(args.y, args.bias, n / W, args.cols / W);
  } else {
    bias_add_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.bias, args.rows, args.cols);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void residual_add(const ResidualAddArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  constexpr int W = detail::VEC<T>;
  const std::int64_t n = args.rows * args.cols;
  const bool bias = args.bias != nullptr;
  if (detail::vector_path<T>(n, bias ? args.cols : W, {args.out, args.x, args.partial, args.bias})) {
    const dim3 grid = grid_stride_grid(n / W, Config::THREADS, Config::MAX_BLOCKS);
    if (bias) {
      residual_add_vec_kernel<T, true><<<grid, Config::THREADS, 0, stream>>>(args.out, args.x, args.partial,
                                                                             args.bias, n / W, args.cols / W);
    } else {
      residual_add_vec_kernel<T, false><<<grid, Config::THREADS, 0, stream>>>(args.out, args.x, args.partial,
                                                                              nullptr, n / W, 0);
    }
  } else {
    residual_add_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.out, args.x, args.partial, args.bias,
                                                                        args.rows, args.cols);
  }
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

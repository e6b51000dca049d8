// Device port of exec/init.cpp's counter-based normal generator (see init.cuh). One element per thread iteration.
#include "kernels/device_utils.cuh"
#include "kernels/init.cuh"

namespace cuboid::kernels::init {

namespace {

__device__ __forceinline__ std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30U)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27U)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31U);
}

__device__ __forceinline__ double uniform01(std::uint64_t key, std::uint64_t counter) {
  constexpr double TWO_POW_MINUS_53 = 1.0 / 9007199254740992.0;
  return static_cast<double>(mix64(key ^ mix64(counter)) >> 11U) * TWO_POW_MINUS_53;
}

__device__ __forceinline__ double standard_normal(std::uint64_t key, std::uint64_t counter) {
  constexpr double TWO_PI = 6.283185307179586476925286766559;
  const double u1 = 1.0 - uniform01(key, 2 * counter);
  const double u2 = uniform01(key, 2 * counter + 1);
  return sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2);
}

} // namespace

// ---- kernels

__global__ void __launch_bounds__(Config::THREADS) normal_kernel(float* __restrict__ out, std::uint64_t key,
                                                                 double stddev, std::int64_t rows, std::int64_t cols,
                                                                 std::int64_t row0, std::int64_t col0,
                                                                 std::int64_t full_cols) {
  const std::int64_t n = rows * cols;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    const std::int64_t row = idx / cols;
    const std::int64_t col = idx % cols;
    const auto counter = static_cast<std::uint64_t>((row0 + row) * full_cols + col0 + col);
    out[idx] = static_cast<float>(stddev * standard_normal(key, counter));
  }
}

__global__ void __launch_bounds__(Config::THREADS) fill_kernel(float* __restrict__ out, float value, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    out[idx] = value;
  }
}

// ---- launchers

void normal(const NormalArgs& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  normal_kernel<<<args.grid(), Config::THREADS, 0, stream>>>(args.out, args.key, args.stddev, args.rows, args.cols,
                                                             args.row0, args.col0, args.full_cols);
  CUDA_CHECK(cudaGetLastError());
}

void fill(const FillArgs& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  fill_kernel<<<args.grid(), Config::THREADS, 0, stream>>>(args.out, args.value, args.n);
  CUDA_CHECK(cudaGetLastError());
}

} // namespace cuboid::kernels::init

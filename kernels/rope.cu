// RoPE kernel: the frequency uses powf exactly as the CPU op uses std::pow (float), so both rotate by the same angle.
#include "kernels/device_utils.cuh"
#include "kernels/rope.cuh"

namespace cuboid::kernels::rope {

// ---- kernels

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    rotate_kernel(T* __restrict__ x, std::int64_t pairs, std::int64_t heads, std::int64_t head_dim,
                  std::int64_t batch, std::int64_t first_row, float sign) {
  const std::int64_t half = head_dim / 2;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < pairs;
       idx += stride) {
    const std::int64_t i = idx % half;
    const std::int64_t head = (idx / half) % heads;
    const std::int64_t row = idx / (half * heads);
    const auto pos = static_cast<float>((first_row + row) / batch);
    const float freq = powf(Config::THETA, -2.0f * static_cast<float>(i) / static_cast<float>(head_dim));
    const float c = cosf(pos * freq);
    const float s = sign * sinf(pos * freq);
    T* base = x + row * heads * head_dim + head * head_dim;
    const float a = detail::to_float(base[i]);
    const float b = detail::to_float(base[i + half]);
    base[i] = detail::from_float<T>(a * c - b * s);
    base[i + half] = detail::from_float<T>(a * s + b * c);
  }
}

// ---- launchers

template <typename T> void forward(const Args<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  rotate_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.x, args.pairs(), args.heads, args.head_dim,
                                                                  args.batch, args.first_row, 1.0f);
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void backward(const Args<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  rotate_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.x, args.pairs(), args.heads, args.head_dim,
                                                                  args.batch, args.first_row, -1.0f);
  CUDA_CHECK(cudaGetLastError());
}

template void forward<float>(const Args<float>&, cudaStream_t);
template void forward<bf16>(const Args<bf16>&, cudaStream_t);
template void backward<float>(const Args<float>&, cudaStream_t);
template void backward<bf16>(const Args<bf16>&, cudaStream_t);

} // namespace cuboid::kernels::rope

// Conversion kernels (memory bound: 6 bytes moved per element).
#include "kernels/cast.cuh"
#include "kernels/device_utils.cuh"

namespace cuboid::kernels::cast {

// ---- kernels

template <typename Out, typename In>
__global__ void __launch_bounds__(Config::THREADS) convert_kernel(Out* __restrict__ out, const In* __restrict__ in,
                                                                   std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    out[idx] = detail::from_float<Out>(detail::to_float(in[idx]));
  }
}

// ---- launchers

template <typename Out, typename In> void convert(const Args<Out, In>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  convert_kernel<Out, In><<<args.grid(), Config::THREADS, 0, stream>>>(args.out, args.in, args.n);
  CUDA_CHECK(cudaGetLastError());
}

template void convert<bf16, float>(const Args<bf16, float>&, cudaStream_t);
template void convert<float, bf16>(const Args<float, bf16>&, cudaStream_t);

} // namespace cuboid::kernels::cast

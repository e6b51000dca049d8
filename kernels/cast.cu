// Conversion kernels (memory bound: 6 bytes moved per element). The vector form converts 8 elements per thread and
// step with 16-byte accesses (one uint4 of bf16, two of fp32: device_utils.cuh VEC), for HBM bandwidth; the
// launcher takes it when n is a multiple of 8 and both pointers are 16-byte aligned, else the scalar form. Both
// round each element the same way (to_float / from_float), so their results are bit-identical.
#include "kernels/cast.cuh"
#include "kernels/device_utils.cuh"

namespace cuboid::kernels::cast {

namespace {
// Elements per thread and step in the vector form: one 16-byte vector of the narrower type.
constexpr int GROUP = 8;
} // namespace

// ---- kernels

template <typename Out, typename In>
__global__ void __launch_bounds__(Config::THREADS) convert_kernel(Out* __restrict__ out, const In* __restrict__ in,
                                                                   std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    out[idx] = detail::from_float<Out>(detail::to_float(in[idx]));
  }
}

// Thread `group` converts elements [group * GROUP, (group + 1) * GROUP): GROUP / VEC<In> uint4 loads and
// GROUP / VEC<Out> uint4 stores (fp32 -> bf16: two loads, one store; bf16 -> fp32: one load, two stores).
template <typename Out, typename In>
__global__ void __launch_bounds__(Config::THREADS)
    convert_vec_kernel(Out* __restrict__ out, const In* __restrict__ in, std::int64_t groups) {
  constexpr int IN_VECS = GROUP / detail::VEC<In>;
  constexpr int OUT_VECS = GROUP / detail::VEC<Out>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t group = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; group < groups;
       group += stride) {
    float v[GROUP];
    for (int q = 0; q < IN_VECS; ++q) {
      detail::unpack<In>(reinterpret_cast<const uint4*>(in)[group * IN_VECS + q], v + q * detail::VEC<In>);
    }
    for (int q = 0; q < OUT_VECS; ++q) {
      reinterpret_cast<uint4*>(out)[group * OUT_VECS + q] = detail::pack<Out>(v + q * detail::VEC<Out>);
    }
  }
}

// ---- launchers
// The vector path's grid covers the n / GROUP groups (grid_stride_grid of them, at most MAX_BLOCKS blocks), not
// Args::grid(), which covers n elements and stays the scalar path's grid.

template <typename Out, typename In> void convert(const Args<Out, In>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  static_assert(GROUP % detail::VEC<In> == 0 && GROUP % detail::VEC<Out> == 0, "a group is whole vectors");
  if (args.n % GROUP == 0 && detail::vector_aligned(args.out) && detail::vector_aligned(args.in)) {
    const std::int64_t groups = args.n / GROUP;
    const dim3 grid = grid_stride_grid(groups, Config::THREADS, Config::MAX_BLOCKS);
    convert_vec_kernel<Out, In><<<grid, Config::THREADS, 0, stream>>>(args.out, args.in, groups);
  } else {
    convert_kernel<Out, In><<<args.grid(), Config::THREADS, 0, stream>>>(args.out, args.in, args.n);
  }
  CUDA_CHECK(cudaGetLastError());
}

template void convert<bf16, float>(const Args<bf16, float>&, cudaStream_t);
template void convert<float, bf16>(const Args<float, bf16>&, cudaStream_t);

} // namespace cuboid::kernels::cast

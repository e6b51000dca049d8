// Activation kernels: fp32 math on each element, grid-stride loops (memory bound: one read per input, one write;
// the GeLU's optional bias is (cols) fp32, read through the cache). Each kernel has a vector form that moves 16
// bytes per access (8 bf16 or 4 fp32: device_utils.cuh VEC), for HBM bandwidth; the launcher takes it when n (and,
// with a bias, cols) is a multiple of the vector width and every pointer is 16-byte aligned, else the scalar form.
// Both forms apply the same per-element functions (gelu, gelu_grad, ...), so their results are bit-identical.
#include "kernels/activation.cuh"
#include "kernels/device_utils.cuh"

namespace cuboid::kernels::activation {

namespace {
constexpr float GELU_SCALE = 0.7978845608028654f; // sqrt(2 / pi)
constexpr float GELU_CUBIC = 0.044715f;

__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

// ---- per-element math (shared by the scalar and the vector kernels)

__device__ __forceinline__ float gelu(float v) {
  return 0.5f * v * (1.0f + tanhf(GELU_SCALE * (v + GELU_CUBIC * v * v * v)));
}

// dy * gelu'(v).
__device__ __forceinline__ float gelu_grad(float v, float g) {
  const float t = tanhf(GELU_SCALE * (v + GELU_CUBIC * v * v * v));
  const float dinner = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * v * v);
  return g * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * dinner);
}

__device__ __forceinline__ float swiglu(float g, float u) { return g * sigmoid(g) * u; }

// d: dy, g: gate, u: up.
__device__ __forceinline__ void swiglu_grad(float d, float g, float u, float& dgate, float& dup) {
  const float s = sigmoid(g);
  dup = d * g * s;
  dgate = d * u * s * (1.0f + g * (1.0f - s));
}

// v[k] += bias[vec_col * VEC<T> + k] for the VEC<T> columns of one vector (fp32 bias read as uint4s).
template <typename T> __device__ __forceinline__ void add_bias(float* v, const float* bias, std::int64_t vec_col) {
  float b[detail::VEC<T>];
  detail::unpack_fp32_of<T>(reinterpret_cast<const uint4*>(bias), vec_col, b);
  for (int k = 0; k < detail::VEC<T>; ++k) {
    v[k] += b[k];
  }
}
} // namespace

// ---- scalar kernels

// BIAS: v = x[idx] + bias[idx % cols], the column kept by a detail::ColumnCursor.
template <typename T, bool BIAS>
__global__ void __launch_bounds__(Config::THREADS)
    gelu_forward_kernel(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ bias, std::int64_t n,
                        std::int64_t cols) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  [[maybe_unused]] detail::ColumnCursor column(idx, stride, BIAS ? cols : 0);
  for (; idx < n; idx += stride) {
    float v = detail::to_float(x[idx]);
    if constexpr (BIAS) {
      v += bias[column.col];
      column.advance();
    }
    y[idx] = detail::from_float<T>(gelu(v));
  }
}

template <typename T, bool BIAS>
__global__ void __launch_bounds__(Config::THREADS)
    gelu_backward_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                         const float* __restrict__ bias, std::int64_t n, std::int64_t cols) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  [[maybe_unused]] detail::ColumnCursor column(idx, stride, BIAS ? cols : 0);
  for (; idx < n; idx += stride) {
    float v = detail::to_float(x[idx]);
    if constexpr (BIAS) {
      v += bias[column.col];
      column.advance();
    }
    dx[idx] = detail::from_float<T>(gelu_grad(v, detail::to_float(dy[idx])));
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    swiglu_forward_kernel(T* __restrict__ y, const T* __restrict__ gate, const T* __restrict__ up, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    y[idx] = detail::from_float<T>(swiglu(detail::to_float(gate[idx]), detail::to_float(up[idx])));
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    swiglu_backward_kernel(T* __restrict__ dgate, T* __restrict__ dup, const T* __restrict__ dy,
                           const T* __restrict__ gate, const T* __restrict__ up, std::int64_t n) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride) {
    float dg = 0.0f;
    float du = 0.0f;
    swiglu_grad(detail::to_float(dy[idx]), detail::to_float(gate[idx]), detail::to_float(up[idx]), dg, du);
    dup[idx] = detail::from_float<T>(du);
    dgate[idx] = detail::from_float<T>(dg);
  }
}

// ---- vector kernels: thread `vec` handles elements [vec * VEC<T>, (vec + 1) * VEC<T>), vecs = n / VEC<T>

// BIAS: col_vecs = cols / VEC<T> (a vector never straddles a row); the vector's column advances with the grid
// stride as in the scalar kernel.
template <typename T, bool BIAS>
__global__ void __launch_bounds__(Config::THREADS)
    gelu_forward_vec_kernel(T* __restrict__ y, const T* __restrict__ x, const float* __restrict__ bias,
                            std::int64_t vecs, std::int64_t col_vecs) {
  constexpr int W = detail::VEC<T>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t vec = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  [[maybe_unused]] detail::ColumnCursor column(vec, stride, BIAS ? col_vecs : 0);
  for (; vec < vecs; vec += stride) {
    float v[W];
    detail::unpack<T>(reinterpret_cast<const uint4*>(x)[vec], v);
    if constexpr (BIAS) {
      add_bias<T>(v, bias, column.col);
      column.advance();
    }
    for (int k = 0; k < W; ++k) {
      v[k] = gelu(v[k]);
    }
    reinterpret_cast<uint4*>(y)[vec] = detail::pack<T>(v);
  }
}

template <typename T, bool BIAS>
__global__ void __launch_bounds__(Config::THREADS)
    gelu_backward_vec_kernel(T* __restrict__ dx, const T* __restrict__ dy, const T* __restrict__ x,
                             const float* __restrict__ bias, std::int64_t vecs, std::int64_t col_vecs) {
  constexpr int W = detail::VEC<T>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  std::int64_t vec = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  [[maybe_unused]] detail::ColumnCursor column(vec, stride, BIAS ? col_vecs : 0);
  for (; vec < vecs; vec += stride) {
    float v[W];
    float g[W];
    detail::unpack<T>(reinterpret_cast<const uint4*>(x)[vec], v);
    detail::unpack<T>(reinterpret_cast<const uint4*>(dy)[vec], g);
    if constexpr (BIAS) {
      add_bias<T>(v, bias, column.col);
      column.advance();
    }
    for (int k = 0; k < W; ++k) {
      v[k] = gelu_grad(v[k], g[k]);
    }
    reinterpret_cast<uint4*>(dx)[vec] = detail::pack<T>(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    swiglu_forward_vec_kernel(T* __restrict__ y, const T* __restrict__ gate, const T* __restrict__ up,
                              std::int64_t vecs) {
  constexpr int W = detail::VEC<T>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t vec = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; vec < vecs;
       vec += stride) {
    float g[W];
    float u[W];
    detail::unpack<T>(reinterpret_cast<const uint4*>(gate)[vec], g);
    detail::unpack<T>(reinterpret_cast<const uint4*>(up)[vec], u);
    for (int k = 0; k < W; ++k) {
      g[k] = swiglu(g[k], u[k]);
    }
    reinterpret_cast<uint4*>(y)[vec] = detail::pack<T>(g);
  }
}

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    swiglu_backward_vec_kernel(T* __restrict__ dgate, T* __restrict__ dup, const T* __restrict__ dy,
                               const T* __restrict__ gate, const T* __restrict__ up, std::int64_t vecs) {
  constexpr int W = detail::VEC<T>;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t vec = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; vec < vecs;
       vec += stride) {
    float d[W];
    float g[W];
    float u[W];
    detail::unpack<T>(reinterpret_cast<const uint4*>(dy)[vec], d);
    detail::unpack<T>(reinterpret_cast<const uint4*>(gate)[vec], g);
    detail::unpack<T>(reinterpret_cast<const uint4*>(up)[vec], u);
    float dg[W];
    float du[W];
    for (int k = 0; k < W; ++k) {
      swiglu_grad(d[k], g[k], u[k], dg[k], du[k]);
    }
    reinterpret_cast<uint4*>(dup)[vec] = detail::pack<T>(du);
    reinterpret_cast<uint4*>(dgate)[vec] = detail::pack<T>(dg);
  }
}

// ---- launchers
// The vector path needs n (and, with a bias, cols) a multiple of VEC<T> and every pointer 16-byte aligned
// (detail::vector_path); its grid covers the n / VEC<T> vectors (grid_stride_grid of them, at most MAX_BLOCKS
// blocks), not Args::grid(), which covers n elements and stays the scalar path's grid.

namespace {
template <typename T> dim3 vector_grid(std::int64_t n) {
  return grid_stride_grid(n / detail::VEC<T>, Config::THREADS, Config::MAX_BLOCKS);
}
} // namespace

template <typename T> void gelu_forward(const GeluForwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  constexpr int W = detail::VEC<T>;
  const bool bias = args.bias != nullptr;
  if (detail::vector_path<T>(args.n, bias ? args.cols : W, {args.y, args.x, args.bias})) {
    if (bias) {
      gelu_forward_vec_kernel<T, true><<<vector_grid<T>(args.n), Config::THREADS, 0, stream>>>(
          args.y, args.x, args.bias, args.n / W, args.cols / W);
    } else {
      gelu_forward_vec_kernel<T, false><<<vector_grid<T>(args.n), Config::THREADS, 0, stream>>>(
          args.y, args.x, nullptr, args.n / W, 0);
    }
  } else if (bias) {
    gelu_forward_kernel<T, true><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.x, args.bias, args.n,
                                                                                args.cols);
  } else {
    gelu_forward_kernel<T, false><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.x, nullptr, args.n, 0);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void gelu_backward(const GeluBackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  constexpr int W = detail::VEC<T>;
  const bool bias = args.bias != nullptr;
  if (detail::vector_path<T>(args.n, bias ? args.cols : W, {args.dx, args.dy, args.x, args.bias})) {
    if (bias) {
      gelu_backward_vec_kernel<T, true><<<vector_grid<T>(args.n), Config::THREADS, 0, stream>>>(
          args.dx, args.dy, args.x, args.bias, args.n / W, args.cols / W);
    } else {
      gelu_backward_vec_kernel<T, false><<<vector_grid<T>(args.n), Config::THREADS, 0, stream>>>(
          args.dx, args.dy, args.x, nullptr, args.n / W, 0);
    }
  } else if (bias) {
    gelu_backward_kernel<T, true><<<args.grid(), Config::THREADS, 0, stream>>>(args.dx, args.dy, args.x, args.bias,
                                                                                 args.n, args.cols);
  } else {
    gelu_backward_kernel<T, false><<<args.grid(), Config::THREADS, 0, stream>>>(args.dx, args.dy, args.x, nullptr,
                                                                                  args.n, 0);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void swiglu_forward(const SwigluForwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  constexpr int W = detail::VEC<T>;
  if (detail::vector_path<T>(args.n, W, {args.y, args.gate, args.up})) {
    swiglu_forward_vec_kernel<T><<<vector_grid<T>(args.n), Config::THREADS, 0, stream>>>(args.y, args.gate, args.up,
                                                                                        args.n / W);
  } else {
    swiglu_forward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.y, args.gate, args.up, args.n);
  }
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void swiglu_backward(const SwigluBackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  constexpr int W = detail::VEC<T>;
  if (detail::vector_path<T>(args.n, W, {args.dgate, args.dup, args.dy, args.gate, args.up})) {
    swiglu_backward_vec_kernel<T><<<vector_grid<T>(args.n), Config::THREADS, 0, stream>>>(
        args.dgate, args.dup, args.dy, args.gate, args.up, args.n / W);
  } else {
    swiglu_backward_kernel<T><<<args.grid(), Config::THREADS, 0, stream>>>(args.dgate, args.dup, args.dy, args.gate,
                                                                             args.up, args.n);
  }
  CUDA_CHECK(cudaGetLastError());
}

template void gelu_forward<float>(const GeluForwardArgs<float>&, cudaStream_t);
template void gelu_forward<bf16>(const GeluForwardArgs<bf16>&, cudaStream_t);
template void gelu_backward<float>(const GeluBackwardArgs<float>&, cudaStream_t);
template void gelu_backward<bf16>(const GeluBackwardArgs<bf16>&, cudaStream_t);
template void swiglu_forward<float>(const SwigluForwardArgs<float>&, cudaStream_t);
template void swiglu_forward<bf16>(const SwigluForwardArgs<bf16>&, cudaStream_t);
template void swiglu_backward<float>(const SwigluBackwardArgs<float>&, cudaStream_t);
template void swiglu_backward<bf16>(const SwigluBackwardArgs<bf16>&, cudaStream_t);

} // namespace cuboid::kernels::activation

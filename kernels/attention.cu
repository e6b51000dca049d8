// Causal flash attention kernels (see attention.cuh for the algorithm and the tiling). Shared tiles are fp32 and
// padded to D + 1 columns where lanes read different rows at the same column (key j by lane j), which keeps those
// reads free of bank conflicts; rows read by the whole warp at once (broadcast) are unpadded.
#include "kernels/attention.cuh"
#include "kernels/device_utils.cuh"

#include <cmath>

namespace cuboid::kernels::attention {

namespace {
constexpr int ACC = Config::MAX_HEAD_DIM / detail::WARP_SIZE; // head dims per lane: d = lane + 32 * c

struct Dims {
  int seq;
  int batch;
  int q_heads;
  int kv_heads;
  int head_dim;
  int q_offset; // query i sits at key position i + q_offset (Shape::q_offset)
  __device__ int kv_seq() const { return seq + q_offset; }
};

// Offset of element (t, b, head, 0) in a (T*B, heads*D) tensor.
__device__ __forceinline__ std::int64_t row_offset(int t, int b, int head, const Dims& dims, int heads) {
  return (static_cast<std::int64_t>(t) * dims.batch + b) * heads * dims.head_dim +
         static_cast<std::int64_t>(head) * dims.head_dim;
}

__device__ __forceinline__ float dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int d = 0; d < n; ++d) {
    acc = fmaf(a[d], b[d], acc);
  }
  return acc;
}

// Loads rows j0 .. j0 + KEY_TILE - 1 of K and V (zero past the end) into padded tiles, block-cooperatively.
template <typename T>
__device__ void load_kv_tile(float* k_s, float* v_s, const T* k, const T* v, int j0, int b, int kv_head,
                             const Dims& dims) {
  const int pad = dims.head_dim + 1;
  for (int idx = static_cast<int>(threadIdx.x); idx < Config::KEY_TILE * dims.head_dim;
       idx += static_cast<int>(blockDim.x)) {
    const int jj = idx / dims.head_dim;
    const int d = idx % dims.head_dim;
    const int j = j0 + jj;
    float kv = 0.0f;
    float vv = 0.0f;
    if (j < dims.kv_seq()) {
      const std::int64_t off = row_offset(j, b, kv_head, dims, dims.kv_heads) + d;
      kv = detail::to_float(k[off]);
      vv = detail::to_float(v[off]);
    }
    k_s[jj * pad + d] = kv;
    v_s[jj * pad + d] = vv;
  }
}
} // namespace

// ---- kernels

template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    forward_kernel(T* __restrict__ out, float* __restrict__ lse, const T* __restrict__ q, const T* __restrict__ k,
                   const T* __restrict__ v, Dims dims, float scale) {
  extern __shared__ float smem[];
  const int pad = dims.head_dim + 1;
  float* k_s = smem;                             // (KEY_TILE, D+1)
  float* v_s = k_s + Config::KEY_TILE * pad;     // (KEY_TILE, D+1)
  float* q_s = v_s + Config::KEY_TILE * pad;     // (QUERY_TILE, D), pre-scaled
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const int b = static_cast<int>(blockIdx.y) / dims.q_heads;
  const int head = static_cast<int>(blockIdx.y) % dims.q_heads;
  const int kv_head = head / (dims.q_heads / dims.kv_heads);
  const int q0 = static_cast<int>(blockIdx.x) * Config::QUERY_TILE;

  for (int r = 0; r < Config::QUERY_ROWS_PER_WARP; ++r) {
    const int local = warp * Config::QUERY_ROWS_PER_WARP + r;
    const int i = q0 + local;
    for (int d = lane; d < dims.head_dim; d += detail::WARP_SIZE) {
      q_s[local * dims.head_dim + d] =
          i < dims.seq ? detail::to_float(q[row_offset(i, b, head, dims, dims.q_heads) + d]) * scale : 0.0f;
    }
  }
  float row_max[Config::QUERY_ROWS_PER_WARP];
  float row_sum[Config::QUERY_ROWS_PER_WARP];
  float acc[Config::QUERY_ROWS_PER_WARP][ACC];
#pragma unroll
  for (int r = 0; r < Config::QUERY_ROWS_PER_WARP; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < ACC; ++c) {
      acc[r][c] = 0.0f;
    }
  }
  const int q_last = min(q0 + Config::QUERY_TILE, dims.seq) - 1 + dims.q_offset; // the tile's last key position
  for (int j0 = 0; j0 <= q_last; j0 += Config::KEY_TILE) {
    __syncthreads(); // the previous tile is no longer read
    load_kv_tile(k_s, v_s, k, v, j0, b, kv_head, dims);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < Config::QUERY_ROWS_PER_WARP; ++r) {
      const int local = warp * Config::QUERY_ROWS_PER_WARP + r;
      const int i = q0 + local;
      if (i >= dims.seq || j0 > i + dims.q_offset) {
        continue; // warp-uniform: the whole warp skips
      }
      const int j = j0 + lane;
      const bool valid = j <= i + dims.q_offset;
      const float s = valid ? dot(q_s + local * dims.head_dim, k_s + lane * pad, dims.head_dim) : -INFINITY;
      const float new_max = fmaxf(row_max[r], detail::warp_max(s)); // finite: key j0 <= i + q_offset is valid
      const float p = valid ? expf(s - new_max) : 0.0f;
      const float correction = expf(row_max[r] - new_max); // 0 on the first tile (row_max = -inf)
      row_sum[r] = row_sum[r] * correction + detail::warp_sum(p);
      row_max[r] = new_max;
#pragma unroll
      for (int c = 0; c < ACC; ++c) {
        acc[r][c] *= correction;
      }
      for (int jj = 0; jj < Config::KEY_TILE; ++jj) {
        const float pj = __shfl_sync(detail::FULL_MASK, p, jj);
#pragma unroll
        for (int c = 0; c < ACC; ++c) {
          const int d = lane + c * detail::WARP_SIZE;
          if (d < dims.head_dim) {
            acc[r][c] = fmaf(pj, v_s[jj * pad + d], acc[r][c]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < Config::QUERY_ROWS_PER_WARP; ++r) {
    const int i = q0 + warp * Config::QUERY_ROWS_PER_WARP + r;
    if (i >= dims.seq) {
      continue;
    }
    const float inv = 1.0f / row_sum[r];
    T* dst = out + row_offset(i, b, head, dims, dims.q_heads);
#pragma unroll
    for (int c = 0; c < ACC; ++c) {
      const int d = lane + c * detail::WARP_SIZE;
      if (d < dims.head_dim) {
        dst[d] = detail::from_float<T>(acc[r][c] * inv);
      }
    }
    if (lane == 0) {
      lse[(static_cast<std::int64_t>(b) * dims.q_heads + head) * dims.seq + i] = row_max[r] + logf(row_sum[r]);
    }
  }
}

// delta[(b, h, t)] = sum_d dout * out: rowsum(dP o P) of the backward (Dao et al. 2022, eq. in B.2). A warp per row.
template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    delta_kernel(float* __restrict__ delta, const T* __restrict__ dout, const T* __restrict__ out, Dims dims) {
  const std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * Config::WARPS + threadIdx.x / detail::WARP_SIZE;
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  const std::int64_t rows = static_cast<std::int64_t>(dims.batch) * dims.q_heads * dims.seq;
  if (idx >= rows) {
    return; // warp-uniform
  }
  const int t = static_cast<int>(idx % dims.seq);
  const int bh = static_cast<int>(idx / dims.seq);
  const std::int64_t off = row_offset(t, bh / dims.q_heads, bh % dims.q_heads, dims, dims.q_heads);
  float sum = 0.0f;
  for (int d = lane; d < dims.head_dim; d += detail::WARP_SIZE) {
    sum += detail::to_float(dout[off + d]) * detail::to_float(out[off + d]);
  }
  sum = detail::warp_sum(sum);
  if (lane == 0) {
    delta[idx] = sum;
  }
}

// dK_j = scale * sum_i dS_ij Q_i and dV_j = sum_i P_ij dO_i over the query rows i >= j of every query head of the
// KV group. A block owns KEY_BLOCK key rows; query tiles of 32 rows stream through shared memory; lane i of a warp
// handles query row i0 + i and the (P, dS) values are broadcast by shuffles.
template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    dkdv_kernel(T* __restrict__ dk, T* __restrict__ dv, const T* __restrict__ q, const T* __restrict__ k,
                const T* __restrict__ v, const T* __restrict__ dout, const float* __restrict__ lse,
                const float* __restrict__ delta, Dims dims, float scale, bool accumulate) {
  extern __shared__ float smem[];
  const int pad = dims.head_dim + 1;
  float* q_s = smem;                                    // (KEY_TILE query rows, D+1)
  float* do_s = q_s + Config::KEY_TILE * pad;           // (KEY_TILE, D+1)
  float* k_s = do_s + Config::KEY_TILE * pad;           // (KEY_BLOCK, D)
  float* v_s = k_s + Config::KEY_BLOCK * dims.head_dim; // (KEY_BLOCK, D)
  float* lse_s = v_s + Config::KEY_BLOCK * dims.head_dim; // (KEY_TILE)
  float* delta_s = lse_s + Config::KEY_TILE;             // (KEY_TILE)
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const int b = static_cast<int>(blockIdx.y) / dims.kv_heads;
  const int kv_head = static_cast<int>(blockIdx.y) % dims.kv_heads;
  const int group = dims.q_heads / dims.kv_heads;
  const int k0 = static_cast<int>(blockIdx.x) * Config::KEY_BLOCK;

  for (int r = 0; r < Config::KEY_ROWS_PER_WARP; ++r) {
    const int local = warp * Config::KEY_ROWS_PER_WARP + r;
    const int j = k0 + local;
    for (int d = lane; d < dims.head_dim; d += detail::WARP_SIZE) {
      const std::int64_t off = row_offset(j, b, kv_head, dims, dims.kv_heads) + d;
      k_s[local * dims.head_dim + d] = j < dims.kv_seq() ? detail::to_float(k[off]) : 0.0f;
      v_s[local * dims.head_dim + d] = j < dims.kv_seq() ? detail::to_float(v[off]) : 0.0f;
    }
  }
  float acc_dk[Config::KEY_ROWS_PER_WARP][ACC];
  float acc_dv[Config::KEY_ROWS_PER_WARP][ACC];
#pragma unroll
  for (int r = 0; r < Config::KEY_ROWS_PER_WARP; ++r) {
#pragma unroll
    for (int c = 0; c < ACC; ++c) {
      acc_dk[r][c] = 0.0f;
      acc_dv[r][c] = 0.0f;
    }
  }
  for (int g = 0; g < group; ++g) {
    const int head = kv_head * group + g;
    const std::int64_t stats = (static_cast<std::int64_t>(b) * dims.q_heads + head) * dims.seq;
    // The first query that sees key k0 is k0 - q_offset.
    for (int i0 = (max(k0 - dims.q_offset, 0) / Config::KEY_TILE) * Config::KEY_TILE; i0 < dims.seq;
         i0 += Config::KEY_TILE) {
      __syncthreads();
      for (int idx = static_cast<int>(threadIdx.x); idx < Config::KEY_TILE * dims.head_dim;
           idx += static_cast<int>(blockDim.x)) {
        const int ii = idx / dims.head_dim;
        const int d = idx % dims.head_dim;
        const int i = i0 + ii;
        const std::int64_t off = row_offset(i, b, head, dims, dims.q_heads) + d;
        q_s[ii * pad + d] = i < dims.seq ? detail::to_float(q[off]) : 0.0f;
        do_s[ii * pad + d] = i < dims.seq ? detail::to_float(dout[off]) : 0.0f;
      }
      for (int ii = static_cast<int>(threadIdx.x); ii < Config::KEY_TILE; ii += static_cast<int>(blockDim.x)) {
        const int i = i0 + ii;
        lse_s[ii] = i < dims.seq ? lse[stats + i] : 0.0f;
        delta_s[ii] = i < dims.seq ? delta[stats + i] : 0.0f;
      }
      __syncthreads();
#pragma unroll
      for (int r = 0; r < Config::KEY_ROWS_PER_WARP; ++r) {
        const int local = warp * Config::KEY_ROWS_PER_WARP + r;
        const int j = k0 + local;
        if (j >= dims.kv_seq() || i0 + Config::KEY_TILE - 1 + dims.q_offset < j) {
          continue; // warp-uniform: no query row of this tile sees key j
        }
        const int i = i0 + lane;
        float p = 0.0f;
        float ds = 0.0f;
        if (i < dims.seq && i + dims.q_offset >= j) {
          const float s = scale * dot(q_s + lane * pad, k_s + local * dims.head_dim, dims.head_dim);
          p = expf(s - lse_s[lane]);
          const float dp = dot(do_s + lane * pad, v_s + local * dims.head_dim, dims.head_dim);
          ds = p * (dp - delta_s[lane]);
        }
        for (int ii = 0; ii < Config::KEY_TILE; ++ii) {
          const float pi = __shfl_sync(detail::FULL_MASK, p, ii);
          const float dsi = __shfl_sync(detail::FULL_MASK, ds, ii);
#pragma unroll
          for (int c = 0; c < ACC; ++c) {
            const int d = lane + c * detail::WARP_SIZE;
            if (d < dims.head_dim) {
              acc_dv[r][c] = fmaf(pi, do_s[ii * pad + d], acc_dv[r][c]);
              acc_dk[r][c] = fmaf(dsi, q_s[ii * pad + d], acc_dk[r][c]);
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < Config::KEY_ROWS_PER_WARP; ++r) {
    const int j = k0 + warp * Config::KEY_ROWS_PER_WARP + r;
    if (j >= dims.kv_seq()) {
      continue;
    }
    const std::int64_t off = row_offset(j, b, kv_head, dims, dims.kv_heads);
#pragma unroll
    for (int c = 0; c < ACC; ++c) {
      const int d = lane + c * detail::WARP_SIZE;
      if (d < dims.head_dim) {
        const float dk_old = accumulate ? detail::to_float(dk[off + d]) : 0.0f;
        const float dv_old = accumulate ? detail::to_float(dv[off + d]) : 0.0f;
        dk[off + d] = detail::from_float<T>(acc_dk[r][c] * scale + dk_old);
        dv[off + d] = detail::from_float<T>(acc_dv[r][c] + dv_old);
      }
    }
  }
}

// dQ_i = scale * sum_{j <= i} dS_ij K_j; same tiling as the forward.
template <typename T>
__global__ void __launch_bounds__(Config::THREADS)
    dq_kernel(T* __restrict__ dq, const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
              const T* __restrict__ dout, const float* __restrict__ lse, const float* __restrict__ delta, Dims dims,
              float scale) {
  extern __shared__ float smem[];
  const int pad = dims.head_dim + 1;
  float* k_s = smem;                                        // (KEY_TILE, D+1)
  float* v_s = k_s + Config::KEY_TILE * pad;                // (KEY_TILE, D+1)
  float* q_s = v_s + Config::KEY_TILE * pad;                // (QUERY_TILE, D)
  float* do_s = q_s + Config::QUERY_TILE * dims.head_dim;   // (QUERY_TILE, D)
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const int b = static_cast<int>(blockIdx.y) / dims.q_heads;
  const int head = static_cast<int>(blockIdx.y) % dims.q_heads;
  const int kv_head = head / (dims.q_heads / dims.kv_heads);
  const int q0 = static_cast<int>(blockIdx.x) * Config::QUERY_TILE;
  const std::int64_t stats = (static_cast<std::int64_t>(b) * dims.q_heads + head) * dims.seq;

  float row_lse[Config::QUERY_ROWS_PER_WARP];
  float row_delta[Config::QUERY_ROWS_PER_WARP];
  float acc[Config::QUERY_ROWS_PER_WARP][ACC];
#pragma unroll
  for (int r = 0; r < Config::QUERY_ROWS_PER_WARP; ++r) {
    const int local = warp * Config::QUERY_ROWS_PER_WARP + r;
    const int i = q0 + local;
    for (int d = lane; d < dims.head_dim; d += detail::WARP_SIZE) {
      const std::int64_t off = row_offset(i, b, head, dims, dims.q_heads) + d;
      q_s[local * dims.head_dim + d] = i < dims.seq ? detail::to_float(q[off]) : 0.0f;
      do_s[local * dims.head_dim + d] = i < dims.seq ? detail::to_float(dout[off]) : 0.0f;
    }
    row_lse[r] = i < dims.seq ? lse[stats + i] : 0.0f;
    row_delta[r] = i < dims.seq ? delta[stats + i] : 0.0f;
#pragma unroll
    for (int c = 0; c < ACC; ++c) {
      acc[r][c] = 0.0f;
    }
  }
  const int q_last = min(q0 + Config::QUERY_TILE, dims.seq) - 1 + dims.q_offset; // the tile's last key position
  for (int j0 = 0; j0 <= q_last; j0 += Config::KEY_TILE) {
    __syncthreads();
    load_kv_tile(k_s, v_s, k, v, j0, b, kv_head, dims);
    __syncthreads();
#pragma unroll
    for (int r = 0; r < Config::QUERY_ROWS_PER_WARP; ++r) {
      const int local = warp * Config::QUERY_ROWS_PER_WARP + r;
      const int i = q0 + local;
      if (i >= dims.seq || j0 > i + dims.q_offset) {
        continue; // warp-uniform
      }
      const int j = j0 + lane;
      float ds = 0.0f;
      if (j <= i + dims.q_offset) {
        const float s = scale * dot(q_s + local * dims.head_dim, k_s + lane * pad, dims.head_dim);
        const float p = expf(s - row_lse[r]);
        const float dp = dot(do_s + local * dims.head_dim, v_s + lane * pad, dims.head_dim);
        ds = p * (dp - row_delta[r]);
      }
      for (int jj = 0; jj < Config::KEY_TILE; ++jj) {
        const float dsj = __shfl_sync(detail::FULL_MASK, ds, jj);
#pragma unroll
        for (int c = 0; c < ACC; ++c) {
          const int d = lane + c * detail::WARP_SIZE;
          if (d < dims.head_dim) {
            acc[r][c] = fmaf(dsj, k_s[jj * pad + d], acc[r][c]);
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < Config::QUERY_ROWS_PER_WARP; ++r) {
    const int i = q0 + warp * Config::QUERY_ROWS_PER_WARP + r;
    if (i >= dims.seq) {
      continue;
    }
    T* dst = dq + row_offset(i, b, head, dims, dims.q_heads);
#pragma unroll
    for (int c = 0; c < ACC; ++c) {
      const int d = lane + c * detail::WARP_SIZE;
      if (d < dims.head_dim) {
        dst[d] = detail::from_float<T>(acc[r][c] * scale);
      }
    }
  }
}

// ---- launchers

namespace {
Dims to_dims(const Shape& s) {
  return {static_cast<int>(s.seq),      static_cast<int>(s.batch),    static_cast<int>(s.q_heads),
          static_cast<int>(s.kv_heads), static_cast<int>(s.head_dim), static_cast<int>(s.q_offset)};
}
float softmax_scale(const Shape& s) { return 1.0f / std::sqrt(static_cast<float>(s.head_dim)); }

template <typename Kernel> void allow_smem(Kernel kernel, std::size_t bytes) {
  // Above 48 KiB of dynamic shared memory a kernel must opt in (CUDA C++ Programming Guide, "Shared Memory").
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}
} // namespace

template <typename T> void forward(const ForwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  const std::size_t smem = forward_smem_bytes(args.shape);
  allow_smem(forward_kernel<T>, smem);
  forward_kernel<T><<<args.grid(), Config::THREADS, smem, stream>>>(args.out, args.lse, args.q, args.k, args.v,
                                                                      to_dims(args.shape), softmax_scale(args.shape));
  CUDA_CHECK(cudaGetLastError());
}

template <typename T> void backward(const BackwardArgs<T>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  const Dims dims = to_dims(args.shape);
  const float scale = softmax_scale(args.shape);
  const std::int64_t rows = args.shape.batch * args.shape.q_heads * args.shape.seq;
  delta_kernel<T><<<static_cast<unsigned>(ceil_div(rows, Config::WARPS)), Config::THREADS, 0, stream>>>(
      args.workspace, args.dout, args.out, dims);
  CUDA_CHECK(cudaGetLastError());
  const std::size_t dkdv_smem = dkdv_smem_bytes(args.shape);
  allow_smem(dkdv_kernel<T>, dkdv_smem);
  dkdv_kernel<T><<<key_grid(args.shape), Config::THREADS, dkdv_smem, stream>>>(
      args.dk, args.dv, args.q, args.k, args.v, args.dout, args.lse, args.workspace, dims, scale, args.accumulate);
  CUDA_CHECK(cudaGetLastError());
  const std::size_t dq_smem = dq_smem_bytes(args.shape);
  allow_smem(dq_kernel<T>, dq_smem);
  dq_kernel<T><<<query_grid(args.shape), Config::THREADS, dq_smem, stream>>>(args.dq, args.q, args.k, args.v,
                                                                               args.dout, args.lse, args.workspace,
                                                                               dims, scale);
  CUDA_CHECK(cudaGetLastError());
}

template void forward<float>(const ForwardArgs<float>&, cudaStream_t);
template void forward<bf16>(const ForwardArgs<bf16>&, cudaStream_t);
template void backward<float>(const BackwardArgs<float>&, cudaStream_t);
template void backward<bf16>(const BackwardArgs<bf16>&, cudaStream_t);

} // namespace cuboid::kernels::attention

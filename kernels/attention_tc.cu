// Tensor-core flash attention (see attention_tc.cuh). Shared memory holds every operand of the warp GEMMs; a warp
// only touches its own 16 rows of the per-block score / probability / accumulator tiles, so only tile loads need
// block barriers, and the warp's scalar and WMMA phases are separated by __syncwarp().
#include "kernels/attention_tc.cuh"
#include "kernels/device_utils.cuh"

#include <mma.h>

#include <cmath>
#include <type_traits>

namespace cuboid::kernels::attention_tc {

namespace {

namespace wmma = nvcuda::wmma;
constexpr int TILE = Config::TILE;
constexpr int LDS = TILE + Config::PAD_F32;  // fp32 score rows
constexpr int LDP = TILE + Config::PAD_BF16; // bf16 probability rows
constexpr float NEG_INF = -INFINITY;

struct Dims {
  int seq;
  int batch;
  int q_heads;
  int kv_heads;
  int head_dim;
};

// C (16 x n, fp32, row-major, ldc) (+)= A (16 x k, bf16, row-major, lda) * B (k x n), B given row-major (k rows of
// ldb) or, with B_COL, as the rows of its transpose (n rows of ldb: B(kk, nn) = b[nn * ldb + kk]). n, k multiples
// of 16. All 32 lanes of the warp must call it.
template <bool B_COL>
__device__ __forceinline__ void warp_gemm(float* c, int ldc, const bf16* a, int lda, const bf16* b, int ldb, int n,
                                          int k, bool accumulate) {
  using LayoutB = typename std::conditional<B_COL, wmma::col_major, wmma::row_major>::type;
  for (int nt = 0; nt < n / 16; ++nt) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    if (accumulate) {
      wmma::load_matrix_sync(acc, c + nt * 16, ldc, wmma::mem_row_major);
    } else {
      wmma::fill_fragment(acc, 0.0f);
    }
    for (int kt = 0; kt < k / 16; ++kt) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
      wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LayoutB> fb;
      wmma::load_matrix_sync(fa, a + kt * 16, lda);
      if constexpr (B_COL) {
        wmma::load_matrix_sync(fb, b + nt * 16 * ldb + kt * 16, ldb);
      } else {
        wmma::load_matrix_sync(fb, b + kt * 16 * ldb + nt * 16, ldb);
      }
      wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c + nt * 16, acc, ldc, wmma::mem_row_major);
  }
}

// TILE rows of one head starting at token t0 into shared memory (16-byte vectors; D is a multiple of 16).
__device__ __forceinline__ void load_tile(bf16* dst, int ld, const bf16* __restrict__ src, int t0, int b, int head,
                                          int heads, const Dims& d) {
  const int vecs = d.head_dim / 8;
  const std::int64_t row_stride = static_cast<std::int64_t>(d.batch) * heads * d.head_dim;
  const bf16* base = src + ((static_cast<std::int64_t>(t0) * d.batch + b) * heads + head) * d.head_dim;
  for (int idx = static_cast<int>(threadIdx.x); idx < TILE * vecs; idx += static_cast<int>(blockDim.x)) {
    const int r = idx / vecs;
    const int c = (idx % vecs) * 8;
    *reinterpret_cast<uint4*>(dst + r * ld + c) = *reinterpret_cast<const uint4*>(base + r * row_stride + c);
  }
}

__device__ __forceinline__ void zero_rows(float* p, int count) {
  for (int idx = static_cast<int>(threadIdx.x) % detail::WARP_SIZE; idx < count; idx += detail::WARP_SIZE) {
    p[idx] = 0.0f;
  }
}

// Writes 16 rows of an fp32 accumulator (ld) times `scale` to global rows t0.. of one head.
__device__ __forceinline__ void store_rows(bf16* __restrict__ dst, const float* acc, int ld, float scale, int t0,
                                           int b, int head, int heads, const Dims& d, const float* row_div) {
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  for (int idx = lane; idx < Config::ROWS_PER_WARP * d.head_dim; idx += detail::WARP_SIZE) {
    const int r = idx / d.head_dim;
    const int c = idx % d.head_dim;
    const float div = row_div != nullptr ? row_div[r] : 1.0f;
    dst[((static_cast<std::int64_t>(t0 + r) * d.batch + b) * heads + head) * d.head_dim + c] =
        __float2bfloat16_rn(acc[r * ld + c] * scale / div);
  }
}

// ---- kernels

__global__ void __launch_bounds__(Config::THREADS) forward_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                                  const bf16* __restrict__ q,
                                                                  const bf16* __restrict__ k,
                                                                  const bf16* __restrict__ v, Dims d, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.head_dim;
  const int ldb = D + Config::PAD_BF16;
  const int ldo = D + Config::PAD_F32;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = qs + TILE * ldb;
  bf16* vs = ks + TILE * ldb;
  float* s_all = reinterpret_cast<float*>(vs + TILE * ldb);
  bf16* p_all = reinterpret_cast<bf16*>(s_all + TILE * LDS);
  float* o_all = reinterpret_cast<float*>(p_all + TILE * LDP);
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  float* s_w = s_all + warp * 16 * LDS;
  bf16* p_w = p_all + warp * 16 * LDP;
  float* o_w = o_all + warp * 16 * ldo;
  const int qt = static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y) / d.q_heads;
  const int h = static_cast<int>(blockIdx.y) % d.q_heads;
  const int g = h / (d.q_heads / d.kv_heads);
  load_tile(qs, ldb, q, qt * TILE, b, h, d.q_heads, d);
  zero_rows(o_w, 16 * ldo);
  const int row = lane >> 1; // two lanes per query row, 32 columns each
  const int half = lane & 1;
  const int q_index = qt * TILE + warp * 16 + row;
  float m = NEG_INF;
  float l = 0.0f;
  for (int kt = 0; kt <= qt; ++kt) {
    __syncthreads(); // every warp is done with the previous K / V tile
    load_tile(ks, ldb, k, kt * TILE, b, g, d.kv_heads, d);
    load_tile(vs, ldb, v, kt * TILE, b, g, d.kv_heads, d);
    __syncthreads();
    warp_gemm<true>(s_w, LDS, qs + warp * 16 * ldb, ldb, ks, ldb, TILE, D, false); // S = Q K^T
    __syncwarp();
    float* srow = s_w + row * LDS + half * 32;
    float mx = NEG_INF;
    for (int c = 0; c < 32; ++c) {
      const int key = kt * TILE + half * 32 + c;
      const float val = key <= q_index ? srow[c] * scale : NEG_INF;
      srow[c] = val;
      mx = fmaxf(mx, val);
    }
    mx = fmaxf(mx, __shfl_xor_sync(detail::FULL_MASK, mx, 1));
    const float m_new = fmaxf(m, mx); // finite: key kt*TILE <= q_index
    const float alpha = expf(m - m_new);
    float sum = 0.0f;
    bf16* prow = p_w + row * LDP + half * 32;
    for (int c = 0; c < 32; ++c) {
      const float p = expf(srow[c] - m_new);
      prow[c] = __float2bfloat16_rn(p);
      sum += p;
    }
    sum += __shfl_xor_sync(detail::FULL_MASK, sum, 1);
    l = l * alpha + sum;
    m = m_new;
    for (int c = half; c < D; c += 2) {
      o_w[row * ldo + c] *= alpha;
    }
    __syncwarp();
    warp_gemm<false>(o_w, ldo, p_w, LDP, vs, ldb, D, TILE, true); // O += P V
    __syncwarp();
  }
  // Row sums to shared memory for the store (lane 2r holds row r's l).
  float* l_w = s_w; // scores are no longer needed
  if (half == 0) {
    l_w[row] = l;
    lse[(static_cast<std::int64_t>(b) * d.q_heads + h) * d.seq + q_index] = m + logf(l);
  }
  __syncwarp();
  const int t0 = qt * TILE + warp * 16;
  for (int idx = lane; idx < 16 * D; idx += detail::WARP_SIZE) {
    const int r = idx / D;
    const int c = idx % D;
    out[((static_cast<std::int64_t>(t0 + r) * d.batch + b) * d.q_heads + h) * D + c] =
        __float2bfloat16_rn(o_w[r * ldo + c] / l_w[r]);
  }
}

// delta = rowsum(dout o out) per (b, h, t): one warp per row.
__global__ void __launch_bounds__(Config::THREADS) delta_kernel(float* __restrict__ delta,
                                                                const bf16* __restrict__ dout,
                                                                const bf16* __restrict__ out, Dims d) {
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * Config::WARPS + threadIdx.x / detail::WARP_SIZE;
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  const std::int64_t rows = static_cast<std::int64_t>(d.batch) * d.q_heads * d.seq;
  if (row >= rows) {
    return;
  }
  const int t = static_cast<int>(row % d.seq);
  const int h = static_cast<int>((row / d.seq) % d.q_heads);
  const int b = static_cast<int>(row / (static_cast<std::int64_t>(d.seq) * d.q_heads));
  const std::int64_t base = ((static_cast<std::int64_t>(t) * d.batch + b) * d.q_heads + h) * d.head_dim;
  float acc = 0.0f;
  for (int c = lane; c < d.head_dim; c += detail::WARP_SIZE) {
    acc += __bfloat162float(dout[base + c]) * __bfloat162float(out[base + c]);
  }
  acc = detail::warp_sum(acc);
  if (lane == 0) {
    delta[row] = acc;
  }
}

// dK, dV of 64 keys of KV head g: over every query head of the group and every query tile at or after the keys.
__global__ void __launch_bounds__(Config::THREADS)
    dkdv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ q, const bf16* __restrict__ k,
                const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ lse,
                const float* __restrict__ delta, Dims d, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.head_dim;
  const int ldb = D + Config::PAD_BF16;
  const int ldo = D + Config::PAD_F32;
  bf16* ks = reinterpret_cast<bf16*>(smem);
  bf16* vs = ks + TILE * ldb;
  bf16* qs = vs + TILE * ldb;
  bf16* dos = qs + TILE * ldb;
  float* lse_s = reinterpret_cast<float*>(dos + TILE * ldb);
  float* delta_s = lse_s + TILE;
  float* s_all = delta_s + TILE;
  float* dp_all = s_all + TILE * LDS;
  bf16* p_all = reinterpret_cast<bf16*>(dp_all + TILE * LDS);
  float* dk_all = reinterpret_cast<float*>(p_all + TILE * LDP);
  float* dv_all = dk_all + TILE * ldo;
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  float* s_w = s_all + warp * 16 * LDS;
  float* dp_w = dp_all + warp * 16 * LDS;
  bf16* p_w = p_all + warp * 16 * LDP;
  float* dk_w = dk_all + warp * 16 * ldo;
  float* dv_w = dv_all + warp * 16 * ldo;
  const int kt = static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y) / d.kv_heads;
  const int g = static_cast<int>(blockIdx.y) % d.kv_heads;
  const int group = d.q_heads / d.kv_heads;
  load_tile(ks, ldb, k, kt * TILE, b, g, d.kv_heads, d);
  load_tile(vs, ldb, v, kt * TILE, b, g, d.kv_heads, d);
  zero_rows(dk_w, 16 * ldo);
  zero_rows(dv_w, 16 * ldo);
  const int row = lane >> 1;
  const int half = lane & 1;
  const int key_index = kt * TILE + warp * 16 + row;
  const int tiles = d.seq / TILE;
  for (int j = 0; j < group; ++j) {
    const int h = g * group + j;
    const std::int64_t stats = (static_cast<std::int64_t>(b) * d.q_heads + h) * d.seq;
    for (int qt = kt; qt < tiles; ++qt) {
      __syncthreads();
      load_tile(qs, ldb, q, qt * TILE, b, h, d.q_heads, d);
      load_tile(dos, ldb, dout, qt * TILE, b, h, d.q_heads, d);
      for (int idx = static_cast<int>(threadIdx.x); idx < TILE; idx += static_cast<int>(blockDim.x)) {
        lse_s[idx] = lse[stats + qt * TILE + idx];
        delta_s[idx] = delta[stats + qt * TILE + idx];
      }
      __syncthreads();
      warp_gemm<true>(s_w, LDS, ks + warp * 16 * ldb, ldb, qs, ldb, TILE, D, false); // S^T = K Q^T
      __syncwarp();
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const int q_index = qt * TILE + c;
        const float p = q_index >= key_index ? expf(s_w[row * LDS + c] * scale - lse_s[c]) : 0.0f;
        s_w[row * LDS + c] = p;
        p_w[row * LDP + c] = __float2bfloat16_rn(p);
      }
      __syncwarp();
      warp_gemm<false>(dv_w, ldo, p_w, LDP, dos, ldb, D, TILE, true);              // dV += P^T dO
      warp_gemm<true>(dp_w, LDS, vs + warp * 16 * ldb, ldb, dos, ldb, TILE, D, false); // dP^T = V dO^T
      __syncwarp();
      for (int c = half * 32; c < half * 32 + 32; ++c) {
        const float ds = s_w[row * LDS + c] * (dp_w[row * LDS + c] - delta_s[c]);
        p_w[row * LDP + c] = __float2bfloat16_rn(ds);
      }
      __syncwarp();
      warp_gemm<false>(dk_w, ldo, p_w, LDP, qs, ldb, D, TILE, true); // dK += dS^T Q
      __syncwarp();
    }
  }
  store_rows(dk, dk_w, ldo, scale, kt * TILE + warp * 16, b, g, d.kv_heads, d, nullptr);
  store_rows(dv, dv_w, ldo, 1.0f, kt * TILE + warp * 16, b, g, d.kv_heads, d, nullptr);
}

// dQ of 64 query rows of head h: over the key tiles at or before them.
__global__ void __launch_bounds__(Config::THREADS)
    dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ q, const bf16* __restrict__ k,
              const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ lse,
              const float* __restrict__ delta, Dims d, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.head_dim;
  const int ldb = D + Config::PAD_BF16;
  const int ldo = D + Config::PAD_F32;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* dos = qs + TILE * ldb;
  bf16* ks = dos + TILE * ldb;
  bf16* vs = ks + TILE * ldb;
  float* lse_s = reinterpret_cast<float*>(vs + TILE * ldb);
  float* delta_s = lse_s + TILE;
  float* s_all = delta_s + TILE;
  float* dp_all = s_all + TILE * LDS;
  bf16* p_all = reinterpret_cast<bf16*>(dp_all + TILE * LDS);
  float* dq_all = reinterpret_cast<float*>(p_all + TILE * LDP);
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  float* s_w = s_all + warp * 16 * LDS;
  float* dp_w = dp_all + warp * 16 * LDS;
  bf16* p_w = p_all + warp * 16 * LDP;
  float* dq_w = dq_all + warp * 16 * ldo;
  const int qt = static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y) / d.q_heads;
  const int h = static_cast<int>(blockIdx.y) % d.q_heads;
  const int g = h / (d.q_heads / d.kv_heads);
  const std::int64_t stats = (static_cast<std::int64_t>(b) * d.q_heads + h) * d.seq;
  load_tile(qs, ldb, q, qt * TILE, b, h, d.q_heads, d);
  load_tile(dos, ldb, dout, qt * TILE, b, h, d.q_heads, d);
  for (int idx = static_cast<int>(threadIdx.x); idx < TILE; idx += static_cast<int>(blockDim.x)) {
    lse_s[idx] = lse[stats + qt * TILE + idx];
    delta_s[idx] = delta[stats + qt * TILE + idx];
  }
  zero_rows(dq_w, 16 * ldo);
  const int row = lane >> 1;
  const int half = lane & 1;
  const int local = warp * 16 + row; // query row within the block's tile
  const int q_index = qt * TILE + local;
  for (int kt = 0; kt <= qt; ++kt) {
    __syncthreads();
    load_tile(ks, ldb, k, kt * TILE, b, g, d.kv_heads, d);
    load_tile(vs, ldb, v, kt * TILE, b, g, d.kv_heads, d);
    __syncthreads();
    warp_gemm<true>(s_w, LDS, qs + warp * 16 * ldb, ldb, ks, ldb, TILE, D, false);   // S = Q K^T
    warp_gemm<true>(dp_w, LDS, dos + warp * 16 * ldb, ldb, vs, ldb, TILE, D, false); // dP = dO V^T
    __syncwarp();
    for (int c = half * 32; c < half * 32 + 32; ++c) {
      const int key = kt * TILE + c;
      const float p = key <= q_index ? expf(s_w[row * LDS + c] * scale - lse_s[local]) : 0.0f;
      p_w[row * LDP + c] = __float2bfloat16_rn(p * (dp_w[row * LDS + c] - delta_s[local]));
    }
    __syncwarp();
    warp_gemm<false>(dq_w, ldo, p_w, LDP, ks, ldb, D, TILE, true); // dQ += dS K
    __syncwarp();
  }
  store_rows(dq, dq_w, ldo, scale, qt * TILE + warp * 16, b, h, d.q_heads, d, nullptr);
}

Dims to_dims(const attention::Shape& s) {
  return {static_cast<int>(s.seq), static_cast<int>(s.batch), static_cast<int>(s.q_heads),
          static_cast<int>(s.kv_heads), static_cast<int>(s.head_dim)};
}

template <typename Kernel> void allow_smem(Kernel kernel, std::size_t bytes) {
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

void require_supported(const attention::Shape& s, const char* kernel) {
  const std::string why = unsupported_reason(s);
  if (!why.empty()) {
    throw LaunchError(std::string(kernel) + ": " + why);
  }
}

} // namespace

// ---- launchers

void forward(const attention::ForwardArgs<bf16>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  require_supported(args.shape, "attention_tc::forward");
  const std::size_t smem = attention_tc::forward_smem_bytes(args.shape);
  allow_smem(forward_kernel, smem);
  const dim3 grid(static_cast<unsigned>(args.shape.seq / TILE), static_cast<unsigned>(args.shape.batch * args.shape.q_heads));
  forward_kernel<<<grid, Config::THREADS, smem, stream>>>(args.out, args.lse, args.q, args.k, args.v,
                                                          to_dims(args.shape),
                                                          1.0f / std::sqrt(static_cast<float>(args.shape.head_dim)));
  CUDA_CHECK(cudaGetLastError());
}

void backward(const attention::BackwardArgs<bf16>& args, cudaStream_t stream) {
  NVTX_RANGE_FN();
  args.validate();
  require_supported(args.shape, "attention_tc::backward");
  const Dims dims = to_dims(args.shape);
  const float scale = 1.0f / std::sqrt(static_cast<float>(args.shape.head_dim));
  const std::int64_t rows = args.shape.batch * args.shape.q_heads * args.shape.seq;
  delta_kernel<<<static_cast<unsigned>(ceil_div(rows, Config::WARPS)), Config::THREADS, 0, stream>>>(
      args.workspace, args.dout, args.out, dims);
  CUDA_CHECK(cudaGetLastError());
  const std::size_t dkdv_smem = attention_tc::dkdv_smem_bytes(args.shape);
  allow_smem(dkdv_kernel, dkdv_smem);
  const dim3 key_grid(static_cast<unsigned>(args.shape.seq / TILE),
                      static_cast<unsigned>(args.shape.batch * args.shape.kv_heads));
  dkdv_kernel<<<key_grid, Config::THREADS, dkdv_smem, stream>>>(args.dk, args.dv, args.q, args.k, args.v, args.dout,
                                                               args.lse, args.workspace, dims, scale);
  CUDA_CHECK(cudaGetLastError());
  const std::size_t dq_smem = attention_tc::dq_smem_bytes(args.shape);
  allow_smem(dq_kernel, dq_smem);
  const dim3 query_grid(static_cast<unsigned>(args.shape.seq / TILE),
                        static_cast<unsigned>(args.shape.batch * args.shape.q_heads));
  dq_kernel<<<query_grid, Config::THREADS, dq_smem, stream>>>(args.dq, args.q, args.k, args.v, args.dout, args.lse,
                                                              args.workspace, dims, scale);
  CUDA_CHECK(cudaGetLastError());
}

} // namespace cuboid::kernels::attention_tc

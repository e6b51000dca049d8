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
  int q_offset; // query i sits at key position i + q_offset (a multiple of TILE)
};

using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
constexpr int MAX_DT = Config::MAX_HEAD_DIM / 16; // 16-column tiles of the widest head
constexpr int ST = TILE / 16;                     // 16-column tiles of a score row

// acc[nt] += A (16 x 16 k_tiles, bf16, row-major, lda) * B for the n_tiles (<= N) 16-column tiles of B, B given
// row-major (ldb) or, with B_COL, as the rows of its transpose (B(kk, nn) = b[nn * ldb + kk]). The A fragment is
// loaded once per k-tile; the accumulators stay in registers (N is a compile-time bound, the loop over it unrolled).
// All 32 lanes of the warp must call it.
template <bool B_COL, int N>
__device__ __forceinline__ void warp_mma(Acc (&acc)[N], int n_tiles, const bf16* a, int lda, const bf16* b, int ldb,
                                         int k_tiles) {
  using LayoutB = typename std::conditional<B_COL, wmma::col_major, wmma::row_major>::type;
  for (int kt = 0; kt < k_tiles; ++kt) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + kt * 16, lda);
#pragma unroll
    for (int nt = 0; nt < N; ++nt) {
      if (nt < n_tiles) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, LayoutB> fb;
        if constexpr (B_COL) {
          wmma::load_matrix_sync(fb, b + nt * 16 * ldb + kt * 16, ldb);
        } else {
          wmma::load_matrix_sync(fb, b + kt * 16 * ldb + nt * 16, ldb);
        }
        wmma::mma_sync(acc[nt], fa, fb, acc[nt]);
      }
    }
  }
}

template <int N> __device__ __forceinline__ void zero(Acc (&acc)[N]) {
#pragma unroll
  for (int nt = 0; nt < N; ++nt) {
    wmma::fill_fragment(acc[nt], 0.0f);
  }
}

// Where each element of an accumulator fragment sits in its 16 x 16 tile. CUDA leaves the lane-to-element mapping
// unspecified, so the kernels do not assume one: every warp loads a tile holding r * 16 + c at (r, c) into a fragment
// of the same type, whose element i then names the row and column of element i of any accumulator fragment.
struct FragIndex {
  Acc rc;
  __device__ int row(int i) const { return static_cast<int>(rc.x[i]) >> 4; }
  __device__ int col(int i) const { return static_cast<int>(rc.x[i]) & 15; }
};

// Fills the block's 16 x 16 index tile (256 floats); a __syncthreads() must follow before load_index.
__device__ __forceinline__ void fill_index_tile(float* tile) {
  for (int idx = static_cast<int>(threadIdx.x); idx < 256; idx += static_cast<int>(blockDim.x)) {
    tile[idx] = static_cast<float>(idx);
  }
}

__device__ __forceinline__ FragIndex load_index(const float* tile) {
  FragIndex index;
  wmma::load_matrix_sync(index.rc, tile, 16, wmma::mem_row_major);
  return index;
}

// Writes the warp's 16 x (16 n_tiles) accumulator rows times `scale` (divided by row_div[r] when given) as bf16 to
// global rows t0.. of one head; with `accumulate`, adds them to what is there. The accumulating store reads every
// old value of a tile before any lane writes (a warp barrier between): the result is then the same whether each
// element sits in one lane (the hardware's fragments) or in several (an emulator's whole-tile fragments).
template <int N>
__device__ __forceinline__ void store_acc(bf16* __restrict__ dst, const Acc (&acc)[N], int n_tiles,
                                          const FragIndex& index, float scale, const float* row_div, int t0, int b,
                                          int head, int heads, const Dims& d, bool accumulate = false) {
  const auto at = [&](int nt, int i) {
    return ((static_cast<std::int64_t>(t0 + index.row(i)) * d.batch + b) * heads + head) * d.head_dim + nt * 16 +
           index.col(i);
  };
#pragma unroll
  for (int nt = 0; nt < N; ++nt) {
    if (nt < n_tiles) {
      Acc out = acc[nt]; // scaled, plus the old values when accumulating
      for (int i = 0; i < Acc::num_elements; ++i) {
        const float div = row_div != nullptr ? row_div[index.row(i)] : 1.0f;
        out.x[i] = out.x[i] * scale / div + (accumulate ? __bfloat162float(dst[at(nt, i)]) : 0.0f);
      }
      if (accumulate) {
        __syncwarp();
      }
      for (int i = 0; i < Acc::num_elements; ++i) {
        dst[at(nt, i)] = __float2bfloat16_rn(out.x[i]);
      }
    }
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

// ---- kernels

__global__ void __launch_bounds__(Config::THREADS) forward_kernel(bf16* __restrict__ out, float* __restrict__ lse,
                                                                  const bf16* __restrict__ q,
                                                                  const bf16* __restrict__ k,
                                                                  const bf16* __restrict__ v, Dims d, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.head_dim;
  const int dt = D / 16;
  const int ldb = D + Config::PAD_BF16;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* ks = qs + TILE * ldb;
  bf16* vs = ks + TILE * ldb;
  float* s_all = reinterpret_cast<float*>(vs + TILE * ldb);
  bf16* p_all = reinterpret_cast<bf16*>(s_all + TILE * LDS);
  float* index_tile = reinterpret_cast<float*>(p_all + TILE * LDP);
  float* row_stat = index_tile + 256; // per query row: the rescale factor alpha, then the row sum l
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  const int lane = static_cast<int>(threadIdx.x) % detail::WARP_SIZE;
  float* s_w = s_all + warp * 16 * LDS;
  bf16* p_w = p_all + warp * 16 * LDP;
  float* stat_w = row_stat + warp * 16;
  const int qt = static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y) / d.q_heads;
  const int h = static_cast<int>(blockIdx.y) % d.q_heads;
  const int g = h / (d.q_heads / d.kv_heads);
  load_tile(qs, ldb, q, qt * TILE, b, h, d.q_heads, d);
  fill_index_tile(index_tile);
  __syncthreads();
  const FragIndex index = load_index(index_tile);
  Acc o[MAX_DT];
  zero(o);
  const int row = lane >> 1; // scalar phase: two lanes per query row, 32 columns each
  const int half = lane & 1;
  const int q_index = qt * TILE + warp * 16 + row;
  const int q_position = q_index + d.q_offset; // among the keys
  float m = NEG_INF;
  float l = 0.0f;
  for (int kt = 0; kt <= qt + d.q_offset / TILE; ++kt) {
    __syncthreads(); // every warp is done with the previous K / V tile
    load_tile(ks, ldb, k, kt * TILE, b, g, d.kv_heads, d);
    load_tile(vs, ldb, v, kt * TILE, b, g, d.kv_heads, d);
    __syncthreads();
    Acc sc[ST];
    zero(sc);
    warp_mma<true>(sc, ST, qs + warp * 16 * ldb, ldb, ks, ldb, dt); // S = Q K^T
#pragma unroll
    for (int nt = 0; nt < ST; ++nt) {
      wmma::store_matrix_sync(s_w + nt * 16, sc[nt], LDS, wmma::mem_row_major);
    }
    __syncwarp();
    float* srow = s_w + row * LDS + half * 32;
    float mx = NEG_INF;
    for (int c = 0; c < 32; ++c) {
      const int key = kt * TILE + half * 32 + c;
      const float val = key <= q_position ? srow[c] * scale : NEG_INF;
      srow[c] = val;
      mx = fmaxf(mx, val);
    }
    mx = fmaxf(mx, __shfl_xor_sync(detail::FULL_MASK, mx, 1));
    const float m_new = fmaxf(m, mx); // finite: key kt*TILE <= q_position
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
    if (half == 0) {
      stat_w[row] = alpha;
    }
    __syncwarp();
#pragma unroll
    for (int nt = 0; nt < MAX_DT; ++nt) { // O *= alpha, row by row
      if (nt < dt) {
        for (int i = 0; i < Acc::num_elements; ++i) {
          o[nt].x[i] *= stat_w[index.row(i)];
        }
      }
    }
    warp_mma<false>(o, dt, p_w, LDP, vs, ldb, ST); // O += P V
    __syncwarp(); // every lane has read alpha and P before the next tile overwrites them
  }
  if (half == 0) {
    stat_w[row] = l;
    lse[(static_cast<std::int64_t>(b) * d.q_heads + h) * d.seq + q_index] = m + logf(l);
  }
  __syncwarp();
  store_acc(out, o, dt, index, 1.0f, stat_w, qt * TILE + warp * 16, b, h, d.q_heads, d);
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
// S^T, P, dP^T and the dK / dV accumulators stay in registers; P and dS go through shared memory (bf16) only as the
// A operands of their GEMMs.
__global__ void __launch_bounds__(Config::THREADS)
    dkdv_kernel(bf16* __restrict__ dk, bf16* __restrict__ dv, const bf16* __restrict__ q, const bf16* __restrict__ k,
                const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ lse,
                const float* __restrict__ delta, Dims d, float scale, bool accumulate) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.head_dim;
  const int dt = D / 16;
  const int ldb = D + Config::PAD_BF16;
  bf16* ks = reinterpret_cast<bf16*>(smem);
  bf16* vs = ks + TILE * ldb;
  bf16* qs = vs + TILE * ldb;
  bf16* dos = qs + TILE * ldb;
  bf16* p_all = dos + TILE * ldb;
  float* index_tile = reinterpret_cast<float*>(p_all + TILE * LDP);
  float* lse_s = index_tile + 256;
  float* delta_s = lse_s + TILE;
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  bf16* p_w = p_all + warp * 16 * LDP;
  const int kt = static_cast<int>(blockIdx.x);
  const int b = static_cast<int>(blockIdx.y) / d.kv_heads;
  const int g = static_cast<int>(blockIdx.y) % d.kv_heads;
  const int group = d.q_heads / d.kv_heads;
  load_tile(ks, ldb, k, kt * TILE, b, g, d.kv_heads, d);
  load_tile(vs, ldb, v, kt * TILE, b, g, d.kv_heads, d);
  fill_index_tile(index_tile);
  __syncthreads();
  const FragIndex index = load_index(index_tile);
  Acc dk_acc[MAX_DT];
  Acc dv_acc[MAX_DT];
  zero(dk_acc);
  zero(dv_acc);
  const int key0 = kt * TILE + warp * 16; // the warp's first key
  const int tiles = d.seq / TILE;
  for (int j = 0; j < group; ++j) {
    const int h = g * group + j;
    const std::int64_t stats = (static_cast<std::int64_t>(b) * d.q_heads + h) * d.seq;
    for (int qt = max(kt - d.q_offset / TILE, 0); qt < tiles; ++qt) { // the query tiles that see key tile kt
      __syncthreads();
      load_tile(qs, ldb, q, qt * TILE, b, h, d.q_heads, d);
      load_tile(dos, ldb, dout, qt * TILE, b, h, d.q_heads, d);
      for (int idx = static_cast<int>(threadIdx.x); idx < TILE; idx += static_cast<int>(blockDim.x)) {
        lse_s[idx] = lse[stats + qt * TILE + idx];
        delta_s[idx] = delta[stats + qt * TILE + idx];
      }
      __syncthreads();
      Acc pr[ST]; // S^T = K Q^T, then P^T
      zero(pr);
      warp_mma<true>(pr, ST, ks + warp * 16 * ldb, ldb, qs, ldb, dt);
#pragma unroll
      for (int nt = 0; nt < ST; ++nt) {
        for (int i = 0; i < Acc::num_elements; ++i) {
          const int r = index.row(i);
          const int c = nt * 16 + index.col(i);
          const float p = qt * TILE + c + d.q_offset >= key0 + r ? expf(pr[nt].x[i] * scale - lse_s[c]) : 0.0f;
          pr[nt].x[i] = p;
          p_w[r * LDP + c] = __float2bfloat16_rn(p);
        }
      }
      __syncwarp();
      warp_mma<false>(dv_acc, dt, p_w, LDP, dos, ldb, ST); // dV += P^T dO
      Acc dp[ST];                                           // dP^T = V dO^T
      zero(dp);
      warp_mma<true>(dp, ST, vs + warp * 16 * ldb, ldb, dos, ldb, dt);
      __syncwarp(); // every lane has read P before dS replaces it
#pragma unroll
      for (int nt = 0; nt < ST; ++nt) {
        for (int i = 0; i < Acc::num_elements; ++i) {
          const int c = nt * 16 + index.col(i);
          p_w[index.row(i) * LDP + c] = __float2bfloat16_rn(pr[nt].x[i] * (dp[nt].x[i] - delta_s[c]));
        }
      }
      __syncwarp();
      warp_mma<false>(dk_acc, dt, p_w, LDP, qs, ldb, ST); // dK += dS^T Q
    }
  }
  store_acc(dk, dk_acc, dt, index, scale, nullptr, key0, b, g, d.kv_heads, d, accumulate);
  store_acc(dv, dv_acc, dt, index, 1.0f, nullptr, key0, b, g, d.kv_heads, d, accumulate);
}

// dQ of 64 query rows of head h: over the key tiles at or before them (S, dP, dQ in registers, dS through shared
// memory as the A operand of dS K).
__global__ void __launch_bounds__(Config::THREADS)
    dq_kernel(bf16* __restrict__ dq, const bf16* __restrict__ q, const bf16* __restrict__ k,
              const bf16* __restrict__ v, const bf16* __restrict__ dout, const float* __restrict__ lse,
              const float* __restrict__ delta, Dims d, float scale) {
  extern __shared__ __align__(128) unsigned char smem[];
  const int D = d.head_dim;
  const int dt = D / 16;
  const int ldb = D + Config::PAD_BF16;
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* dos = qs + TILE * ldb;
  bf16* ks = dos + TILE * ldb;
  bf16* vs = ks + TILE * ldb;
  bf16* p_all = vs + TILE * ldb;
  float* index_tile = reinterpret_cast<float*>(p_all + TILE * LDP);
  float* lse_s = index_tile + 256;
  float* delta_s = lse_s + TILE;
  const int warp = static_cast<int>(threadIdx.x) / detail::WARP_SIZE;
  bf16* p_w = p_all + warp * 16 * LDP;
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
  fill_index_tile(index_tile);
  __syncthreads();
  const FragIndex index = load_index(index_tile);
  Acc dq_acc[MAX_DT];
  zero(dq_acc);
  const int local0 = warp * 16; // the warp's first query row within the block's tile
  for (int kt = 0; kt <= qt + d.q_offset / TILE; ++kt) {
    __syncthreads();
    load_tile(ks, ldb, k, kt * TILE, b, g, d.kv_heads, d);
    load_tile(vs, ldb, v, kt * TILE, b, g, d.kv_heads, d);
    __syncthreads();
    Acc sc[ST]; // S = Q K^T
    Acc dp[ST]; // dP = dO V^T
    zero(sc);
    zero(dp);
    warp_mma<true>(sc, ST, qs + local0 * ldb, ldb, ks, ldb, dt);
    warp_mma<true>(dp, ST, dos + local0 * ldb, ldb, vs, ldb, dt);
#pragma unroll
    for (int nt = 0; nt < ST; ++nt) {
      for (int i = 0; i < Acc::num_elements; ++i) {
        const int local = local0 + index.row(i);
        const int c = nt * 16 + index.col(i);
        const float p =
            kt * TILE + c <= qt * TILE + local + d.q_offset ? expf(sc[nt].x[i] * scale - lse_s[local]) : 0.0f;
        p_w[index.row(i) * LDP + c] = __float2bfloat16_rn(p * (dp[nt].x[i] - delta_s[local]));
      }
    }
    __syncwarp();
    warp_mma<false>(dq_acc, dt, p_w, LDP, ks, ldb, ST); // dQ += dS K
    __syncwarp(); // every lane has read dS before the next tile's dS replaces it
  }
  store_acc(dq, dq_acc, dt, index, scale, nullptr, qt * TILE + local0, b, h, d.q_heads, d);
}

Dims to_dims(const attention::Shape& s) {
  return {static_cast<int>(s.seq),      static_cast<int>(s.batch),    static_cast<int>(s.q_heads),
          static_cast<int>(s.kv_heads), static_cast<int>(s.head_dim), static_cast<int>(s.q_offset)};
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
  const dim3 key_grid(static_cast<unsigned>(args.shape.kv_seq() / TILE),
                      static_cast<unsigned>(args.shape.batch * args.shape.kv_heads));
  dkdv_kernel<<<key_grid, Config::THREADS, dkdv_smem, stream>>>(args.dk, args.dv, args.q, args.k, args.v, args.dout,
                                                               args.lse, args.workspace, dims, scale, args.accumulate);
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

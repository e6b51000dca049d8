// CudaGptModel: forward / backward of the GPT units on the device, operator for operator the CPU GptModel
// (exec/gpt_model.cpp) with Megatron's mixed precision (see cuda_model.hpp).
// HBM traffic per layer is kept close to what the op catalog (model/op_catalog.cpp) prices, Megatron's fusions:
//  - biases of the column-parallel linears are added in the GEMM's epilogue (cuBLASLt EPILOGUE_BIAS, bf16 bias);
//    fc1's bias in the GeLU kernel (Megatron's bias_gelu fusion);
//  - with tp = 1 the row-parallel GEMMs (attention projection, fc2) add bias and residual in their epilogue
//    (D = A W + b + x, cuBLASLt C = x, beta = 1: Megatron's bias-dropout-add without the separate pass); with
//    tp > 1 they write fp32 partial sums, all-reduced over TP and added to the residual with the bias in one kernel;
//  - input-gradient GEMMs accumulate in fp32 (beta = 1) and the norms' backward reads that fp32 gradient directly
//    (no cast pass); layer inputs and output gradients are moved into the layer, not copied.
// Where cuBLASLt has no algorithm for an epilogue (GemmRunner::has_algorithm), the GEMM runs without it and a bias
// kernel follows: same result up to bf16 rounding of the bias.
#include "exec/cuda/cuda_model.hpp"

#include "exec/init.hpp"
#include "kernels/activation.cuh"
#include "kernels/attention.cuh"
#include "kernels/attention_tc.cuh"
#include "kernels/cast.cuh"
#include "kernels/cross_entropy.cuh"
#include "kernels/elementwise.cuh"
#include "kernels/embedding.cuh"
#include "kernels/init.cuh"
#include "kernels/layernorm.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <span>

namespace cuboid::exec::cuda {

namespace k = cuboid::kernels;
using k::bf16;

namespace {
std::size_t count(std::int64_t rows, std::int64_t cols) { return static_cast<std::size_t>(rows * cols); }

// All-gather of n bf16 elements per member (n even) into out (n * size): the pairs travel as 32-bit words (an
// all-gather moves bytes; no arithmetic on them).
void all_gather_bf16(Communicator& comm, const bf16* in, std::size_t n, bf16* out) {
  CUBOID_ASSERT(n % 2 == 0, "all-gather of {} bf16 elements (an even count travels as 32-bit words)", n);
  comm.all_gather(std::span<const float>(reinterpret_cast<const float*>(in), n / 2),
                  std::span<float>(reinterpret_cast<float*>(out), n / 2 * static_cast<std::size_t>(comm.size())));
}

void copy_device(bf16* dst, const bf16* src, std::size_t n, cudaStream_t s) {
  CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(bf16), cudaMemcpyDeviceToDevice, s));
}
} // namespace

CudaGptModel::CudaGptModel(const model::ModelSpec& spec, const model::Plan& plan, int tp_rank, int pp_rank,
                           std::uint64_t seed, const CudaContext& context, const DpSharding& sharding)
    : spec_(spec), plan_(plan), tp_rank_(tp_rank), context_(context),
      layout_(spec, plan, tp_rank, pp_rank, seed, false),
      device_(device_param_layout(layout_.params().infos(),
                                  sharding.shards() ? PARAM_ALIGN_ELEMENTS * static_cast<std::size_t>(sharding.dp)
                                      : PARAM_ALIGN_ELEMENTS)) {
  const cudaStream_t s = context_.stream;
  wte_ = find("embed.wte");
  wpe_ = find("embed.wpe");
  head_w_ = spec_.tied_embeddings ? wte_ : find("head.w");
  final_norm_ = norm_idx("final_norm");
  setup_sharding(sharding);
  const std::size_t state = shards_optimizer() ? shards_.shard_total : device_.total;
  master_ = F32Buffer(state, s);
  m_ = F32Buffer(state, s);
  v_ = F32Buffer(state, s);
  if (shard_grads_) {
    shard_grad_buffer_ = F32Buffer(shards_.shard_total, s);
    shard_grad_buffer_.zero(s);
    bucket_grads_.resize(buckets_.size());
  } else {
    grads_ = F32Buffer(device_.total, s);
    grads_.zero(s);
  }
  if (shard_params_) {
    bf16_shard_ = DeviceBuffer<bf16>(shards_.shard_total, s);
    bucket_weights_.resize(buckets_.size());
    gathers_.assign(buckets_.size(), 0);
  } else {
    weights_ = DeviceBuffer<bf16>(device_.total, s);
  }
  master_.zero(s);
  m_.zero(s);
  v_.zero(s);
  layers_.resize(static_cast<std::size_t>(spec_.num_layers));
  for (int layer = 0; layer < spec_.num_layers; ++layer) {
    const std::string pre = fmt::format("layers.{}.", layer);
    LayerIdx& p = layers_[static_cast<std::size_t>(layer)];
    p.ln1 = norm_idx(pre + "ln1");
    p.ln2 = norm_idx(pre + "ln2");
    p.wq = find(pre + "attn.wq");
    p.bq = find(pre + "attn.bq");
    p.wk = find(pre + "attn.wk");
    p.bk = find(pre + "attn.bk");
    p.wv = find(pre + "attn.wv");
    p.bv = find(pre + "attn.bv");
    p.wo = find(pre + "attn.wo");
    p.bo = find(pre + "attn.bo");
    p.w1 = find(pre + "mlp.w1");
    p.b1 = find(pre + "mlp.b1");
    p.wg = find(pre + "mlp.wg");
    p.bg = find(pre + "mlp.bg");
    p.w2 = find(pre + "mlp.w2");
    p.b2 = find(pre + "mlp.b2");
  }
  initialise(seed);
}

int CudaGptModel::find(const std::string& name) const { return layout_.params().find(name); }

CudaGptModel::NormIdx CudaGptModel::norm_idx(const std::string& prefix) const {
  return NormIdx{find(prefix + ".w"), find(prefix + ".b")};
}

const CudaGptModel::LayerIdx& CudaGptModel::layer_idx(int layer) const {
  CUBOID_ASSERT(layer >= 0 && layer < spec_.num_layers && layers_[static_cast<std::size_t>(layer)].wq >= 0,
                "layer {} is not held by this pipeline stage", layer);
  return layers_[static_cast<std::size_t>(layer)];
}

// The DP buckets over the flat buffers and, for the distributed optimizer, their partition (Megatron-Core's
// DistributedOptimizer): bucket boundaries on multiples of dp * PARAM_ALIGN_ELEMENTS, so that every piece keeps the
// tensors' alignment; a word embedding tied across pipeline stages kept in one bucket and in segments of its own
// (Megatron-Core's param_and_grad_buffer gives the shared embedding its own bucket for the same reason: both stages
// must shard it alike for the embedding-group all-reduce that follows the reduce-scatter). The 1-row parameters
// (norm weights, biases) get an fp32 replica for the kernels that read them.
void CudaGptModel::setup_sharding(const DpSharding& sharding) {
  const bool sharded = sharding.shards();
  const std::size_t granule = sharded ? PARAM_ALIGN_ELEMENTS * static_cast<std::size_t>(sharding.dp) : 1;
  const auto& infos = layout_.params().infos();
  shard_grads_ = sharded && (sharding.shard_grads || sharding.shard_params);
  shard_params_ = sharded && sharding.shard_params;
  std::vector<double> weights = sharding.bucket_weights;
  if (shard_grads_ && weights.empty()) {
    // ZeRO-2 programs reduce-scatter per micro-batch (ZeroOp::ScatterGrads) without DP buckets of their own: one
    // gradient bucket per unit's worth of parameters (equal shares, then whole tensors).
    const GptModel& host = layout_;
    std::size_t units = host.embedding_params().empty() ? 0U : 1U;
    units += host.head_params().empty() ? 0U : 1U;
    for (int layer = 0; layer < spec_.num_layers; ++layer) {
      units += find(fmt::format("layers.{}.attn.wq", layer)) >= 0 ? 1U : 0U; // held by this stage
    }
    weights.assign(std::max<std::size_t>(units, 1), 1.0);
  }
  buckets_ = bucket_ranges(weights, device_.total, granule);
  if (!sharded) {
    shards_.owned = {{0, device_.total, 0}}; // the optimizer step's one piece (shards_.dp stays 1)
    shards_.shard_total = device_.total;
    return;
  }
  CUBOID_ASSERT(!buckets_.empty(), "the distributed optimizer over dp {} needs the program's DP buckets", sharding.dp);
  if (shard_grads_) {
    buckets_ = snap_to_tensors(std::move(buckets_), device_.offsets, device_.total);
  }
  std::vector<std::size_t> splits;
  if (spec_.tied_embeddings && plan_.pp > 1 && wte_ >= 0) {
    const std::size_t begin = device_.offsets[static_cast<std::size_t>(wte_)];
    const std::size_t size = infos[static_cast<std::size_t>(wte_)].size();
    const std::size_t end = (begin + size + granule - 1) / granule * granule;
    buckets_ = keep_whole(std::move(buckets_), {begin, end});
    splits = {begin, end};
  }
  shards_ = cuda::optimizer_shards(buckets_, splits, sharding.dp, sharding.dp_rank);
  if (shard_grads_) {
    param_bucket_.assign(infos.size(), -1);
    for (std::size_t idx = 0; idx < infos.size(); ++idx) {
      for (std::size_t kb = 0; kb < buckets_.size(); ++kb) {
        if (device_.offsets[idx] >= buckets_[kb].begin && device_.offsets[idx] < buckets_[kb].end) {
          param_bucket_[idx] = static_cast<int>(kb);
        }
      }
      CUBOID_ASSERT(param_bucket_[idx] >= 0 &&
                        device_.offsets[idx] + infos[idx].size() <=
                            buckets_[static_cast<std::size_t>(param_bucket_[idx])].end,
                    "parameter {} is not inside one gradient bucket", infos[idx].name);
    }
  }
  replica_offsets_.assign(infos.size(), NOT_REPLICATED);
  std::size_t replicated = 0;
  for (std::size_t idx = 0; idx < infos.size(); ++idx) {
    if (infos[idx].full_rows == 1) {
      replica_offsets_[idx] = replicated;
      replicated += (infos[idx].size() + PARAM_ALIGN_ELEMENTS - 1) / PARAM_ALIGN_ELEMENTS * PARAM_ALIGN_ELEMENTS;
    }
  }
  replica32_ = F32Buffer(std::max<std::size_t>(replicated, 1), context_.stream);
}

float* CudaGptModel::master(int idx) const {
  CUBOID_ASSERT(!shards_optimizer(), "master({}): the distributed optimizer keeps pieces, not tensors", idx);
  return master_.get() + device_.offsets[static_cast<std::size_t>(idx)];
}

float* CudaGptModel::grad(int idx) const {
  const std::size_t offset = device_.offsets[static_cast<std::size_t>(idx)];
  if (!shard_grads_) {
    return grads_.get() + offset;
  }
  const auto kb = static_cast<std::size_t>(param_bucket_[static_cast<std::size_t>(idx)]);
  F32Buffer& buffer = bucket_grads_[kb];
  if (buffer.empty()) {
    buffer = F32Buffer(buckets_[kb].end - buckets_[kb].begin, context_.stream);
    buffer.zero(context_.stream);
  }
  return buffer.get() + (offset - buckets_[kb].begin);
}

float* CudaGptModel::grads() const {
  CUBOID_ASSERT(!shard_grads_, "ZeRO-2 keeps no full gradient buffer (sharded_grads() holds the pieces)");
  return grads_.get();
}

// --- ZeRO / FSDP ---
void CudaGptModel::scatter_grads(Communicator& dp) {
  for (std::size_t kb = 0; kb < buckets_.size(); ++kb) {
    scatter_bucket(dp, kb);
  }
}

void CudaGptModel::scatter_bucket(Communicator& dp, std::size_t kb) {
  CUBOID_ASSERT(shard_grads_ && kb < buckets_.size(), "scatter_bucket({}) without ZeRO-2", kb);
  std::size_t piece = shards_.first_owned[kb];
  const std::vector<ShardSegment>& segments = shards_.segments[kb];
  F32Buffer& buffer = bucket_grads_[kb];
  if (!buffer.empty()) {
    for (const ShardSegment& segment : segments) {
      float* data = buffer.get() + (segment.begin - buckets_[kb].begin);
      dp.reduce_scatter_in_place_async(std::span<float>(data, segment.end - segment.begin))->wait();
      const OwnedPiece& owned = shards_.owned[piece++];
      float* mine = data + (owned.begin - segment.begin);
      float* acc = shard_grad_buffer_.get() + owned.shard_offset;
      k::elementwise::residual_add<float>({acc, acc, mine, nullptr, 1, static_cast<std::int64_t>(owned.size)},
                                          context_.stream);
    }
    buffer = F32Buffer(); // freed in stream order, after the reduce-scatter the compute stream now waits for
  }
}

__nv_bfloat16* CudaGptModel::weights() const {
  CUBOID_ASSERT(!shard_params_, "ZeRO-3 keeps no full bf16 copy (sharded_weights() holds the pieces)");
  return weights_.get();
}

__nv_bfloat16* CudaGptModel::weight(int idx) const {
  const std::size_t offset = device_.offsets[static_cast<std::size_t>(idx)];
  if (!shard_params_) {
    return weights_.get() + offset;
  }
  const auto kb = static_cast<std::size_t>(param_bucket_[static_cast<std::size_t>(idx)]);
  CUBOID_ASSERT(!bucket_weights_[kb].empty(), "parameter {} read without its ZeRO-3 all-gather",
                layout_.params().info(idx).name);
  return bucket_weights_[kb].get() + (offset - buckets_[kb].begin);
}

std::vector<std::size_t> CudaGptModel::buckets_of(const std::vector<int>& params) const {
  std::vector<std::size_t> out;
  for (const int p : params) {
    const auto kb = static_cast<std::size_t>(param_bucket_[static_cast<std::size_t>(p)]);
    if (std::find(out.begin(), out.end(), kb) == out.end()) {
      out.push_back(kb);
    }
  }
  return out;
}

void CudaGptModel::gather_params(Communicator& dp, const std::vector<int>& params) {
  CUBOID_ASSERT(shard_params_, "gather_params without ZeRO-3");
  for (const std::size_t kb : buckets_of(params)) {
    if (gathers_[kb]++ > 0) {
      continue;
    }
    DeviceBuffer<bf16>& buffer = bucket_weights_[kb];
    buffer = DeviceBuffer<bf16>(buckets_[kb].end - buckets_[kb].begin, context_.stream);
    std::size_t piece = shards_.first_owned[kb];
    for (const ShardSegment& segment : shards_.segments[kb]) {
      const OwnedPiece& owned = shards_.owned[piece++];
      CUDA_CHECK(cudaMemcpyAsync(buffer.get() + (owned.begin - buckets_[kb].begin),
                                 bf16_shard_.get() + owned.shard_offset, owned.size * sizeof(bf16),
                                 cudaMemcpyDeviceToDevice, context_.stream));
      // bf16 pairs travel as 32-bit words (pieces are multiples of PARAM_ALIGN_ELEMENTS).
      auto* words = reinterpret_cast<float*>(buffer.get() + (segment.begin - buckets_[kb].begin));
      dp.all_gather_in_place(std::span<float>(words, (segment.end - segment.begin) / 2));
    }
    for (std::size_t idx = 0; idx < param_bucket_.size(); ++idx) {
      if (param_bucket_[idx] == static_cast<int>(kb)) {
        refresh_replica(static_cast<int>(idx));
      }
    }
  }
}

void CudaGptModel::release_params(const std::vector<int>& params) {
  CUBOID_ASSERT(shard_params_, "release_params without ZeRO-3");
  for (const std::size_t kb : buckets_of(params)) {
    CUBOID_ASSERT(gathers_[kb] > 0, "release of bucket {} that is not gathered", kb);
    if (--gathers_[kb] == 0) {
      bucket_weights_[kb] = DeviceBuffer<bf16>();
    }
  }
}

int CudaGptModel::bucket_of(int idx) const {
  return shard_grads_ ? param_bucket_[static_cast<std::size_t>(idx)] : -1;
}

const float* CudaGptModel::value32(int idx) const {
  if (!shards_optimizer()) {
    return master(idx);
  }
  const std::size_t at = replica_offsets_[static_cast<std::size_t>(idx)];
  CUBOID_ASSERT(at != NOT_REPLICATED, "parameter {} has no fp32 replica (a matrix: read its bf16 copy)",
                layout_.params().info(idx).name);
  return replica32_.get() + at;
}

void CudaGptModel::refresh_replicas() {
  for (std::size_t idx = 0; idx < layout_.params().infos().size(); ++idx) {
    refresh_replica(static_cast<int>(idx));
  }
}

void CudaGptModel::refresh_replica(int idx) {
  const auto at = static_cast<std::size_t>(idx);
  if (!shards_optimizer() || replica_offsets_[at] == NOT_REPLICATED) {
    return;
  }
  k::cast::convert<float, bf16>({replica32_.get() + replica_offsets_[at], weight(idx),
                                 static_cast<std::int64_t>(layout_.params().info(idx).size())},
                                context_.stream);
}

// Same values as ParamSet::finalize (exec/init.cpp init_block) for every shard, then the bf16 copy. The distributed
// optimizer initialises the full tensors in the gradient buffer (zeroed again after), keeps its pieces as master
// values and the exact fp32 values of the 1-row parameters as their replica.
void CudaGptModel::initialise(std::uint64_t seed) {
  if (!shards_optimizer()) {
    initialise_range(seed, 0, device_.total, master_.get()); // zeroed by the constructor
    return;
  }
  if (!shard_grads_) {
    initialise_range(seed, 0, device_.total, grads_.get());
    grads_.zero(context_.stream);
    return;
  }
  for (const BucketRange& bucket : buckets_) { // ZeRO-2: no full fp32 buffer; one bucket's worth at a time
    F32Buffer scratch(bucket.end - bucket.begin, context_.stream);
    scratch.zero(context_.stream);
    initialise_range(seed, bucket.begin, bucket.end, scratch.get());
  }
}

void CudaGptModel::initialise_range(std::uint64_t seed, std::size_t begin, std::size_t end, float* scratch) {
  const cudaStream_t s = context_.stream;
  const auto& infos = layout_.params().infos();
  const auto in_range = [&](std::size_t idx) { return device_.offsets[idx] >= begin && device_.offsets[idx] < end; };
  for (std::size_t idx = 0; idx < infos.size(); ++idx) {
    if (!in_range(idx)) {
      continue;
    }
    const ParamInfo& p = infos[idx];
    float* out = scratch + (device_.offsets[idx] - begin);
    switch (p.init) {
    case InitKind::Zeros: break; // zeroed by the caller
    case InitKind::Ones: k::init::fill({out, 1.0f, static_cast<std::int64_t>(p.size())}, s); break;
    case InitKind::Normal:
      k::init::normal({out, mix64(seed) ^ hash_name(p.name), p.init_std, p.rows, p.cols, p.row0, p.col0, p.full_cols},
                      s);
      break;
    }
  }
  if (end > begin && !shard_params_) {
    k::cast::convert<bf16, float>({weights_.get() + begin, scratch, static_cast<std::int64_t>(end - begin)}, s);
  }
  if (!shards_optimizer()) {
    return;
  }
  for (const OwnedPiece& piece : shards_.owned) {
    const std::size_t lo = std::max(begin, piece.begin);
    const std::size_t hi = std::min(end, piece.begin + piece.size);
    if (lo < hi) {
      const std::size_t at = piece.shard_offset + (lo - piece.begin);
      CUDA_CHECK(cudaMemcpyAsync(master_.get() + at, scratch + (lo - begin), (hi - lo) * sizeof(float),
                                 cudaMemcpyDeviceToDevice, s));
      if (shard_params_) {
        k::cast::convert<bf16, float>({bf16_shard_.get() + at, scratch + (lo - begin),
                                       static_cast<std::int64_t>(hi - lo)},
                                      s);
      }
    }
  }
  for (std::size_t idx = 0; idx < infos.size(); ++idx) {
    if (in_range(idx) && replica_offsets_[idx] != NOT_REPLICATED) {
      CUDA_CHECK(cudaMemcpyAsync(replica32_.get() + replica_offsets_[idx], scratch + (device_.offsets[idx] - begin),
                                 infos[idx].size() * sizeof(float), cudaMemcpyDeviceToDevice, s));
    }
  }
}

void CudaGptModel::zero_grads() {
  if (shard_grads_) {
    shard_grad_buffer_.zero(context_.stream);
    for (F32Buffer& buffer : bucket_grads_) {
      buffer = F32Buffer();
    }
  } else {
    grads_.zero(context_.stream);
  }
}

bool CudaGptModel::use_tensor_core_attention() const {
  return context_.tensor_core_attention && tensor_core_unsupported_reason().empty();
}

std::string CudaGptModel::tensor_core_unsupported_reason() const {
  const std::int64_t D = spec_.head_dim;
  const std::int64_t q_heads = spec_.num_attention_heads / plan_.tp;
  const std::int64_t kv_heads = spec_.num_query_groups / plan_.tp;
  for (const AttentionSegment& seg : core_segments()) {
    std::string why = k::attention_tc::unsupported_reason(
        {seg.seq, plan_.micro_batch_size, core_heads(q_heads), core_heads(kv_heads), D, seg.q_offset});
    if (!why.empty()) {
      return context_parallel() ? "context-parallel chunk: " + why : why;
    }
  }
  return {};
}

std::string CudaGptModel::attention_kernel() const {
  if (use_tensor_core_attention()) {
    return "tensor-core (bf16 WMMA, kernels/attention_tc)";
  }
  const std::string why =
      context_.tensor_core_attention ? tensor_core_unsupported_reason()
                                     : std::string("tensor-core kernels switched off");
  return "scalar fp32 (kernels/attention; " + why + ")";
}

// ---- context parallelism

std::vector<std::int64_t> CudaGptModel::cp_positions() const {
  return context_parallel_positions(spec_.seq_length, plan_.cp, context_.cp_rank);
}

std::int64_t CudaGptModel::cp_chunk_rows() const {
  return spec_.seq_length / (2 * plan_.cp) * plan_.micro_batch_size;
}

std::vector<CudaGptModel::AttentionSegment> CudaGptModel::attention_segments() const {
  if (!context_parallel()) {
    return {{spec_.seq_length, 0, 0}};
  }
  const auto [first, second] = context_parallel_chunks(plan_.cp, context_.cp_rank);
  const std::int64_t chunk = spec_.seq_length / (2 * plan_.cp); // positions
  return {{chunk, first * chunk, 0}, {chunk, second * chunk, cp_chunk_rows()}};
}

std::vector<CudaGptModel::AttentionSegment> CudaGptModel::core_segments() const {
  if (ulysses()) {
    return {{spec_.seq_length, 0, 0}};
  }
  return attention_segments();
}

namespace {
// Column block [col0, col0 + width) of `rows` rows of a row-major (rows, cols) bf16 matrix to or from a packed
// (rows, width) one: one pitched copy.
void copy_columns(bf16* dst, std::size_t dst_cols, const bf16* src, std::size_t src_cols, std::size_t width,
                  std::size_t rows, cudaStream_t s) {
  CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_cols * sizeof(bf16), src, src_cols * sizeof(bf16), width * sizeof(bf16), rows,
                               cudaMemcpyDeviceToDevice, s));
}

// An all-to-all of equal bf16 blocks, moved as 32-bit words (an even count per block).
void all_to_all_bf16(Communicator& comm, const bf16* in, bf16* out, std::size_t block) {
  CUBOID_ASSERT(block % 2 == 0, "all-to-all of {} bf16 elements per member (an even count travels as 32-bit words)",
                block);
  const auto members = static_cast<std::size_t>(comm.size());
  const std::vector<int> counts(members, static_cast<int>(block / 2));
  comm.all_to_all_v(std::span<const float>(reinterpret_cast<const float*>(in), block / 2 * members), counts,
                    std::span<float>(reinterpret_cast<float*>(out), block / 2 * members), counts);
}

// The two sides of a Ulysses all-to-all, as element offsets into bf16 buffers `width` = cols / cp wide: the sequence
// side (the 2cp chunks of chunk_rows rows in position order) and the member side (cp blocks, member m's block
// holding its two chunks).
struct UlyssesLayout {
  int cp = 1;
  std::size_t chunk_rows = 0;
  std::size_t cols = 0;
  std::size_t width = 0;
  [[nodiscard]] std::size_t rows() const { return 2 * chunk_rows; }
  [[nodiscard]] std::size_t member_at(int member, std::size_t half) const {
    return (static_cast<std::size_t>(member) * rows() + half * chunk_rows) * width;
  }
  [[nodiscard]] std::size_t sequence_at(int member, std::size_t half) const {
    return static_cast<std::size_t>(context_parallel_chunks(cp, member)[half]) * chunk_rows * width;
  }
};

UlyssesLayout ulysses_layout(int cp, std::int64_t chunk_rows, std::int64_t cols, std::size_t elements,
                             const char* what) {
  const UlyssesLayout layout{cp, static_cast<std::size_t>(chunk_rows), static_cast<std::size_t>(cols),
                             static_cast<std::size_t>(cols / cp)};
  CUBOID_ASSERT(elements == layout.rows() * layout.cols && cols % cp == 0,
                "{}: {} elements for {} rows of {} columns, cp {}", what, elements, layout.rows(), cols, cp);
  return layout;
}
} // namespace

// Send block m: this rank's rows (its two chunks) of head group m; received block m: member m's rows of this rank's
// head group, placed at member m's chunks of the sequence.
void CudaGptModel::cp_rows_to_heads(const Bf16Buffer& local, std::int64_t cols, Bf16Buffer& full) {
  const cudaStream_t s = context_.stream;
  const UlyssesLayout at = ulysses_layout(plan_.cp, cp_chunk_rows(), cols, local.size(), "cp_rows_to_heads");
  Bf16Buffer send(local.size(), s);
  for (int member = 0; member < plan_.cp; ++member) {
    copy_columns(send.get() + at.member_at(member, 0), at.width,
                 local.get() + static_cast<std::size_t>(member) * at.width, at.cols, at.width, at.rows(), s);
  }
  Bf16Buffer recv(local.size(), s);
  all_to_all_bf16(*context_.cp, send.get(), recv.get(), at.rows() * at.width);
  full.resize(local.size(), s);
  for (int member = 0; member < plan_.cp; ++member) {
    for (std::size_t half = 0; half < 2; ++half) {
      copy_device(full.get() + at.sequence_at(member, half), recv.get() + at.member_at(member, half),
                  at.chunk_rows * at.width, s);
    }
  }
}

void CudaGptModel::cp_heads_to_rows(const Bf16Buffer& full, std::int64_t cols, Bf16Buffer& local) {
  const cudaStream_t s = context_.stream;
  const UlyssesLayout at = ulysses_layout(plan_.cp, cp_chunk_rows(), cols, full.size(), "cp_heads_to_rows");
  Bf16Buffer send(full.size(), s);
  for (int member = 0; member < plan_.cp; ++member) {
    for (std::size_t half = 0; half < 2; ++half) {
      copy_device(send.get() + at.member_at(member, half), full.get() + at.sequence_at(member, half),
                  at.chunk_rows * at.width, s);
    }
  }
  Bf16Buffer recv(full.size(), s);
  all_to_all_bf16(*context_.cp, send.get(), recv.get(), at.rows() * at.width);
  local.resize(full.size(), s);
  for (int member = 0; member < plan_.cp; ++member) {
    copy_columns(local.get() + static_cast<std::size_t>(member) * at.width, at.cols,
                 recv.get() + at.member_at(member, 0), at.width, at.width, at.rows(), s);
  }
}

// The gathered buffer holds member r's rows [chunk r, chunk 2cp-1-r] at block r; the whole sequence is chunk order.
const bf16* CudaGptModel::cp_gather(const Bf16Buffer& local, std::int64_t cols, Bf16Buffer& full) {
  const cudaStream_t s = context_.stream;
  const std::size_t chunk = count(cp_chunk_rows(), cols);
  const std::size_t n = 2 * static_cast<std::size_t>(plan_.cp);
  CUBOID_ASSERT(local.size() == 2 * chunk, "cp_gather: {} elements, expected two chunks of {}", local.size(), chunk);
  Bf16Buffer gathered(n * chunk, s);
  all_gather_bf16(*context_.cp, local.get(), local.size(), gathered.get());
  full.resize(n * chunk, s);
  for (int member = 0; member < plan_.cp; ++member) {
    const std::array<int, 2> chunks = context_parallel_chunks(plan_.cp, member);
    for (std::size_t half = 0; half < 2; ++half) {
      copy_device(full.get() + static_cast<std::size_t>(chunks[half]) * chunk,
                  gathered.get() + (2 * static_cast<std::size_t>(member) + half) * chunk, chunk, s);
    }
  }
  return full.get();
}

// The reduction runs in fp32 (the Communicator reduces floats): each chunk is widened into member order, the sum
// over CP reduce-scattered, this rank's two chunks narrowed again.
void CudaGptModel::cp_reduce_scatter(const Bf16Buffer& full, std::int64_t cols, Bf16Buffer& local) {
  const cudaStream_t s = context_.stream;
  const std::int64_t chunk = static_cast<std::int64_t>(count(cp_chunk_rows(), cols));
  const std::int64_t n = 2 * plan_.cp;
  CUBOID_ASSERT(static_cast<std::int64_t>(full.size()) == n * chunk, "cp_reduce_scatter: {} elements, expected {}",
                full.size(), n * chunk);
  F32Buffer by_member(full.size(), s);
  for (int member = 0; member < plan_.cp; ++member) {
    const std::array<int, 2> chunks = context_parallel_chunks(plan_.cp, member);
    for (std::int64_t half = 0; half < 2; ++half) {
      k::cast::convert<float, bf16>(
          {by_member.get() + (2 * member + half) * chunk, full.get() + chunks[static_cast<std::size_t>(half)] * chunk,
           chunk},
          s);
    }
  }
  F32Buffer mine(static_cast<std::size_t>(2 * chunk), s);
  context_.cp->reduce_scatter(std::span<const float>(by_member.get(), by_member.size()),
                              std::span<float>(mine.get(), mine.size()));
  to_bf16(mine, local);
}

void CudaGptModel::rope(Bf16Buffer& x, std::int64_t heads, bool forward) {
  const std::int64_t D = spec_.head_dim;
  const std::int64_t B = plan_.micro_batch_size;
  for (const AttentionSegment& seg : attention_segments()) {
    k::rope::Args<bf16> args{x.get() + seg.row0 * heads * D, seg.seq * B, heads, D, B};
    args.first_row = seg.q_offset * B;
    if (forward) {
      k::rope::forward<bf16>(args, context_.stream);
    } else {
      k::rope::backward<bf16>(args, context_.stream);
    }
  }
}

// ---- building blocks

namespace {
// bf16 A and B; no bias, C read in place (GemmArgs' defaults).
GemmArgs gemm_args(std::int64_t m, std::int64_t n, std::int64_t kk, bool trans_a, bool trans_b, const void* a,
                   const void* b, void* c, GemmDType c_type, float beta) {
  GemmArgs args;
  args.m = m;
  args.n = n;
  args.k = kk;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.a = a;
  args.b = b;
  args.c = c;
  args.c_type = c_type;
  args.beta = beta;
  return args;
}
} // namespace

void CudaGptModel::gemm(std::int64_t m, std::int64_t n, std::int64_t kk, bool trans_a, bool trans_b, const void* a,
                        const void* b, void* c, GemmDType c_type, float beta) {
  context_.gemm->run(gemm_args(m, n, kk, trans_a, trans_b, a, b, c, c_type, beta), context_.workspace,
                     context_.workspace_bytes, context_.stream);
}

void CudaGptModel::linear(const Bf16Buffer& x, int w, int bias, std::int64_t rows, Bf16Buffer& y,
                          const Bf16Buffer* residual) {
  const ParamInfo& info = layout_.params().info(w);
  y.resize(count(rows, info.cols), context_.stream);
  GemmArgs args = gemm_args(rows, info.cols, info.rows, false, false, x.get(), weight(w), y.get(), GemmDType::BF16,
                            residual != nullptr ? 1.0f : 0.0f);
  if (residual != nullptr) {
    args.c_in = residual->get(); // D = x W (+ b) + residual
  }
  if (bias >= 0) {
    args.bias = weight(bias); // the bf16 copy (refreshed by the optimizer step with the weights)
    if (!context_.gemm->has_algorithm(args, context_.workspace_bytes)) {
      args.bias = nullptr;
    }
  }
  context_.gemm->run(args, context_.workspace, context_.workspace_bytes, context_.stream);
  if (bias >= 0 && args.bias == nullptr) {
    k::elementwise::bias_add<bf16>({y.get(), value32(bias), rows, info.cols}, context_.stream);
  }
}

void CudaGptModel::linear_wgrad(const Bf16Buffer& x, const Bf16Buffer& dy, int w, int bias, std::int64_t rows) {
  const ParamInfo& info = layout_.params().info(w);
  gemm(info.rows, info.cols, rows, true, false, x.get(), dy.get(), grad(w), GemmDType::F32, 1.0f);
  if (bias >= 0) {
    k::elementwise::column_sum<bf16>({grad(bias), dy.get(), rows, info.cols}, context_.stream);
  }
}

// --- zero-bubble schedules ---
void CudaGptModel::weight_grad(CudaWeightGradWork* deferred, int weight, int bias, std::int64_t m, std::int64_t n,
                               std::int64_t k, std::shared_ptr<const Bf16Buffer> a,
                               std::shared_ptr<const Bf16Buffer> b) {
  CUBOID_ASSERT(deferred != nullptr && a && b && !a->empty() && !b->empty(), "weight_grad of parameter {}: no operands",
                weight);
  deferred->items.push_back({weight, bias, m, n, k, std::move(a), std::move(b)});
}

std::shared_ptr<const Bf16Buffer> CudaGptModel::keep(Bf16Buffer&& buffer) const {
  return std::make_shared<const Bf16Buffer>(std::move(buffer));
}

std::shared_ptr<const Bf16Buffer> CudaGptModel::keep_copy(const Bf16Buffer& buffer) const {
  Bf16Buffer copy(buffer.size(), context_.stream);
  CUDA_CHECK(cudaMemcpyAsync(copy.get(), buffer.get(), buffer.size() * sizeof(bf16), cudaMemcpyDeviceToDevice,
                             context_.stream));
  return keep(std::move(copy));
}

void CudaGptModel::apply_weight_grads(CudaWeightGradWork& work) {
  for (const CudaWeightGradWork::Item& item : work.items) {
    gemm(item.m, item.n, item.k, true, false, item.a->get(), item.b->get(), grad(item.weight), GemmDType::F32, 1.0f);
    if (item.bias >= 0) {
      k::elementwise::column_sum<bf16>({grad(item.bias), item.b->get(), item.k, item.n}, context_.stream);
    }
  }
  work.items.clear();
}

void CudaGptModel::linear_dgrad(const Bf16Buffer& dy, int w, std::int64_t rows, F32Buffer& dx, float beta) {
  const ParamInfo& info = layout_.params().info(w);
  if (beta == 0.0f) {
    dx.resize(count(rows, info.rows), context_.stream);
  }
  gemm(rows, info.rows, info.cols, false, true, dy.get(), weight(w), dx.get(), GemmDType::F32, beta);
}

void CudaGptModel::row_parallel_linear(const Bf16Buffer& in, int w, int bias, const Bf16Buffer& residual,
                                       Bf16Buffer& out) {
  const std::int64_t rows = token_rows();
  if (plan_.tp == 1) {
    linear(in, w, bias, rows, out, &residual);
    return;
  }
  const ParamInfo& info = layout_.params().info(w);
  const cudaStream_t s = context_.stream;
  F32Buffer partial(count(rows, info.cols), s);
  gemm(rows, info.cols, info.rows, false, false, in.get(), weight(w), partial.get(), GemmDType::F32, 0.0f);
  F32Buffer reduced;
  leave_tp(partial, reduced);
  const std::int64_t out_rows = activation_rows();
  out.resize(count(out_rows, info.cols), s);
  k::elementwise::residual_add<bf16>({out.get(), residual.get(), reduced.get(), bias >= 0 ? value32(bias) : nullptr,
                                      out_rows, info.cols},
                                     s);
}

void CudaGptModel::norm_forward(const NormIdx& idx, const Bf16Buffer& x, Bf16Buffer& y, F32Buffer& mean,
                                F32Buffer& rstd) {
  const std::int64_t rows = static_cast<std::int64_t>(x.size()) / spec_.hidden_size;
  const cudaStream_t s = context_.stream;
  y.resize(x.size(), s);
  rstd.resize(static_cast<std::size_t>(rows), s);
  if (idx.b >= 0) {
    mean.resize(static_cast<std::size_t>(rows), s);
    k::layernorm::forward<bf16>({y.get(), mean.get(), rstd.get(), x.get(), value32(idx.w), value32(idx.b), rows,
                                 spec_.hidden_size},
                                s);
  } else {
    k::rmsnorm::forward<bf16>({y.get(), rstd.get(), x.get(), value32(idx.w), rows, spec_.hidden_size}, s);
  }
}

// dy is the fp32 output of the data-gradient GEMMs (after the TP all-reduce), read as is.
void CudaGptModel::norm_backward(const NormIdx& idx, const F32Buffer& dy, const Bf16Buffer& x, const F32Buffer& mean,
                                 const F32Buffer& rstd, Bf16Buffer& dx) {
  const std::int64_t rows = static_cast<std::int64_t>(x.size()) / spec_.hidden_size;
  if (idx.b >= 0) {
    k::layernorm::backward<bf16, float>({dx.get(), grad(idx.w), grad(idx.b), dy.get(), x.get(), value32(idx.w),
                                         mean.get(), rstd.get(), rows, spec_.hidden_size},
                                        context_.stream);
  } else {
    k::rmsnorm::backward<bf16, float>({dx.get(), grad(idx.w), dy.get(), x.get(), value32(idx.w), rstd.get(), rows,
                                       spec_.hidden_size},
                                      context_.stream);
  }
}

void CudaGptModel::tp_all_reduce(F32Buffer& data, ReduceOp op) {
  if (plan_.tp > 1) {
    context_.tp->all_reduce(std::span<float>(data.get(), data.size()), op);
  }
}

const Bf16Buffer& CudaGptModel::enter_tp(const Bf16Buffer& local, Bf16Buffer& storage) {
  if (!sequence_parallel()) {
    return local;
  }
  storage.resize(local.size() * static_cast<std::size_t>(plan_.tp), context_.stream);
  all_gather_bf16(*context_.tp, local.get(), local.size(), storage.get());
  return storage;
}

void CudaGptModel::leave_tp(F32Buffer& partial, F32Buffer& out) {
  if (!sequence_parallel()) {
    tp_all_reduce(partial);
    out = std::move(partial);
    return;
  }
  out.resize(partial.size() / static_cast<std::size_t>(plan_.tp), context_.stream);
  context_.tp->reduce_scatter(std::span<const float>(partial.get(), partial.size()),
                              std::span<float>(out.get(), out.size()));
  partial = F32Buffer();
}

void CudaGptModel::to_bf16(const F32Buffer& in, Bf16Buffer& out) {
  out.resize(in.size(), context_.stream);
  k::cast::convert<bf16, float>({out.get(), in.get(), static_cast<std::int64_t>(in.size())}, context_.stream);
}

// ---- embedding: fp32 gather from the master table (exact; the distributed optimizer's from the bf16 copy), TP
// all-reduce, positions in fp32, one cast.

// Runs of this rank's activation rows with consecutive positions: all rows from position 0; under sequence
// parallelism this TP rank's share; under context parallelism the two local chunks.
std::vector<CudaGptModel::PositionRun> CudaGptModel::position_runs() const {
  if (sequence_parallel()) {
    const std::int64_t local = activation_rows();
    return {{0, local * tp_rank_, local}};
  }
  std::vector<PositionRun> runs;
  for (const AttentionSegment& seg : attention_segments()) {
    runs.push_back({seg.row0, seg.q_offset * plan_.micro_batch_size, seg.seq * plan_.micro_batch_size});
  }
  return runs;
}

void CudaGptModel::embedding_forward(const std::int32_t* tokens, Bf16Buffer& out) {
  const cudaStream_t s = context_.stream;
  const ParamInfo& info = layout_.params().info(wte_);
  const std::int64_t rows = token_rows();
  const std::int64_t C = spec_.hidden_size;
  F32Buffer partial(count(rows, C), s);
  // The distributed optimizer's forward reads the bf16 copy (its master values are pieces); widening is exact.
  const bool from_copy = shards_optimizer();
  if (from_copy) {
    k::embedding::forward<float, bf16>({partial.get(), tokens, weight(wte_), rows, info.rows, C, info.row0}, s);
  } else {
    k::embedding::forward<float>({partial.get(), tokens, master(wte_), rows, info.rows, C, info.row0}, s);
  }
  F32Buffer summed; // this rank's rows under sequence parallelism
  leave_tp(partial, summed);
  if (wpe_ >= 0) {
    for (const auto& [row0, first_row, n] : position_runs()) {
      if (from_copy) {
        k::embedding::position_forward<float, bf16>(
            {summed.get() + row0 * C, weight(wpe_), n, C, spec_.seq_length, first_row, plan_.micro_batch_size}, s);
      } else {
        k::embedding::position_forward<float>(
            {summed.get() + row0 * C, master(wpe_), n, C, spec_.seq_length, first_row, plan_.micro_batch_size}, s);
      }
    }
  }
  to_bf16(summed, out);
}

void CudaGptModel::embedding_backward(const std::int32_t* tokens, const Bf16Buffer& dout) {
  const cudaStream_t s = context_.stream;
  const ParamInfo& info = layout_.params().info(wte_);
  const std::int64_t C = spec_.hidden_size;
  if (wpe_ >= 0) {
    for (const auto& [row0, first_row, n] : position_runs()) {
      k::embedding::position_backward<bf16>(
          {grad(wpe_), dout.get() + row0 * C, n, C, spec_.seq_length, first_row, plan_.micro_batch_size}, s);
    }
  }
  // Conjugate of the forward's reduction: the all-reduce's backward is the identity, the reduce-scatter's an
  // all-gather.
  Bf16Buffer gathered;
  const Bf16Buffer& full = enter_tp(dout, gathered);
  k::embedding::backward<bf16>({grad(wte_), tokens, full.get(), token_rows(), info.rows, C, info.row0}, s);
}

// ---- transformer layer

void CudaGptModel::layer_forward(int layer, Bf16Buffer&& x, Bf16Buffer& out, CudaLayerCache& c, bool keep_all) {
  const LayerIdx& p = layer_idx(layer);
  const cudaStream_t s = context_.stream;
  const std::int64_t rows = token_rows();
  const std::int64_t D = spec_.head_dim;
  const std::int64_t q_cols = layout_.params().info(p.wq).cols;
  const std::int64_t kv_cols = layout_.params().info(p.wk).cols;
  if (&x != &c.x) {
    c.x = std::move(x); // the layer input is saved for backward, not copied
  }
  // Under sequence parallelism the cache keeps the norm outputs of this rank's rows and the backward gathers them
  // again, as Megatron does (and as model/memory_model.cpp counts them).
  Bf16Buffer gathered;
  norm_forward(p.ln1, c.x, c.h1, c.ln1_mean, c.ln1_rstd);
  const Bf16Buffer& h1 = enter_tp(c.h1, gathered);
  linear(h1, p.wq, p.bq, rows, c.q);
  linear(h1, p.wk, p.bk, rows, c.k);
  linear(h1, p.wv, p.bv, rows, c.v);
  if (!spec_.learned_position_embedding) {
    rope(c.q, q_cols / D, true);
    rope(c.k, kv_cols / D, true);
  }
  // Context parallelism: the whole sequence's K and V for this layer's attention only; the cache keeps this rank's
  // rows and the backward gathers them again (as Transformer Engine's all-gather CP).
  // Ulysses instead swaps the cache's Q, K and V for the whole sequence's rows of this rank's head group (TE keeps
  // them so for the backward) and returns the output to this rank's rows.
  Bf16Buffer k_full, v_full;
  if (ulysses()) {
    for (Bf16Buffer* rows_layout : {&c.q, &c.k, &c.v}) {
      Bf16Buffer heads;
      cp_rows_to_heads(*rows_layout, rows_layout == &c.q ? q_cols : kv_cols, heads);
      *rows_layout = std::move(heads);
    }
  }
  const bool gathered_kv = context_parallel() && !ulysses();
  const bf16* keys = gathered_kv ? cp_gather(c.k, kv_cols, k_full) : c.k.get();
  const bf16* values = gathered_kv ? cp_gather(c.v, kv_cols, v_full) : c.v.get();
  const std::int64_t core_q_cols = ulysses() ? q_cols / plan_.cp : q_cols;
  Bf16Buffer attn_heads; // Ulysses: the output of this rank's head group, before the all-to-all back
  Bf16Buffer& attn = ulysses() ? attn_heads : c.attn;
  attn.resize(count(rows, q_cols), s);
  c.lse.resize(count(rows, q_cols / D), s); // (B, Hq, T/cp) or (B, Hq/cp, T): one float per query row and head
  const bool tensor_cores = use_tensor_core_attention();
  for (const AttentionSegment& seg : core_segments()) {
    const k::attention::Shape shape{seg.seq,           plan_.micro_batch_size, core_heads(q_cols / D),
                                    core_heads(kv_cols / D), D,                seg.q_offset};
    const std::int64_t q_at = seg.row0 * core_q_cols;
    float* lse = c.lse.get() + seg.row0 * (core_q_cols / D); // (B, Hq, seq) per segment, one after another
    const k::attention::ForwardArgs<bf16> args{attn.get() + q_at, lse, c.q.get() + q_at, keys, values, shape};
    if (tensor_cores) {
      k::attention_tc::forward(args, s);
    } else {
      k::attention::forward<bf16>(args, s);
    }
  }
  if (ulysses()) {
    cp_heads_to_rows(attn_heads, q_cols, c.attn);
  }
  row_parallel_linear(c.attn, p.wo, p.bo, c.x, c.x2); // x2 = x + attn Wo + bo

  norm_forward(p.ln2, c.x2, c.h2, c.ln2_mean, c.ln2_rstd);
  const Bf16Buffer& h2 = enter_tp(c.h2, gathered);
  const std::int64_t ffn_cols = layout_.params().info(p.w1).cols;
  c.act.resize(count(rows, ffn_cols), s);
  if (spec_.gated_mlp) {
    linear(h2, p.w1, p.b1, rows, c.fc1);
    linear(h2, p.wg, p.bg, rows, c.gate);
    k::activation::swiglu_forward<bf16>({c.act.get(), c.gate.get(), c.fc1.get(), rows * ffn_cols}, s);
  } else {
    linear(h2, p.w1, -1, rows, c.fc1); // fc1 without its bias: the GeLU adds it (kept for the backward)
    k::activation::GeluForwardArgs<bf16> gelu;
    gelu.y = c.act.get();
    gelu.x = c.fc1.get();
    gelu.n = rows * ffn_cols;
    gelu.bias = p.b1 >= 0 ? value32(p.b1) : nullptr;
    gelu.cols = ffn_cols;
    k::activation::gelu_forward<bf16>(gelu, s);
  }
  row_parallel_linear(c.act, p.w2, p.b2, c.x2, out); // out = x2 + act W2 + b2
  c.complete = keep_all;
  if (!keep_all) {
    // Full recompute: keep only the layer input (Korthikanti et al. 2022, sec. 5).
    CudaLayerCache kept;
    kept.x = std::move(c.x);
    c = std::move(kept);
  }
}

void CudaGptModel::layer_backward(int layer, CudaLayerCache& c, Bf16Buffer&& dout, Bf16Buffer& dx,
                                  CudaWeightGradWork* deferred) {
  const cudaStream_t s = context_.stream;
  if (!c.complete) {
    Bf16Buffer ignored;
    layer_forward(layer, std::move(c.x), ignored, c, true);
  }
  const LayerIdx& p = layer_idx(layer);
  const std::int64_t rows = token_rows();
  const std::int64_t local_rows = activation_rows(); // rows of dout, x, x2: token_rows() / tp under SP
  const std::int64_t C = spec_.hidden_size;
  const std::int64_t D = spec_.head_dim;
  const std::int64_t q_cols = layout_.params().info(p.wq).cols;
  const std::int64_t kv_cols = layout_.params().info(p.wk).cols;
  const std::int64_t ffn_cols = layout_.params().info(p.w1).cols;
  Bf16Buffer gathered; // all-gathered output gradients and norm outputs under sequence parallelism
  // Zero-bubble B (deferred): an operand enter_tp returned is `local` itself, or `gathered` under sequence
  // parallelism; the deferred work takes it over (gathered is refilled by the next enter_tp) or copies what this
  // backward still changes.
  const auto take = [&](Bf16Buffer& local) { return keep(std::move(sequence_parallel() ? gathered : local)); };

  // MLP branch: out = x2 + leave_tp(act W2) + b2.
  if (p.b2 >= 0) {
    k::elementwise::column_sum<bf16>({grad(p.b2), dout.get(), local_rows, C}, s);
  }
  Bf16Buffer dact(count(rows, ffn_cols), s);
  {
    const Bf16Buffer& dmlp = enter_tp(dout, gathered); // conjugate of leave_tp
    gemm(rows, ffn_cols, C, false, true, dmlp.get(), weight(p.w2), dact.get(), GemmDType::BF16, 0.0f);
    if (deferred != nullptr) { // dout becomes dx2 below: copied unless gathered
      weight_grad(deferred, p.w2, -1, ffn_cols, C, rows, keep(std::move(c.act)),
                  sequence_parallel() ? take(dout) : keep_copy(dout));
    } else {
      gemm(ffn_cols, C, rows, true, false, c.act.get(), dmlp.get(), grad(p.w2), GemmDType::F32, 1.0f);
    }
  }
  c.act = Bf16Buffer();
  const Bf16Buffer& h2 = enter_tp(c.h2, gathered);
  std::shared_ptr<const Bf16Buffer> h2_kept; // shared by fc1 and the gate
  if (deferred != nullptr) {
    h2_kept = take(c.h2);
  }
  Bf16Buffer dfc1(count(rows, ffn_cols), s);
  F32Buffer dh2_f;
  if (spec_.gated_mlp) {
    Bf16Buffer dgate(count(rows, ffn_cols), s);
    k::activation::swiglu_backward<bf16>({dgate.get(), dfc1.get(), dact.get(), c.gate.get(), c.fc1.get(),
                                          rows * ffn_cols},
                                         s);
    linear_dgrad(dgate, p.wg, rows, dh2_f, 0.0f);
    if (deferred != nullptr) {
      const ParamInfo& info = layout_.params().info(p.wg);
      weight_grad(deferred, p.wg, p.bg, info.rows, info.cols, rows, h2_kept, keep(std::move(dgate)));
    } else {
      linear_wgrad(h2, dgate, p.wg, p.bg, rows);
    }
    linear_dgrad(dfc1, p.w1, rows, dh2_f, 1.0f);
  } else {
    k::activation::GeluBackwardArgs<bf16> gelu;
    gelu.dx = dfc1.get();
    gelu.dy = dact.get();
    gelu.x = c.fc1.get();
    gelu.n = rows * ffn_cols;
    gelu.bias = p.b1 >= 0 ? value32(p.b1) : nullptr;
    gelu.cols = ffn_cols;
    k::activation::gelu_backward<bf16>(gelu, s);
    linear_dgrad(dfc1, p.w1, rows, dh2_f, 0.0f);
  }
  if (deferred != nullptr) {
    const ParamInfo& info = layout_.params().info(p.w1);
    weight_grad(deferred, p.w1, p.b1, info.rows, info.cols, rows, h2_kept, keep(std::move(dfc1)));
  } else {
    linear_wgrad(h2, dfc1, p.w1, p.b1, rows);
  }
  F32Buffer dh2;
  leave_tp(dh2_f, dh2); // conjugate of enter_tp
  Bf16Buffer dx2 = std::move(dout); // dx2 = dout + ln2 backward (accumulated in place)
  norm_backward(p.ln2, dh2, c.x2, c.ln2_mean, c.ln2_rstd, dx2);

  // Attention branch: x2 = x + leave_tp(attn Wo) + bo.
  if (p.bo >= 0) {
    k::elementwise::column_sum<bf16>({grad(p.bo), dx2.get(), local_rows, C}, s);
  }
  Bf16Buffer dattn(count(rows, q_cols), s);
  std::shared_ptr<const Bf16Buffer> dproj_kept; // the projection's W, queued once the attention backward has run
  {
    const Bf16Buffer& dproj = enter_tp(dx2, gathered);
    gemm(rows, q_cols, C, false, true, dproj.get(), weight(p.wo), dattn.get(), GemmDType::BF16, 0.0f);
    if (deferred != nullptr) { // dx2 becomes dx below: copied unless gathered
      dproj_kept = sequence_parallel() ? take(dx2) : keep_copy(dx2);
    } else {
      gemm(q_cols, C, rows, true, false, c.attn.get(), dproj.get(), grad(p.wo), GemmDType::F32, 1.0f);
    }
  }
  // Context parallelism: allgather gathers K/V again (layer_forward); Ulysses all-to-alls O and dO to the head split
  // (the cache holds Q, K, V so already).
  const bool gathered_kv = context_parallel() && !ulysses();
  Bf16Buffer k_full, v_full;
  const bf16* keys = gathered_kv ? cp_gather(c.k, kv_cols, k_full) : c.k.get();
  const bf16* values = gathered_kv ? cp_gather(c.v, kv_cols, v_full) : c.v.get();
  const std::size_t kv_elements = gathered_kv ? k_full.size() : c.k.size();
  Bf16Buffer attn_heads, dattn_heads;
  if (ulysses()) {
    cp_rows_to_heads(c.attn, q_cols, attn_heads);
    cp_rows_to_heads(dattn, q_cols, dattn_heads);
  }
  const Bf16Buffer& attn = ulysses() ? attn_heads : c.attn;
  const Bf16Buffer& dattn_core = ulysses() ? dattn_heads : dattn;
  const std::int64_t core_q_cols = ulysses() ? q_cols / plan_.cp : q_cols;
  Bf16Buffer dq(count(rows, q_cols), s);
  Bf16Buffer dk(kv_elements, s); // allgather: the whole sequence's, accumulated over the two chunks, then reduced
  Bf16Buffer dv(kv_elements, s);
  if (gathered_kv) {
    CUDA_CHECK(cudaMemsetAsync(dk.get(), 0, dk.size() * sizeof(bf16), s));
    CUDA_CHECK(cudaMemsetAsync(dv.get(), 0, dv.size() * sizeof(bf16), s));
  }
  {
    // One workspace for every segment: (B, Hq, rows / B) floats, as the LSE.
    F32Buffer workspace(c.lse.size(), s);
    const bool tensor_cores = use_tensor_core_attention();
    for (const AttentionSegment& seg : core_segments()) {
      const k::attention::Shape shape{seg.seq,           plan_.micro_batch_size, core_heads(q_cols / D),
                                      core_heads(kv_cols / D), D,                seg.q_offset};
      const std::int64_t q_at = seg.row0 * core_q_cols;
      const k::attention::BackwardArgs<bf16> args{dq.get() + q_at,
                                                  dk.get(),
                                                  dv.get(),
                                                  workspace.get(),
                                                  dattn_core.get() + q_at,
                                                  c.q.get() + q_at,
                                                  keys,
                                                  values,
                                                  attn.get() + q_at,
                                                  c.lse.get() + seg.row0 * (core_q_cols / D),
                                                  shape,
                                                  gathered_kv};
      if (tensor_cores) {
        k::attention_tc::backward(args, s);
      } else {
        k::attention::backward<bf16>(args, s);
      }
    }
  }
  k_full = Bf16Buffer();
  v_full = Bf16Buffer();
  if (ulysses()) {
    for (const auto& [grad_heads, cols] :
         {std::pair{&dq, q_cols}, std::pair{&dk, kv_cols}, std::pair{&dv, kv_cols}}) {
      Bf16Buffer mine;
      cp_heads_to_rows(*grad_heads, cols, mine);
      *grad_heads = std::move(mine);
    }
  } else if (context_parallel()) {
    Bf16Buffer mine;
    cp_reduce_scatter(dk, kv_cols, mine);
    dk = std::move(mine);
    cp_reduce_scatter(dv, kv_cols, mine);
    dv = std::move(mine);
  }
  if (!spec_.learned_position_embedding) {
    rope(dq, q_cols / D, false);
    rope(dk, kv_cols / D, false);
  }
  F32Buffer dh1_f;
  linear_dgrad(dq, p.wq, rows, dh1_f, 0.0f);
  linear_dgrad(dk, p.wk, rows, dh1_f, 1.0f);
  linear_dgrad(dv, p.wv, rows, dh1_f, 1.0f);
  const Bf16Buffer& h1 = enter_tp(c.h1, gathered);
  if (deferred != nullptr) {
    weight_grad(deferred, p.wo, -1, q_cols, C, rows, keep(std::move(c.attn)), std::move(dproj_kept));
    const std::shared_ptr<const Bf16Buffer> h1_kept = take(c.h1);
    weight_grad(deferred, p.wq, p.bq, C, q_cols, rows, h1_kept, keep(std::move(dq)));
    weight_grad(deferred, p.wk, p.bk, C, kv_cols, rows, h1_kept, keep(std::move(dk)));
    weight_grad(deferred, p.wv, p.bv, C, kv_cols, rows, h1_kept, keep(std::move(dv)));
  } else {
    linear_wgrad(h1, dq, p.wq, p.bq, rows);
    linear_wgrad(h1, dk, p.wk, p.bk, rows);
    linear_wgrad(h1, dv, p.wv, p.bv, rows);
  }
  F32Buffer dh1;
  leave_tp(dh1_f, dh1);
  dx = std::move(dx2);
  norm_backward(p.ln1, dh1, c.x, c.ln1_mean, c.ln1_rstd, dx);
  c = CudaLayerCache{};
}

// ---- final norm, output layer, vocab-parallel cross-entropy (fp32 logits)

void CudaGptModel::head_forward(Bf16Buffer&& x, const std::int32_t* targets, CudaHeadCache& c, float* loss_acc,
                                float loss_weight) {
  const cudaStream_t s = context_.stream;
  const ParamInfo& info = layout_.params().info(head_w_);
  const std::int64_t rows = token_rows();
  const std::int64_t C = spec_.hidden_size;
  const std::int64_t V = info.rows;
  c.x = std::move(x);
  norm_forward(final_norm_, c.x, c.h, c.mean, c.rstd);
  c.probs.resize(count(rows, V), s);
  {
    Bf16Buffer gathered; // the logits of every token (vocab-parallel), from the gathered sequence under SP
    const Bf16Buffer& h = enter_tp(c.h, gathered);
    gemm(rows, V, C, false, true, h.get(), weight(head_w_), c.probs.get(), GemmDType::F32, 0.0f);
  }
  F32Buffer row_max(static_cast<std::size_t>(rows), s);
  k::cross_entropy::row_max<float>({row_max.get(), c.probs.get(), rows, V}, s);
  tp_all_reduce(row_max, ReduceOp::Max);
  F32Buffer sums(static_cast<std::size_t>(2 * rows), s);
  k::cross_entropy::exp_sums<float>({c.probs.get(), sums.get(), row_max.get(), targets, rows, V, info.row0}, s);
  tp_all_reduce(sums);
  F32Buffer losses(static_cast<std::size_t>(rows), s);
  k::cross_entropy::loss_normalize<float>({losses.get(), c.probs.get(), sums.get(), rows, V}, s);
  if (loss_acc != nullptr) {
    k::elementwise::sum({loss_acc, losses.get(), rows, loss_weight / static_cast<float>(rows), false}, s);
  }
}

void CudaGptModel::head_backward(CudaHeadCache& c, const std::int32_t* targets, float loss_scale, Bf16Buffer& dx,
                                 CudaWeightGradWork* deferred) {
  const cudaStream_t s = context_.stream;
  const ParamInfo& info = layout_.params().info(head_w_);
  const std::int64_t rows = token_rows();
  const std::int64_t C = spec_.hidden_size;
  const std::int64_t V = info.rows;
  const float scale = loss_scale / static_cast<float>(rows);
  k::cross_entropy::backward<float>({c.probs.get(), c.probs.get(), targets, rows, V, info.row0, scale}, s);
  Bf16Buffer dlogits;
  to_bf16(c.probs, dlogits);
  c.probs = F32Buffer();
  F32Buffer dh_f(count(rows, C), s);
  gemm(rows, C, V, false, false, dlogits.get(), weight(head_w_), dh_f.get(), GemmDType::F32, 0.0f);
  {
    Bf16Buffer gathered;
    const Bf16Buffer& h = enter_tp(c.h, gathered);
    if (deferred != nullptr) { // dW (V/tp, C) += dlogits^T h
      weight_grad(deferred, head_w_, -1, V, C, rows, keep(std::move(dlogits)),
                  keep(std::move(sequence_parallel() ? gathered : c.h)));
    } else {
      gemm(V, C, rows, true, false, dlogits.get(), h.get(), grad(head_w_), GemmDType::F32, 1.0f);
    }
  }
  F32Buffer dh;
  leave_tp(dh_f, dh);
  dx.resize(count(activation_rows(), C), s);
  CUDA_CHECK(cudaMemsetAsync(dx.get(), 0, dx.size() * sizeof(bf16), s));
  norm_backward(final_norm_, dh, c.x, c.mean, c.rstd, dx);
  c = CudaHeadCache{};
}

} // namespace cuboid::exec::cuda

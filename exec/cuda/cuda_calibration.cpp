// GPU calibration microbenchmarks. Timing: CUDA events around a batch of back-to-back launches on one stream
// (so host launch cost is hidden when the kernel is longer than the launch), batch size doubled until the batch
// lasts min_time_s, best of three batches.
#include "exec/cuda/cuda_calibration.hpp"

#include "exec/cuda/cuda_check.hpp"
#include "exec/cuda/gemm.hpp"
#include "kernels/attention.cuh"
#include "kernels/attention_tc.cuh"
#include "kernels/cast.cuh"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <functional>

namespace cuboid::exec::cuda {

namespace {

// Device buffer owned for the duration of a measurement.
class DeviceBuffer {
public:
  explicit DeviceBuffer(std::size_t bytes) { CUDA_CHECK(cudaMalloc(&ptr_, std::max<std::size_t>(bytes, 16))); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T> [[nodiscard]] T* as() const { return static_cast<T*>(ptr_); }

private:
  void* ptr_ = nullptr;
};

class Events {
public:
  Events() {
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~Events() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  double time_s(const std::function<void()>& fn, int reps, cudaStream_t stream) {
    CUDA_CHECK(cudaEventRecord(start_, stream));
    for (int rep = 0; rep < reps; ++rep) {
      fn();
    }
    CUDA_CHECK(cudaEventRecord(stop_, stream));
    CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return static_cast<double>(ms) * 1e-3;
  }

private:
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

constexpr int MAX_REPS = 1 << 16;
constexpr int TRIALS = 3;

// Seconds per call of `fn` enqueued on `stream`.
double per_call_s(const std::function<void()>& fn, cudaStream_t stream, double min_time_s) {
  Events events;
  fn(); // warm-up (first-call set-up, heuristic caches)
  CUDA_CHECK(cudaStreamSynchronize(stream));
  int reps = 1;
  while (reps < MAX_REPS && events.time_s(fn, reps, stream) < min_time_s) {
    reps *= 2;
  }
  double best = 1e30;
  for (int trial = 0; trial < TRIALS; ++trial) {
    best = std::min(best, events.time_s(fn, reps, stream) / reps);
  }
  return best;
}

// Slowest rank's value.
double max_over(NcclCommunicator* world, double value, cudaStream_t stream) {
  if (world == nullptr || world->size() == 1) {
    return value;
  }
  DeviceBuffer buf(sizeof(float));
  auto v = static_cast<float>(value);
  CUDA_CHECK(cudaMemcpyAsync(buf.as<float>(), &v, sizeof(v), cudaMemcpyHostToDevice, stream));
  world->all_reduce(std::span<float>(buf.as<float>(), 1), ReduceOp::Max);
  CUDA_CHECK(cudaMemcpyAsync(&v, buf.as<float>(), sizeof(v), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  return static_cast<double>(v);
}

struct GemmShape {
  std::string label;
  std::int64_t m = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  bool trans_a = false;
  bool trans_b = false;
  bool fp32_accumulate = false; // weight gradients: fp32 C, beta = 1
};

std::vector<GemmShape> gemm_shapes(const model::ModelSpec& model, const model::Plan& plan,
                                   const CudaCalibrationOptions& options) {
  const std::int64_t tokens = model.seq_length * plan.micro_batch_size;
  const std::int64_t tp = plan.tp;
  const std::int64_t mlp_in = model.gated_mlp ? 2 * model.ffn_hidden_size / tp : model.ffn_hidden_size / tp;
  struct Linear {
    const char* name;
    std::int64_t in;
    std::int64_t out;
  };
  const Linear linears[] = {
      {"qkv", model.hidden_size, (model.q_width() + 2 * model.kv_width()) / tp},
      {"proj", model.q_width() / tp, model.hidden_size},
      {"fc1", model.hidden_size, mlp_in},
      {"fc2", model.ffn_hidden_size / tp, model.hidden_size},
      {"logits", model.hidden_size, model.vocab_size / tp},
  };
  std::vector<GemmShape> out;
  for (const Linear& l : linears) {
    out.push_back({fmt::format("{}.fwd", l.name), tokens, l.out, l.in, false, false, false});   // Y = X W
    out.push_back({fmt::format("{}.dgrad", l.name), tokens, l.in, l.out, false, true, false});  // dX = dY W^T
    out.push_back({fmt::format("{}.wgrad", l.name), l.in, l.out, tokens, true, false, true});   // dW += X^T dY
  }
  for (const std::int64_t s : options.square_gemm_sizes) {
    out.push_back({fmt::format("square.{}", s), s, s, s, false, false, false});
  }
  return out;
}

} // namespace

CudaCalibrationResult calibrate_cuda(const model::ModelSpec& model, const model::Plan& plan,
                                     const CudaCalibrationOptions& options, NcclCommunicator* world) {
  CudaCalibrationResult result;
  const double min_time_s = options.base.min_time_s;
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  result.device = {options.gpu.empty() ? std::string(prop.name) : options.gpu, prop.name,
                   static_cast<double>(prop.multiProcessorCount)};
  // The communicator's compute stream, or one of our own (destroyed on every exit path).
  struct OwnedStream {
    cudaStream_t stream = nullptr;
    ~OwnedStream() {
      if (stream != nullptr) {
        cudaStreamDestroy(stream);
      }
    }
  } owned;
  cudaStream_t stream = world != nullptr ? world->compute_stream() : nullptr;
  if (stream == nullptr) {
    CUDA_CHECK(cudaStreamCreateWithFlags(&owned.stream, cudaStreamNonBlocking));
    stream = owned.stream;
  }

  // ---- GEMMs (inputs left uninitialised: cuBLASLt's speed does not depend on the values, except for denormal-free
  // bf16, which cudaMemset(0) guarantees).
  GemmRunner gemm(options.gemm_algo);
  DeviceBuffer workspace(workspace_bytes(GemmArgs{}));
  for (const GemmShape& s : gemm_shapes(model, plan, options)) {
    DeviceBuffer a(static_cast<std::size_t>(s.m * s.k) * 2);
    DeviceBuffer b(static_cast<std::size_t>(s.k * s.n) * 2);
    DeviceBuffer c(static_cast<std::size_t>(s.m * s.n) * 4);
    CUDA_CHECK(cudaMemsetAsync(a.as<void>(), 0, static_cast<std::size_t>(s.m * s.k) * 2, stream));
    CUDA_CHECK(cudaMemsetAsync(b.as<void>(), 0, static_cast<std::size_t>(s.k * s.n) * 2, stream));
    GemmArgs args;
    args.m = s.m;
    args.n = s.n;
    args.k = s.k;
    args.trans_a = s.trans_a;
    args.trans_b = s.trans_b;
    args.a = a.as<void>();
    args.b = b.as<void>();
    args.c = c.as<void>();
    args.c_type = s.fp32_accumulate ? GemmDType::F32 : GemmDType::BF16;
    args.beta = s.fp32_accumulate ? 1.0f : 0.0f;
    const double t = max_over(
        world, per_call_s([&] { gemm.run(args, workspace.as<void>(), workspace_bytes(args), stream); }, stream, min_time_s),
        stream);
    const auto m = static_cast<double>(s.m);
    const auto n = static_cast<double>(s.n);
    const auto k = static_cast<double>(s.k);
    // On the GPU the backend's GEMM is the cuBLASLt call itself: raw and backend times are the same measurement.
    exec::GemmMeasurement point;
    point.label = s.label;
    point.tp = plan.tp;
    point.m = m;
    point.n = n;
    point.k = k;
    point.time_s = t;
    point.flops_per_s = 2.0 * m * n * k / t;
    point.backend_time_s = t;
    result.base.gemms.push_back(point);
  }

  // ---- fused causal attention, forward and backward (bf16). FLOPs of the causal half: forward 2 B H T^2 D
  // (QK^T and PV, each 2 B H T^2 D / 2), backward 2.5x (five T x T x D products instead of two).
  {
    using kernels::bf16;
    kernels::attention::Shape shape{model.seq_length, plan.micro_batch_size, model.num_attention_heads / plan.tp,
                                    model.num_query_groups / plan.tp, model.head_dim};
    const std::int64_t rows = shape.seq * shape.batch;
    const std::size_t q_bytes = static_cast<std::size_t>(rows * shape.q_heads * shape.head_dim) * sizeof(bf16);
    const std::size_t kv_bytes = static_cast<std::size_t>(rows * shape.kv_heads * shape.head_dim) * sizeof(bf16);
    DeviceBuffer q(q_bytes), k(kv_bytes), v(kv_bytes), out(q_bytes), dout(q_bytes), dq(q_bytes), dk(kv_bytes),
        dv(kv_bytes);
    DeviceBuffer lse(static_cast<std::size_t>(shape.batch * shape.q_heads * shape.seq) * sizeof(float));
    DeviceBuffer ws(kernels::attention::backward_workspace_bytes(shape));
    for (const auto* buf : {&q, &k, &v, &dout}) {
      CUDA_CHECK(cudaMemsetAsync(buf->as<void>(), 0, buf == &q || buf == &dout ? q_bytes : kv_bytes, stream));
    }
    kernels::attention::ForwardArgs<bf16> fwd{out.as<bf16>(), lse.as<float>(), q.as<bf16>(), k.as<bf16>(),
                                              v.as<bf16>(), shape};
    kernels::attention::BackwardArgs<bf16> bwd{dq.as<bf16>(),   dk.as<bf16>(),    dv.as<bf16>(), ws.as<float>(),
                                               dout.as<bf16>(), q.as<bf16>(),     k.as<bf16>(),  v.as<bf16>(),
                                               out.as<bf16>(),  lse.as<float>(), shape};
    // The kernels the CUDA runtime uses for this shape: tensor-core where supported, else the scalar ones.
    const bool tc = kernels::attention_tc::supported(shape);
    const auto run_forward = [&] {
      if (tc) {
        kernels::attention_tc::forward(fwd, stream);
      } else {
        kernels::attention::forward(fwd, stream);
      }
    };
    const auto run_backward = [&] {
      if (tc) {
        kernels::attention_tc::backward(bwd, stream);
      } else {
        kernels::attention::backward(bwd, stream);
      }
    };
    const double flops = 2.0 * static_cast<double>(shape.batch * shape.q_heads) * static_cast<double>(shape.seq) *
                         static_cast<double>(shape.seq) * static_cast<double>(shape.head_dim);
    const double t_fwd =
        max_over(world, per_call_s([&] { run_forward(); }, stream, min_time_s), stream);
    const double t_bwd =
        max_over(world, per_call_s([&] { run_backward(); }, stream, min_time_s), stream);
    result.base.attention_flops_per_s = flops / t_fwd;
    result.attention_bwd_flops_per_s = 2.5 * flops / t_bwd;
  }

  // ---- memory bound: bf16 -> fp32 cast (2 + 4 bytes per element), and launch overhead: a one-element cast.
  {
    const std::int64_t n = options.elementwise_elements;
    DeviceBuffer in(static_cast<std::size_t>(n) * 2);
    DeviceBuffer outf(static_cast<std::size_t>(n) * 4);
    CUDA_CHECK(cudaMemsetAsync(in.as<void>(), 0, static_cast<std::size_t>(n) * 2, stream));
    kernels::cast::Args<float, kernels::bf16> big{outf.as<float>(), in.as<kernels::bf16>(), n};
    const double t = max_over(world, per_call_s([&] { kernels::cast::convert(big, stream); }, stream, min_time_s),
                              stream);
    result.base.elementwise_bytes_per_s = 6.0 * static_cast<double>(n) / t;
    kernels::cast::Args<float, kernels::bf16> tiny{outf.as<float>(), in.as<kernels::bf16>(), 1};
    result.base.launch_overhead_s =
        max_over(world, per_call_s([&] { kernels::cast::convert(tiny, stream); }, stream, min_time_s), stream);
  }

  // ---- NCCL all-reduce sweep (nccl-tests algbw / busbw).
  const int ranks = world != nullptr ? world->size() : 1;
  if (ranks > 1) {
    for (const double bytes : options.base.allreduce_bytes) {
      const auto count = static_cast<std::size_t>(bytes / sizeof(float));
      DeviceBuffer buf(count * sizeof(float));
      CUDA_CHECK(cudaMemsetAsync(buf.as<void>(), 0, count * sizeof(float), stream));
      const std::span<float> data(buf.as<float>(), count);
      const double t = max_over(world, per_call_s([&] { world->all_reduce(data, ReduceOp::Sum); }, stream, min_time_s),
                                stream);
      const double algbw = bytes / t;
      result.base.allreduce.push_back({bytes, t, algbw, algbw * 2.0 * (ranks - 1) / ranks});
    }
  }
  assemble_profile(result, options.base, ranks);
  return result;
}

CudaCalibrationResult calibrate_cuda_job(const model::ModelSpec& model, const model::Plan& plan,
                                         const CudaCalibrationOptions& options, double rendezvous_timeout_s) {
  const LaunchEnv env = read_process_launch_env();
  int devices = 0;
  CUDA_CHECK(cudaGetDeviceCount(&devices));
  if (env.local_rank >= devices) {
    throw InputError(input_message("environment", "LOCAL_RANK",
                                   fmt::format("{} but this node has {} CUDA device(s) (expected < {})",
                                               env.local_rank, devices, devices)));
  }
  CUDA_CHECK(cudaSetDevice(env.local_rank));
  if (env.world_size == 1) {
    return calibrate_cuda(model, plan, options, nullptr);
  }
  cudaStream_t stream = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } guard{stream};
  auto world = NcclCommunicator::world(env, stream, rendezvous_timeout_s);
  return calibrate_cuda(model, plan, options, world.get());
}

} // namespace cuboid::exec::cuda

// Calibration microbenchmarks on the CPU backend's own kernels, so the profile describes what `cuboid run` executes.
// GEMMs, attention and the norm / activation / RoPE kernels (every variant, priced per element) are measured
// directly; everything else the IR prices by bytes (residual adds, embedding, loss, optimizer, and the backend's
// copies and allocations between them) is measured as the time of whole units minus the measured parts, so that the
// predicted unit time matches the measured one.
#include "exec/calibration.hpp"

#include "exec/cpu/activation.hpp"
#include "exec/cpu/adamw.hpp"
#include "exec/cpu/attention.hpp"
#include "exec/cpu/linear.hpp"
#include "exec/cpu/norm.hpp"
#include "exec/cpu/rope.hpp"
#include "exec/cpu/tensor.hpp"
#include "exec/gpt_model.hpp"
#include "exec/local_communicator.hpp"
#include "exec/runtime.hpp"
#include "model/cost_model.hpp"
#include "model/cpu_device.hpp"
#include "model/errors.hpp"
#include "model/op_catalog.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <functional>
#include <numeric>
#include <stdexcept>

namespace cuboid::exec {

namespace {

using Clock = std::chrono::steady_clock;
using cpu::Mat;

// Square sizes for Eigen's peak: the best counts (larger ones suffer more from other processes on a shared machine).
constexpr std::int64_t EIGEN_PEAK_SIZES[] = {128, 256, 512};
// The cost model's attention convention (cost_model_compute.cpp, FlashAttention's benchmark): the backward does 2.5x
// the causal forward's work.
constexpr double ATTENTION_BWD_WORK_PER_FWD = 2.5;
constexpr std::uint64_t UNIT_SEED = 7;
constexpr int MAX_COLLECTIVE_REPS = 1000;
constexpr std::size_t UNITS_PER_TP = 7; // embed, layer, head (fwd, bwd) and the optimizer
// Memory bandwidth recorded when the fit finds no byte term and no reference bandwidth is given.
constexpr double UNBOUNDED_BYTES_PER_S = 1e15;
// Floor for a GEMM's time without the per-op cost (keeps efficiencies finite when the fitted cost is large).
constexpr double MIN_NET_SHARE = 0.5;

double median_of(std::vector<double> values) {
  if (values.empty()) {
    return 0.0;
  }
  std::sort(values.begin(), values.end());
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

// Best time of one call, repeating until min_time_s has passed (at least 3 calls); `setup` runs untimed before each
// call (e.g. restoring a cache the call consumes). The best repeat is the one least disturbed by other processes.
double best_time_s(const std::function<void()>& fn, double min_time_s, const std::function<void()>& setup = {}) {
  if (setup) {
    setup();
  }
  fn(); // warm-up: first touch of the buffers
  double best = 1e30;
  double total = 0.0;
  for (int rep = 0; rep < 3 || total < min_time_s; ++rep) {
    if (setup) {
      setup();
    }
    const auto start = Clock::now();
    fn();
    const double t = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::min(best, t);
    total += t;
  }
  return best;
}

// Best time of a collective: every member must call it equally often, so the repeat count (enough for min_time_s
// on the slowest member, at least 3) is agreed on first.
double best_collective_time_s(const std::function<void()>& fn, double min_time_s, Communicator& world) {
  fn(); // warm-up
  const auto start = Clock::now();
  fn();
  auto first = static_cast<float>(std::chrono::duration<double>(Clock::now() - start).count());
  world.all_reduce(std::span<float>(&first, 1), ReduceOp::Max);
  const int reps = std::clamp(static_cast<int>(std::ceil(min_time_s / static_cast<double>(std::max(1e-9f, first)))), 3, MAX_COLLECTIVE_REPS);
  double best = static_cast<double>(first);
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = Clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return best;
}

// Slowest rank's value (all ranks must agree on one profile).
double max_over(Communicator& world, double value) {
  auto v = static_cast<float>(value);
  world.all_reduce(std::span<float>(&v, 1), ReduceOp::Max);
  return static_cast<double>(v);
}

// A linear layer of the IR (one GEMM of `in` x sum(outs)) and how the backend runs it: one linear op per part of
// `outs` (separate Q, K, V and gate / up weights), with a bias or not, or the output layer's transposed weight.
struct LinearShape {
  std::string name;
  std::int64_t in = 0;
  std::vector<std::int64_t> outs;
  bool bias = false;
  bool transposed_weight = false; // logits = h W^T with W (V/tp, C) (tied with the embedding table)
};

std::vector<LinearShape> linear_shapes(const model::ModelSpec& model, std::int64_t tp) {
  const bool bias = model.linear_bias;
  const std::int64_t ffn = model.ffn_hidden_size / tp;
  return {
      {"qkv", model.hidden_size, {model.q_width() / tp, model.kv_width() / tp, model.kv_width() / tp}, bias, false},
      // the row-parallel layers add their bias after the TP reduction (a memory-bound op)
      {"proj", model.q_width() / tp, {model.hidden_size}, false, false},
      {"fc1", model.hidden_size, model.gated_mlp ? std::vector<std::int64_t>{ffn, ffn} : std::vector<std::int64_t>{ffn},
       bias, false},
      {"fc2", ffn, {model.hidden_size}, false, false},
      {"logits", model.hidden_size, {model.vocab_size / tp}, false, true},
  };
}

void measure_linears(const model::ModelSpec& model, std::int64_t tokens, int tp, const CalibrationOptions& options,
                     Communicator& world, CalibrationResult& result) {
  for (const LinearShape& s : linear_shapes(model, tp)) {
    const std::int64_t n = std::accumulate(s.outs.begin(), s.outs.end(), std::int64_t{0});
    const Mat x = Mat::Random(tokens, s.in);
    const Mat w = Mat::Random(s.in, n);
    const Mat wt = w.transpose();
    const Mat dy = Mat::Random(tokens, n);
    Mat y(tokens, n);
    Mat dx(tokens, s.in);
    Mat dw(s.in, n);
    Mat dwt(n, s.in);
    std::vector<float> bias(static_cast<std::size_t>(n), 0.5f);
    std::vector<float> dbias(static_cast<std::size_t>(n), 0.0f);
    const auto time = [&](const std::function<void()>& fn) { return max_over(world, best_time_s(fn, options.min_time_s)); };
    const double eigen_fwd = time([&] { y.noalias() = x * w; });
    const double eigen_dgrad = time([&] { dx.noalias() = dy * w.transpose(); });
    const double eigen_wgrad = time([&] { dw.noalias() = x.transpose() * dy; });
    double backend_fwd = 0.0;
    double backend_bwd = 0.0;
    if (s.transposed_weight) {
      backend_fwd = time([&] { y.noalias() = x * wt.transpose(); });
      backend_bwd = time([&] {
        dx.noalias() = dy * wt;
        dwt.noalias() += dy.transpose() * x;
      });
    } else {
      // One weight and output per part, as the backend holds them.
      std::vector<Mat> parts_w;
      std::vector<Mat> parts_y;
      std::vector<Mat> parts_dy;
      std::vector<Mat> parts_dw;
      for (const std::int64_t out : s.outs) {
        parts_w.emplace_back(Mat::Random(s.in, out));
        parts_y.emplace_back(tokens, out);
        parts_dy.emplace_back(Mat::Random(tokens, out));
        parts_dw.emplace_back(Mat::Zero(s.in, out));
      }
      backend_fwd = time([&] {
        for (std::size_t p = 0; p < s.outs.size(); ++p) {
          cpu::linear_forward(x, parts_w[p], s.bias ? bias.data() : nullptr, parts_y[p]);
        }
      });
      backend_bwd = time([&] {
        for (std::size_t p = 0; p < s.outs.size(); ++p) {
          cpu::linear_backward(parts_dy[p], x, parts_w[p], dx, parts_dw[p], s.bias ? dbias.data() : nullptr, p > 0);
        }
      });
    }
    const auto rows = static_cast<double>(tokens);
    const auto in = static_cast<double>(s.in);
    const auto out = static_cast<double>(n);
    const auto add = [&](const char* kind, double m, double nn, double k, double eigen_s, double backend_s) {
      result.gemms.push_back({s.name + "." + kind, tp, m, nn, k, eigen_s, 2.0 * m * nn * k / eigen_s, backend_s});
    };
    const double dgrad_share = eigen_dgrad / (eigen_dgrad + eigen_wgrad);
    add("fwd", rows, out, in, eigen_fwd, backend_fwd);
    add("dgrad", rows, in, out, eigen_dgrad, backend_bwd * dgrad_share);
    add("wgrad", in, out, rows, eigen_wgrad, backend_bwd * (1.0 - dgrad_share));
  }
}

struct AttentionTimes {
  double causal_flops = 0.0; // forward, causal half: 2 * 2 * B * H * T^2 * D / 2
  double fwd_s = 0.0;
  double bwd_s = 0.0;
};

AttentionTimes measure_attention(const model::ModelSpec& model, std::int64_t micro_batch, int tp,
                                 const CalibrationOptions& options, Communicator& world) {
  const std::int64_t tokens = model.seq_length * micro_batch;
  const std::int64_t heads = model.num_attention_heads / tp;
  const std::int64_t groups = model.num_query_groups / tp;
  const cpu::AttentionShape shape{model.seq_length, micro_batch, heads, groups, model.head_dim};
  const Mat q = Mat::Random(tokens, heads * model.head_dim);
  const Mat kv = Mat::Random(tokens, groups * model.head_dim);
  const Mat dout = Mat::Random(tokens, heads * model.head_dim);
  Mat out(tokens, heads * model.head_dim);
  Mat probs;
  Mat dq(tokens, heads * model.head_dim);
  Mat dk(tokens, groups * model.head_dim);
  Mat dv(tokens, groups * model.head_dim);
  AttentionTimes t;
  t.causal_flops = 2.0 * static_cast<double>(micro_batch * heads * model.seq_length * model.seq_length *
                                             model.head_dim);
  t.fwd_s = max_over(world,
                     best_time_s([&] { cpu::attention_forward(shape, q, kv, kv, out, &probs); }, options.min_time_s));
  t.bwd_s = max_over(world, best_time_s([&] { cpu::attention_backward(shape, dout, q, kv, kv, &probs, dq, dk, dv); },
                                        options.min_time_s));
  return t;
}

// --- CPU prediction across models (branch cpux) ---
// Every norm / activation / RoPE kernel of the CPU backend on this model's tp-1 sizes (norms: tokens x hidden;
// activations: tokens x ffn; RoPE: the query and key values of a layer, timed on the query width and scaled), best
// repeat, slowest rank. Seconds per element = (time - per-op cost) / elements.
std::vector<KernelMeasurement> measure_kernels(const model::ModelSpec& model, std::int64_t micro_batch,
                                               double per_op_s, const CalibrationOptions& options,
                                               Communicator& world) {
  const std::int64_t tokens = model.seq_length * micro_batch;
  const std::int64_t hidden = model.hidden_size;
  const std::int64_t ffn = model.ffn_hidden_size;
  const Mat x = Mat::Random(tokens, hidden);
  const Mat dy = Mat::Random(tokens, hidden);
  const cpu::RowVec w = cpu::RowVec::Constant(hidden, 1.1f);
  const cpu::RowVec b = cpu::RowVec::Constant(hidden, 0.1f);
  cpu::RowVec dw = cpu::RowVec::Zero(hidden);
  cpu::RowVec db = cpu::RowVec::Zero(hidden);
  Mat y(tokens, hidden);
  Mat dx = Mat::Zero(tokens, hidden);
  cpu::ColVec mean;
  cpu::ColVec rstd;
  const Mat a = Mat::Random(tokens, ffn);
  const Mat up = Mat::Random(tokens, ffn);
  const Mat da = Mat::Random(tokens, ffn);
  Mat act(tokens, ffn);
  Mat dgate(tokens, ffn);
  Mat dup(tokens, ffn);
  Mat rot = Mat::Random(tokens, model.q_width());
  const auto time = [&](const std::function<void()>& fn) { return max_over(world, best_time_s(fn, options.min_time_s)); };
  std::vector<KernelMeasurement> out;
  const auto add = [&](const char* name, double elements, double time_s) {
    out.push_back({name, elements, time_s, std::max(0.0, time_s - per_op_s) / elements});
  };
  const auto norm_elements = static_cast<double>(tokens * hidden);
  const auto act_elements = static_cast<double>(tokens * ffn);
  cpu::layer_norm_forward(x, w, b, y, mean, rstd);
  add("layernorm.fwd", norm_elements, time([&] { cpu::layer_norm_forward(x, w, b, y, mean, rstd); }));
  add("layernorm.bwd", norm_elements, time([&] { cpu::layer_norm_backward(dy, x, w, mean, rstd, dx, dw, db); }));
  cpu::rms_norm_forward(x, w, y, rstd);
  add("rmsnorm.fwd", norm_elements, time([&] { cpu::rms_norm_forward(x, w, y, rstd); }));
  add("rmsnorm.bwd", norm_elements, time([&] { cpu::rms_norm_backward(dy, x, w, rstd, dx, dw); }));
  add("gelu.fwd", act_elements, time([&] { cpu::gelu_forward(a, act); }));
  add("gelu.bwd", act_elements, time([&] { cpu::gelu_backward(da, a, dgate); }));
  add("swiglu.fwd", act_elements, time([&] { cpu::swiglu_forward(a, up, act); }));
  add("swiglu.bwd", act_elements, time([&] { cpu::swiglu_backward(da, a, up, dgate, dup); }));
  // forward and backward are the same rotation (opposite angles); one measurement of the forward
  add("rope", static_cast<double>(rot.size()),
      time([&] { cpu::rope_forward(rot, micro_batch, model.head_dim); }));
  return out;
}

double kernel_s_per_element(const std::vector<KernelMeasurement>& kernels, const std::string& name) {
  const auto it = std::find_if(kernels.begin(), kernels.end(), [&](const auto& k) { return k.name == name; });
  CUBOID_ASSERT(it != kernels.end(), "calibration measured no kernel {}", name);
  return it->s_per_element;
}

// Measured time of one micro-batch through each unit of one TP shard (a 1-rank group: its collectives are no-ops,
// their cost comes from the all-reduce sweep), and of one optimizer step over the shard's parameters.
struct UnitTimes {
  double embed_fwd_s = 0.0;
  double embed_bwd_s = 0.0;
  double layer_fwd_s = 0.0;
  double layer_bwd_s = 0.0;
  double head_fwd_s = 0.0;
  double head_bwd_s = 0.0;
  double optimizer_s = 0.0;
  double num_params = 0.0;
};

// UnitTimes' seven times in unit_names() order: embed, layer, head (fwd, bwd), optimizer.
constexpr double UnitTimes::*UNIT_TIME_FIELDS[UNITS_PER_TP] = {
    &UnitTimes::embed_fwd_s, &UnitTimes::embed_bwd_s, &UnitTimes::layer_fwd_s, &UnitTimes::layer_bwd_s,
    &UnitTimes::head_fwd_s,  &UnitTimes::head_bwd_s,  &UnitTimes::optimizer_s};

// The blocks the seven units run, in the same order (the optimizer's block depends on the shard's parameters).
std::array<const model::OpBlock*, UNITS_PER_TP> unit_blocks_of(const model::StepBlocks& blocks,
                                                               const model::OpBlock& optimizer) {
  return {&blocks.embed_fwd, &blocks.embed_bwd, &blocks.layer_fwd, &blocks.layer_bwd,
          &blocks.head_fwd,  &blocks.head_bwd,  &optimizer};
}

UnitTimes measure_units(const model::ModelSpec& model, const model::Plan& plan, const CalibrationOptions& options,
                        Communicator& world) {
  LocalCommunicator local;
  GptModel gpt(model, plan, 0, 0, UNIT_SEED);
  const std::int64_t tokens = model.seq_length * plan.micro_batch_size;
  std::vector<std::int32_t> inputs(static_cast<std::size_t>(tokens));
  std::vector<std::int32_t> targets(static_cast<std::size_t>(tokens));
  const std::int64_t shard_vocab = model.vocab_size / plan.tp; // tokens of shard 0: every lookup hits this rank
  for (std::size_t idx = 0; idx < inputs.size(); ++idx) {
    inputs[idx] = static_cast<std::int32_t>((idx * 7 + 3) % static_cast<std::size_t>(shard_vocab));
    targets[idx] = static_cast<std::int32_t>((idx * 5 + 1) % static_cast<std::size_t>(shard_vocab));
  }
  const auto time = [&](const std::function<void()>& fn, const std::function<void()>& setup = {}) {
    return max_over(world, best_time_s(fn, options.min_time_s, setup));
  };
  UnitTimes t;
  Mat act;
  t.embed_fwd_s = time([&] { gpt.embedding_forward(local, inputs, act); });
  const Mat grad_act = Mat::Random(act.rows(), act.cols());
  t.embed_bwd_s = time([&] { gpt.embedding_backward(local, inputs, grad_act); });
  // Backward consumes the forward's cache: each backward gets a fresh copy (copied untimed).
  LayerCache layer_saved;
  LayerCache layer_cache;
  Mat out;
  Mat dx;
  t.layer_fwd_s = time([&] { gpt.layer_forward(local, 0, act, out, layer_saved, true); });
  t.layer_bwd_s = time([&] { gpt.layer_backward(local, 0, layer_cache, grad_act, dx); },
                       [&] { layer_cache = layer_saved; });
  HeadCache head_saved;
  HeadCache head_cache;
  double loss = 0.0;
  t.head_fwd_s = time([&] { loss += gpt.head_forward(local, act, targets, head_saved); });
  t.head_bwd_s = time([&] { gpt.head_backward(local, head_cache, targets, 1.0f, dx); },
                      [&] { head_cache = head_saved; });
  ParamSet& params = gpt.params();
  t.num_params = static_cast<double>(params.num_elements());
  const cpu::AdamWConfig adam;
  int step = 0;
  t.optimizer_s = time([&] {
    ++step;
    cpu::adamw_update(params.values(), params.grads(), params.moment1(), params.moment2(), step, adam, 0.0f, 1.0f);
  });
  return t;
}

// One GEMM table point per shape: ops of the same shape (qkv forward and weight gradient, ...) share the mean time.
struct ShapeTime {
  double m = 0.0;
  double n = 0.0;
  double k = 0.0;
  double time_s = 0.0;
};

// The plan of one calibration unit: one rank's whole model at TP size tp (no pipeline, data or context split, no
// sequence parallelism or recompute), as the units are measured and as the finished profile predicts them.
model::Plan unit_plan_of(const model::Plan& plan, int tp) {
  model::Plan unit = plan;
  unit.tp = tp;
  unit.pp = 1;
  unit.vp = 1;
  unit.dp = 1;
  unit.cp = 1; // units are measured on one rank's whole sequence (context parallelism: not split here)
  unit.sequence_parallel = false;
  unit.recompute = model::Recompute::None;
  unit.first_stage_layers = 0;
  unit.last_stage_layers = 0;
  return unit;
}

std::vector<ShapeTime> merge_shapes(const std::vector<GemmMeasurement>& gemms) {
  std::vector<ShapeTime> shapes;
  std::vector<double> counts;
  for (const auto& g : gemms) {
    const auto it = std::find_if(shapes.begin(), shapes.end(),
                                 [&](const ShapeTime& st) { return st.m == g.m && st.n == g.n && st.k == g.k; });
    if (it == shapes.end()) {
      shapes.push_back({g.m, g.n, g.k, g.backend_time_s});
      counts.push_back(1.0);
    } else {
      it->time_s += g.backend_time_s;
      counts[static_cast<std::size_t>(it - shapes.begin())] += 1.0;
    }
  }
  for (std::size_t idx = 0; idx < shapes.size(); ++idx) {
    shapes[idx].time_s /= counts[idx];
  }
  return shapes;
}

// Splits a measured unit into its GEMMs and attention (measured on their own) and the rest, priced by the IR ops'
// count and bytes.
// Ops with a measured CPU kernel (norms, activations, RoPE next to attention) are priced by `kernels` (the
// profile's cpu_*_s_per_element, a CostModel over it) and count in kernel_s.
UnitMeasurement split_unit(const std::string& name, int tp, double time_s, const model::OpBlock& block,
                           const std::vector<ShapeTime>& gemms, const AttentionTimes& attention,
                           const model::CostModel& kernels, double per_op_s) {
  UnitMeasurement u{name, tp, time_s, 0.0, 0.0, 0.0};
  for (const model::Op& op : block.ops) {
    if (op.kind == model::OpKind::TpCollective) {
      continue; // a no-op in a 1-rank group; priced by the all-reduce sweep
    }
    if (op.kind == model::OpKind::Gemm) {
      const auto it = std::find_if(gemms.begin(), gemms.end(), [&](const ShapeTime& g) {
        return g.m == static_cast<double>(op.m) && g.n == static_cast<double>(op.n) && g.k == static_cast<double>(op.k);
      });
      CUBOID_ASSERT(it != gemms.end(), "calibration has no measurement of GEMM {} ({} x {} x {}) at tp {}", op.name,
                    op.m, op.n, op.k, tp);
      u.compute_s += it->time_s;
    } else if (op.kind == model::OpKind::Attention) {
      u.compute_s += op.name == "attn" ? attention.fwd_s : attention.bwd_s;
      u.kernel_s += op.rope_elements * kernels.get_profile().cpu_rope_s_per_element;
    } else if (const double s_per_element = kernels.cpu_kernel_s_per_element(op.cpu_kernel); s_per_element > 0.0) {
      u.kernel_s += static_cast<double>(op.m) * s_per_element + per_op_s;
    } else {
      u.memory_ops += 1.0;
      u.memory_bytes += op.hbm_bytes;
    }
  }
  return u;
}

// Seconds per IR byte of the memory-bound ops, fitted over the units without attention (embedding, head,
// optimizer): least squares on the step's absolute error, each unit weighted by its runs per step, so the
// optimizer (one op, many bytes) and the head dominate. Returns 0 when no unit has a positive rest.
double fit_seconds_per_byte(const std::vector<UnitMeasurement>& units, const std::vector<double>& runs,
                            double per_op_s) {
  double bb = 0.0;
  double br = 0.0;
  for (std::size_t idx = 0; idx < units.size(); ++idx) {
    const UnitMeasurement& u = units[idx];
    if (u.name.rfind("layer", 0) == 0) {
      continue; // layers: their rest goes to the attention op (see calibrate())
    }
    const double residual = std::max(0.0, u.time_s - u.compute_s - u.kernel_s - u.memory_ops * per_op_s);
    bb += runs[idx] * u.memory_bytes * u.memory_bytes;
    br += runs[idx] * u.memory_bytes * residual;
  }
  return bb > 0.0 ? br / bb : 0.0;
}

// --- in-situ units (issue 5) ---
// Unit names in UnitTimes order.
const std::vector<std::string>& unit_names() {
  static const std::vector<std::string> names = {"embed.fwd", "embed.bwd", "layer.fwd", "layer.bwd",
                                                 "head.fwd",  "head.bwd",  "optimizer"};
  return names;
}

struct InSituRun {
  InSituUnitTimes units;      // CPU or wall time, as options.in_situ_cpu_time says
  InSituUnitTimes wall_units; // wall time
  int ranks = 0;
  int steps_measured = 0;
  double step_s = 0.0;
  double tasks_s = 0.0;
};

// The TP-1 units inside real training steps: the runtime (exec::Trainer) trains `model` data parallel over every rank
// of `world` (1F1B, one stage, the plan's micro-batch size, in_situ_microbatches per rank), timing every task; the
// first step (first touch of every buffer) is left out. Means over all ranks' tasks on rank 0, then agreed by all.
InSituRun measure_in_situ(const model::ModelSpec& model, const model::Plan& plan, const CalibrationOptions& options,
                          Communicator& world) {
  RunOptions run;
  run.model = model;
  run.plan = plan;
  run.plan.tp = 1;
  run.plan.cp = 1;
  run.plan.pp = 1;
  run.plan.vp = 1;
  run.plan.dp = world.size();
  run.plan.sequence_parallel = false;
  run.plan.recompute = model::Recompute::None;
  run.plan.first_stage_layers = 0;
  run.plan.last_stage_layers = 0;
  run.plan.schedule = model::Schedule::OneFOneB;
  run.plan.global_batch_size =
      static_cast<std::int64_t>(world.size()) * plan.micro_batch_size * std::max(1, options.in_situ_microbatches);
  run.cluster = model::cpu_cluster(world.size());
  run.steps = options.in_situ_steps + 1;
  run.seed = UNIT_SEED;
  run.trace = true;
  Trainer trainer(run, world);
  std::vector<std::string> labels;
  std::vector<double> cpu_s;
  std::vector<double> wall_s;
  std::vector<double> step_s;
  std::vector<double> tasks_s;
  for (int step = 0; step < run.steps; ++step) {
    const auto start = Clock::now();
    trainer.step();
    const double elapsed_s = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<double> event_cpu_s;
    const std::vector<model::TimelineEvent> events = trainer.gather_timeline(&event_cpu_s);
    if (step == 0 || world.rank() != 0) {
      continue;
    }
    step_s.push_back(elapsed_s);
    double rank0_tasks_s = 0.0;
    for (std::size_t e = 0; e < events.size(); ++e) {
      labels.push_back(events[e].name);
      wall_s.push_back(events[e].end_s - events[e].start_s);
      cpu_s.push_back(event_cpu_s[e]);
      if (events[e].rank == 0 && events[e].stream == model::Stream::Compute) {
        rank0_tasks_s += events[e].end_s - events[e].start_s;
      }
    }
    tasks_s.push_back(rank0_tasks_s);
  }
  InSituRun out;
  out.ranks = world.size();
  out.steps_measured = options.in_situ_steps;
  const std::vector<std::string>& names = unit_names();
  // rank 0 has the means; the others contribute zeros to the max.
  std::vector<float> agreed(2 * names.size() + 2, 0.0f);
  if (world.rank() == 0) {
    out.units = unit_times_from_tasks(labels, options.in_situ_cpu_time ? cpu_s : wall_s);
    out.wall_units = unit_times_from_tasks(labels, wall_s);
    for (std::size_t u = 0; u < names.size(); ++u) {
      if (out.units.count(names[u]) > 0) { // a missing unit stays 0: every rank throws below, none hangs
        agreed[u] = static_cast<float>(out.units.at(names[u]));
        agreed[names.size() + u] = static_cast<float>(out.wall_units.at(names[u]));
      }
    }
    agreed[2 * names.size()] = static_cast<float>(median_of(step_s));
    agreed[2 * names.size() + 1] = static_cast<float>(median_of(tasks_s));
  }
  world.all_reduce(std::span<float>(agreed), ReduceOp::Max);
  for (std::size_t u = 0; u < names.size(); ++u) {
    if (!(agreed[u] > 0.0f)) {
      throw std::runtime_error(fmt::format("in-situ calibration: no timed task of unit {} in {} training steps on {} "
                                           "rank(s)",
                                           names[u], options.in_situ_steps, world.size()));
    }
  }
  if (world.rank() != 0) {
    out.units = InSituUnitTimes{};
    out.wall_units = InSituUnitTimes{};
    for (std::size_t u = 0; u < names.size(); ++u) {
      out.units.names.push_back(names[u]);
      out.units.mean_s.push_back(static_cast<double>(agreed[u]));
      out.units.counts.push_back(0);
      out.wall_units.names.push_back(names[u]);
      out.wall_units.mean_s.push_back(static_cast<double>(agreed[names.size() + u]));
      out.wall_units.counts.push_back(0);
    }
  }
  out.step_s = static_cast<double>(agreed[2 * names.size()]);
  out.tasks_s = static_cast<double>(agreed[2 * names.size() + 1]);
  return out;
}

// Unit time predicted by the cost model (TP collectives excluded: the units ran on a 1-rank group).
double predict_unit_s(const model::OpBlock& block, const model::CostModel& cost) {
  double total = 0.0;
  for (const model::Op& op : block.ops) {
    if (op.kind != model::OpKind::TpCollective) {
      total += cost.op_time_s(op);
    }
  }
  return total;
}

} // namespace

AlphaBeta fit_alpha_beta(const std::vector<CollectiveMeasurement>& sweep) {
  // Weighted least squares with weights 1 / t^2: every message size counts by its relative error, so that the
  // largest sizes do not decide the latency alone (and one disturbed large point does not decide the slope).
  double sw = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0;
  for (const auto& c : sweep) {
    const double w = 1.0 / std::max(1e-30, c.time_s * c.time_s);
    sw += w;
    sx += w * c.msg_bytes;
    sy += w * c.time_s;
    sxx += w * c.msg_bytes * c.msg_bytes;
    sxy += w * c.msg_bytes * c.time_s;
  }
  AlphaBeta out;
  const double det = sw * sxx - sx * sx;
  out.seconds_per_byte = std::max(1e-15, det > 0.0 ? (sw * sxy - sx * sy) / det : 0.0);
  out.latency_s = sw > 0.0 ? std::max(0.0, (sy - out.seconds_per_byte * sx) / sw) : 0.0;
  return out;
}

double InSituUnitTimes::at(const std::string& name) const {
  const auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) {
    throw std::out_of_range(fmt::format("in-situ calibration measured no task of unit {}", name));
  }
  return mean_s[static_cast<std::size_t>(it - names.begin())];
}

int InSituUnitTimes::count(const std::string& name) const {
  const auto it = std::find(names.begin(), names.end(), name);
  return it == names.end() || counts.empty() ? 0 : counts[static_cast<std::size_t>(it - names.begin())];
}

std::string unit_of_task(const std::string& label) {
  const std::size_t first_end = label.find(' ');
  const std::string first = label.substr(0, first_end);
  if (first == "optimizer") {
    return "optimizer";
  }
  if ((first != "fwd" && first != "bwd") || first_end == std::string::npos) {
    return "";
  }
  const std::size_t second_end = label.find(' ', first_end + 1);
  const std::string second =
      label.substr(first_end + 1, second_end == std::string::npos ? std::string::npos : second_end - first_end - 1);
  const std::string direction = first == "fwd" ? ".fwd" : ".bwd";
  if (second == "embed" || second == "head") {
    return second + direction;
  }
  const bool layer = second.size() >= 2 && second[0] == 'L' &&
                     std::all_of(second.begin() + 1, second.end(), [](char c) { return c >= '0' && c <= '9'; });
  return layer ? "layer" + direction : "";
}

InSituUnitTimes unit_times_from_tasks(const std::vector<std::string>& labels, const std::vector<double>& durations_s) {
  CUBOID_ASSERT(labels.size() == durations_s.size(), "{} task labels but {} durations", labels.size(),
                durations_s.size());
  InSituUnitTimes out;
  std::vector<std::vector<double>> samples;
  for (std::size_t idx = 0; idx < labels.size(); ++idx) {
    const std::string unit = unit_of_task(labels[idx]);
    if (unit.empty()) {
      continue;
    }
    const auto it = std::find(out.names.begin(), out.names.end(), unit);
    if (it == out.names.end()) {
      out.names.push_back(unit);
      samples.push_back({durations_s[idx]});
    } else {
      samples[static_cast<std::size_t>(it - out.names.begin())].push_back(durations_s[idx]);
    }
  }
  for (const auto& values : samples) {
    out.mean_s.push_back(std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size()));
    out.counts.push_back(static_cast<int>(values.size()));
  }
  return out;
}

namespace {
CalibrationResult calibrate_dense(const model::ModelSpec& model, const model::Plan& plan,
                                  const CalibrationOptions& options, Communicator& world);
} // namespace

// --- mixture of experts --- The unit fit has no router / expert terms: a MoE model is calibrated on the dense model
// of the same shape (every layer a dense MLP of ffn_hidden_size, no EP group), and its MoE tasks are predicted from
// the GEMM, elementwise and all-to-all rates fitted there.
CalibrationResult calibrate(const model::ModelSpec& model, const model::Plan& plan, const CalibrationOptions& options,
                            Communicator& world) {
  if (!model.is_moe()) {
    return calibrate_dense(model, plan, options, world);
  }
  model::ModelSpec dense = model;
  dense.num_experts = 0;
  dense.moe_top_k = 0;
  dense.moe_ffn_hidden_size = 0;
  dense.num_shared_experts = 0;
  dense.first_k_dense_layers = 0;
  model::Plan dense_plan = plan;
  dense_plan.ep = 1;
  dense_plan.moe_imbalance = 1.0;
  CalibrationResult result = calibrate_dense(dense, dense_plan, options, world);
  result.profile.assumptions.push_back(fmt::format(
      "MoE model {}: units calibrated on the dense model of the same shape (router and expert tasks are predicted "
      "from its GEMM and elementwise rates)",
      model.name));
  return result;
}

namespace {
CalibrationResult calibrate_dense(const model::ModelSpec& model, const model::Plan& plan,
                                  const CalibrationOptions& options, Communicator& world) {
  CalibrationResult result;
  const std::int64_t tokens = model.seq_length * plan.micro_batch_size;
  const std::vector<int> tps = options.tp_sizes.empty() ? std::vector<int>{plan.tp} : options.tp_sizes;
  // ---- GEMMs: forward Y = X W, data gradient dX = dY W^T, weight gradient dW = X^T dY, for every TP shard.
  for (const int tp : tps) {
    measure_linears(model, tokens, tp, options, world, result);
  }
  double best_gemm = 0.0;
  double linear_flops = 0.0;
  double eigen_s = 0.0;
  double backend_s = 0.0;
  for (const auto& g : result.gemms) {
    linear_flops += 2.0 * g.m * g.n * g.k;
    eigen_s += g.time_s;
    backend_s += g.backend_time_s;
  }
  result.eigen_linear_flops_per_s = linear_flops / eigen_s;
  result.backend_linear_flops_per_s = linear_flops / backend_s;
  // ---- Eigen's own rate on square GEMMs (the best size): the reference for "fraction of Eigen's peak".
  for (const std::int64_t size : EIGEN_PEAK_SIZES) {
    const Mat a = Mat::Random(size, size);
    const Mat b = Mat::Random(size, size);
    Mat c(size, size);
    const double t = max_over(world, best_time_s([&] { c.noalias() = a * b; }, options.min_time_s));
    const double rate = 2.0 * static_cast<double>(size * size * size) / t;
    if (rate > result.eigen_peak_flops_per_s) {
      result.eigen_peak_size = size;
      result.eigen_peak_flops_per_s = rate;
    }
  }
  // ---- attention core, forward and backward (probabilities kept), for every TP shard.
  std::vector<AttentionTimes> attention;
  double attn_flops = 0.0;
  double attn_fwd_s = 0.0;
  double attn_bwd_s = 0.0;
  for (const int tp : tps) {
    attention.push_back(measure_attention(model, plan.micro_batch_size, tp, options, world));
    attn_flops += attention.back().causal_flops;
    attn_fwd_s += attention.back().fwd_s;
    attn_bwd_s += attention.back().bwd_s;
  }
  result.attention_flops_per_s = attn_flops / attn_fwd_s;
  result.attention_bwd_flops_per_s = ATTENTION_BWD_WORK_PER_FWD * attn_flops / attn_bwd_s;
  // ---- the floor of any op: a 1x1 GEMM.
  {
    const Mat a = Mat::Random(1, 1);
    Mat c(1, 1);
    result.tiny_op_s = max_over(world, best_time_s([&] { c.noalias() = a * a; }, options.min_time_s));
  }
  // ---- CPU backend kernels (branch cpux): every norm / activation variant and RoPE, on this model's sizes.
  result.kernels = measure_kernels(model, plan.micro_batch_size, result.tiny_op_s, options, world);
  {
    model::CostProfile& kp = result.profile;
    kp.cpu_layernorm_fwd_s_per_element = kernel_s_per_element(result.kernels, "layernorm.fwd");
    kp.cpu_layernorm_bwd_s_per_element = kernel_s_per_element(result.kernels, "layernorm.bwd");
    kp.cpu_rmsnorm_fwd_s_per_element = kernel_s_per_element(result.kernels, "rmsnorm.fwd");
    kp.cpu_rmsnorm_bwd_s_per_element = kernel_s_per_element(result.kernels, "rmsnorm.bwd");
    kp.cpu_gelu_fwd_s_per_element = kernel_s_per_element(result.kernels, "gelu.fwd");
    kp.cpu_gelu_bwd_s_per_element = kernel_s_per_element(result.kernels, "gelu.bwd");
    kp.cpu_swiglu_fwd_s_per_element = kernel_s_per_element(result.kernels, "swiglu.fwd");
    kp.cpu_swiglu_bwd_s_per_element = kernel_s_per_element(result.kernels, "swiglu.bwd");
    kp.cpu_rope_s_per_element = kernel_s_per_element(result.kernels, "rope");
  }
  const model::CostModel kernel_cost(model::cpu_cluster(1), result.profile, plan);
  // ---- all-reduce sweep, alpha-beta fit t = a + b * S (least squares on the relative error, fit_alpha_beta):
  // a = 2(n-1) alpha, b = 2(n-1)/(n B). The sweep includes the model's gradient (the DP all-reduce of a TP-1 run).
  const int n = world.size();
  if (n > 1) {
    std::vector<double> sweep = options.allreduce_bytes;
    double grad_bytes = 0.0;
    for (const ParamInfo& info : canonical_params(model)) {
      grad_bytes += 4.0 * static_cast<double>(info.size()); // fp32 gradients
    }
    if (std::find(sweep.begin(), sweep.end(), grad_bytes) == sweep.end()) {
      sweep.push_back(grad_bytes);
    }
    std::sort(sweep.begin(), sweep.end());
    for (const double bytes : sweep) {
      std::vector<float> buf(static_cast<std::size_t>(bytes / 4.0), 1.0f);
      const double t = max_over(world, best_collective_time_s([&] { world.all_reduce(buf); }, options.min_time_s, world));
      const double algbw = bytes / t;
      result.allreduce.push_back({bytes, t, algbw, algbw * 2.0 * (n - 1) / n});
    }
  }
  const std::vector<ShapeTime> shapes = merge_shapes(result.gemms);
  // ---- whole units of every TP shard (one micro-batch; one optimizer step over the shard's parameters), split into
  // their measured GEMMs and attention and the memory-bound rest.
  std::vector<double> unit_runs;
  std::vector<double> shard_params; // per TP size
  for (std::size_t idx = 0; idx < tps.size(); ++idx) {
    const model::Plan unit_plan = unit_plan_of(plan, tps[idx]);
    const model::StepBlocks blocks = model::make_step_blocks(model, unit_plan);
    const UnitTimes alone = measure_units(model, unit_plan, options, world);
    UnitTimes t = alone;
    const int tp = tps[idx];
    // --- in-situ units (issue 5) --- TP 1: the units as the runtime runs them inside a training step. (TP > 1 layer
    // tasks contain their TP all-reduces, which the split below does not price: those stay timed alone.)
    const bool in_situ = options.in_situ_steps > 0 && tp == 1;
    InSituRun situ;
    if (in_situ) {
      situ = measure_in_situ(model, plan, options, world);
      for (std::size_t u = 0; u < UNITS_PER_TP; ++u) {
        t.*UNIT_TIME_FIELDS[u] = situ.units.at(unit_names()[u]);
      }
      result.in_situ_ranks = situ.ranks;
      result.in_situ_steps_measured = situ.steps_measured;
      result.in_situ_step_s = situ.step_s;
      result.in_situ_tasks_s = situ.tasks_s;
    }
    const AttentionTimes& attn = attention[idx];
    const model::OpBlock optimizer_block = model::make_optimizer_block(t.num_params);
    const auto unit_blocks = unit_blocks_of(blocks, optimizer_block);
    for (std::size_t u = 0; u < UNITS_PER_TP; ++u) {
      result.units.push_back(split_unit(unit_names()[u], tp, t.*UNIT_TIME_FIELDS[u], *unit_blocks[u], shapes, attn,
                                        kernel_cost, result.tiny_op_s));
      UnitMeasurement& m = result.units.back();
      m.alone_s = alone.*UNIT_TIME_FIELDS[u];
      m.in_situ = in_situ;
      if (in_situ) {
        m.in_situ_wall_s = situ.wall_units.at(m.name);
        m.in_situ_tasks = situ.units.count(m.name);
      }
    }
    shard_params.push_back(t.num_params);
    // Runs per step on a rank of one stage: embedding and head once per micro-batch, each layer once per
    // micro-batch, the optimizer once.
    const double microbatches = static_cast<double>(std::max<std::int64_t>(1, plan.num_microbatches()));
    const double layers = static_cast<double>(model.num_layers) / static_cast<double>(std::max(1, plan.pp));
    for (const double count : {microbatches, microbatches, microbatches * layers, microbatches * layers, microbatches,
                               microbatches, 1.0}) {
      unit_runs.push_back(count);
    }
  }
  // Per-op cost: the floor of any op (a 1x1 GEMM). Memory-bound bytes: fitted on the units without attention.
  result.launch_overhead_s = result.tiny_op_s;
  const bool any_in_situ =
      std::any_of(result.units.begin(), result.units.end(), [](const UnitMeasurement& u) { return u.in_situ; });
  if (any_in_situ) {
    for (std::size_t idx = 0; idx < result.units.size(); ++idx) {
      if (!result.units[idx].in_situ) {
        unit_runs[idx] = 0.0; // timed alone: not fitted, predicted (see below)
      }
    }
  }
  const double s_per_byte = fit_seconds_per_byte(result.units, unit_runs, result.launch_overhead_s);
  // No byte term (nothing left to explain): memory traffic is free up to the reference bandwidth.
  result.elementwise_bytes_per_s =
      s_per_byte > 0.0 ? 1.0 / s_per_byte
                       : (options.mem_bw_bytes_per_s > 0.0 ? options.mem_bw_bytes_per_s : UNBOUNDED_BYTES_PER_S);
  // A layer's rest beyond its byte-priced ops (GeLU's tanh, the backend's copies and allocations, GEMMs slower
  // inside the layer than alone) has no op of its own in the IR: it is added to the layer's attention op, forward
  // and backward separately, so that whole layers are predicted at their measured time.
  // With in-situ units only those (measured under the conditions of a step) are fitted; the TP sizes timed alone
  // are then predicted from the fitted efficiencies.
  double attn_fwd_eff_s = 0.0;
  double attn_bwd_eff_s = 0.0;
  double attn_fit_flops = 0.0;
  double attn_fit_fwd_s = 0.0;
  double attn_fit_bwd_s = 0.0;
  for (std::size_t idx = 0; idx < tps.size(); ++idx) {
    if (any_in_situ && !result.units[idx * UNITS_PER_TP].in_situ) {
      continue;
    }
    attn_fit_flops += attention[idx].causal_flops;
    attn_fit_fwd_s += attention[idx].fwd_s;
    attn_fit_bwd_s += attention[idx].bwd_s;
    for (std::size_t k = idx * UNITS_PER_TP; k < (idx + 1) * UNITS_PER_TP; ++k) {
      const UnitMeasurement& u = result.units[k];
      const double rest = u.time_s - u.compute_s - u.kernel_s - u.memory_ops * result.launch_overhead_s -
                          u.memory_bytes / result.elementwise_bytes_per_s;
      if (u.name == "layer.fwd") {
        attn_fwd_eff_s += rest;
      } else if (u.name == "layer.bwd") {
        attn_bwd_eff_s += rest;
      }
    }
  }
  // A layer measured faster than its parts timed alone (noise on a loaded machine, or parts slower alone) leaves a
  // negative rest: the attention keeps at least MIN_NET_SHARE of its measured time, and what that adds to the fitted
  // layers' predicted time is kept (reported in the profile's assumptions, and by `cuboid calibrate`).
  const auto floored = [](double fit_s, double rest_s, double& added_s) {
    added_s = std::max(0.0, MIN_NET_SHARE * fit_s - (fit_s + rest_s));
    return std::max(MIN_NET_SHARE * fit_s, fit_s + rest_s);
  };
  attn_fwd_eff_s = floored(attn_fit_fwd_s, attn_fwd_eff_s, result.layer_fwd_floor_s);
  attn_bwd_eff_s = floored(attn_fit_bwd_s, attn_bwd_eff_s, result.layer_bwd_floor_s);

  model::CostProfile& p = result.profile;
  p.name = options.name;
  p.gpu = "cpu";
  std::string tp_list;
  for (const int tp : tps) {
    tp_list += (tp_list.empty() ? "" : ",") + std::to_string(tp);
  }
  p.source = fmt::format("measured by exec::calibrate on {} rank(s), model {}, tp {}, micro-batch {}", n, model.name,
                         tp_list, plan.micro_batch_size);
  // The cost model adds launch_overhead_s to every op: GEMM and attention efficiencies are computed without it, so
  // that a calibrated op is predicted at its measured time.
  const auto net = [&](double time_s) { return std::max(MIN_NET_SHARE * time_s, time_s - result.launch_overhead_s); };
  for (const auto& st : shapes) {
    best_gemm = std::max(best_gemm, 2.0 * st.m * st.n * st.k / net(st.time_s));
  }
  for (const auto& g : result.gemms) {
    best_gemm = std::max(best_gemm, g.flops_per_s);
  }
  const double peak = options.peak_flops_per_s > 0.0 ? options.peak_flops_per_s : best_gemm;
  if (options.peak_flops_per_s <= 0.0) {
    p.assumptions.push_back(fmt::format("peak FLOP/s unknown: taken as the best measured GEMM, {:.3g} FLOP/s", peak));
  } else {
    p.assumptions.push_back(fmt::format("efficiencies are fractions of a reference {:.3g} FLOP/s", peak));
  }
  p.gemm_max_efficiency = std::min(1.0, best_gemm / peak);
  p.gemm_fp8_max_efficiency = p.gemm_max_efficiency;
  p.num_sms = 0.0; // no wave quantisation on CPUs
  // The table holds what the run executes: the backend's linear ops.
  for (const auto& st : shapes) {
    p.gemm_table.push_back({st.m, st.n, st.k, std::min(1.0, 2.0 * st.m * st.n * st.k / net(st.time_s) / peak)});
  }
  p.attention_efficiency = std::min(1.0, attn_fit_flops / net(attn_fwd_eff_s) / peak);
  p.attention_bwd_efficiency =
      std::min(1.0, ATTENTION_BWD_WORK_PER_FWD * attn_fit_flops / net(attn_bwd_eff_s) / peak);
  p.assumptions.push_back(fmt::format(
      "attention efficiencies are effective: they carry each layer's time beyond its GEMMs, kernels and byte-priced ops "
      "(measured alone: forward {:.3g}, backward {:.3g} FLOP/s)",
      result.attention_flops_per_s, result.attention_bwd_flops_per_s));
  for (const auto& [unit, floor_s] : {std::pair{"forward", result.layer_fwd_floor_s},
                                       std::pair{"backward", result.layer_bwd_floor_s}}) {
    if (floor_s > 0.0) {
      p.assumptions.push_back(fmt::format(
          "layer {} measured {:.3g} s faster than its GEMMs, attention and kernels timed alone (noise on a loaded "
          "machine, or parts slower alone than inside the layer): attention kept at half its measured time, so "
          "layers are predicted {:.3g} s above measured; calibrate again on an idle machine or with a longer "
          "--min-time",
          unit, floor_s, floor_s));
    }
  }
  p.launch_overhead_s = result.launch_overhead_s;
  p.assumptions.push_back(fmt::format(
      "norms, activations and RoPE priced per element by the CPU backend's own kernels timed alone on {}'s sizes "
      "(s/element: layernorm {:.3g}/{:.3g}, rmsnorm {:.3g}/{:.3g}, gelu {:.3g}/{:.3g}, swiglu {:.3g}/{:.3g} "
      "forward/backward, rope {:.3g}), every variant, so that the profile prices other models",
      model.name, p.cpu_layernorm_fwd_s_per_element, p.cpu_layernorm_bwd_s_per_element,
      p.cpu_rmsnorm_fwd_s_per_element, p.cpu_rmsnorm_bwd_s_per_element, p.cpu_gelu_fwd_s_per_element,
      p.cpu_gelu_bwd_s_per_element, p.cpu_swiglu_fwd_s_per_element, p.cpu_swiglu_bwd_s_per_element,
      p.cpu_rope_s_per_element));
  if (any_in_situ) {
    p.assumptions.push_back(fmt::format(
        "tp-1 units (embedding, layer, head, optimizer) measured in situ: mean task {} of {} training steps of the "
        "runtime on {} rank(s) (data parallel, 1F1B, {} micro-batches per rank); the other TP sizes' units timed "
        "alone and predicted from the in-situ fit",
        options.in_situ_cpu_time ? "thread CPU time" : "wall time", result.in_situ_steps_measured,
        result.in_situ_ranks, options.in_situ_microbatches));
  }
  const double mem_bw = options.mem_bw_bytes_per_s > 0.0 ? options.mem_bw_bytes_per_s : result.elementwise_bytes_per_s;
  if (options.mem_bw_bytes_per_s <= 0.0) {
    p.assumptions.push_back(fmt::format("memory bandwidth unknown: taken as measured, {:.3g} B/s", mem_bw));
  }
  p.hbm_efficiency = std::min(1.0, result.elementwise_bytes_per_s / mem_bw);
  p.assumptions.push_back(fmt::format(
      "memory-bound ops: {:.3g} IR bytes/s fitted to the measured embedding, head and optimizer units minus their "
      "GEMMs; per-op cost {:.3g} s (a 1x1 GEMM)",
      result.elementwise_bytes_per_s, result.launch_overhead_s));
  if (result.allreduce.size() >= 2) {
    const AlphaBeta fit = fit_alpha_beta(result.allreduce);
    const double slope = fit.seconds_per_byte;
    const double intercept = fit.latency_s;
    const double steps = 2.0 * (n - 1);
    const double bus_bw = steps / (static_cast<double>(n) * slope);
    const double link = options.link_bw_bytes_per_s > 0.0 ? options.link_bw_bytes_per_s : bus_bw;
    if (options.link_bw_bytes_per_s <= 0.0) {
      p.assumptions.push_back(fmt::format("link bandwidth unknown: taken as the fitted bus bandwidth, {:.3g} B/s", link));
    }
    p.nvlink_efficiency = std::min(1.0, bus_bw / link);
    p.nic_efficiency = p.nvlink_efficiency;
    p.nvlink_latency_s = intercept / steps;
    p.net_latency_s = p.nvlink_latency_s;
  } else {
    p.assumptions.push_back("collectives not measured (one rank): link numbers are the profile defaults; run "
                            "`mpirun -np 2 cuboid calibrate ...` to measure them");
  }
  // ---- every unit as the finished profile predicts it (the check of the fit, printed by `cuboid calibrate`).
  for (std::size_t idx = 0; idx < tps.size(); ++idx) {
    const model::Plan unit_plan = unit_plan_of(plan, tps[idx]);
    model::ClusterSpec cluster;
    cluster.gpu.name = "cpu";
    cluster.gpu.bf16_flops_per_s = peak;
    cluster.gpu.hbm_bw_bytes_per_s = mem_bw;
    cluster.num_gpus = 1;
    cluster.gpus_per_node = 1;
    const model::CostModel cost(cluster, p, unit_plan);
    const model::StepBlocks blocks = model::make_step_blocks(model, unit_plan);
    const std::size_t first = idx * UNITS_PER_TP;
    const model::OpBlock optimizer_block = model::make_optimizer_block(shard_params[idx]);
    const auto unit_blocks = unit_blocks_of(blocks, optimizer_block);
    for (std::size_t u = 0; u < UNITS_PER_TP; ++u) {
      result.units[first + u].predicted_s = predict_unit_s(*unit_blocks[u], cost);
    }
  }
  return result;
}
} // namespace

} // namespace cuboid::exec

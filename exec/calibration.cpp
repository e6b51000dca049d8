// Calibration microbenchmarks on the CPU backend's own kernels, so the profile describes what `cuboid run` executes.
#include "exec/calibration.hpp"

#include "exec/cpu/activation.hpp"
#include "exec/cpu/attention.hpp"
#include "exec/cpu/tensor.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <functional>

namespace cuboid::exec {

namespace {

using Clock = std::chrono::steady_clock;

// Best time of one call, repeating until min_time_s has passed (at least 3 calls).
double best_time_s(const std::function<void()>& fn, double min_time_s) {
  fn(); // warm-up: first touch of the buffers
  double best = 1e30;
  double total = 0.0;
  for (int rep = 0; rep < 3 || total < min_time_s; ++rep) {
    const auto start = Clock::now();
    fn();
    const double t = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::min(best, t);
    total += t;
  }
  return best;
}

// Slowest rank's value (all ranks must agree on one profile).
double max_over(Communicator& world, double value) {
  auto v = static_cast<float>(value);
  world.all_reduce(std::span<float>(&v, 1), ReduceOp::Max);
  return static_cast<double>(v);
}

struct Shape {
  std::string name;
  std::int64_t in = 0;
  std::int64_t out = 0;
};

} // namespace

CalibrationResult calibrate(const model::ModelSpec& model, const model::Plan& plan, const CalibrationOptions& options,
                            Communicator& world) {
  CalibrationResult result;
  const std::int64_t tokens = model.seq_length * plan.micro_batch_size;
  const std::int64_t tp = plan.tp;
  const std::int64_t mlp_in = model.gated_mlp ? 2 * model.ffn_hidden_size / tp : model.ffn_hidden_size / tp;
  const std::vector<Shape> linears = {
      {"qkv", model.hidden_size, (model.q_width() + 2 * model.kv_width()) / tp},
      {"proj", model.q_width() / tp, model.hidden_size},
      {"fc1", model.hidden_size, mlp_in},
      {"fc2", model.ffn_hidden_size / tp, model.hidden_size},
      {"logits", model.hidden_size, model.vocab_size / tp},
  };
  // ---- GEMMs: forward Y = X W, data gradient dX = dY W^T, weight gradient dW = X^T dY.
  for (const Shape& s : linears) {
    const cpu::Mat x = cpu::Mat::Random(tokens, s.in);
    const cpu::Mat w = cpu::Mat::Random(s.in, s.out);
    const cpu::Mat dy = cpu::Mat::Random(tokens, s.out);
    cpu::Mat y(tokens, s.out);
    cpu::Mat dx(tokens, s.in);
    cpu::Mat dw(s.in, s.out);
    const auto measure = [&](const std::string& kind, double m, double n, double k, const std::function<void()>& fn) {
      const double t = max_over(world, best_time_s(fn, options.min_time_s));
      result.gemms.push_back({s.name + "." + kind, m, n, k, t, 2.0 * m * n * k / t});
    };
    const auto rows = static_cast<double>(tokens);
    measure("fwd", rows, static_cast<double>(s.out), static_cast<double>(s.in), [&] { y.noalias() = x * w; });
    measure("dgrad", rows, static_cast<double>(s.in), static_cast<double>(s.out),
            [&] { dx.noalias() = dy * w.transpose(); });
    measure("wgrad", static_cast<double>(s.in), static_cast<double>(s.out), rows,
            [&] { dw.noalias() = x.transpose() * dy; });
  }
  double best_gemm = 0.0;
  for (const auto& g : result.gemms) {
    best_gemm = std::max(best_gemm, g.flops_per_s);
  }
  // ---- attention core (forward), FLOPs of the causal half: 2 * 2 * B * H * T^2 * D / 2.
  {
    const std::int64_t heads = model.num_attention_heads / tp;
    const std::int64_t groups = model.num_query_groups / tp;
    const cpu::AttentionShape shape{model.seq_length, plan.micro_batch_size, heads, groups, model.head_dim};
    const cpu::Mat q = cpu::Mat::Random(tokens, heads * model.head_dim);
    const cpu::Mat kv = cpu::Mat::Random(tokens, groups * model.head_dim);
    cpu::Mat out(tokens, heads * model.head_dim);
    const double t =
        max_over(world, best_time_s([&] { cpu::attention_forward(shape, q, kv, kv, out, nullptr); }, options.min_time_s));
    const double flops = 2.0 * static_cast<double>(plan.micro_batch_size * heads * model.seq_length *
                                                   model.seq_length * model.head_dim);
    result.attention_flops_per_s = flops / t;
  }
  // ---- memory-bound elementwise op (GeLU over 16M floats: read 4 B + write 4 B per element).
  {
    constexpr std::int64_t ROWS = 4096;
    constexpr std::int64_t COLS = 4096;
    const cpu::Mat x = cpu::Mat::Random(ROWS, COLS);
    cpu::Mat y(ROWS, COLS);
    const double t = max_over(world, best_time_s([&] { y = x * 2.0f + x; }, options.min_time_s));
    result.elementwise_bytes_per_s = 2.0 * 4.0 * static_cast<double>(ROWS * COLS) / t;
  }
  // ---- per-op fixed cost: a 1x1 GEMM.
  {
    const cpu::Mat a = cpu::Mat::Random(1, 1);
    cpu::Mat c(1, 1);
    result.launch_overhead_s = max_over(world, best_time_s([&] { c.noalias() = a * a; }, options.min_time_s));
  }
  // ---- all-reduce sweep, alpha-beta fit t = a + b * S (least squares): a = 2(n-1) alpha, b = 2(n-1)/(n B).
  const int n = world.size();
  if (n > 1) {
    for (const double bytes : options.allreduce_bytes) {
      std::vector<float> buf(static_cast<std::size_t>(bytes / 4.0), 1.0f);
      const double t = max_over(world, best_time_s([&] { world.all_reduce(buf); }, options.min_time_s));
      const double algbw = bytes / t;
      result.allreduce.push_back({bytes, t, algbw, algbw * 2.0 * (n - 1) / n});
    }
  }

  model::CostProfile& p = result.profile;
  p.name = options.name;
  p.gpu = "cpu";
  p.source = fmt::format("measured by exec::calibrate on {} rank(s), model {}, tp {}, micro-batch {}", n, model.name,
                         plan.tp, plan.micro_batch_size);
  const double peak = options.peak_flops_per_s > 0.0 ? options.peak_flops_per_s : best_gemm;
  if (options.peak_flops_per_s <= 0.0) {
    p.assumptions.push_back(fmt::format("peak FLOP/s unknown: taken as the best measured GEMM, {:.3g} FLOP/s", peak));
  }
  p.gemm_max_efficiency = std::min(1.0, best_gemm / peak);
  p.gemm_fp8_max_efficiency = p.gemm_max_efficiency;
  p.num_sms = 0.0; // no wave quantisation on CPUs
  for (const auto& g : result.gemms) {
    p.gemm_table.push_back({g.m, g.n, g.k, std::min(1.0, g.flops_per_s / peak)});
  }
  p.attention_efficiency = std::min(1.0, result.attention_flops_per_s / peak);
  p.attention_bwd_efficiency = p.attention_efficiency; // backward not measured separately yet
  const double mem_bw = options.mem_bw_bytes_per_s > 0.0 ? options.mem_bw_bytes_per_s : result.elementwise_bytes_per_s;
  if (options.mem_bw_bytes_per_s <= 0.0) {
    p.assumptions.push_back(fmt::format("memory bandwidth unknown: taken as measured, {:.3g} B/s", mem_bw));
  }
  p.hbm_efficiency = std::min(1.0, result.elementwise_bytes_per_s / mem_bw);
  p.launch_overhead_s = result.launch_overhead_s;
  if (result.allreduce.size() >= 2) {
    double sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0;
    for (const auto& c : result.allreduce) {
      sx += c.msg_bytes;
      sy += c.time_s;
      sxx += c.msg_bytes * c.msg_bytes;
      sxy += c.msg_bytes * c.time_s;
    }
    const auto count = static_cast<double>(result.allreduce.size());
    const double slope = std::max(1e-15, (count * sxy - sx * sy) / std::max(1e-30, count * sxx - sx * sx));
    const double intercept = std::max(0.0, (sy - slope * sx) / count);
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
  }
  return result;
}

} // namespace cuboid::exec

// Calibration: every measured number is positive, every efficiency a fraction, and the profile survives
// model::save_profile / load_profile (the format `cuboid calibrate` writes).
#include "test_models.hpp"

#include "exec/calibration.hpp"
#include "model/cpu_device.hpp"
#include "exec/local_communicator.hpp"
#include "model/cost_model.hpp"
#include "model/op_catalog.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace cuboid::exec {
namespace {

TEST_CASE("exec::calibrate: a CPU profile from the model's GEMM shapes", "[exec]") {
  LocalCommunicator world;
  CalibrationOptions options;
  options.min_time_s = 0.001;
  const model::Plan plan = test::single_rank_plan(1, 1);
  const CalibrationResult result = calibrate(test::toy_gpt(), plan, options, world);
  REQUIRE(result.gemms.size() == 15); // 5 linears x (fwd, dgrad, wgrad)
  for (const auto& g : result.gemms) {
    CHECK(g.time_s > 0.0);
    CHECK(g.flops_per_s > 0.0);
  }
  CHECK(result.allreduce.empty()); // one rank: nothing to reduce
  const model::CostProfile& p = result.profile;
  CHECK(p.gemm_max_efficiency == Approx(1.0)); // peak unknown: the best GEMM is the peak
  for (const auto& point : p.gemm_table) {
    CHECK(point.efficiency > 0.0);
    CHECK(point.efficiency <= 1.0);
  }
  CHECK(p.attention_efficiency > 0.0);
  CHECK(p.hbm_efficiency == Approx(1.0));
  CHECK(p.launch_overhead_s >= 0.0);
  CHECK(result.tiny_op_s > 0.0);
  REQUIRE(result.units.size() == 7); // embedding, layer, head (fwd, bwd) and the optimizer of one TP shard
  for (const auto& u : result.units) {
    CHECK(u.time_s > 0.0);
    CHECK(u.memory_ops >= 1.0); // every unit has a norm, activation, residual, lookup, loss or Adam op
  }
  CHECK_FALSE(p.assumptions.empty());

  const std::string path = "exec_calibration_test_profile.yaml";
  model::save_profile(p, path);
  const model::CostProfile loaded = model::load_profile(path);
  std::remove(path.c_str());
  CHECK(loaded.gemm_table.size() == p.gemm_table.size());
  CHECK(loaded.launch_overhead_s == Approx(p.launch_overhead_s));
}

} // namespace
} // namespace cuboid::exec

namespace cuboid::exec {
namespace {

// Short repeats on the cpu device's reference rates, TP sizes 1 and 2 (the calibrations of this file).
CalibrationOptions quick_cpu_options() {
  CalibrationOptions options;
  options.min_time_s = 0.001;
  options.peak_flops_per_s = model::CPU_REFERENCE_FLOPS_PER_S;
  options.mem_bw_bytes_per_s = model::CPU_REFERENCE_MEM_BW_BYTES_PER_S;
  options.link_bw_bytes_per_s = model::CPU_REFERENCE_LINK_BW_BYTES_PER_S;
  options.tp_sizes = {1, 2};
  return options;
}

// The contract between exec::calibrate and model::CostModel: a GEMM shape that was calibrated is predicted at its
// measured time through the CPU backend (the mean over the ops of that shape, e.g. qkv forward and weight gradient),
// on the cpu device (reference rates) with the profile saved and loaded again. Reason: the table point is an exact
// hit, its efficiency was computed from (time - per-op cost) and the cost model adds the per-op cost back (floor
// max(0.5 t, t - cost) for ops shorter than twice the per-op cost). The memory term is zero for an op without bytes.
TEST_CASE("exec::calibrate: calibrated GEMMs are predicted at their measured time on the cpu device", "[exec]") {
  LocalCommunicator world;
  CalibrationOptions options = quick_cpu_options();
  const model::ModelSpec spec = test::gpt_tiny_shape();
  const model::Plan plan = test::single_rank_plan(1, 2);
  const CalibrationResult result = calibrate(spec, plan, options, world);
  REQUIRE(result.gemms.size() == 30); // 2 TP sizes x 5 linears x (fwd, dgrad, wgrad)
  REQUIRE(result.units.size() == 14);
  const std::string path = "exec_calibration_contract_profile.yaml";
  model::save_profile(result.profile, path);
  const model::CostProfile loaded = model::load_profile(path);
  std::remove(path.c_str());
  CHECK(loaded.gpu == "cpu");
  const model::CostModel cost(model::cpu_cluster(1), loaded, plan);
  const double per_op_s = loaded.launch_overhead_s;
  for (const auto& g : result.gemms) {
    model::Op op;
    op.name = g.label;
    op.kind = model::OpKind::Gemm;
    op.m = static_cast<std::int64_t>(g.m);
    op.n = static_cast<std::int64_t>(g.n);
    op.k = static_cast<std::int64_t>(g.k);
    op.flops = 2.0 * g.m * g.n * g.k;
    op.hbm_bytes = 0.0;
    double sum_s = 0.0;
    double count = 0.0;
    for (const auto& other : result.gemms) {
      if (other.m == g.m && other.n == g.n && other.k == g.k) {
        sum_s += other.backend_time_s;
        count += 1.0;
      }
    }
    const double t = sum_s / count;
    const double expected = std::max(0.5 * t, t - per_op_s) + per_op_s;
    INFO(g.label << " tp " << g.tp << " measured " << t << " s, per-op cost " << per_op_s << " s");
    CHECK_THAT(cost.op_time_s(op), Catch::Matchers::WithinRel(expected, 1e-6));
  }
  // Whole layers, summed over the TP sizes, are predicted at their measured time: the attention efficiencies carry
  // the layers' time beyond GEMMs and byte-priced ops (forward and backward each; the layer's rest is positive, as
  // GeLU alone costs far more than its bytes, so the floor at half the attention time is not reached).
  for (const std::string unit : {"layer.fwd", "layer.bwd"}) {
    double measured_s = 0.0;
    double predicted_s = 0.0;
    for (const auto& u : result.units) {
      if (u.name == unit) {
        measured_s += u.time_s;
        predicted_s += u.predicted_s;
      }
    }
    // 1e-4: times travel as float through the ranks' max reduction. On a loaded machine a layer can measure faster
    // than its parts timed alone: the attention floor (MIN_NET_SHARE in calibration.cpp) then raises the prediction
    // by exactly the amount the result reports, never lowers it.
    const double floor_s = unit == "layer.fwd" ? result.layer_fwd_floor_s : result.layer_bwd_floor_s;
    INFO(unit << " measured " << measured_s << " s, predicted " << predicted_s << " s, floor " << floor_s << " s");
    CHECK(floor_s >= 0.0);
    CHECK(predicted_s >= measured_s * (1.0 - 1e-4));
    CHECK(predicted_s <= (measured_s + floor_s) * (1.0 + 1e-4));
  }
  // The profile says so exactly when the floor raised a layer.
  const auto& notes = result.profile.assumptions;
  const bool reported = std::any_of(notes.begin(), notes.end(), [](const std::string& a) {
    return a.find("faster than its GEMMs") != std::string::npos;
  });
  CHECK(reported == (result.layer_fwd_floor_s > 0.0 || result.layer_bwd_floor_s > 0.0));
}

} // namespace
} // namespace cuboid::exec

// --- in-situ units (issue 5) ---
namespace cuboid::exec {
namespace {

TEST_CASE("exec::unit_of_task: runtime task labels to calibration units", "[exec][calibration]") {
  CHECK(unit_of_task("fwd L3 mb2 s0c0 r1") == "layer.fwd");
  CHECK(unit_of_task("bwd L12 mb0 s1c0 r0") == "layer.bwd");
  CHECK(unit_of_task("fwd embed mb1 s0c0 r0") == "embed.fwd");
  CHECK(unit_of_task("bwd embed mb1 s0c0 r0") == "embed.bwd");
  CHECK(unit_of_task("fwd head mb7 s0c0 r0") == "head.fwd");
  CHECK(unit_of_task("bwd head mb7 s0c0 r0") == "head.bwd");
  CHECK(unit_of_task("optimizer s0 r1") == "optimizer");
  CHECK(unit_of_task("dp.allreduce b0 r0") == "");
  CHECK(unit_of_task("wgrad L3 mb2 s0c0 r1") == ""); // zero-bubble W tasks are not a unit of the fit
  CHECK(unit_of_task("fwd Lx mb0") == "");
  CHECK(unit_of_task("fwd") == "");
  CHECK(unit_of_task("") == "");
}

TEST_CASE("exec::unit_times_from_tasks: the mean per unit of synthetic task times", "[exec][calibration]") {
  const std::vector<std::string> labels = {"fwd L0 mb0 s0c0 r0", "fwd L1 mb0 s0c0 r0", "fwd L0 mb1 s0c0 r0",
                                           "bwd L1 mb1 s0c0 r0", "optimizer s0 r0",    "dp.allreduce b0 r0",
                                           "fwd L1 mb1 s0c0 r0", "bwd L0 mb1 s0c0 r0", "fwd head mb0 s0c0 r0"};
  // Layer forwards 3, 1, 100 (a slow task: the step pays for it) and 2 ms: mean 26.5 ms; the all-reduce is no unit.
  const std::vector<double> times = {3e-3, 1e-3, 100e-3, 5e-3, 7e-3, 50e-3, 2e-3, 4e-3, 0.5e-3};
  const InSituUnitTimes units = unit_times_from_tasks(labels, times);
  CHECK(units.at("layer.fwd") == Approx(26.5e-3));
  CHECK(units.count("layer.fwd") == 4);
  CHECK(units.at("layer.bwd") == Approx(4.5e-3));
  CHECK(units.count("layer.bwd") == 2);
  CHECK(units.at("optimizer") == Approx(7e-3));
  CHECK(units.at("head.fwd") == Approx(0.5e-3));
  CHECK(units.count("embed.fwd") == 0);
  CHECK_THROWS_AS(units.at("embed.fwd"), std::out_of_range);
  CHECK(units.names.size() == 4);
}

TEST_CASE("exec::fit_alpha_beta: reproduces a synthetic latency and bandwidth", "[exec][calibration]") {
  const double latency_s = 12e-6;
  const double per_byte_s = 1.0 / 3e9;
  std::vector<CollectiveMeasurement> sweep;
  for (const double bytes : {4096.0, 65536.0, 1048576.0, 3.5e6, 16777216.0}) {
    sweep.push_back({bytes, latency_s + per_byte_s * bytes, 0.0, 0.0});
  }
  const AlphaBeta exact = fit_alpha_beta(sweep);
  CHECK_THAT(exact.latency_s, Catch::Matchers::WithinRel(latency_s, 1e-6));
  CHECK_THAT(exact.seconds_per_byte, Catch::Matchers::WithinRel(per_byte_s, 1e-6));
  // One disturbed point (the largest message 5x slower): relative weights keep the small messages' latency and the
  // slope within a factor of the truth, where plain least squares on times would let that point decide.
  sweep.back().time_s *= 5.0;
  const AlphaBeta disturbed = fit_alpha_beta(sweep);
  CHECK(disturbed.latency_s > 0.5 * latency_s);
  CHECK(disturbed.latency_s < 2.0 * latency_s);
  CHECK(disturbed.seconds_per_byte < 3.0 * per_byte_s);
}

// With in_situ_steps the TP-1 units are the means of the runtime's own tasks in real training steps (every layer
// task of every measured step counts), the TP-2 units stay timed alone, and the fit keeps its contract: whole layers
// are predicted at their (in-situ) measured time.
TEST_CASE("exec::calibrate: in-situ units come from real training steps", "[exec][calibration]") {
  LocalCommunicator world;
  CalibrationOptions options = quick_cpu_options();
  options.in_situ_steps = 2;
  options.in_situ_microbatches = 3;
  const model::ModelSpec spec = test::gpt_tiny_shape();
  const model::Plan plan = test::single_rank_plan(1, 2);
  const CalibrationResult result = calibrate(spec, plan, options, world);
  REQUIRE(result.units.size() == 14);
  CHECK(result.in_situ_ranks == 1);
  CHECK(result.in_situ_steps_measured == 2);
  CHECK(result.in_situ_step_s > 0.0);
  CHECK(result.in_situ_tasks_s > 0.0);
  CHECK(result.in_situ_tasks_s <= result.in_situ_step_s * (1.0 + 1e-6));
  for (const auto& u : result.units) {
    INFO(u.name << " tp " << u.tp);
    CHECK(u.in_situ == (u.tp == 1));
    CHECK(u.time_s > 0.0);
    CHECK(u.alone_s > 0.0);
    if (u.tp != 1) {
      CHECK(u.time_s == u.alone_s);
      continue;
    }
    CHECK(u.in_situ_wall_s > 0.0);
    const auto per_step = u.name == "optimizer" ? 1 : (u.name.rfind("layer", 0) == 0 ? 3 * spec.num_layers : 3);
    CHECK(u.in_situ_tasks == 2 * per_step);
  }
  for (const std::string unit : {"layer.fwd", "layer.bwd"}) {
    for (const auto& u : result.units) {
      if (u.name == unit && u.tp == 1) {
        // Only tp 1 is fitted here, so the attention floor's addition (see the contract test above) is all its own.
        const double floor_s = unit == "layer.fwd" ? result.layer_fwd_floor_s : result.layer_bwd_floor_s;
        INFO(unit << " in situ " << u.time_s << " s, predicted " << u.predicted_s << " s, floor " << floor_s << " s");
        CHECK(u.predicted_s >= u.time_s * (1.0 - 1e-4));
        CHECK(u.predicted_s <= (u.time_s + floor_s) * (1.0 + 1e-4));
      }
    }
  }
}

// --- CPU prediction across models (branch cpux) ---
// Calibration times every norm / activation variant and RoPE, whatever the model uses (a GPT model's profile also
// prices RMSNorm, SwiGLU and RoPE), stores (time - per-op cost) / elements in the profile, and the units' kernel_s is
// what the cost model charges for their tagged ops: elements x seconds per element + the per-op cost.
TEST_CASE("exec::calibrate: every CPU kernel variant measured and priced per element", "[exec][calibration]") {
  LocalCommunicator world;
  CalibrationOptions options;
  options.min_time_s = 0.001;
  const model::ModelSpec spec = test::toy_gpt();
  const model::Plan plan = test::single_rank_plan(1, 1);
  const CalibrationResult result = calibrate(spec, plan, options, world);
  REQUIRE(result.kernels.size() == 9);
  for (const auto& k : result.kernels) {
    INFO(k.name);
    CHECK(k.time_s > 0.0);
    CHECK(k.elements > 0.0);
    CHECK(k.s_per_element == Approx(std::max(0.0, k.time_s - result.tiny_op_s) / k.elements));
  }
  const model::CostProfile& p = result.profile;
  const auto measured = [&](const std::string& name) {
    const auto it = std::find_if(result.kernels.begin(), result.kernels.end(),
                                 [&](const KernelMeasurement& k) { return k.name == name; });
    REQUIRE(it != result.kernels.end());
    return it->s_per_element;
  };
  CHECK(p.cpu_layernorm_fwd_s_per_element == measured("layernorm.fwd"));
  CHECK(p.cpu_rmsnorm_bwd_s_per_element == measured("rmsnorm.bwd"));
  CHECK(p.cpu_gelu_bwd_s_per_element == measured("gelu.bwd"));
  CHECK(p.cpu_swiglu_fwd_s_per_element == measured("swiglu.fwd"));
  CHECK(p.cpu_rope_s_per_element == measured("rope"));
  CHECK(p.cpu_gelu_fwd_s_per_element > 0.0); // tanh per element: far above a 1x1 GEMM
  // layer.fwd of toy-gpt: ln1, ln2 (tokens x hidden) and GeLU (tokens x ffn), no RoPE.
  const double tokens = static_cast<double>(spec.seq_length);
  const auto per_op = [&](double s_per_element, double elements) {
    return s_per_element > 0.0 ? elements * s_per_element + result.tiny_op_s : 0.0;
  };
  const double expected = 2.0 * per_op(p.cpu_layernorm_fwd_s_per_element, tokens * static_cast<double>(spec.hidden_size)) +
                          per_op(p.cpu_gelu_fwd_s_per_element, tokens * static_cast<double>(spec.ffn_hidden_size));
  for (const auto& u : result.units) {
    if (u.name == "layer.fwd") {
      CHECK(u.kernel_s == Approx(expected).epsilon(1e-9));
    }
    if (u.name == "optimizer" || u.name.rfind("embed", 0) == 0) {
      CHECK(u.kernel_s == 0.0);
    }
  }
  // The profile prices a Llama layer's kernels from this GPT calibration.
  const model::CostModel cost(model::cpu_cluster(1), p, plan);
  const model::StepBlocks llama = model::make_step_blocks(test::toy_llama(), plan);
  for (const model::Op& op : llama.layer_fwd.ops) {
    if (op.name == "act") {
      CHECK(cost.op_time_s(op) == Approx(per_op(p.cpu_swiglu_fwd_s_per_element, static_cast<double>(op.m))));
    }
  }
}

} // namespace
} // namespace cuboid::exec

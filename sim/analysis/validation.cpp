// validate_runs: map each published run, simulate it with rank classes and compare with the measurement
// (see validation.hpp). Rows whose recompute setting is not stated use the least recompute that fits in memory.
#include "sim/analysis/validation.hpp"

#include "model/cost_model.hpp"
#include "model/cost_profile.hpp"
#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/step_builder.hpp"
#include "model/timeline.hpp"
#include "sim/simulator.hpp"

#include <fmt/format.h>

#include <cmath>

namespace cuboid::sim::analysis {

namespace {

constexpr double GIB = 1024.0 * 1024.0 * 1024.0;
// BLOOM's prequel "Mem" column is read from nvidia-smi (bigscience train/tr11-176B-ml/chronicles-prequel.md @ 9e64edec:
// "Checking the actual GPU allocations (nvidia-smi) - also need to take into account the cuda kernels", "max is
// 77GB"), which counts the CUDA context: "40GB A100 takes 1573MiB for cuda kernels (probably about the same for
// 80GB?)". cuboid's peak is the allocated bytes, so the context is added before comparing. The caching allocator's
// reserve (reserved - allocated, fragmentation) is also in nvidia-smi and is not modelled.
constexpr double NVIDIA_SMI_CUDA_CONTEXT_BYTES = 1573.0 * 1024.0 * 1024.0;
// A published run fitted in its GPU. Where it does not state its recompute, cuboid picks the least recompute whose
// predicted peak is within the memory model's accuracy of the HBM size: the memory target is 10 %, so a
// prediction up to 10 % over HBM does not show that the run needed more recompute (e.g. NeMo's FP8 GPT-3 175B on
// 512 GPUs: selective is predicted at 85 GB on 80 GB, full recompute would add a whole forward pass).
constexpr double RECOMPUTE_CHOICE_MEMORY_SLACK = 1.10;

std::string layout_text(const model::Plan& plan) {
  std::string text = fmt::format("tp{} pp{} dp{}", plan.tp, plan.pp, plan.dp);
  if (plan.cp > 1) { // --- context parallelism ---
    text += fmt::format(" cp{}", plan.cp);
  }
  if (plan.vp > 1) {
    text += fmt::format(" vp{}", plan.vp);
  }
  text += fmt::format(" mbs{} gbs{} {}", plan.micro_batch_size, plan.global_batch_size,
                      plan.precision == model::Precision::Fp8    ? "fp8"
                      : plan.precision == model::Precision::Fp16 ? "fp16"
                                                                 : "bf16");
  if (plan.recompute != model::Recompute::None) {
    text += plan.recompute == model::Recompute::Full ? " full-rc" : " sel-rc";
  }
  if (plan.sequence_parallel) {
    text += " sp";
  }
  return text;
}

CostShares shares_of(const SimResult& result) {
  const Breakdown& b = result.breakdown;
  const double total = result.step_time_s > 0.0 ? result.step_time_s : 1.0;
  CostShares shares;
  shares.compute = (b.compute_s + b.recompute_s + b.optimizer_s) / total;
  shares.exposed_comm = (b.tp_comm_exposed_s + b.cp_comm_exposed_s + b.pp_comm_exposed_s + b.dp_comm_exposed_s) / total;
  shares.bubble = b.bubble_s / total;
  shares.recompute = b.recompute_s / total;
  shares.optimizer = b.optimizer_s / total;
  shares.tp_comm = b.tp_comm_exposed_s / total;
  shares.pp_comm = b.pp_comm_exposed_s / total;
  shares.dp_comm = b.dp_comm_exposed_s / total;
  return shares;
}

std::string dominant_of(const CostShares& shares) {
  if (shares.compute >= shares.exposed_comm && shares.compute >= shares.bubble) {
    return "compute";
  }
  return shares.exposed_comm >= shares.bubble ? "exposed comm" : "bubble";
}

struct Prediction {
  SimResult result;
  model::Plan plan;
  std::vector<model::TimelineEvent> timeline; // empty unless recorded
};

/// record_timeline: also keep the predicted step's timeline (for --trace-dir).
Prediction simulate_plan(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                         const model::CostProfile& profile, const model::Plan& plan, const std::string& where,
                         bool record_timeline) {
  model::validate(plan, spec, cluster, where);
  const model::TaskGraph graph = model::build_step_graph(spec, cluster, plan, model::Instantiation::RankClasses);
  const model::CostModel cost(cluster, profile, plan);
  SimOptions options;
  options.record_timeline = record_timeline;
  Prediction prediction{simulate(graph, cost, options), plan, {}};
  if (record_timeline) {
    prediction.timeline = to_timeline(graph, prediction.result);
  }
  return prediction;
}

ValidationRow validate_row(const PublishedRun& run, const ValidateOptions& options, ValidationReport& report) {
  ValidationRow row;
  row.id = run.id;
  row.source = run.source_kind;
  const MappedRun mapped = map_run(run);
  row.assumptions = mapped.assumptions;
  row.measured_mem_gib = run.measured_peak_mem_gb;
  if (mapped.status != RunStatus::Ok) {
    row.status = mapped.status;
    row.reason = mapped.reason;
    return row;
  }
  row.layout = layout_text(mapped.plan);
  const auto measured = measured_step_time(run, mapped);
  if (!measured) {
    row.status = RunStatus::Skipped;
    row.reason = "no measured step time, tokens/s, TFLOP/s or MFU";
    return row;
  }
  row.measured_step_s = measured->step_time_s;
  row.basis = measured->basis;
  if (!options.include_fp8 && mapped.plan.precision == model::Precision::Fp8) {
    row.status = RunStatus::Skipped;
    row.reason = "FP8 rows excluded (--no-fp8)";
    return row;
  }
  try {
    model::ClusterSpec cluster = options.make_cluster ? options.make_cluster(mapped.gpu, mapped.num_gpus)
                                                      : model::make_cluster(mapped.gpu, mapped.num_gpus, 0, run.where);
    model::CostProfile profile =
        options.profile_path ? model::load_profile(*options.profile_path) : model::default_profile(mapped.gpu);
    // The GPU's profile and system as shipped, before this row's network overrides (so that the lines do not depend
    // on which row of a GPU comes first).
    if (!report.profile_assumptions.contains(mapped.gpu)) {
      auto& lines = report.profile_assumptions[mapped.gpu];
      for (auto& line : model::CostModel(cluster, profile, mapped.plan).assumptions()) {
        if (line.rfind("TP collectives", 0) != 0) { // plan-specific, not a property of the GPU profile
          lines.push_back(std::move(line));
        }
      }
    }
    if (mapped.nic_bw_bytes_per_s > 0.0) {
      cluster.nic_bw_bytes_per_s = mapped.nic_bw_bytes_per_s;
    }
    if (mapped.nic_bw_measured) {
      profile.nic_efficiency = 1.0; // a measured, achieved bandwidth (MappedRun::nic_bw_measured)
    }
    // A published run fitted in memory: when its recompute is not stated, take the least recompute that fits.
    std::vector<model::Recompute> choices = {mapped.plan.recompute};
    if (!mapped.recompute_stated) {
      choices = {model::Recompute::None, model::Recompute::Selective};
      if (mapped.full_recompute_allowed) {
        choices.push_back(model::Recompute::Full);
      }
    }
    std::optional<Prediction> prediction;
    for (const model::Recompute choice : choices) {
      model::Plan plan = mapped.plan;
      plan.recompute = choice;
      prediction = simulate_plan(mapped.model, cluster, profile, plan, run.where, !options.trace_dir.empty());
      const bool within_slack = !mapped.recompute_stated && prediction->result.peak_memory_bytes <=
                                                               RECOMPUTE_CHOICE_MEMORY_SLACK * cluster.gpu.hbm_bytes;
      if (prediction->result.fits || within_slack) {
        break;
      }
    }
    if (!mapped.recompute_stated) {
      row.assumptions.push_back(fmt::format("recompute not stated -> {} (least with predicted peak <= {:.0f} % of HBM)",
                                            model::to_string(prediction->plan.recompute),
                                            100.0 * RECOMPUTE_CHOICE_MEMORY_SLACK));
    }
    if (!options.trace_dir.empty()) { // the chosen plan's timeline
      model::write_chrome_trace(options.trace_dir + "/" + run.id + ".json",
                                {model::TraceSet{"predicted", std::move(prediction->timeline)}});
    }
    row.layout = layout_text(prediction->plan);
    const SimResult& result = prediction->result;
    if (!result.fits) {
      row.assumptions.push_back("predicted OOM: " + result.oom_reason);
    }
    row.predicted_step_s = result.step_time_s;
    row.error_pct = 100.0 * (row.predicted_step_s - row.measured_step_s) / row.measured_step_s;
    row.shares = shares_of(result);
    row.dominant = dominant_of(row.shares);
    row.predicted_mem_gib = result.peak_memory_bytes / GIB;
    if (run.measured_peak_mem_gb && run.source_kind == "bloom") {
      *row.predicted_mem_gib += NVIDIA_SMI_CUDA_CONTEXT_BYTES / GIB;
      row.assumptions.emplace_back("memory compared as nvidia-smi: predicted peak + 1573 MiB CUDA context "
                                   "(BigScience measurement); allocator reserve not modelled");
    }
  } catch (const InfeasibleError& error) {
    row.status = RunStatus::Infeasible;
    row.reason = error.what();
  } catch (const InputError& error) {
    row.status = RunStatus::Infeasible;
    row.reason = error.what();
  }
  return row;
}

} // namespace

ValidationReport validate_runs(const std::string& csv_path, const ValidateOptions& options) {
  ValidationReport report;
  report.csv_path = csv_path;
  for (const PublishedRun& run : read_published_runs(csv_path)) {
    if (!options.source_filter.empty() && run.source_kind.find(options.source_filter) == std::string::npos &&
        run.id.find(options.source_filter) == std::string::npos) {
      continue;
    }
    report.rows.push_back(validate_row(run, options, report));
  }
  summarise(report);
  return report;
}

} // namespace cuboid::sim::analysis

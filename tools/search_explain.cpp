// Plan-versus-best comparison for `cuboid search --explain` (see search_explain.hpp).
#include "tools/search_explain.hpp"

#include "model/errors.hpp"
#include "sim/analysis/result_json.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <sstream>

namespace cuboid::tools {

namespace {
constexpr double GB = 1e9;
constexpr const char* WHERE = "command line: --explain";

int parse_positive(const std::string& key, const std::string& text) {
  int value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size() || value <= 0) {
    throw InputError(input_message(WHERE, key, fmt::format("'{}' is not a positive integer", text)));
  }
  return value;
}

bool parse_switch(const std::string& key, const std::string& text) {
  if (text == "on" || text == "true" || text == "1") {
    return true;
  }
  if (text == "off" || text == "false" || text == "0") {
    return false;
  }
  throw InputError(input_message(WHERE, key, fmt::format("'{}' is not on or off", text)));
}

struct Explained {
  sim::analysis::PlanOutcome best;
  sim::analysis::PlanOutcome plan;
  std::size_t rank = 0; // 1-based position among simulated fitting plans; 0 when not ranked
};

Explained explain(const model::ModelSpec& spec, const model::ClusterSpec& cluster, const model::CostProfile& profile,
                  const sim::analysis::SearchResult& result, const std::string& text) {
  if (result.top.empty()) {
    throw InfeasibleError("no plan of the search fits: nothing to compare with");
  }
  Explained out;
  out.best = result.plans[result.top.front()];
  sim::analysis::PlanOutcome wanted = out.best;
  wanted.result.reset();
  std::stringstream stream(text);
  std::string item;
  const std::vector<std::string> keys = {"gpus", "tp", "pp", "dp", "vp", "mbs", "schedule", "recompute", "sp", "do",
                                         "precision", "zero"};
  bool dp_given = false;
  while (std::getline(stream, item, ',')) {
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) {
      throw InputError(input_message(WHERE, item, "expected key=value"));
    }
    const std::string key = item.substr(0, eq);
    const std::string value = item.substr(eq + 1);
    model::Plan& plan = wanted.plan;
    if (key == "gpus") {
      wanted.num_gpus = parse_positive(key, value);
    } else if (key == "tp") {
      plan.tp = parse_positive(key, value);
    } else if (key == "pp") {
      plan.pp = parse_positive(key, value);
    } else if (key == "dp") {
      plan.dp = parse_positive(key, value);
      dp_given = true;
    } else if (key == "vp") {
      plan.vp = parse_positive(key, value);
    } else if (key == "mbs") {
      plan.micro_batch_size = parse_positive(key, value);
    } else if (key == "schedule") {
      plan.schedule = model::parse_schedule(value, std::string(WHERE) + ": schedule");
    } else if (key == "recompute") {
      plan.recompute = model::parse_recompute(value, std::string(WHERE) + ": recompute");
    } else if (key == "sp") {
      plan.sequence_parallel = parse_switch(key, value);
    } else if (key == "do") {
      model::set_zero_stage(plan, parse_switch(key, value) ? 1 : 0, WHERE, "do"); // --- ZeRO / FSDP ---: do = zero 1
    } else if (key == "zero") { // --- ZeRO / FSDP ---
      if (value.size() != 1 || value[0] < '0' || value[0] > '3') {
        throw InputError(input_message(WHERE, key, fmt::format("'{}' is not a ZeRO stage (valid: 0, 1, 2, 3)", value)));
      }
      model::set_zero_stage(plan, value[0] - '0', WHERE, "zero");
    } else if (key == "precision") {
      plan.precision = model::parse_precision(value, std::string(WHERE) + ": precision");
    } else {
      throw InputError(input_message(WHERE, key, "unknown key" + valid_values_hint(key, keys)));
    }
  }
  if (!dp_given) {
    wanted.plan.dp = wanted.num_gpus / std::max(1, wanted.plan.tp * wanted.plan.pp);
  }
  if (wanted.plan.vp > 1 && wanted.plan.schedule != model::Schedule::Interleaved) {
    wanted.plan.schedule = model::Schedule::Interleaved;
  }
  const std::string key = sim::analysis::plan_key(wanted.plan, wanted.num_gpus);
  for (const auto& outcome : result.plans) {
    if (outcome.result && sim::analysis::plan_key(outcome.plan, outcome.num_gpus) == key) {
      out.plan = outcome;
    }
  }
  if (!out.plan.result) {
    out.plan = sim::analysis::evaluate_plan(spec, cluster, profile, wanted);
  }
  if (out.plan.status == sim::analysis::PlanStatus::Rejected) {
    throw InfeasibleError(fmt::format("plan {} is not valid: {}", key, out.plan.reason));
  }
  const double time = out.plan.result->step_time_s;
  std::size_t faster = 0;
  for (const auto& outcome : result.plans) {
    if (outcome.status == sim::analysis::PlanStatus::Simulated && outcome.result->step_time_s < time) {
      ++faster;
    }
  }
  out.rank = out.plan.status == sim::analysis::PlanStatus::Simulated ? faster + 1 : 0;
  return out;
}

std::array<std::pair<const char*, double>, 8> parts(const sim::SimResult& result) {
  const sim::Breakdown& b = result.breakdown;
  return {{{"compute", b.compute_s},
           {"recompute", b.recompute_s},
           {"tp comm (exposed)", b.tp_comm_exposed_s},
           {"cp comm (exposed)", b.cp_comm_exposed_s}, // --- context parallelism --- (0 without CP)
           {"pp comm (exposed)", b.pp_comm_exposed_s},
           {"dp comm (exposed)", b.dp_comm_exposed_s},
           {"pipeline bubble", b.bubble_s},
           {"optimizer", b.optimizer_s}}};
}
} // namespace

std::string explain_text(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                         const model::CostProfile& profile, const sim::analysis::SearchResult& result,
                         const std::string& text) {
  const Explained ex = explain(spec, cluster, profile, result, text);
  const sim::SimResult& best = *ex.best.result;
  const sim::SimResult& plan = *ex.plan.result;
  std::string out = "# explain: your plan vs the best plan of the search\n";
  out += fmt::format("#   yours  {}\n", sim::analysis::plan_key(ex.plan.plan, ex.plan.num_gpus));
  out += fmt::format("#   best   {}\n", sim::analysis::plan_key(ex.best.plan, ex.best.num_gpus));
  out += fmt::format("# {:<20} {:>12} {:>12} {:>12}\n", "cost", "yours (s)", "best (s)", "diff (s)");
  const auto plan_parts = parts(plan);
  const auto best_parts = parts(best);
  std::vector<std::pair<double, std::string>> diffs;
  for (std::size_t idx = 0; idx < plan_parts.size(); ++idx) {
    const double diff = plan_parts[idx].second - best_parts[idx].second;
    out += fmt::format("  {:<20} {:>12.4f} {:>12.4f} {:>+12.4f}\n", plan_parts[idx].first, plan_parts[idx].second,
                       best_parts[idx].second, diff);
    diffs.emplace_back(diff, plan_parts[idx].first);
  }
  out += fmt::format("  {:<20} {:>12.4f} {:>12.4f} {:>+12.4f}\n", "step time", plan.step_time_s, best.step_time_s,
                     plan.step_time_s - best.step_time_s);
  out += fmt::format("  {:<20} {:>12.2f} {:>12.2f} {:>+12.2f}   (GB; HBM {:.1f} GB)\n", "peak memory",
                     plan.peak_memory_bytes / GB, best.peak_memory_bytes / GB,
                     (plan.peak_memory_bytes - best.peak_memory_bytes) / GB, plan.hbm_bytes / GB);
  std::sort(diffs.begin(), diffs.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  if (!plan.fits) {
    out += fmt::format("verdict: your plan does not fit: {}\n", plan.oom_reason);
  } else if (ex.rank == 1) {
    out += "verdict: your plan is the best plan of the search\n";
  } else {
    out += fmt::format("verdict: your plan ranks {} and is {:.1f}% slower; it loses most on {} ({:+.4f} s)", ex.rank,
                       100.0 * (plan.step_time_s / best.step_time_s - 1.0), diffs.front().second,
                       diffs.front().first);
    if (diffs.back().first < 0.0) {
      out += fmt::format(" and gains most on {} ({:+.4f} s)", diffs.back().second, diffs.back().first);
    }
    out += "\n";
  }
  return out;
}

nlohmann::json explain_json(const model::ModelSpec& spec, const model::ClusterSpec& cluster,
                            const model::CostProfile& profile, const sim::analysis::SearchResult& result,
                            const std::string& text) {
  const Explained ex = explain(spec, cluster, profile, result, text);
  nlohmann::json out;
  out["plan"] = sim::analysis::plan_to_json(ex.plan.plan);
  out["plan"]["num_gpus"] = ex.plan.num_gpus;
  out["result"] = sim::analysis::result_to_json(*ex.plan.result);
  out["best_plan"] = sim::analysis::plan_to_json(ex.best.plan);
  out["best_result"] = sim::analysis::result_to_json(*ex.best.result);
  out["rank"] = ex.rank;
  return out;
}

} // namespace cuboid::tools

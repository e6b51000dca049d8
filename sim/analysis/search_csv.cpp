// Search outcomes <-> CSV rows (see search_csv.hpp). Result columns are empty for plans that were not simulated.
#include "sim/analysis/search_csv.hpp"

#include "model/errors.hpp"
#include "sim/analysis/csv.hpp"
#include "sim/analysis/result_json.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>

namespace cuboid::sim::analysis {

namespace {
// Positions of the plan keys inside csv_header() (after our leading num_gpus column).
constexpr std::size_t PLAN_COLUMNS = 12;

double parse_double(const std::string& text, const std::string& where, const std::string& column) {
  double value = 0.0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size() || !std::isfinite(value)) {
    throw InputError(input_message(where, column, fmt::format("'{}' is not a finite number", text)));
  }
  return value;
}

std::int64_t parse_int(const std::string& text, const std::string& where, const std::string& column) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc{} || end != text.data() + text.size()) {
    throw InputError(input_message(where, column, fmt::format("'{}' is not an integer", text)));
  }
  return value;
}

bool parse_bool(const std::string& text, const std::string& where, const std::string& column) {
  if (text == "true") {
    return true;
  }
  if (text == "false") {
    return false;
  }
  throw InputError(input_message(where, column, fmt::format("'{}' is not true or false", text)));
}

PlanStatus parse_status(const std::string& text, const std::string& where) {
  for (const PlanStatus status :
       {PlanStatus::Simulated, PlanStatus::Rejected, PlanStatus::OutOfMemory, PlanStatus::Pruned}) {
    if (to_string(status) == text) {
      return status;
    }
  }
  throw InputError(input_message(where, "status", fmt::format("unknown status '{}'", text) +
                                                       valid_values_hint(text, {"ok", "rejected", "oom", "pruned"})));
}
} // namespace

std::vector<std::string> search_csv_header() {
  std::vector<std::string> header{"num_gpus"};
  for (const auto& column : csv_header()) {
    header.push_back(column);
  }
  header.emplace_back("lower_bound_s");
  header.emplace_back("memory_estimate_bytes");
  header.emplace_back("status");
  header.emplace_back("reason");
  return header;
}

std::vector<std::string> outcome_to_csv(const PlanOutcome& outcome) {
  std::vector<std::string> row{std::to_string(outcome.num_gpus)};
  const std::vector<std::string> full = csv_row(outcome.plan, outcome.result.value_or(SimResult{}));
  for (std::size_t idx = 0; idx < full.size(); ++idx) {
    row.push_back(idx < PLAN_COLUMNS || outcome.result ? full[idx] : std::string{});
  }
  row.push_back(fmt::format("{}", outcome.lower_bound_s));
  row.push_back(fmt::format("{}", outcome.memory_estimate_bytes));
  row.push_back(to_string(outcome.status));
  row.push_back(outcome.reason);
  return row;
}

PlanOutcome outcome_from_csv(const std::vector<std::string>& fields, const std::string& where) {
  const std::vector<std::string> header = search_csv_header();
  if (fields.size() != header.size()) {
    throw InputError(input_message(where, "", fmt::format("{} columns, expected {}", fields.size(), header.size())));
  }
  const auto column = [&](const char* name) -> const std::string& {
    for (std::size_t idx = 0; idx < header.size(); ++idx) {
      if (header[idx] == name) {
        return fields[idx];
      }
    }
    CUBOID_ASSERT(false, "unknown search CSV column {}", name);
    return fields[0];
  };
  const auto number = [&](const char* name) { return parse_double(column(name), where, name); };
  const auto integer = [&](const char* name) { return parse_int(column(name), where, name); };
  PlanOutcome outcome;
  outcome.num_gpus = static_cast<int>(integer("num_gpus"));
  model::Plan& plan = outcome.plan;
  plan.tp = static_cast<int>(integer("tp"));
  plan.pp = static_cast<int>(integer("pp"));
  plan.dp = static_cast<int>(integer("dp"));
  plan.vp = static_cast<int>(integer("vp"));
  plan.micro_batch_size = integer("micro_batch_size");
  plan.global_batch_size = integer("global_batch_size");
  plan.schedule = model::parse_schedule(column("schedule"), where + ": schedule");
  plan.recompute = model::parse_recompute(column("recompute"), where + ": recompute");
  plan.sequence_parallel = parse_bool(column("sequence_parallel"), where, "sequence_parallel");
  plan.distributed_optimizer = parse_bool(column("distributed_optimizer"), where, "distributed_optimizer");
  plan.precision = model::parse_precision(column("precision"), where + ": precision");
  // --- ZeRO / FSDP ---
  const std::int64_t zero = integer("zero_stage");
  if (zero < 0 || zero > model::MAX_ZERO_STAGE || (zero >= 1) != plan.distributed_optimizer) {
    throw InputError(input_message(where, "zero_stage",
                                   fmt::format("{} is not valid with distributed_optimizer = {} (expected 0 with "
                                               "false, 1..3 with true)",
                                               zero, plan.distributed_optimizer ? "true" : "false")));
  }
  model::set_zero_stage(plan, static_cast<int>(zero), where, "zero_stage");
  outcome.lower_bound_s = number("lower_bound_s");
  outcome.memory_estimate_bytes = number("memory_estimate_bytes");
  outcome.status = parse_status(column("status"), where);
  outcome.reason = column("reason");
  if (!column("step_time_s").empty()) {
    SimResult result;
    result.step_time_s = number("step_time_s");
    result.tokens_per_s = number("tokens_per_s");
    result.tokens_per_s_per_gpu = number("tokens_per_s_per_gpu");
    result.model_tflops_per_gpu = number("tflops_per_gpu");
    result.hw_tflops_per_gpu = number("hw_tflops_per_gpu");
    result.mfu = number("mfu");
    result.bubble_fraction = number("bubble_fraction");
    result.peak_memory_bytes = number("peak_memory_bytes");
    result.hbm_bytes = number("hbm_bytes");
    result.fits = parse_bool(column("fits"), where, "fits");
    result.breakdown.compute_s = number("breakdown.compute_s");
    result.breakdown.recompute_s = number("breakdown.recompute_s");
    result.breakdown.tp_comm_exposed_s = number("breakdown.tp_comm_exposed_s");
    result.breakdown.pp_comm_exposed_s = number("breakdown.pp_comm_exposed_s");
    result.breakdown.dp_comm_exposed_s = number("breakdown.dp_comm_exposed_s");
    result.breakdown.bubble_s = number("breakdown.bubble_s");
    result.breakdown.optimizer_s = number("breakdown.optimizer_s");
    outcome.result = result;
  }
  return outcome;
}

std::vector<PlanOutcome> read_search_csv(std::istream& in, const std::string& where) {
  std::vector<std::string> fields;
  int line_no = 0;
  std::vector<PlanOutcome> out;
  if (!csv_read_record(in, fields, where, line_no)) {
    return out;
  }
  if (fields != search_csv_header()) {
    throw InputError(input_message(where, "line 1", "not a cuboid search CSV (header differs)"));
  }
  while (true) {
    try {
      if (!csv_read_record(in, fields, where, line_no)) {
        break;
      }
    } catch (const InputError&) {
      break; // a row cut short by an interrupted write: everything before it is kept
    }
    if (fields.size() != search_csv_header().size()) {
      continue; // partial last line
    }
    out.push_back(outcome_from_csv(fields, fmt::format("{}:{}", where, line_no)));
  }
  return out;
}

} // namespace cuboid::sim::analysis

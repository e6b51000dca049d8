// Number formatting shared by the report's text, Markdown and HTML views (report.hpp), so each number reads the same
// everywhere: "$4.12M", "12.3", "1.23M", "78.4 GB".
#pragma once

#include "sim/analysis/report.hpp"

#include <string>

namespace cuboid::sim::analysis::report_format {

constexpr double SECONDS_PER_DAY = 86400.0;
constexpr double GB = 1e9;

/// "$812", "$45.3k", "$4.12M", "$1.05B".
std::string usd(double value);
/// Signed: "+$45.3k", "-$1.2k".
std::string usd_delta(double value);
/// A GPU-hour price: "$6.88".
std::string price(double usd_per_gpu_hour);
/// kWh as MWh with 3 significant digits ("0.12", "12.3", "1234").
std::string megawatt_hours(double kwh);
/// Decimals needed to tell ticks `step` apart (0.25 -> 2, 0.2 -> 1, 5 -> 0).
int decimals_for_step(double step);
/// SI-suffixed count: "950", "12.3k", "4.56M", "300B", "1.2T" (3 significant digits).
std::string count(double value);
/// Days with one decimal below 100, none above.
std::string days(double seconds);
/// "78.4 GB" (decimal GB, as vendors quote HBM).
std::string gigabytes(double bytes);
/// "42.1%".
std::string percent(double fraction);
/// "TP8 PP16 DP8 VP2 mbs1" (the plan columns that change most; plan_label() has them all).
std::string plan_short(const model::Plan& plan);
/// "2048 x h100-sxm".
std::string option_name(const ReportOption& option);
/// "Recommendation: 2048 x h100-sxm, plan TP8 ..., 12.3 days, $4.12M (failures included)" or why there is none.
std::string recommendation_line(const Report& report);
/// "300B tokens" or "30 days".
std::string goal_text(const ReportInputs& inputs);

} // namespace cuboid::sim::analysis::report_format

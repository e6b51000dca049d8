// CSV form of search outcomes: one row per plan (plan keys, result keys, status, reason), used for --csv, for
// --resume (rows read back reproduce the same outcome) and to ship outcomes between MPI ranks.
#pragma once

#include "sim/analysis/search.hpp"

#include <istream>
#include <string>
#include <vector>

namespace cuboid::sim::analysis {

/// Header: "num_gpus", the plan keys, the result keys (csv_header()), "status", "reason".
std::vector<std::string> search_csv_header();
std::vector<std::string> outcome_to_csv(const PlanOutcome& outcome);
/// Inverse of outcome_to_csv. Throws InputError naming `where` (file:line) and the column on malformed values.
PlanOutcome outcome_from_csv(const std::vector<std::string>& fields, const std::string& where);


/// Reads every outcome of a search CSV (header checked); rows that are cut short (an interrupted write) are ignored.
std::vector<PlanOutcome> read_search_csv(std::istream& in, const std::string& where);

} // namespace cuboid::sim::analysis

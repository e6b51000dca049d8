// `cuboid search --explain tp=8,pp=16,mbs=1,...`: why a plan won or lost against the best plan of the search,
// cost by cost (compute, recompute, exposed TP/PP/DP communication, bubble, optimizer) and in memory.
#pragma once

#include "sim/analysis/search.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace cuboid::tools {

/// Keys: gpus, tp, pp, dp, vp, mbs, schedule, recompute, sp, do, precision; unspecified keys come from the best
/// plan. Throws InputError for unknown keys or bad values.
std::string explain_text(const model::ModelSpec& model, const model::ClusterSpec& cluster,
                         const model::CostProfile& profile, const sim::analysis::SearchResult& result,
                         const std::string& spec);
nlohmann::json explain_json(const model::ModelSpec& model, const model::ClusterSpec& cluster,
                            const model::CostProfile& profile, const sim::analysis::SearchResult& result,
                            const std::string& spec);

} // namespace cuboid::tools

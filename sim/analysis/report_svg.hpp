// Inline SVG charts of the HTML report (report_html.cpp): scaling curves, the recommended plan's step timeline, its
// memory per pipeline stage and the sensitivity tornado. Plain SVG 1.1 styled by the page's CSS classes; every text
// that comes from input is HTML-escaped.
#pragma once

#include "sim/analysis/report.hpp"

#include <string>

namespace cuboid::sim::analysis::report_svg {

/// Throughput and cost (tokens goal) or $/M tokens (days goal) against GPU count (log axis), one line per GPU type.
std::string scaling_chart(const Report& report);
/// One step of the recommended plan: per pipeline stage a compute lane (forward, backward, optimizer) and a
/// communication lane (PP send/recv, DP gradient reduction). Empty string when there is no timeline.
std::string timeline_chart(const Report& report);
/// Stacked bars of memory by tag at each stage's peak, with the HBM capacity line.
std::string memory_chart(const Report& report);
/// Tornado of time (or tokens) and cost when each uncertain input moves -/+ the sensitivity fraction.
std::string tornado_chart(const Report& report);

} // namespace cuboid::sim::analysis::report_svg

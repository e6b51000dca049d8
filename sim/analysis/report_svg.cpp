// SVG charts of the HTML report (report_svg.hpp). Hand-written SVG: fixed viewBox, page CSS for fonts and colours of
// text and axes, series colours inline. Layout constants are in viewBox pixels; text widths are estimated at
// GLYPH_WIDTH per character of the 12 px system font so labels do not overlap.
#include "sim/analysis/report_svg.hpp"

#include "sim/analysis/report_format.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <map>
#include <set>

namespace cuboid::sim::analysis::report_svg {

namespace {
namespace rf = report_format;

constexpr double WIDTH = 960.0;
constexpr double GLYPH_WIDTH = 6.8;      // average advance of the 12 px sans-serif at the page's font
constexpr double LEGEND_Y = 18.0;
constexpr double LEGEND_SWATCH = 12.0;
constexpr std::array<const char*, 8> SERIES_COLOURS = {"#4e79a7", "#f28e2b", "#59a14f", "#e15759",
                                                       "#76b7b2", "#edc948", "#b07aa1", "#9c755f"};

struct Category {
  const char* key;
  const char* label;
  const char* colour;
};
// Timeline categories in legend order (report.cpp lane_category()).
constexpr std::array<Category, 6> TIMELINE_CATEGORIES = {{{"forward", "forward", "#4e79a7"},
                                                          {"backward", "backward", "#59a14f"},
                                                          {"optimizer", "optimizer step", "#b07aa1"},
                                                          {"pp-comm", "PP send/recv", "#f28e2b"},
                                                          {"dp-comm", "DP gradient reduction", "#e15759"},
                                                          {"tp-comm", "TP collective", "#edc948"}}};
// Memory tags in model::MemTag order.
constexpr std::array<Category, model::NUM_MEM_TAGS> MEMORY_TAGS = {{{"weights", "weights", "#4e79a7"},
                                                                    {"grads", "gradients", "#76b7b2"},
                                                                    {"optimizer", "optimizer state", "#b07aa1"},
                                                                    {"activations", "activations", "#f28e2b"},
                                                                    {"workspace", "workspace", "#edc948"},
                                                                    {"comm_buffers", "comm buffers", "#9c755f"}}};
constexpr const char* LOW_COLOUR = "#4e79a7";
constexpr const char* HIGH_COLOUR = "#f28e2b";

double text_width(std::string_view text) { return static_cast<double>(text.size()) * GLYPH_WIDTH; }

std::string svg_open(const char* id, double height, const std::string& title) {
  return fmt::format("<svg id=\"{0}\" class=\"chart\" viewBox=\"0 0 {1:g} {2:g}\" role=\"img\" "
                     "aria-labelledby=\"{0}-title\" xmlns=\"http://www.w3.org/2000/svg\">\n"
                     "<title id=\"{0}-title\">{3}</title>\n",
                     id, WIDTH, height, html_escape(title));
}

std::string text(double x, double y, std::string_view content, const char* css_class, const char* anchor = "start") {
  return fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"{}\" text-anchor=\"{}\">{}</text>\n", x, y, css_class,
                     anchor, html_escape(content));
}

std::string line(double x1, double y1, double x2, double y2, const char* css_class) {
  return fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" class=\"{}\"/>\n", x1, y1, x2, y2,
                     css_class);
}

std::string rect(double x, double y, double w, double h, const char* fill, const char* css_class = "bar") {
  return fmt::format("<rect x=\"{:.2f}\" y=\"{:.1f}\" width=\"{:.2f}\" height=\"{:.1f}\" fill=\"{}\" class=\"{}\"/>\n",
                     x, y, std::max(w, 0.0), h, fill, css_class);
}

// Legend entries left to right from (x, LEGEND_Y); returns the SVG.
std::string legend(double x, const std::vector<std::pair<std::string, std::string>>& entries, bool lines = false) {
  std::string out = "<g class=\"legend\">\n";
  for (const auto& [label, colour] : entries) {
    if (lines) {
      out += fmt::format("<line x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" "
                         "stroke-width=\"2.5\"/><circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\"/>\n",
                         x, LEGEND_Y - 4.0, x + 2.0 * LEGEND_SWATCH, LEGEND_Y - 4.0, colour, x + LEGEND_SWATCH,
                         LEGEND_Y - 4.0, colour);
      x += 2.0 * LEGEND_SWATCH + 6.0;
    } else {
      out += rect(x, LEGEND_Y - LEGEND_SWATCH + 1.0, LEGEND_SWATCH, LEGEND_SWATCH, colour.c_str(), "swatch");
      x += LEGEND_SWATCH + 5.0;
    }
    out += text(x, LEGEND_Y, label, "legend-text");
    x += text_width(label) + 18.0;
  }
  return out + "</g>\n";
}

// "Nice" linear ticks from 0: step 1, 2, 2.5 or 5 x 10^k, about `target` intervals, top >= max_value.
struct Ticks {
  double top = 1.0;
  double step = 1.0;
};
Ticks nice_ticks(double max_value, int target = 5) {
  if (!(max_value > 0.0) || !std::isfinite(max_value)) {
    return {};
  }
  const double raw = max_value / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  const double step = (norm <= 1.0 ? 1.0 : norm <= 2.0 ? 2.0 : norm <= 2.5 ? 2.5 : norm <= 5.0 ? 5.0 : 10.0) *
                      magnitude;
  return {std::ceil(max_value / step - 1e-9) * step, step};
}

// Ticks over [lo, hi] (not necessarily from 0), and their step.
std::pair<std::vector<double>, double> range_ticks(double lo, double hi, int target) {
  const Ticks ticks = nice_ticks(hi - lo, target);
  std::vector<double> out;
  for (double value = std::ceil(lo / ticks.step) * ticks.step; value <= hi + 1e-9 * ticks.step; value += ticks.step) {
    out.push_back(value);
  }
  return {out, ticks.step};
}

using Formatter = std::function<std::string(double)>;

// Y axis from 0 with grid lines and tick labels, x range [left, right], y range [bottom, top] in pixels.
std::string y_axis(double left, double right, double top, double bottom, const Ticks& ticks, const Formatter& format) {
  std::string out;
  for (double value = 0.0; value <= ticks.top + 1e-9 * ticks.step; value += ticks.step) {
    const double y = bottom - value / ticks.top * (bottom - top);
    out += line(left, y, right, y, value == 0.0 ? "axis" : "grid");
    out += text(left - 6.0, y + 4.0, format(value), "tick", "end");
  }
  return out;
}

std::string y_label(double x, double y_mid, std::string_view label) {
  return fmt::format("<text x=\"{0:.1f}\" y=\"{1:.1f}\" class=\"axis-label\" text-anchor=\"middle\" "
                     "transform=\"rotate(-90 {0:.1f} {1:.1f})\">{2}</text>\n",
                     x, y_mid, html_escape(label));
}

std::string gpu_colour(const Report& report, const std::string& gpu) {
  for (std::size_t idx = 0; idx < report.inputs.gpus.size(); ++idx) {
    if (report.inputs.gpus[idx].cluster.gpu.name == gpu) {
      return SERIES_COLOURS[idx % SERIES_COLOURS.size()];
    }
  }
  return SERIES_COLOURS.back();
}

// One scaling panel: value(option) against GPU count on a log2 axis.
std::string scaling_panel(const Report& report, double x0, double panel_width, double top, double bottom,
                          const std::string& title, const std::function<double(const ReportOption&)>& value,
                          const Formatter& format) {
  constexpr double LEFT_PAD = 70.0;
  constexpr double RIGHT_PAD = 16.0;
  const double left = x0 + LEFT_PAD;
  const double right = x0 + panel_width - RIGHT_PAD;
  std::set<int> counts(report.inputs.num_gpus.begin(), report.inputs.num_gpus.end());
  const double lo = std::log2(static_cast<double>(*counts.begin()));
  const double hi = std::log2(static_cast<double>(*counts.rbegin()));
  const double pad = hi > lo ? 0.08 * (hi - lo) : 1.0;
  const auto x_of = [&](int count) {
    return left + (std::log2(static_cast<double>(count)) - lo + pad) / (hi - lo + 2.0 * pad) * (right - left);
  };
  double max_value = 0.0;
  for (const auto& option : report.options) {
    if (option.feasible) {
      max_value = std::max(max_value, value(option));
    }
  }
  const Ticks ticks = nice_ticks(max_value);
  const auto y_of = [&](double v) { return bottom - v / ticks.top * (bottom - top); };
  std::string out = fmt::format("<g class=\"panel\">\n");
  out += text(left, top - 12.0, title, "panel-title");
  out += y_axis(left, right, top, bottom, ticks, format);
  for (const int count : counts) {
    const double x = x_of(count);
    out += line(x, bottom, x, bottom + 5.0, "axis");
    out += text(x, bottom + 18.0, fmt::format("{}", count), "tick", "middle");
  }
  out += text((left + right) / 2.0, bottom + 38.0, "GPUs (log scale)", "axis-label", "middle");
  for (const auto& gpu : report.inputs.gpus) {
    const std::string colour = gpu_colour(report, gpu.cluster.gpu.name);
    std::string points;
    std::string markers;
    for (std::size_t idx = 0; idx < report.options.size(); ++idx) {
      const ReportOption& option = report.options[idx];
      if (option.gpu != gpu.cluster.gpu.name || !option.feasible) {
        continue;
      }
      const double x = x_of(option.num_gpus);
      const double y = y_of(value(option));
      points += fmt::format("{:.1f},{:.1f} ", x, y);
      markers += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\" class=\"point\"><title>{}: "
                             "{}</title></circle>\n",
                             x, y, colour, html_escape(rf::option_name(option)), html_escape(format(value(option))));
      if (report.recommended && *report.recommended == idx) {
        markers += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"9\" class=\"recommended-ring\"/>\n", x, y);
      }
    }
    out += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2.5\" class=\"series\"/>\n",
                       points, colour);
    out += markers;
  }
  return out + "</g>\n";
}

double option_metric(const Report& report, const Projection& p, bool first) {
  if (report.inputs.goal == ReportGoal::Tokens) {
    return first ? p.time_s / rf::SECONDS_PER_DAY : p.cost_usd;
  }
  return first ? p.tokens : p.cost_usd / p.tokens * 1e6;
}
} // namespace

std::string scaling_chart(const Report& report) {
  constexpr double HEIGHT = 380.0;
  constexpr double TOP = 70.0;
  constexpr double BOTTOM = 320.0;
  const bool by_tokens = report.inputs.goal == ReportGoal::Tokens;
  std::string out = svg_open("chart-scaling", HEIGHT, "Throughput and cost against GPU count, per GPU type");
  std::vector<std::pair<std::string, std::string>> entries;
  for (const auto& gpu : report.inputs.gpus) {
    entries.emplace_back(gpu.cluster.gpu.name, gpu_colour(report, gpu.cluster.gpu.name));
  }
  out += legend(70.0, entries, true);
  if (report.recommended) {
    const double x = WIDTH - 150.0;
    out += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"7\" class=\"recommended-ring\"/>\n", x, LEGEND_Y - 4.0);
    out += text(x + 14.0, LEGEND_Y, "recommended", "legend-text");
  }
  const double half = WIDTH / 2.0;
  out += scaling_panel(
      report, 0.0, half, TOP, BOTTOM, "Throughput (tokens/s)",
      [](const ReportOption& option) { return option.result.tokens_per_s; }, [](double v) { return rf::count(v); });
  if (by_tokens) {
    out += scaling_panel(
        report, half, half, TOP, BOTTOM, "Cost to train, failures included (USD)",
        [](const ReportOption& option) { return option.with_failures.cost_usd; }, [](double v) { return rf::usd(v); });
  } else {
    out += scaling_panel(
        report, half, half, TOP, BOTTOM, "Cost per million tokens, failures included (USD)",
        [](const ReportOption& option) { return option.usd_per_million_tokens; },
        [](double v) { return fmt::format("${:.2f}", v); });
  }
  return out + "</svg>\n";
}

std::string timeline_chart(const Report& report) {
  if (report.timeline.empty() || report.timeline_step_s <= 0.0) {
    return "";
  }
  constexpr double LEFT = 80.0;
  constexpr double RIGHT = WIDTH - 20.0;
  constexpr double TOP = 40.0;
  constexpr double COMPUTE_H = 18.0;
  constexpr double COMM_H = 7.0;
  constexpr double LANE_GAP = 2.0;
  constexpr double ROW_H = COMPUTE_H + LANE_GAP + COMM_H + 9.0;
  int num_stages = 0;
  std::set<std::string> present;
  for (const auto& block : report.timeline) {
    num_stages = std::max(num_stages, block.stage + 1);
    present.insert(block.category);
  }
  const double bottom = TOP + ROW_H * num_stages;
  const double height = bottom + 50.0;
  std::string out = svg_open("chart-timeline", height, "One training step of the recommended plan, per pipeline stage");
  std::vector<std::pair<std::string, std::string>> entries;
  for (const Category& category : TIMELINE_CATEGORIES) {
    if (present.count(category.key) != 0) {
      entries.emplace_back(category.label, category.colour);
    }
  }
  out += legend(LEFT, entries);
  const double step = report.timeline_step_s;
  const auto x_of = [&](double t) { return LEFT + t / step * (RIGHT - LEFT); };
  for (int stage = 0; stage < num_stages; ++stage) {
    const double y = TOP + ROW_H * stage;
    out += rect(LEFT, y - 2.0, RIGHT - LEFT, COMPUTE_H + LANE_GAP + COMM_H + 4.0, "#f4f5f7", "row-band");
    out += text(LEFT - 8.0, y + COMPUTE_H - 4.0, fmt::format("stage {}", stage), "tick", "end");
  }
  const Ticks ticks = nice_ticks(step, 8);
  for (double t = 0.0; t <= step + 1e-9 * ticks.step; t += ticks.step) {
    const double x = x_of(t);
    out += line(x, TOP - 4.0, x, bottom, "grid");
    out += text(x, bottom + 16.0, fmt::format("{:.{}f}", t, rf::decimals_for_step(ticks.step)), "tick", "middle");
  }
  out += line(LEFT, bottom, RIGHT, bottom, "axis");
  out += text((LEFT + RIGHT) / 2.0, bottom + 38.0,
              fmt::format("time within one training step (s); step = {:.3f} s", step), "axis-label", "middle");
  std::map<std::string, const char*> colours;
  for (const Category& category : TIMELINE_CATEGORIES) {
    colours[category.key] = category.colour;
  }
  out += "<g class=\"timeline-blocks\">\n";
  for (const auto& block : report.timeline) {
    const double y = TOP + ROW_H * block.stage + (block.lane == TimelineLane::Compute ? 0.0 : COMPUTE_H + LANE_GAP);
    const double h = block.lane == TimelineLane::Compute ? COMPUTE_H : COMM_H;
    const auto colour = colours.find(block.category);
    const double x = x_of(block.start_s);
    // At least a third of a pixel so short transfers stay visible.
    out += rect(x, y, std::max(x_of(block.end_s) - x, 0.35),
                h, colour == colours.end() ? "#999999" : colour->second, "block");
  }
  return out + "</g>\n</svg>\n";
}

std::string memory_chart(const Report& report) {
  if (report.memory.empty()) {
    return "";
  }
  constexpr double HEIGHT = 380.0;
  constexpr double LEFT = 70.0;
  constexpr double RIGHT = WIDTH - 130.0;
  constexpr double TOP = 50.0;
  constexpr double BOTTOM = 320.0;
  std::string out = svg_open("chart-memory", HEIGHT, "Peak memory per pipeline stage of the recommended plan, by kind");
  std::vector<std::pair<std::string, std::string>> entries;
  for (const Category& tag : MEMORY_TAGS) {
    entries.emplace_back(tag.label, tag.colour);
  }
  out += legend(LEFT, entries);
  double max_bytes = report.hbm_bytes;
  for (const auto& stage : report.memory) {
    max_bytes = std::max(max_bytes, stage.peak_bytes);
  }
  const Ticks ticks = nice_ticks(max_bytes / rf::GB * 1.05);
  const auto y_of = [&](double gb) { return BOTTOM - gb / ticks.top * (BOTTOM - TOP); };
  out += y_axis(LEFT, RIGHT, TOP, BOTTOM, ticks, [](double v) { return fmt::format("{:g}", v); });
  out += y_label(22.0, (TOP + BOTTOM) / 2.0, "memory at the stage's peak (GB)");
  const double band = (RIGHT - LEFT) / static_cast<double>(report.memory.size());
  const double bar = std::min(56.0, band * 0.7);
  const std::size_t label_every = std::max<std::size_t>(1, report.memory.size() / 24);
  out += "<g class=\"memory-bars\">\n";
  for (std::size_t idx = 0; idx < report.memory.size(); ++idx) {
    const StageMemory& stage = report.memory[idx];
    const double x = LEFT + band * (static_cast<double>(idx) + 0.5) - bar / 2.0;
    double stacked = 0.0;
    for (std::size_t tag = 0; tag < MEMORY_TAGS.size(); ++tag) {
      const double gb = stage.at_peak[tag] / rf::GB;
      if (gb <= 0.0) {
        continue;
      }
      out += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\" "
                         "class=\"bar\"><title>stage {}: {} {:.1f} GB</title></rect>\n",
                         x, y_of(stacked + gb), bar, y_of(stacked) - y_of(stacked + gb), MEMORY_TAGS[tag].colour,
                         stage.stage, MEMORY_TAGS[tag].label, gb);
      stacked += gb;
    }
    if (idx % label_every == 0) {
      out += text(x + bar / 2.0, BOTTOM + 18.0, fmt::format("{}", stage.stage), "tick", "middle");
    }
  }
  out += "</g>\n";
  out += text((LEFT + RIGHT) / 2.0, BOTTOM + 40.0, "pipeline stage", "axis-label", "middle");
  if (report.hbm_bytes > 0.0) {
    const double y = y_of(report.hbm_bytes / rf::GB);
    out += line(LEFT, y, RIGHT, y, "hbm-line");
    out += text(RIGHT + 6.0, y + 4.0, fmt::format("HBM {}", rf::gigabytes(report.hbm_bytes)), "hbm-label");
  }
  return out + "</svg>\n";
}

std::string tornado_chart(const Report& report) {
  if (report.sensitivity.empty() || !report.recommended) {
    return "";
  }
  const bool by_tokens = report.inputs.goal == ReportGoal::Tokens;
  const ReportOption& base_option = report.options[*report.recommended];
  constexpr double LABEL_W = 200.0;
  constexpr double PANEL_GAP = 30.0;
  constexpr double TOP = 66.0;
  constexpr double ROW_H = 44.0;
  constexpr double BAR_H = 13.0;
  constexpr double VALUE_ROOM = 64.0; // room for the value label beyond each bar end
  const double bottom = TOP + ROW_H * static_cast<double>(report.sensitivity.size());
  const double height = bottom + 44.0;
  std::string out = svg_open("chart-tornado", height,
                             "Sensitivity of the recommended option to the least certain inputs");
  const int percent = static_cast<int>(std::lround(100.0 * report.inputs.sensitivity_fraction));
  out += legend(LABEL_W, {{fmt::format("input -{}%", percent), LOW_COLOUR},
                          {fmt::format("input +{}%", percent), HIGH_COLOUR}});
  // Rows sorted by the swing of the second metric (cost), largest first: the classic tornado shape.
  std::vector<const SensitivityRow*> rows;
  for (const auto& row : report.sensitivity) {
    rows.push_back(&row);
  }
  std::stable_sort(rows.begin(), rows.end(), [&](const SensitivityRow* a, const SensitivityRow* b) {
    return std::fabs(option_metric(report, a->high, false) - option_metric(report, a->low, false)) >
           std::fabs(option_metric(report, b->high, false) - option_metric(report, b->low, false));
  });
  for (std::size_t idx = 0; idx < rows.size(); ++idx) {
    const double y = TOP + ROW_H * static_cast<double>(idx);
    const SensitivityRow& row = *rows[idx];
    out += text(LABEL_W - 10.0, y + 15.0, row.input, "row-label", "end");
    const std::string unit = row.unit.empty() ? "" : " " + row.unit;
    out += text(LABEL_W - 10.0, y + 30.0, fmt::format("{:.3g} / {:.3g}{}", row.low_value, row.high_value, unit),
                "row-sub", "end");
  }
  const double panel_w = (WIDTH - LABEL_W - PANEL_GAP - 10.0) / 2.0;
  for (int panel = 0; panel < 2; ++panel) {
    const bool first = panel == 0;
    const double x0 = LABEL_W + (panel_w + PANEL_GAP) * panel;
    const double base = option_metric(report, base_option.with_failures, first);
    double lo = base;
    double hi = base;
    for (const SensitivityRow* row : rows) {
      for (const double v : {option_metric(report, row->low, first), option_metric(report, row->high, first)}) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
    }
    const double span = std::max(hi - lo, std::fabs(base) * 0.02);
    lo = std::min(lo, base - span * 0.05);
    hi = std::max(hi, base + span * 0.05);
    const double left = x0 + VALUE_ROOM;
    const double right = x0 + panel_w - VALUE_ROOM;
    const auto x_of = [&](double v) { return left + (v - lo) / (hi - lo) * (right - left); };
    const auto [ticks, tick_step] = range_ticks(lo, hi, 4);
    const int decimals = rf::decimals_for_step(tick_step);
    const Formatter format =
        by_tokens ? (first ? Formatter([decimals](double v) { return fmt::format("{:.{}f} d", v, decimals); })
                           : Formatter([](double v) { return rf::usd(v); }))
                  : (first ? Formatter([](double v) { return rf::count(v); })
                           : Formatter([decimals](double v) { return fmt::format("${:.{}f}", v, std::max(decimals, 2)); }));
    const std::string title = by_tokens ? (first ? "Time to train (days, failures included)" : "Cost (USD)")
                                        : (first ? "Tokens trained" : "Cost per million tokens (USD)");
    out += text((x0 + x0 + panel_w) / 2.0, TOP - 26.0, title, "panel-title", "middle");
    out += line(x0, bottom, x0 + panel_w, bottom, "axis");
    for (const double tick : ticks) {
      const double x = x_of(tick);
      out += line(x, TOP - 6.0, x, bottom, "grid");
      out += text(x, bottom + 16.0, format(tick), "tick", "middle");
    }
    const double base_x = x_of(base);
    out += line(base_x, TOP - 10.0, base_x, bottom, "base-line");
    out += text(base_x, bottom + 34.0, fmt::format("base {}", format(base)), "base-label", "middle");
    for (std::size_t idx = 0; idx < rows.size(); ++idx) {
      const double y = TOP + ROW_H * static_cast<double>(idx) + 4.0;
      const std::array<std::pair<double, const char*>, 2> bars = {
          {{option_metric(report, rows[idx]->low, first), LOW_COLOUR},
           {option_metric(report, rows[idx]->high, first), HIGH_COLOUR}}};
      for (std::size_t bar = 0; bar < bars.size(); ++bar) {
        const double value = bars[bar].first;
        const double x = x_of(value);
        const double bar_y = y + static_cast<double>(bar) * (BAR_H + 3.0);
        out += rect(std::min(x, base_x), bar_y, std::fabs(x - base_x), BAR_H, bars[bar].second);
        const bool right_side = value >= base;
        const std::string label =
            std::fabs(value - base) <= 1e-9 * std::max(1.0, std::fabs(base)) ? "no change" : format(value);
        out += text(right_side ? std::max(x, base_x) + 4.0 : x - 4.0, bar_y + BAR_H - 2.5, label, "value-label",
                    right_side ? "start" : "end");
      }
    }
  }
  return out + "</svg>\n";
}

} // namespace cuboid::sim::analysis::report_svg

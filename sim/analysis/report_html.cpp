// HTML view of a Report (report.hpp): one self-contained page (inline CSS and SVG, no scripts, no external fonts or
// images) that a manager can read top-down: recommendation, options, charts, sensitivity, assumptions. Every string
// that comes from input (model and GPU names, sources, reasons) goes through html_escape().
#include "sim/analysis/report.hpp"

#include "sim/analysis/report_format.hpp"
#include "sim/analysis/report_svg.hpp"

#include <fmt/format.h>

namespace cuboid::sim::analysis {

namespace {
namespace rf = report_format;

constexpr const char* STYLE = R"css(
:root { --fg: #1f2933; --muted: #52606d; --border: #d9dee3; --accent: #2f5d8a; --highlight: #eef4fb; }
* { box-sizing: border-box; }
body { margin: 0; background: #f5f6f8; color: var(--fg);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans",
  "Liberation Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 32px 24px 48px; }
h1 { font-size: 26px; line-height: 1.25; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 0 0 4px; }
.subtitle { color: var(--muted); margin: 0 0 20px; }
.lead { color: var(--muted); margin: 0 0 14px; font-size: 13px; }
section { background: #fff; border: 1px solid var(--border); border-radius: 8px; padding: 20px 24px; margin: 0 0 20px; }
section.recommendation { border-left: 5px solid var(--accent); }
.recommendation h2 { color: var(--accent); }
.headline { font-size: 16px; margin: 4px 0 16px; }
.kpis { display: grid; grid-template-columns: repeat(4, 1fr); gap: 12px; margin: 0 0 12px; }
.kpi { background: var(--highlight); border-radius: 6px; padding: 10px 14px; }
.kpi .label { font-size: 11px; text-transform: uppercase; letter-spacing: 0.05em; color: var(--muted); }
.kpi .value { font-size: 22px; font-weight: 650; font-variant-numeric: tabular-nums; }
.kpi .note { font-size: 12px; color: var(--muted); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 12px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 6px; border-bottom: 1px solid var(--border); text-align: right; white-space: nowrap; }
th { font-weight: 600; color: var(--muted); vertical-align: bottom; border-bottom: 2px solid var(--border);
  white-space: normal; }
th .unit { display: block; font-weight: 400; font-size: 11px; }
td.text, th.text { text-align: left; }
td.reason { text-align: left; white-space: normal; color: #8a2c0d; }
tr.recommended td { background: var(--highlight); font-weight: 600; }
.badge { display: inline-block; font-size: 10px; font-weight: 700; letter-spacing: 0.04em; color: #fff;
  background: var(--accent); border-radius: 3px; padding: 1px 5px; margin-left: 6px; vertical-align: 1px; }
svg.chart { width: 100%; height: auto; display: block; margin: 8px 0 0; font-family: inherit; }
svg .tick { font-size: 11px; fill: #52606d; }
svg .axis { stroke: #9aa5b1; stroke-width: 1; }
svg .grid { stroke: #e6e9ed; stroke-width: 1; }
svg .axis-label { font-size: 12px; fill: #3e4c59; }
svg .panel-title { font-size: 13px; font-weight: 600; fill: var(--fg); }
svg .legend-text { font-size: 12px; fill: #3e4c59; }
svg .recommended-ring { fill: none; stroke: var(--fg); stroke-width: 2; }
svg .hbm-line { stroke: #c81e1e; stroke-width: 1.5; stroke-dasharray: 6 4; }
svg .hbm-label { font-size: 12px; font-weight: 600; fill: #c81e1e; }
svg .base-line { stroke: var(--fg); stroke-width: 1.2; stroke-dasharray: 4 3; }
svg .base-label { font-size: 11px; fill: var(--fg); }
svg .row-label { font-size: 12.5px; font-weight: 600; fill: var(--fg); }
svg .row-sub, svg .value-label { font-size: 11px; fill: #52606d; }
ul.assumptions { margin: 0; padding-left: 18px; color: #3e4c59; font-size: 13px; }
ul.assumptions li { margin: 2px 0; overflow-wrap: anywhere; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
@media print { body { background: #fff; } section { break-inside: avoid; } }
)css";

std::string th(std::string_view label, std::string_view unit = "", bool text = false) {
  return fmt::format("<th{}>{}{}</th>", text ? " class=\"text\"" : "", html_escape(label),
                     unit.empty() ? std::string{} : fmt::format("<span class=\"unit\">{}</span>", html_escape(unit)));
}

std::string td(std::string_view value, const char* css_class = nullptr) {
  return fmt::format("<td{}>{}</td>", css_class ? fmt::format(" class=\"{}\"", css_class) : std::string{},
                     html_escape(value));
}

std::string kpi(std::string_view label, std::string_view value, std::string_view note) {
  return fmt::format("<div class=\"kpi\"><div class=\"label\">{}</div><div class=\"value\">{}</div>"
                     "<div class=\"note\">{}</div></div>\n",
                     html_escape(label), html_escape(value), html_escape(note));
}

std::string recommendation_section(const Report& report) {
  std::string out = "<section class=\"recommendation\" id=\"recommendation\">\n<h2>Summary</h2>\n";
  if (!report.recommended) {
    return out + fmt::format("<p class=\"headline\">{}</p>\n</section>\n", html_escape(rf::recommendation_line(report)));
  }
  const ReportOption& option = report.options[*report.recommended];
  const Projection& p = option.with_failures;
  const bool by_tokens = report.inputs.goal == ReportGoal::Tokens;
  out += fmt::format("<p class=\"headline\"><strong>{}</strong></p>\n", html_escape(rf::recommendation_line(report)));
  out += "<div class=\"kpis\">\n";
  out += kpi("GPUs", rf::option_name(option), fmt::format("{} per GPU-hour", rf::price(option.price.usd_per_gpu_hour)));
  if (by_tokens) {
    out += kpi("Time to train", fmt::format("{} days", rf::days(p.time_s)),
               fmt::format("{} days without failures", rf::days(option.ideal.time_s)));
  } else {
    out += kpi("Tokens trained", rf::count(p.tokens),
               fmt::format("{} without failures", rf::count(option.ideal.tokens)));
  }
  out += kpi("Cost", rf::usd(p.cost_usd),
             fmt::format("{} GPU-hours, ${:.2f} per M tokens", rf::count(p.gpu_hours), option.usd_per_million_tokens));
  out += kpi("Energy", fmt::format("{} MWh", rf::megawatt_hours(p.energy_kwh)),
             fmt::format("goodput {}, MFU {}", rf::percent(option.goodput.goodput_fraction),
                         rf::percent(option.result.mfu)));
  out += "</div>\n";
  out += fmt::format("<p class=\"lead\">Chosen as the {}.</p>\n</section>\n", html_escape(report.recommendation_rule));
  return out;
}

std::string options_section(const Report& report) {
  const bool straggler = report.inputs.straggler_slowdown > 0.0;
  const bool by_tokens = report.inputs.goal == ReportGoal::Tokens;
  std::string out = "<section id=\"options\">\n<h2>Options</h2>\n<p class=\"lead\">The fastest plan that fits for "
                    "each GPU type and count, from the layout search. Days, GPU-hours, cost and energy include "
                    "failures, checkpoints and restarts.</p>\n<div class=\"table-wrap\"><table>\n<thead><tr>";
  out += th("Option", "", true) + th("Plan", "", true) + th("Step", "(s)") + th("Throughput", "(tokens/s)") +
         th("MFU", "(%)") + th("Days", "ideal") + th("Days", "with failures") +
         (by_tokens ? std::string{} : th("Tokens", "trained")) + th("GPU-hours") + th("Cost", "(USD)") +
         th("Cost", "(USD / M tokens)") + th("Energy", "(MWh)") + th("Peak memory", "(GB of HBM)") +
         th("Goodput", "(%)");
  if (straggler) {
    out += th("One slow GPU", fmt::format("(x{:g}: time, cost)", report.inputs.straggler_slowdown));
  }
  out += "</tr></thead>\n<tbody>\n";
  for (std::size_t idx = 0; idx < report.options.size(); ++idx) {
    const ReportOption& option = report.options[idx];
    const bool chosen = report.recommended && *report.recommended == idx;
    out += chosen ? "<tr class=\"recommended\">" : "<tr>";
    out += fmt::format("<td class=\"text\">{}{}</td>", html_escape(rf::option_name(option)),
                       chosen ? "<span class=\"badge\">BEST</span>" : "");
    if (!option.feasible) {
      out += fmt::format("<td class=\"reason\" colspan=\"{}\">No plan fits ({})</td></tr>\n",
                         12 + (by_tokens ? 0 : 1) + (straggler ? 1 : 0), html_escape(option.reason));
      continue;
    }
    const SimResult& r = option.result;
    const Projection& p = option.with_failures;
    out += fmt::format("<td class=\"text\" title=\"{}\">{}</td>", html_escape(plan_label(option.plan)),
                       html_escape(rf::plan_short(option.plan)));
    out += td(fmt::format("{:.3f}", r.step_time_s)) + td(rf::count(r.tokens_per_s)) +
           td(fmt::format("{:.1f}", 100.0 * r.mfu)) + td(rf::days(option.ideal.time_s)) + td(rf::days(p.time_s));
    if (!by_tokens) {
      out += td(rf::count(p.tokens));
    }
    out += td(rf::count(p.gpu_hours)) + td(rf::usd(p.cost_usd)) + td(fmt::format("{:.2f}", option.usd_per_million_tokens)) +
           td(rf::megawatt_hours(p.energy_kwh)) +
           td(fmt::format("{:.1f} / {:.0f}", r.peak_memory_bytes / rf::GB, r.hbm_bytes / rf::GB)) +
           td(fmt::format("{:.1f}", 100.0 * option.goodput.goodput_fraction));
    if (straggler) {
      out += option.straggler ? td(fmt::format("+{:.1f}%, {}", 100.0 * (option.straggler->job_slowdown - 1.0),
                                               rf::usd_delta(option.straggler->with_failures.cost_usd - p.cost_usd)))
                              : td("-");
    }
    out += "</tr>\n";
  }
  return out + "</tbody></table></div>\n</section>\n";
}

std::string failures_section(const Report& report) {
  std::string out = "<section id=\"failures\">\n<h2>Failures, checkpoints and goodput</h2>\n";
  out += fmt::format("<p class=\"lead\">Per-GPU MTBF {:g} h; a job on n GPUs fails n times as often. Checkpoint every "
                     "&tau; = &radic;(2&delta;M) &minus; &delta; (Daly 2006), with &delta; = {:.0f} s to write one "
                     "and R = {:.0f} s to restart.</p>\n",
                     report.inputs.failures.mtbf_gpu_hours, report.inputs.failures.checkpoint_write_s,
                     report.inputs.failures.restart_s);
  out += "<div class=\"table-wrap\"><table>\n<thead><tr>" + th("Option", "", true) + th("Job MTBF", "(h)") +
         th("Checkpoint every", "(min)") + th("Lost per failure", "(min)") + th("Expected failures") +
         th("Goodput", "(%)") + "</tr></thead>\n<tbody>\n";
  for (const auto& option : report.options) {
    const Goodput& g = option.goodput;
    out += "<tr>" + td(rf::option_name(option), "text") + td(fmt::format("{:.1f}", g.job_mtbf_s / 3600.0)) +
           td(fmt::format("{:.1f}", g.checkpoint_interval_s / 60.0)) +
           td(fmt::format("{:.1f}", g.lost_work_per_failure_s / 60.0)) +
           td(option.feasible ? fmt::format("{:.0f}", option.with_failures.time_s / g.job_mtbf_s) : "-") +
           td(fmt::format("{:.1f}", 100.0 * g.goodput_fraction)) + "</tr>\n";
  }
  return out + "</tbody></table></div>\n</section>\n";
}

std::string sensitivity_table(const Report& report) {
  const bool by_tokens = report.inputs.goal == ReportGoal::Tokens;
  std::string out = "<div class=\"table-wrap\"><table>\n<thead><tr>" + th("Input", "", true) + th("Base") +
                    th("Low") + th("High") +
                    (by_tokens ? th("Days", "(low / high)") + th("Cost", "(low / high)")
                               : th("Tokens", "(low / high)") + th("Cost", "(USD / M tokens, low / high)")) +
                    th("Note", "", true) + "</tr></thead>\n<tbody>\n";
  for (const auto& row : report.sensitivity) {
    out += "<tr>" + td(row.input, "text") + td(fmt::format("{:.4g}", row.base_value)) +
           td(fmt::format("{:.4g}", row.low_value)) + td(fmt::format("{:.4g}", row.high_value));
    if (by_tokens) {
      out += td(fmt::format("{} / {}", rf::days(row.low.time_s), rf::days(row.high.time_s))) +
             td(fmt::format("{} / {}", rf::usd(row.low.cost_usd), rf::usd(row.high.cost_usd)));
    } else {
      out += td(fmt::format("{} / {}", rf::count(row.low.tokens), rf::count(row.high.tokens))) +
             td(fmt::format("{:.2f} / {:.2f}", row.low.cost_usd / row.low.tokens * 1e6,
                            row.high.cost_usd / row.high.tokens * 1e6));
    }
    out += td(row.note.empty() ? row.unit : row.note, "text") + "</tr>\n";
  }
  return out + "</tbody></table></div>\n";
}
} // namespace

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    case '"':
      out += "&quot;";
      break;
    case '\'':
      out += "&#39;";
      break;
    default:
      out += c;
    }
  }
  return out;
}

std::string format_report_html(const Report& report) {
  const ReportInputs& inputs = report.inputs;
  const std::string title = fmt::format("Capacity plan: {}, {}", inputs.model.name, rf::goal_text(inputs));
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  out += fmt::format("<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n<main>\n", html_escape(title), STYLE);
  out += fmt::format("<header>\n<h1>{}</h1>\n<p class=\"subtitle\">{:.1f} B parameters &middot; global batch {} "
                     "sequences of {} tokens &middot; {} GPU types &times; {} GPU counts &middot; simulated by "
                     "cuboid</p>\n</header>\n",
                     html_escape(title), inputs.model.num_parameters() / 1e9, inputs.space.global_batch_size,
                     inputs.model.seq_length, inputs.gpus.size(), inputs.num_gpus.size());
  out += recommendation_section(report);
  out += options_section(report);
  out += "<section id=\"scaling\">\n<h2>Scaling</h2>\n<p class=\"lead\">Best plan at each GPU count. More GPUs "
         "finish sooner but each one does less useful work (pipeline bubbles, exposed communication, more "
         "failures).</p>\n";
  out += report_svg::scaling_chart(report) + "</section>\n";
  if (report.recommended) {
    const ReportOption& option = report.options[*report.recommended];
    out += fmt::format("<section id=\"timeline\">\n<h2>One training step of the recommended plan</h2>\n<p "
                       "class=\"lead\">{} on {}: per pipeline stage, compute (upper lane) and communication (lower "
                       "lane). White gaps in the compute lane are pipeline bubbles or waits on communication.</p>\n",
                       html_escape(plan_label(option.plan)), html_escape(rf::option_name(option)));
    out += report_svg::timeline_chart(report) + "</section>\n";
    out += "<section id=\"memory\">\n<h2>Memory per pipeline stage</h2>\n<p class=\"lead\">Memory in use at each "
           "stage's peak, by kind; the dashed line is the GPU's HBM. Early stages hold more in-flight micro-batches "
           "of activations under 1F1B.</p>\n";
    out += report_svg::memory_chart(report) + "</section>\n";
    out += fmt::format("<section id=\"sensitivity\">\n<h2>Sensitivity</h2>\n<p class=\"lead\">How the recommended "
                       "option moves when one uncertain input is {:.0f}% lower or higher (the plan is "
                       "re-simulated, not re-searched).</p>\n",
                       100.0 * inputs.sensitivity_fraction);
    out += report_svg::tornado_chart(report) + sensitivity_table(report) + "</section>\n";
  }
  out += failures_section(report);
  out += "<section id=\"assumptions\">\n<h2>Assumptions and sources</h2>\n<ul class=\"assumptions\">\n";
  for (const auto& line : report.assumptions) {
    out += fmt::format("<li>{}</li>\n", html_escape(line));
  }
  out += "</ul>\n</section>\n<footer>Generated by <code>cuboid report</code>. Prices move: check the as-of dates "
         "above.</footer>\n</main>\n</body>\n</html>\n";
  return out;
}

} // namespace cuboid::sim::analysis

// Tests for the views of `cuboid report` (sim/analysis/report.hpp) on a hand-built Report: HTML escaping and
// self-containment, the charts' SVG elements, JSON keys and the Markdown table, and the embedded default prices
// against scenarios/hardware/prices.csv. build_report() itself is tested in report_build_test.cpp.
#include "sim/analysis/report.hpp"

#include "sim/analysis/report_defaults.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <fstream>
#include <sstream>

using namespace cuboid;
using namespace cuboid::sim::analysis;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {
constexpr double GB = 1e9;

Projection projection(double tokens, double time_s, int gpus, double price) {
  Projection p;
  p.tokens = tokens;
  p.time_s = time_s;
  p.gpu_hours = gpus * time_s / 3600.0;
  p.cost_usd = p.gpu_hours * price;
  p.energy_kwh = p.gpu_hours * 700.0 * 1.5 * 1.2 / 1000.0;
  return p;
}

ReportOption option(const std::string& gpu, int gpus, double step_s) {
  ReportOption out;
  out.gpu = gpu;
  out.num_gpus = gpus;
  out.feasible = true;
  out.plan.tp = 8;
  out.plan.pp = 2;
  out.plan.dp = gpus / 16;
  out.plan.global_batch_size = 64;
  out.result.step_time_s = step_s;
  out.result.tokens_per_s = 64.0 * 2048.0 / step_s;
  out.result.mfu = 0.45;
  out.result.peak_memory_bytes = 60 * GB;
  out.result.hbm_bytes = 80 * GB;
  out.price = *default_price(gpu);
  out.power_w_per_gpu = 700.0;
  out.goodput = compute_goodput(FailureAssumptions{}, gpus);
  out.ideal = projection(1e9, 1e9 / out.result.tokens_per_s, gpus, out.price.usd_per_gpu_hour);
  out.with_failures =
      projection(1e9, out.ideal.time_s / out.goodput.goodput_fraction, gpus, out.price.usd_per_gpu_hour);
  out.usd_per_million_tokens = out.with_failures.cost_usd / 1e3;
  return out;
}

// A report whose model name and an infeasibility reason carry markup, as a hostile or careless input would.
Report sample_report() {
  Report report;
  report.inputs.model.name = "<script>alert('x')</script> & co";
  report.inputs.model.seq_length = 2048;
  report.inputs.tokens = 1e9;
  report.inputs.num_gpus = {16, 32};
  report.inputs.space.global_batch_size = 64;
  report.inputs.straggler_slowdown = 1.2;
  for (const char* name : {"h100-sxm", "a100-80gb"}) {
    ReportGpu gpu;
    gpu.cluster.gpu.name = name;
    gpu.price = *default_price(name);
    gpu.power = *default_power(name);
    report.inputs.gpus.push_back(gpu);
  }
  report.options.push_back(option("h100-sxm", 16, 2.0));
  report.options.push_back(option("h100-sxm", 32, 1.1));
  report.options.back().straggler = StragglerImpact{1.2, 1.3, 1.0, 1.3 / 1.1, {}};
  report.options.push_back(option("a100-80gb", 16, 5.0));
  ReportOption infeasible;
  infeasible.gpu = "a100-80gb";
  infeasible.num_gpus = 32;
  infeasible.reason = "none of 3 plans fits: 3 oom (e.g. <b>stage 0</b> needs 90 GB)";
  report.options.push_back(infeasible);
  report.recommended = 1;
  report.recommendation_rule = "test rule";
  const Projection base = report.options[1].with_failures;
  report.sensitivity.push_back(SensitivityRow{"GEMM efficiency", 0.8, 0.64, 0.96, "", base, base, ""});
  report.sensitivity.back().low.time_s *= 1.2;
  report.sensitivity.back().low.cost_usd *= 1.2;
  report.sensitivity.push_back(SensitivityRow{"GPU-hour price", 6.88, 5.5, 8.26, "USD/GPU-h", base, base, ""});
  report.sensitivity.back().high.cost_usd *= 1.2;
  report.timeline = {{0, TimelineLane::Compute, "forward", 0.0, 0.3},
                     {0, TimelineLane::Compute, "backward", 0.4, 1.0},
                     {0, TimelineLane::Comm, "pp-comm", 0.3, 0.32},
                     {1, TimelineLane::Compute, "forward", 0.32, 0.6},
                     {1, TimelineLane::Compute, "backward", 0.6, 1.05},
                     {1, TimelineLane::Comm, "dp-comm", 1.05, 1.1}};
  report.timeline_step_s = 1.1;
  report.memory = {{0, 60 * GB, {10 * GB, 10 * GB, 20 * GB, 15 * GB, 3 * GB, 2 * GB}},
                   {1, 50 * GB, {10 * GB, 10 * GB, 20 * GB, 5 * GB, 3 * GB, 2 * GB}}};
  report.hbm_bytes = 80 * GB;
  report.assumptions = {"assumption with <tag>"};
  return report;
}
} // namespace

TEST_CASE("sim::analysis::html_escape", "[sim][report]") {
  REQUIRE(html_escape("<a href=\"x\">'&'</a>") == "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  REQUIRE(html_escape("plain") == "plain");
}

TEST_CASE("sim::analysis::format_report_html: escaped, self-contained, with every chart", "[sim][report]") {
  const std::string html = format_report_html(sample_report());
  SECTION("input strings are escaped: no script element, no raw markup from the reason or assumptions") {
    REQUIRE_THAT(html, !Contains("<script", Catch::CaseSensitive::No));
    REQUIRE_THAT(html, Contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co"));
    REQUIRE_THAT(html, !Contains("<b>stage 0</b>"));
    REQUIRE_THAT(html, Contains("&lt;b&gt;stage 0&lt;/b&gt;"));
    REQUIRE_THAT(html, Contains("assumption with &lt;tag&gt;"));
  }
  SECTION("self-contained: no external resources") {
    for (const char* banned : {"src=", "href=", "@import", "url(", "<link", "<img"}) {
      CAPTURE(banned);
      REQUIRE_THAT(html, !Contains(banned));
    }
  }
  SECTION("summary first, then the four charts") {
    const std::size_t summary = html.find("id=\"recommendation\"");
    REQUIRE(summary != std::string::npos);
    for (const char* id : {"chart-scaling", "chart-timeline", "chart-memory", "chart-tornado"}) {
      CAPTURE(id);
      const std::size_t at = html.find(fmt::format("<svg id=\"{}\"", id));
      REQUIRE(at != std::string::npos);
      REQUIRE(at > summary);
    }
    REQUIRE_THAT(html, Contains("Recommendation: 32 x h100-sxm"));
    REQUIRE_THAT(html, Contains("class=\"hbm-line\""));
    REQUIRE_THAT(html, Contains("class=\"recommended-ring\""));
  }
}

TEST_CASE("sim::analysis::report_to_json: every option and the chart data", "[sim][report]") {
  const Report report = sample_report();
  const nlohmann::json json = report_to_json(report);
  REQUIRE(json["options"].size() == report.options.size());
  REQUIRE(json["recommended"] == 1);
  REQUIRE(json["options"][3]["feasible"] == false);
  REQUIRE_THAT(json["options"][3]["reason"].get<std::string>(), Contains("<b>stage 0</b>")); // JSON is not HTML
  const auto& best = json["options"][1];
  for (const char* key : {"plan", "plan_label", "step_time_s", "tokens_per_s", "mfu", "peak_memory_bytes",
                          "memory_headroom_bytes", "price", "goodput", "ideal", "with_failures", "straggler",
                          "usd_per_million_tokens", "expected_failures"}) {
    CAPTURE(key);
    REQUIRE(best.contains(key));
  }
  REQUIRE_THAT(best["memory_headroom_bytes"].get<double>(), WithinRel(20 * GB, 1e-12));
  REQUIRE_THAT(best["straggler"]["job_slowdown"].get<double>(), WithinRel(1.3 / 1.1, 1e-12));
  REQUIRE(json["sensitivity"].size() == 2);
  REQUIRE(json["timeline"]["blocks"].size() == report.timeline.size());
  REQUIRE(json["memory"]["stages"].size() == 2);
  REQUIRE_THAT(json["memory"]["stages"][0]["activations"].get<double>(), WithinRel(15 * GB, 1e-12));
  REQUIRE_THAT(json["recommendation"].get<std::string>(), Contains("32 x h100-sxm"));
}

TEST_CASE("sim::analysis::format_report_markdown and text", "[sim][report]") {
  Report report = sample_report();
  report.inputs.model.name = "a|b";
  const std::string markdown = format_report_markdown(report);
  REQUIRE_THAT(markdown, Contains("# Capacity plan: a\\|b"));
  REQUIRE_THAT(markdown, Contains("**32 x h100-sxm** (recommended)"));
  REQUIRE_THAT(markdown, Contains("no plan fits"));
  const std::string text = format_report_text(report);
  REQUIRE_THAT(text, Contains("Recommendation: 32 x h100-sxm"));
  REQUIRE_THAT(text, Contains("a100-80gb"));
}

// The embedded defaults are copies of rows of scenarios/hardware/prices.csv (provider, instance, price, as_of).
TEST_CASE("sim::analysis::default_prices match scenarios/hardware/prices.csv", "[sim][report]") {
  std::ifstream in(std::string(CUBOID_SOURCE_DIR) + "/scenarios/hardware/prices.csv");
  if (!in) {
    WARN("scenarios/hardware/prices.csv not present yet: not compared");
    return;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  const std::string csv = buffer.str();
  for (const auto& row : default_prices()) {
    CAPTURE(row.gpu);
    // Some instances have rows of several dates: one of them must be this one.
    const std::string prefix = fmt::format("{},{},{},", row.provider, row.instance, row.gpu);
    bool found = false;
    std::istringstream lines(csv);
    for (std::string line; std::getline(lines, line);) {
      found = found || (line.rfind(prefix, 0) == 0 && line.find(fmt::format(",{},", row.as_of)) != std::string::npos &&
                        line.find(fmt::format(",{},", row.usd_per_gpu_hour)) != std::string::npos);
    }
    REQUIRE(found);
  }
}

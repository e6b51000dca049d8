// Embedded defaults of `cuboid report` (report_defaults.hpp). Prices are copied row for row from
// scenarios/hardware/prices.csv (tests/sim/report_test.cpp checks they still match when the file is present).
#include "sim/analysis/report_defaults.hpp"

#include <algorithm>
#include <array>

namespace cuboid::sim::analysis {

namespace {
const std::string HYPERSCALERS = "datareceipts/data-receipts 109-gpu-pricing/hyperscalers.json";
} // namespace

const std::vector<GpuPrice>& default_prices() {
  // The cheapest on-demand hyperscaler row per GPU that has an as_of date (prices.csv, as copied by H1).
  static const std::vector<GpuPrice> prices = {
      {"a100-40gb", 2.74, "aws", "p4d.24xlarge", "us-east-1", "on-demand", "2026-11-09", HYPERSCALERS, false},
      {"a100-80gb", 3.43, "aws", "p4de.24xlarge", "us-east-1", "on-demand", "2026-11-09", HYPERSCALERS, false},
      {"h100-sxm", 6.88, "aws", "p5.48xlarge", "us-east-1", "on-demand", "2026-11-09",
       HYPERSCALERS + " (after the June 2025 price cut; no AWS page seen)", false},
      {"h200", 10.4365, "gcp", "a3-ultragpu-8g", "us-central1", "on-demand", "2026-10-13",
       "huggingface dataset tanod/cloud-gpu-list-prices (Cloud Billing Catalog)", false},
      {"b200", 18.53, "gcp", "a4-highgpu-8g", "us-central1", "on-demand", "2026",
       "public code comment (only a year given)", false},
  };
  return prices;
}

std::optional<GpuPrice> default_price(const std::string& gpu) {
  const auto& prices = default_prices();
  const auto found = std::find_if(prices.begin(), prices.end(), [&](const GpuPrice& row) { return row.gpu == gpu; });
  if (found == prices.end()) {
    return std::nullopt;
  }
  return *found;
}

std::optional<GpuPower> default_power(const std::string& gpu) {
  struct Row {
    const char* gpu;
    double watts;
    const char* source;
  };
  static const std::array<Row, 6> rows = {{
      {"a100-40gb", 400.0, "NVIDIA A100 datasheet: SXM max TDP 400 W"},
      {"a100-80gb", 400.0, "NVIDIA A100 datasheet: SXM max TDP 400 W"},
      {"h100-sxm", 700.0, "NVIDIA H100 datasheet: SXM max TDP up to 700 W"},
      {"h200", 700.0, "NVIDIA H200 datasheet: SXM max TDP up to 700 W"},
      {"b200", 1000.0, "NVIDIA HGX B200 spec table: 1000 W per GPU"},
      {"gb200", 1200.0, "NVIDIA GB200 NVL72 spec table: B200 configurable to 1200 W"},
  }};
  for (const Row& row : rows) {
    if (gpu == row.gpu) {
      return GpuPower{row.watts, row.source};
    }
  }
  return std::nullopt;
}

double default_checkpoint_write_s(const model::ModelSpec& model) {
  return model.num_parameters() * CHECKPOINT_BYTES_PER_PARAM / CHECKPOINT_WRITE_BYTES_PER_S;
}

} // namespace cuboid::sim::analysis

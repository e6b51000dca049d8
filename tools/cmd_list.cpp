// `cuboid list models|gpus|systems`: the built-in catalogs with their sources.
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"
#include "model/errors.hpp"
#include "tools/commands.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>

namespace cuboid::tools {

namespace {
constexpr double GIGA = 1e9;
constexpr double TERA = 1e12;

struct ListOptions {
  std::string what;
  bool json = false;
};

int list_models(bool json) {
  nlohmann::json out = nlohmann::json::array();
  std::string table = fmt::format("# {:<16} {:>9} {:>6} {:>7} {:>6} {:>5} {:>7} {:>7} {:>6}  {}\n", "name", "params",
                                  "layers", "hidden", "heads", "kv", "ffn", "vocab", "seq", "source");
  table += fmt::format("# {:<16} {:>9} {:>6} {:>7} {:>6} {:>5} {:>7} {:>7} {:>6}\n", "", "(B)", "", "", "", "", "",
                       "", "");
  for (const auto& spec : model::builtin_models()) {
    table += fmt::format("  {:<16} {:>9.2f} {:>6} {:>7} {:>6} {:>5} {:>7} {:>7} {:>6}  {}\n", spec.name,
                         spec.num_parameters() / GIGA, spec.num_layers, spec.hidden_size, spec.num_attention_heads,
                         spec.num_query_groups, spec.ffn_hidden_size, spec.vocab_size, spec.seq_length, spec.source);
    out.push_back({{"name", spec.name},
                   {"num_parameters", spec.num_parameters()},
                   {"num_layers", spec.num_layers},
                   {"hidden_size", spec.hidden_size},
                   {"num_attention_heads", spec.num_attention_heads},
                   {"num_query_groups", spec.num_query_groups},
                   {"ffn_hidden_size", spec.ffn_hidden_size},
                   {"vocab_size", spec.vocab_size},
                   {"seq_length", spec.seq_length},
                   {"source", spec.source}});
  }
  std::fputs(json ? (out.dump(2) + "\n").c_str() : table.c_str(), stdout);
  return 0;
}

int list_gpus(bool json) {
  nlohmann::json out = nlohmann::json::array();
  std::string table = fmt::format("# {:<10} {:>9} {:>9} {:>7} {:>8} {:>9}  {}\n", "name", "bf16", "fp8", "HBM",
                                  "HBM bw", "NVLink", "source");
  table += fmt::format("# {:<10} {:>9} {:>9} {:>7} {:>8} {:>9}\n", "", "(TFLOP/s)", "(TFLOP/s)", "(GB)", "(TB/s)",
                       "(GB/s)");
  for (const auto& gpu : model::builtin_gpus()) {
    table += fmt::format("  {:<10} {:>9.0f} {:>9.0f} {:>7.0f} {:>8.2f} {:>9.0f}  {}\n", gpu.name,
                         gpu.bf16_flops_per_s / TERA, gpu.fp8_flops_per_s / TERA, gpu.hbm_bytes / GIGA,
                         gpu.hbm_bw_bytes_per_s / TERA, gpu.nvlink_bw_bytes_per_s / GIGA, gpu.source);
    out.push_back({{"name", gpu.name},
                   {"bf16_flops_per_s", gpu.bf16_flops_per_s},
                   {"fp8_flops_per_s", gpu.fp8_flops_per_s},
                   {"hbm_bytes", gpu.hbm_bytes},
                   {"hbm_bw_bytes_per_s", gpu.hbm_bw_bytes_per_s},
                   {"nvlink_bw_bytes_per_s", gpu.nvlink_bw_bytes_per_s},
                   {"source", gpu.source}});
  }
  std::fputs(json ? (out.dump(2) + "\n").c_str() : table.c_str(), stdout);
  return 0;
}

int list_systems(bool json) {
  nlohmann::json out = nlohmann::json::array();
  std::string table = fmt::format("# {:<14} {:<10} {:>9} {:>9} {:>9}  {}\n", "name", "gpu", "gpus/node", "NVLink",
                                  "NIC/gpu", "source");
  table += fmt::format("# {:<14} {:<10} {:>9} {:>9} {:>9}\n", "", "", "", "(GB/s)", "(GB/s)");
  for (const auto& system : model::builtin_systems()) {
    table += fmt::format("  {:<14} {:<10} {:>9} {:>9.0f} {:>9.1f}  {}\n", system.name, system.gpu,
                         system.gpus_per_node, system.nvlink_bw_bytes_per_s / GIGA,
                         system.nic_bw_bytes_per_s / GIGA, system.source);
    out.push_back({{"name", system.name},
                   {"gpu", system.gpu},
                   {"gpus_per_node", system.gpus_per_node},
                   {"nvlink_bw_bytes_per_s", system.nvlink_bw_bytes_per_s},
                   {"nic_bw_bytes_per_s", system.nic_bw_bytes_per_s},
                   {"source", system.source}});
  }
  std::fputs(json ? (out.dump(2) + "\n").c_str() : table.c_str(), stdout);
  return 0;
}
} // namespace

void add_list_command(CLI::App& app, Action& action) {
  auto options = std::make_shared<ListOptions>();
  CLI::App* cmd = app.add_subcommand("list", "List built-in models, GPUs or systems with their sources");
  cmd->add_option("what", options->what, "models, gpus or systems")->required();
  cmd->add_flag("--json", options->json, "Print JSON");
  cmd->callback([options, &action] {
    action = [options] {
      if (options->what == "models") {
        return list_models(options->json);
      }
      if (options->what == "gpus") {
        return list_gpus(options->json);
      }
      if (options->what == "systems") {
        return list_systems(options->json);
      }
      throw InputError(input_message("command line", "list",
                                     fmt::format("unknown catalog '{}'{}", options->what,
                                                 valid_values_hint(options->what, {"models", "gpus", "systems"}))));
    };
  });
}

} // namespace cuboid::tools

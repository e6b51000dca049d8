// Shipped default cost profiles (the single source of truth: scenarios/profiles/*.yaml mirror these values and a
// test checks they agree) and the profile YAML reader/writer. Every number names its source or says "assumption".
#include "model/cost_profile.hpp"

#include "model/atomic_file.hpp"
#include "model/errors.hpp"
#include "model/yaml_fields.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>

namespace cuboid::model {

namespace {

// ---- measured anchors (scenarios/validation/README.md, "Single-GPU GEMM throughput": Stas Bekman, ML Engineering
// Open Book, compute/accelerator/README.md MAMF table @ 744d01e1; best-shape achievable matmul / dense spec peak).
constexpr double A100_MAMF_BF16 = 271.2 / 312.0;     // 0.869
constexpr double H100_MAMF_BF16 = 794.5 / 989.0;     // 0.803 ("H200 is the same")
constexpr double H100_MAMF_FP8 = 1402.6 / 1979.0;    // 0.709
constexpr double H200_MAMF_FP8 = 1453.4 / 1979.0;    // 0.734
// Assumption: a GEMM whose ideal run time at the MAMF rate is 4 us reaches half of that rate (fixed prologue /
// epilogue / tail cost of ~4 us per cuBLAS call, Hockney's n_1/2 model). half_flops = 4 us * MAMF FLOP/s.
constexpr double GEMM_HALF_TIME_S = 4e-6;
// ---- in-training GEMM efficiency (fitted, docs/validation.md). MAMF is a best-shape, short, isolated benchmark; in
// a training step the GEMMs run at sustained power (lower clocks), share SMs with overlapped NCCL / userbuffers
// kernels and have transformer shapes. One factor per precision, fitted on the 22 H100 BF16 rows of
// published_runs.csv (dgxc GPT-3 175B and Nemotron-4 15B, Megatron-LM README; MAPE minimum on a 0.02 grid, with the
// 40 us half-time below):
// BF16 0.62 of peak = 0.772 x MAMF. The same 0.772 is carried to A100 (not fitted there: SC21 and BLOOM are the
// out-of-sample check). FP8: 0.48 of the FP8 peak = 0.677 x MAMF, fitted on the 21 H100 FP8 rows (dgxc, NeMo
// 24.07); FP8 also pays Transformer Engine's cast / transpose / amax kernels, which the op catalog does not list.
constexpr double IN_TRAINING_BF16_PER_MAMF = 0.62 / H100_MAMF_BF16; // 0.772
constexpr double IN_TRAINING_FP8_PER_MAMF = 0.48 / H100_MAMF_FP8;   // 0.677
// Fitted with the factor above on the same H100 rows: Hockney half-performance time 40 us on Hopper (the 4 us
// assumption left the small models, h = 2048-4096, 20-35 % too fast: Megatron-LM README 1.7B, NeMo GPT-3 5B).
constexpr double HOPPER_GEMM_HALF_TIME_S = 40e-6;
// nccl-tests all-reduce on one 8-GPU node (scenarios/validation/published_collectives.csv), ring bus bandwidth at
// the largest message divided by the NVLink wire bandwidth per GPU per direction (shared/specs/gpus.csv).
constexpr double A100_RING_EFF = 234.89 / 300.0;     // mle-nccl-allreduce-a100-8gpu-16GiB: 0.783
constexpr double H100_RING_EFF = 365.6 / 450.0;      // mle-nccl-allreduce-h200-8gpu-8GiB-nvls-off: 0.812
constexpr double H100_NVLS_EFF = 274.23 / 450.0;     // dgxc ...-8gpu-16GiB algbw (NVLS): 0.609

CostProfile base(const std::string& gpu) {
  CostProfile profile;
  profile.name = gpu + "-default";
  profile.gpu = gpu;
  profile.source = "cuboid shipped defaults (model/cost_profile.cpp; mirrored in scenarios/profiles/" + gpu + ".yaml)";
  // Assumption: back-to-back dependent kernels leave ~2 us of idle GPU when the CPU launches ahead (no CUDA graphs).
  profile.launch_overhead_s = 2e-6;
  // Assumption: copy-like kernels reach ~85 % of spec HBM bandwidth (STREAM-class kernels; no citable table here).
  profile.hbm_efficiency = 0.85;
  // Assumption: no IB nccl-tests sweep was found (validation README). Fitted on the 2-node H100 log (a3mega rows):
  // hierarchical all-reduce at 8 GiB needs 90 % of 200 Gb/s per GPU for the inter-node phase (cost_model.cpp).
  profile.nic_efficiency = 0.90;
  // Assumption: per-step latency between nodes (NCCL over IB: NVLink alpha + ~4 us NIC/switch hop).
  profile.net_latency_s = 6e-6;
  // The simulator models DP overlap explicitly with streams; 1.0 adds no further penalty.
  profile.dp_overlap_efficiency = 1.0;
  return profile;
}

CostProfile ampere(const std::string& gpu) {
  CostProfile profile = base(gpu);
  profile.gemm_max_efficiency = A100_MAMF_BF16 * IN_TRAINING_BF16_PER_MAMF;
  profile.gemm_fp8_max_efficiency = profile.gemm_max_efficiency; // unused: no FP8 tensor cores (GpuSpec throws)
  profile.gemm_half_efficiency_flops = GEMM_HALF_TIME_S * 271.2e12;
  profile.num_sms = 108.0; // NVIDIA A100 Tensor Core GPU Architecture whitepaper: 108 SMs
  // FlashAttention-2 (Dao 2023, arXiv:2307.08691) on A100: forward up to 73 % of peak (230 TF/s), 50-73 % across
  // settings; backward lower. Used: values read at seq 2k, head dim 128 (fwd ~ 0.65, bwd ~ 0.50).
  profile.attention_efficiency = 0.65;
  profile.attention_bwd_efficiency = 0.50;
  profile.nvlink_efficiency = A100_RING_EFF;
  // Fitted: least squares (relative error, 0.5 us grid) over the >= 16 MiB rows of the 8xA100 sweep with the busbw
  // above: 12 us per ring step (16-64 MiB, the TP all-reduce sizes of the A100 rows, within 6 %; 128-256 MiB -10 to
  // -12 %; >= 512 MiB within 1.2 %). The 1-8 MiB rows (LL/LL128 protocols, ~101 us flat) are not fitted.
  // (Was 16 us, fitted to the >= 64 MiB rows only: +26 % at 16 MiB, +12 % at 32 MiB.)
  profile.nvlink_latency_s = 12e-6;
  profile.nvls_efficiency = 0.0; // no NVLink SHARP on A100 (NVSwitch gen 2)
  return profile;
}

CostProfile hopper(const std::string& gpu, double fp8_eff) {
  CostProfile profile = base(gpu);
  profile.gemm_max_efficiency = H100_MAMF_BF16 * IN_TRAINING_BF16_PER_MAMF;
  profile.gemm_fp8_max_efficiency = fp8_eff * IN_TRAINING_FP8_PER_MAMF;
  profile.gemm_half_efficiency_flops = HOPPER_GEMM_HALF_TIME_S * profile.gemm_max_efficiency * 989e12;
  profile.num_sms = 132.0; // NVIDIA H100 Tensor Core GPU Architecture whitepaper: 132 SMs (SXM5)
  // FlashAttention-3 (Shah et al. 2024, arXiv:2407.08608): BF16 forward up to 740 TF/s = 75 % of H100 peak, FA2 at
  // ~35 %; backward 1.5-1.75x FA2. Megatron/NeMo use cuDNN fused attention of the same class. Used: fwd 0.60,
  // bwd 0.45 (typical 4k-8k causal shapes, below the best-case headline).
  profile.attention_efficiency = 0.60;
  profile.attention_bwd_efficiency = 0.45;
  profile.nvlink_efficiency = H100_RING_EFF;
  // Fitted on the DGX H100 sweep (dgxc rows): 2 us per ring step, NVLS 100 us fixed + S / (0.609 * 450 GB/s);
  // every >= 64 MiB row within 6 %.
  profile.nvlink_latency_s = 2e-6;
  profile.nvls_efficiency = H100_NVLS_EFF;
  profile.nvls_latency_s = 100e-6;
  profile.nvls_min_ranks = 5.0; // H200 GPU-count sweep: NVLS gains from 5 GPUs up, none at 4
  return profile;
}

} // namespace

std::vector<std::string> default_profile_gpus() { return {"a100-80gb", "a100-40gb", "h100-sxm", "h200", "b200"}; }

CostProfile default_profile(const std::string& gpu_name) {
  if (gpu_name == "a100-80gb" || gpu_name == "a100-40gb") {
    return ampere(gpu_name);
  }
  if (gpu_name == "h100-sxm") {
    return hopper(gpu_name, H100_MAMF_FP8);
  }
  if (gpu_name == "h200") {
    return hopper(gpu_name, H200_MAMF_FP8);
  }
  if (gpu_name == "b200") {
    // Assumption: no citable B200 measurements in shared/; Hopper efficiencies carried over (marked in output).
    CostProfile profile = hopper(gpu_name, H100_MAMF_FP8);
    profile.gemm_half_efficiency_flops = HOPPER_GEMM_HALF_TIME_S * profile.gemm_max_efficiency * 2250e12;
    profile.num_sms = 148.0; // assumption: 148 SMs as publicly reported for B200
    profile.assumptions.push_back("b200 profile: all efficiencies copied from H100 measurements (assumption)");
    return profile;
  }
  if (gpu_name == "cpu") {
    throw InputError(input_message("cost profile", "gpu",
                                   "the cpu device has no default profile: measure one with `cuboid calibrate "
                                   "--backend cpu --out cpu.yaml` and pass --profile cpu.yaml"));
  }
  throw InputError(input_message("cost profile", "gpu",
                                 fmt::format("no default profile for GPU '{}'{}", gpu_name,
                                             valid_values_hint(gpu_name, default_profile_gpus()))));
}

// ---- YAML I/O: one table of numeric fields drives reading, range checks and writing.
namespace {

struct NumericField {
  const char* key;
  double CostProfile::*member;
  double min_value;
  double max_value;
  bool min_exclusive; // (min, max] when true, [min, max] otherwise
};

constexpr double INF = std::numeric_limits<double>::infinity();
constexpr double MAX_KERNEL_S = 1e-3; // upper bound of the cpu_*_s_per_element fields

const std::vector<NumericField>& numeric_fields() {
  static const std::vector<NumericField> fields = {
      {"gemm_max_efficiency", &CostProfile::gemm_max_efficiency, 0.0, 1.0, true},
      {"gemm_fp8_max_efficiency", &CostProfile::gemm_fp8_max_efficiency, 0.0, 1.0, true},
      {"gemm_half_efficiency_flops", &CostProfile::gemm_half_efficiency_flops, 0.0, INF, false},
      {"num_sms", &CostProfile::num_sms, 0.0, 100000.0, false},
      {"attention_efficiency", &CostProfile::attention_efficiency, 0.0, 1.0, true},
      {"attention_bwd_efficiency", &CostProfile::attention_bwd_efficiency, 0.0, 1.0, true},
      {"hbm_efficiency", &CostProfile::hbm_efficiency, 0.0, 1.0, true},
      {"launch_overhead_s", &CostProfile::launch_overhead_s, 0.0, 1.0, false},
      {"nvlink_efficiency", &CostProfile::nvlink_efficiency, 0.0, 1.0, true},
      {"nic_efficiency", &CostProfile::nic_efficiency, 0.0, 1.0, true},
      {"nvlink_latency_s", &CostProfile::nvlink_latency_s, 0.0, 1.0, false},
      {"net_latency_s", &CostProfile::net_latency_s, 0.0, 1.0, false},
      {"nvls_efficiency", &CostProfile::nvls_efficiency, 0.0, 1.0, false},
      {"nvls_latency_s", &CostProfile::nvls_latency_s, 0.0, 1.0, false},
      {"nvls_min_ranks", &CostProfile::nvls_min_ranks, 0.0, 100000.0, false},
      {"dp_overlap_efficiency", &CostProfile::dp_overlap_efficiency, 0.0, 1.0, false},
      // CPU backend kernels, seconds per element (cost_profile.hpp): optional, default 0 (= priced by bytes), so
      // GPU profiles and CPU profiles written before them load unchanged. [0, 1e-3] s: no kernel of the CPU
      // backend takes a millisecond per value; larger is a unit mistake (e.g. microseconds written as seconds).
      {"cpu_layernorm_fwd_s_per_element", &CostProfile::cpu_layernorm_fwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_layernorm_bwd_s_per_element", &CostProfile::cpu_layernorm_bwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_rmsnorm_fwd_s_per_element", &CostProfile::cpu_rmsnorm_fwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_rmsnorm_bwd_s_per_element", &CostProfile::cpu_rmsnorm_bwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_gelu_fwd_s_per_element", &CostProfile::cpu_gelu_fwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_gelu_bwd_s_per_element", &CostProfile::cpu_gelu_bwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_swiglu_fwd_s_per_element", &CostProfile::cpu_swiglu_fwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_swiglu_bwd_s_per_element", &CostProfile::cpu_swiglu_bwd_s_per_element, 0.0, MAX_KERNEL_S, false},
      {"cpu_rope_s_per_element", &CostProfile::cpu_rope_s_per_element, 0.0, MAX_KERNEL_S, false},
  };
  return fields;
}

std::vector<std::string> all_keys() {
  std::vector<std::string> keys = {"name", "source", "gpu", "gemm_table", "assumptions"};
  for (const auto& field : numeric_fields()) {
    keys.emplace_back(field.key);
  }
  return keys;
}

std::string range_text(const NumericField& field) {
  const std::string high = std::isinf(field.max_value) ? "inf)" : fmt::format("{}]", field.max_value);
  return fmt::format("{}{}, {}", field.min_exclusive ? "(" : "[", field.min_value, high);
}

double read_number(const YAML::Node& node, const std::string& path, const std::string& key) {
  const std::string where = fmt::format("{}:{}", path, node.Mark().line + 1);
  if (!node.IsScalar()) {
    throw InputError(input_message(where, key, "expected a number"));
  }
  try {
    return node.as<double>();
  } catch (const YAML::Exception&) {
    throw InputError(input_message(where, key, fmt::format("'{}' is not a number", node.Scalar())));
  }
}

void check_range(double value, double lo, double hi, bool lo_exclusive, const std::string& where,
                 const std::string& key, const std::string& range) {
  const bool low_ok = lo_exclusive ? value > lo : value >= lo;
  if (!std::isfinite(value) || !low_ok || value > hi) {
    throw InputError(input_message(where, key, fmt::format("{} is out of range (valid: {})", value, range)));
  }
}

// A mapping key as text; complex keys (`? [a, b]`) are rejected instead of failing inside yaml-cpp.
std::string read_key(const YAML::Node& key, const std::string& where, const std::string& parent) {
  if (!key.IsScalar()) {
    throw InputError(input_message(where, parent, "a key must be a plain name (expected a scalar key)"));
  }
  return key.Scalar();
}

std::string read_text(const YAML::Node& node, const std::string& where, const std::string& key) {
  if (node.IsNull()) {
    return {};
  }
  if (!node.IsScalar()) {
    throw InputError(input_message(where, key, "expected a string"));
  }
  return node.Scalar();
}

void require_sequence(const YAML::Node& node, const std::string& where, const std::string& key, const char* what) {
  if (!node.IsSequence()) {
    throw InputError(input_message(where, key,
                                   fmt::format("{} is not valid (expected a sequence of {})",
                                               node.IsScalar() ? node.Scalar() : std::string("a mapping"), what)));
  }
}

GemmPoint read_gemm_point(const YAML::Node& node, const std::string& path, std::size_t index) {
  const std::string key = fmt::format("gemm_table[{}]", index);
  const std::string where = fmt::format("{}:{}", path, node.Mark().line + 1);
  if (!node.IsMap()) {
    throw InputError(input_message(where, key, "expected a map with m, n, k, efficiency"));
  }
  const std::vector<std::string> names = {"m", "n", "k", "efficiency"};
  GemmPoint point;
  const std::array<double*, 4> targets = {&point.m, &point.n, &point.k, &point.efficiency};
  std::vector<std::string> seen;
  for (const auto& entry : node) {
    const std::string name = read_key(entry.first, where, key);
    if (std::find(seen.begin(), seen.end(), name) != seen.end()) {
      throw InputError(input_message(where, key + "." + name, "duplicate key (each key may appear once)"));
    }
    seen.push_back(name);
    const auto found = std::find(names.begin(), names.end(), name);
    if (found == names.end()) {
      throw InputError(input_message(where, key + "." + name, "unknown key" + valid_values_hint(name, names)));
    }
    const auto slot = static_cast<std::size_t>(found - names.begin());
    const double value = read_number(entry.second, path, key + "." + name);
    check_range(value, 0.0, slot == 3 ? 1.0 : INF, true, where, key + "." + name, slot == 3 ? "(0, 1]" : "(0, inf)");
    *targets[slot] = value;
  }
  if (point.m <= 0.0 || point.n <= 0.0 || point.k <= 0.0 || point.efficiency <= 0.0) {
    throw InputError(input_message(where, key, "needs all of m, n, k, efficiency"));
  }
  return point;
}

} // namespace

CostProfile load_profile(const std::string& path) {
  if (!std::filesystem::is_regular_file(path)) {
    throw InputError(input_message(path, "", "cost profile file not found"));
  }
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::Exception& error) {
    throw InputError(input_message(path, "", fmt::format("not valid YAML: {}", error.what())));
  }
  if (!root.IsMap()) {
    throw InputError(input_message(path, "", "expected a map of profile fields"));
  }
  CostProfile profile;
  profile.name = std::filesystem::path(path).stem().string();
  const auto& fields = numeric_fields();
  std::vector<std::string> seen;
  for (const auto& entry : root) {
    const std::string where = fmt::format("{}:{}", path, entry.first.Mark().line + 1);
    const std::string key = read_key(entry.first, where, "");
    if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
      throw InputError(input_message(where, key, "duplicate key (each key may appear once)"));
    }
    seen.push_back(key);
    const YAML::Node& value = entry.second;
    const auto field = std::find_if(fields.begin(), fields.end(), [&](const auto& f) { return key == f.key; });
    if (field != fields.end()) {
      const double number = read_number(value, path, key);
      check_range(number, field->min_value, field->max_value, field->min_exclusive, where, key, range_text(*field));
      profile.*(field->member) = number;
    } else if (key == "name" || key == "source" || key == "gpu") {
      std::string& target = key == "name" ? profile.name : (key == "source" ? profile.source : profile.gpu);
      target = read_text(value, where, key);
    } else if (key == "assumptions") {
      require_sequence(value, where, key, "strings");
      std::size_t index = 0;
      for (const auto& line : value) {
        profile.assumptions.push_back(read_text(line, where, fmt::format("assumptions[{}]", index++)));
      }
    } else if (key == "gemm_table") {
      require_sequence(value, where, key, "{m, n, k, efficiency} mappings");
      std::size_t index = 0;
      for (const auto& point : value) {
        profile.gemm_table.push_back(read_gemm_point(point, path, index++));
      }
    } else {
      throw InputError(input_message(where, key, "unknown cost-profile key" + yaml::key_hint(key, all_keys())));
    }
  }
  return profile;
}

void save_profile(const CostProfile& profile, const std::string& path) {
  YAML::Emitter out;
  out.SetDoublePrecision(std::numeric_limits<double>::max_digits10);
  out << YAML::BeginMap;
  out << YAML::Key << "name" << YAML::Value << profile.name;
  out << YAML::Key << "source" << YAML::Value << profile.source;
  out << YAML::Key << "gpu" << YAML::Value << profile.gpu;
  for (const auto& field : numeric_fields()) {
    out << YAML::Key << field.key << YAML::Value << profile.*(field.member);
  }
  out << YAML::Key << "gemm_table" << YAML::Value << YAML::BeginSeq;
  for (const auto& point : profile.gemm_table) {
    out << YAML::Flow << YAML::BeginMap << YAML::Key << "m" << YAML::Value << point.m << YAML::Key << "n"
        << YAML::Value << point.n << YAML::Key << "k" << YAML::Value << point.k << YAML::Key << "efficiency"
        << YAML::Value << point.efficiency << YAML::EndMap;
  }
  out << YAML::EndSeq;
  out << YAML::Key << "assumptions" << YAML::Value << YAML::BeginSeq;
  for (const auto& line : profile.assumptions) {
    out << line;
  }
  out << YAML::EndSeq << YAML::EndMap;

  // Atomic: an interrupted `cuboid calibrate` leaves the previous profile intact.
  write_file_atomically(path, fmt::format("# cuboid cost profile (fields: model/cost_profile.hpp; SI units)\n{}\n",
                                          out.c_str()));
}

} // namespace cuboid::model

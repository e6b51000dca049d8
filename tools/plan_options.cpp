// Shared model/cluster/plan flags and their resolution into a validated Scenario (see plan_options.hpp).
#include "tools/plan_options.hpp"

#include "model/errors.hpp"
#include "model/hardware_catalog.hpp"
#include "model/model_catalog.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>

namespace cuboid::tools {

namespace {
constexpr const char* WHERE = "command line";

// The built-in default job: GPT-3 175B on 1024 A100-80GB with the layout of Narayanan et al. SC21 section 5.1
// (TP8 within a node, PP16, global batch 1536, micro-batch 1).
constexpr int DEFAULT_NUM_GPUS = 1024;
constexpr int DEFAULT_TP = 8;
constexpr int DEFAULT_PP = 16;
constexpr std::int64_t DEFAULT_GBS = 1536;
constexpr const char* DEFAULT_MODEL = "gpt3-175b";
constexpr const char* DEFAULT_GPU = "a100-80gb";
// Without a scenario: micro-batches per step default to 4 x pp so that the pipeline has work to overlap.
constexpr std::int64_t DEFAULT_MICROBATCHES_PER_STAGE = 4;

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_scenario_file(const std::string& path) {
  if (!(ends_with(path, ".yaml") || ends_with(path, ".yml")) || !std::filesystem::exists(path)) {
    return false;
  }
  try {
    const YAML::Node root = YAML::LoadFile(path);
    return root.IsMap() && (root["plan"] || root["cluster"]);
  } catch (const YAML::Exception&) {
    return false; // load_model reports the parse error with file and line
  }
}

void require_positive(const char* flag, std::int64_t value) {
  if (value <= 0) {
    throw InputError(input_message(WHERE, flag, fmt::format("{} must be a positive integer", value)));
  }
}

// a * b for sizes read from flags, or InputError naming `flag` when the product does not fit (e.g. --tp 2^30
// --pp 2^30): the checks that follow compare products with num_gpus and must not overflow.
std::int64_t checked_product(std::int64_t a, std::int64_t b, const char* flag) {
  std::int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) {
    throw InputError(input_message(WHERE, flag, fmt::format("{} x {} is too large", a, b)));
  }
  return product;
}

// --- mixture of experts --- --num-experts 0 makes the model dense; a dense model given --num-experts becomes a MoE
// whose experts default to the dense MLP's width (Megatron: --moe-ffn-hidden-size defaults to --ffn-hidden-size).
void apply_moe_flags(const ModelFlags& flags, model::ModelSpec& spec) {
  if (flags.num_experts) {
    if (*flags.num_experts < 0) {
      throw InputError(input_message(WHERE, "--num-experts",
                                     fmt::format("{} is not valid (expected 0 for a dense model or a positive "
                                                 "expert count)",
                                                 *flags.num_experts)));
    }
    spec.num_experts = *flags.num_experts;
    if (spec.num_experts == 0) {
      spec.moe_top_k = spec.moe_ffn_hidden_size = spec.num_shared_experts = spec.first_k_dense_layers = 0;
    } else if (spec.moe_ffn_hidden_size == 0) {
      spec.moe_ffn_hidden_size = spec.ffn_hidden_size;
    }
  }
  if (flags.top_k) {
    if (*flags.top_k <= 0) {
      throw InputError(input_message(WHERE, "--top-k",
                                     fmt::format("{} is not valid (expected 1 to the number of experts)",
                                                 *flags.top_k)));
    }
    if (!spec.is_moe()) {
      throw InputError(input_message(WHERE, "--top-k",
                                     fmt::format("{} needs a mixture-of-experts model ({} is dense: add "
                                                 "--num-experts)",
                                                 *flags.top_k, spec.name)));
    }
    spec.moe_top_k = *flags.top_k;
  }
  if (flags.moe_ffn_hidden_size) {
    require_positive("--moe-ffn-hidden-size", *flags.moe_ffn_hidden_size);
    spec.moe_ffn_hidden_size = *flags.moe_ffn_hidden_size;
  }
  if (spec.is_moe() && spec.moe_top_k == 0) {
    throw InputError(input_message(WHERE, "--top-k",
                                   fmt::format("missing: --num-experts {} needs the experts per token (--top-k)",
                                               spec.num_experts)));
  }
  if (spec.is_moe() && spec.moe_top_k > spec.num_experts) {
    throw InputError(input_message(WHERE, flags.top_k ? "--top-k" : "--num-experts",
                                   fmt::format("top-k {} is more than the {} experts (valid: 1 to {})",
                                               spec.moe_top_k, spec.num_experts, spec.num_experts)));
  }
}

bool any_plan_flag(const PlanFlags& p) {
  return p.tp || p.pp || p.dp || p.vp || p.micro_batch_size || p.global_batch_size || p.first_stage_layers ||
         p.last_stage_layers || p.cp;
}
} // namespace

void add_model_flags(CLI::App& app, ModelFlags& flags) {
  app.add_option("--model", flags.model,
                 "Model: catalog name (cuboid list models), HF config.json, model YAML or scenario YAML")
      ->capture_default_str();
  app.add_option("--num-layers", flags.num_layers, "Override: transformer layers");
  app.add_option("--hidden-size", flags.hidden_size, "Override: hidden size");
  app.add_option("--num-attention-heads", flags.num_attention_heads, "Override: attention heads");
  app.add_option("--num-query-groups", flags.num_query_groups, "Override: KV heads (GQA)");
  app.add_option("--ffn-hidden-size", flags.ffn_hidden_size, "Override: MLP hidden size");
  app.add_option("--vocab-size,--padded-vocab-size", flags.vocab_size, "Override: vocabulary size");
  app.add_option("--seq-length", flags.seq_length, "Override: training sequence length");
  // --- mixture of experts ---
  app.add_option("--num-experts", flags.num_experts, "Override: routed experts per MoE layer (0 = dense)");
  app.add_option("--top-k,--moe-router-topk", flags.top_k, "Override: experts per token (MoE)");
  app.add_option("--moe-ffn-hidden-size", flags.moe_ffn_hidden_size, "Override: hidden size of one expert (MoE)");
}

void add_cluster_flags(CLI::App& app, ClusterFlags& flags) {
  app.add_option("--gpu", flags.gpu, "GPU type (cuboid list gpus); picks the matching DGX system");
  app.add_option("--system", flags.system, "System (cuboid list systems), e.g. dgx-a100, dgx-h100");
  app.add_option("--num-gpus,--world-size", flags.num_gpus, "World size (GPUs)");
  app.add_option("--gpus-per-node", flags.gpus_per_node, "GPUs per node (default: the system's)");
  app.add_option("--profile", flags.profile, "Cost profile YAML (scenarios/profiles/, or from cuboid calibrate)");
}

void add_plan_flags(CLI::App& app, PlanFlags& flags) {
  app.add_option("--tp,--tensor-model-parallel-size", flags.tp, "Tensor-parallel size");
  app.add_option("--pp,--pipeline-model-parallel-size", flags.pp, "Pipeline-parallel size");
  app.add_option("--dp,--data-parallel-size", flags.dp, "Data-parallel size (default num-gpus / (tp*pp))");
  app.add_option("--vp,--num-virtual-stages-per-pipeline-rank,--virtual-pipeline-model-parallel-size", flags.vp,
                 "Model chunks per pipeline rank (>1: interleaved 1F1B)");
  app.add_option("--micro-batch-size,--mbs", flags.micro_batch_size, "Micro-batch size (sequences)");
  app.add_option("--global-batch-size,--gbs", flags.global_batch_size, "Global batch size (sequences)");
  app.add_option("--schedule", flags.schedule, "Pipeline schedule: gpipe, 1f1b, interleaved, zb-h1, zb-v");
  app.add_option("--recompute,--recompute-granularity", flags.recompute, "Recompute: none, selective, full");
  app.add_option("--precision", flags.precision, "bf16, fp16 or fp8");
  app.add_flag("--sequence-parallel", flags.sequence_parallel, "Megatron sequence parallelism");
  app.add_flag("--distributed-optimizer,--use-distributed-optimizer", flags.distributed_optimizer,
               "Shard optimizer state over DP (ZeRO-1)");
  app.add_flag("--no-overlap-grad-reduce", flags.no_overlap_grad_reduce,
               "Run the DP gradient reduction after backward instead of overlapping it");
  app.add_flag("--grad-reduce-in-bf16", flags.grad_reduce_in_bf16,
               "Reduce DP gradients in bf16 (main-grad buffer bf16; Megatron's flag, NeMo grad_sync_dtype: bf16)");
  app.add_flag("--overlap-param-gather", flags.overlap_param_gather,
               "Distributed optimizer: all-gather the updated parameters behind the next forward");
  app.add_flag("--tp-comm-overlap", flags.tp_comm_overlap,
               "Overlap sequence-parallel TP all-gather / reduce-scatter with their GEMMs (TE userbuffers)");
  app.add_flag("--async-tensor-model-parallel-allreduce", flags.async_tp_grad_reduce,
               "Reduce a column-parallel linear's input gradient behind its weight-gradient GEMM (Megatron-LM 2022 "
               "flag; always on in Megatron-Core; simulation only: the CPU/CUDA runtimes reduce synchronously)");
  app.add_option("--decoder-first-pipeline-num-layers", flags.first_stage_layers, "Layers on the first stage");
  app.add_option("--decoder-last-pipeline-num-layers", flags.last_stage_layers, "Layers on the last stage");
  app.add_flag("--account-for-embedding-in-pipeline-split", flags.account_for_embedding_in_pipeline_split,
               "Megatron-Core: the input embedding counts as one layer in the pipeline split");
  app.add_flag("--account-for-loss-in-pipeline-split", flags.account_for_loss_in_pipeline_split,
               "Megatron-Core: the loss (output layer + cross-entropy) counts as one layer in the pipeline split");
  // --- mixture of experts ---
  app.add_option("--ep,--expert-model-parallel-size", flags.ep,
                 "Expert-parallel size (MoE): divides dp and the expert count");
  app.add_option("--moe-imbalance", flags.moe_imbalance,
                 "MoE load imbalance >= 1: the busiest expert gets this many times the mean tokens");
  // --- context parallelism ---
  app.add_option("--cp,--context-parallel-size", flags.cp,
                 "Context-parallel size: sequence split over cp ranks (rank order tp-cp-dp-pp)");
  app.add_option("--cp-comm-type", flags.cp_comm_type,
                 "CP attention exchange: p2p (ring, overlapped; Megatron's default), allgather (K/V all-gathered), "
                 "a2a (DeepSpeed-Ulysses all-to-all, heads/tp divisible by cp)");
  // --- ZeRO / FSDP ---
  app.add_option("--zero,--zero-stage", flags.zero,
                 "ZeRO stage over DP: 0 none, 1 optimizer state (= --distributed-optimizer), 2 + gradients, "
                 "3 + parameters (FSDP)");
  app.add_flag("--fsdp", flags.fsdp, "Fully sharded data parallel: the same as --zero 3");
}

void add_scenario_flags(CLI::App& app, ScenarioFlags& flags) {
  app.add_option("scenario", flags.scenario, "Scenario YAML (model, cluster, plan); flags override it");
  add_model_flags(app, flags.model);
  add_cluster_flags(app, flags.cluster);
  add_plan_flags(app, flags.plan);
}

void apply_model_flags(const ModelFlags& flags, model::ModelSpec& spec) {
  const auto apply = [](const char* flag, const std::optional<std::int64_t>& value, std::int64_t& field) {
    if (value) {
      require_positive(flag, *value);
      field = *value;
    }
  };
  const std::int64_t old_heads = spec.num_attention_heads;
  apply("--num-layers", flags.num_layers, spec.num_layers);
  apply("--hidden-size", flags.hidden_size, spec.hidden_size);
  apply("--num-attention-heads", flags.num_attention_heads, spec.num_attention_heads);
  apply("--num-query-groups", flags.num_query_groups, spec.num_query_groups);
  apply("--ffn-hidden-size", flags.ffn_hidden_size, spec.ffn_hidden_size);
  apply("--vocab-size", flags.vocab_size, spec.vocab_size);
  apply("--seq-length", flags.seq_length, spec.seq_length);
  apply_moe_flags(flags, spec);
  if ((flags.hidden_size || flags.num_attention_heads) && spec.num_attention_heads > 0) {
    if (spec.hidden_size % spec.num_attention_heads != 0) {
      throw InputError(input_message(WHERE, flags.hidden_size ? "--hidden-size" : "--num-attention-heads",
                                     fmt::format("hidden size {} is not divisible by num_attention_heads = {} (the "
                                                 "head dimension would not be an integer)",
                                                 spec.hidden_size, spec.num_attention_heads)));
    }
    spec.head_dim = spec.hidden_size / spec.num_attention_heads;
  }
  if (flags.num_attention_heads && !flags.num_query_groups && spec.num_query_groups == old_heads) {
    spec.num_query_groups = spec.num_attention_heads; // MHA stays MHA
  }
  model::validate(spec, WHERE);
}

model::Scenario resolve_scenario(const ScenarioFlags& flags) {
  model::Scenario scenario;
  std::optional<std::string> scenario_path = flags.scenario;
  if (!scenario_path && is_scenario_file(flags.model.model)) {
    scenario_path = flags.model.model;
  }
  const bool pure_default = !scenario_path && flags.model.model == DEFAULT_MODEL && !flags.cluster.gpu &&
                            !flags.cluster.system && !flags.cluster.num_gpus && !any_plan_flag(flags.plan);
  std::vector<std::string> notes;
  if (scenario_path) {
    scenario = model::load_scenario(*scenario_path);
  } else {
    scenario.model = model::load_model(flags.model.model);
    if (pure_default) {
      scenario.plan.tp = DEFAULT_TP;
      scenario.plan.pp = DEFAULT_PP;
      scenario.plan.global_batch_size = DEFAULT_GBS;
      notes.emplace_back("default job: GPT-3 175B on 1024 A100-80GB, TP8 PP16 DP8, mbs 1, gbs 1536 "
                         "(Narayanan et al. SC21 sec. 5.1)");
    }
  }
  apply_model_flags(flags.model, scenario.model);

  model::Plan& plan = scenario.plan;
  const PlanFlags& pf = flags.plan;
  if (pf.tp) plan.tp = *pf.tp;
  if (pf.pp) plan.pp = *pf.pp;
  if (pf.vp) plan.vp = *pf.vp;
  if (pf.micro_batch_size) plan.micro_batch_size = *pf.micro_batch_size;
  if (pf.schedule) plan.schedule = model::parse_schedule(*pf.schedule, fmt::format("{}: --schedule", WHERE));
  if (pf.recompute) plan.recompute = model::parse_recompute(*pf.recompute, fmt::format("{}: --recompute", WHERE));
  if (pf.precision) plan.precision = model::parse_precision(*pf.precision, fmt::format("{}: --precision", WHERE));
  if (pf.sequence_parallel) plan.sequence_parallel = true;
  if (pf.distributed_optimizer) plan.distributed_optimizer = true;
  if (pf.no_overlap_grad_reduce) plan.overlap_grad_reduce = false;
  if (pf.grad_reduce_in_bf16) plan.grad_reduce_in_bf16 = true;
  if (pf.overlap_param_gather) plan.overlap_param_gather = true;
  if (pf.tp_comm_overlap) plan.tp_comm_overlap = true;
  if (pf.async_tp_grad_reduce) plan.async_tp_grad_reduce = true;
  if (pf.first_stage_layers) plan.first_stage_layers = *pf.first_stage_layers;
  if (pf.last_stage_layers) plan.last_stage_layers = *pf.last_stage_layers;
  if (pf.account_for_embedding_in_pipeline_split) plan.account_for_embedding_in_pipeline_split = true;
  if (pf.account_for_loss_in_pipeline_split) plan.account_for_loss_in_pipeline_split = true;
  // --- mixture of experts ---
  if (pf.ep) {
    require_positive("--ep", *pf.ep);
    if (!scenario.model.is_moe() && *pf.ep != 1) {
      throw InputError(input_message(WHERE, "--ep",
                                     fmt::format("{} needs a mixture-of-experts model ({} is dense: num_experts = "
                                                 "0; valid: --ep 1, or add --num-experts)",
                                                 *pf.ep, scenario.model.name)));
    }
    plan.ep = *pf.ep;
  }
  if (pf.moe_imbalance) plan.moe_imbalance = *pf.moe_imbalance;
  // --- ZeRO / FSDP --- (set_zero_stage keeps distributed_optimizer == zero >= 1)
  if (pf.fsdp && pf.zero && *pf.zero != model::MAX_ZERO_STAGE) {
    throw InputError(input_message(WHERE, "--fsdp",
                                   fmt::format("contradicts --zero {} (--fsdp is --zero 3; valid: one of the two, or "
                                               "--zero 3 --fsdp)",
                                               *pf.zero)));
  }
  if (pf.zero && *pf.zero == 0 && pf.distributed_optimizer) {
    throw InputError(input_message(WHERE, "--zero",
                                   "0 contradicts --distributed-optimizer (that is --zero 1; valid: --zero 1, 2 or 3 "
                                   "with --distributed-optimizer, or drop it)"));
  }
  if (pf.zero) {
    model::set_zero_stage(plan, *pf.zero, WHERE, "--zero");
  } else if (pf.fsdp) {
    model::set_zero_stage(plan, model::MAX_ZERO_STAGE, WHERE, "--fsdp");
  }
  if (pf.vp && *pf.vp > 1 && !pf.schedule) {
    plan.schedule = model::Schedule::Interleaved; // Megatron: virtual stages imply the interleaved schedule
  }
  // --- zero-bubble schedules ---
  if (plan.schedule == model::Schedule::ZbV && !pf.vp) {
    plan.vp = 2; // zb-v always runs two V-shaped model chunks per pipeline rank
  }
  require_positive("--tp", plan.tp);
  require_positive("--pp", plan.pp);
  require_positive("--vp", plan.vp);
  require_positive("--micro-batch-size", plan.micro_batch_size);
  // --- context parallelism ---
  if (pf.cp) {
    require_positive("--cp", *pf.cp);
    plan.cp = *pf.cp;
  }
  if (pf.cp_comm_type) {
    plan.cp_comm_type = model::parse_cp_comm_type(*pf.cp_comm_type, fmt::format("{}: --cp-comm-type", WHERE));
  }

  // Cluster: flags on top of the scenario's, else defaults.
  const ClusterFlags& cf = flags.cluster;
  const bool cluster_flags = cf.gpu || cf.system || cf.num_gpus || cf.gpus_per_node;
  if (!scenario_path || cluster_flags) {
    int num_gpus = 0;
    if (cf.num_gpus) {
      num_gpus = *cf.num_gpus;
    } else if (scenario_path) {
      num_gpus = scenario.cluster.num_gpus;
    } else if (pure_default) {
      num_gpus = DEFAULT_NUM_GPUS;
    } else {
      const std::int64_t world = checked_product(
          checked_product(checked_product(plan.tp, plan.pp, "--pp"), plan.cp, "--cp"), pf.dp ? *pf.dp : 1, "--dp");
      if (world > model::MAX_NUM_GPUS) {
        throw InputError(input_message(WHERE, "--num-gpus",
                                       fmt::format("not given, and tp*pp*dp = {} is too large (at most {} GPUs)", world,
                                                   model::MAX_NUM_GPUS)));
      }
      num_gpus = static_cast<int>(world);
      notes.emplace_back(fmt::format("--num-gpus not given: using tp*pp*dp = {}", num_gpus));
    }
    require_positive("--num-gpus", num_gpus);
    std::string system_or_gpu = DEFAULT_GPU;
    if (cf.system) {
      system_or_gpu = *cf.system;
    } else if (cf.gpu) {
      system_or_gpu = *cf.gpu;
    } else if (scenario_path) {
      system_or_gpu = scenario.cluster.name;
    } else {
      notes.emplace_back(fmt::format("--gpu not given: using {}", DEFAULT_GPU));
    }
    if (cf.gpus_per_node) {
      require_positive("--gpus-per-node", *cf.gpus_per_node);
    }
    scenario.cluster = model::make_cluster(system_or_gpu, num_gpus, cf.gpus_per_node.value_or(0), WHERE);
  }

  // With context parallelism the model-parallel block is tp*cp*pp (dp = num-gpus / (tp*cp*pp), Megatron).
  const std::int64_t model_parallel = checked_product(checked_product(plan.tp, plan.pp, "--pp"), plan.cp, "--cp");
  const int num_gpus = scenario.cluster.num_gpus;
  if (pf.dp) {
    require_positive("--dp", *pf.dp);
    const std::int64_t world = checked_product(model_parallel, *pf.dp, "--dp");
    if (world != num_gpus) {
      throw InputError(input_message(
          WHERE, "--dp",
          plan.cp == 1 ? fmt::format("tp*pp*dp = {}*{}*{} = {} != num_gpus = {}", plan.tp, plan.pp, *pf.dp, world,
                                     num_gpus)
                       : fmt::format("tp*cp*pp*dp = {}*{}*{}*{} = {} != num_gpus = {}", plan.tp, plan.cp, plan.pp,
                                     *pf.dp, world, num_gpus)));
    }
    plan.dp = *pf.dp;
  } else {
    if (num_gpus % model_parallel != 0) {
      throw InputError(input_message(
          WHERE, plan.cp == 1 ? "--num-gpus" : "--cp",
          plan.cp == 1 ? fmt::format("{} is not divisible by tp*pp = {}*{} = {}", num_gpus, plan.tp, plan.pp,
                                     model_parallel)
                       : fmt::format("tp*cp*pp = {}*{}*{} = {} does not divide num_gpus = {}", plan.tp, plan.cp,
                                     plan.pp, model_parallel, num_gpus)));
    }
    plan.dp = static_cast<int>(num_gpus / model_parallel);
  }
  if (pf.global_batch_size) {
    require_positive("--global-batch-size", *pf.global_batch_size);
    plan.global_batch_size = *pf.global_batch_size;
  } else if (!scenario_path && !pure_default) {
    plan.global_batch_size = checked_product(
        checked_product(checked_product(plan.micro_batch_size, plan.dp, "--micro-batch-size"),
                        DEFAULT_MICROBATCHES_PER_STAGE, "--micro-batch-size"),
        plan.pp, "--micro-batch-size");
    notes.emplace_back(fmt::format("--global-batch-size not given: using mbs*dp*4*pp = {}", plan.global_batch_size));
  }
  for (auto& note : notes) {
    scenario.cluster.assumptions.push_back(std::move(note));
  }
  model::validate(plan, scenario.model, scenario.cluster, WHERE);
  return scenario;
}

} // namespace cuboid::tools

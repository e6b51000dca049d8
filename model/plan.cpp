// Plan names (schedule, recompute, precision), the pipeline layer split, and plan validation against the model and
// the cluster. The rules are Megatron-LM's (megatron/training/arguments.py), cited where they are applied.
#include "model/plan.hpp"

#include "model/errors.hpp"
#include "model/model_spec.hpp"
#include "model/schedule.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

namespace cuboid::model {

namespace {
constexpr std::array<std::pair<Schedule, const char*>, 5> SCHEDULES = {
    {{Schedule::GPipe, "gpipe"}, {Schedule::OneFOneB, "1f1b"}, {Schedule::Interleaved, "interleaved"},
     {Schedule::ZbH1, "zb-h1"}, {Schedule::ZbV, "zb-v"}}};
constexpr std::array<std::pair<Recompute, const char*>, 3> RECOMPUTES = {
    {{Recompute::None, "none"}, {Recompute::Selective, "selective"}, {Recompute::Full, "full"}}};
constexpr std::array<std::pair<Precision, const char*>, 3> PRECISIONS = {
    {{Precision::Bf16, "bf16"}, {Precision::Fp16, "fp16"}, {Precision::Fp8, "fp8"}}};
constexpr std::array<std::pair<CpCommType, const char*>, 3> CP_COMM_TYPES = {
    {{CpCommType::P2P, "p2p"}, {CpCommType::AllGather, "allgather"}, {CpCommType::A2A, "a2a"}}};

template <typename Enum, std::size_t N>
std::string name_of(const std::array<std::pair<Enum, const char*>, N>& table, Enum value) {
  for (const auto& [candidate, name] : table) {
    if (candidate == value) {
      return name;
    }
  }
  throw InternalError(fmt::format("unnamed enum value {}", static_cast<int>(value)));
}

template <typename Enum, std::size_t N>
Enum parse_name(const std::array<std::pair<Enum, const char*>, N>& table, const std::string& text,
                const std::string& where, const char* what) {
  std::vector<std::string> names;
  for (const auto& [value, name] : table) {
    if (text == name) {
      return value;
    }
    names.emplace_back(name);
  }
  throw InputError(fmt::format("{}: '{}' is not a valid {}{}", where, text, what, valid_values_hint(text, names)));
}

// "where: field: text", or "field: text" when there is no file (layers_per_stage called on its own).
std::string message(const std::string& where, const std::string& field, const std::string& text) {
  return where.empty() ? fmt::format("{}: {}", field, text) : input_message(where, field, text);
}

// The smallest 16 divisors, found up to sqrt(value) (a large prime must not take `value` steps).
std::string divisors_of(std::int64_t value) {
  constexpr std::size_t MAX_SHOWN = 16;
  std::vector<std::int64_t> divisors;
  for (std::int64_t candidate = 1; candidate <= value / candidate; ++candidate) {
    if (value % candidate == 0) {
      divisors.push_back(candidate);
      divisors.push_back(value / candidate);
    }
  }
  std::sort(divisors.begin(), divisors.end());
  divisors.erase(std::unique(divisors.begin(), divisors.end()), divisors.end());
  if (divisors.size() > MAX_SHOWN) {
    divisors.resize(MAX_SHOWN);
  }
  return fmt::format("{}", fmt::join(divisors, ", "));
}

// tp must divide a model dimension so that each TP rank holds an equal shard (Megatron: heads, query groups and
// the MLP are split column-/row-wise; the vocabulary is padded instead, so it is not checked).
void require_tp_divides(const Plan& plan, std::int64_t value, const char* dimension, const std::string& where) {
  if (value % plan.tp != 0) {
    throw InfeasibleError(input_message(where, "plan.tp",
                                        fmt::format("{} does not divide {} = {} (valid tp: {})", plan.tp, dimension,
                                                    value, divisors_of(value))));
  }
}
} // namespace

std::string to_string(Schedule schedule) { return name_of(SCHEDULES, schedule); }
bool splits_backward(Schedule schedule) { return schedule == Schedule::ZbH1 || schedule == Schedule::ZbV; }
std::string to_string(Recompute recompute) { return name_of(RECOMPUTES, recompute); }
std::string to_string(Precision precision) { return name_of(PRECISIONS, precision); }
std::string to_string(CpCommType type) { return name_of(CP_COMM_TYPES, type); }

Schedule parse_schedule(const std::string& text, const std::string& where) {
  return parse_name(SCHEDULES, text, where, "schedule");
}
Recompute parse_recompute(const std::string& text, const std::string& where) {
  return parse_name(RECOMPUTES, text, where, "recompute granularity");
}
Precision parse_precision(const std::string& text, const std::string& where) {
  return parse_name(PRECISIONS, text, where, "precision");
}
CpCommType parse_cp_comm_type(const std::string& text, const std::string& where) {
  if (text == "all_gather") {
    return CpCommType::AllGather; // Transformer Engine's name for Megatron's "allgather"
  }
  if (text == "a2a+p2p") {
    throw InputError(fmt::format("{}: 'a2a+p2p' (hierarchical context parallelism, Megatron "
                                 "--hierarchical-context-parallel-sizes) is not modelled (valid: p2p, allgather, a2a)",
                                 where));
  }
  return parse_name(CP_COMM_TYPES, text, where, "CP communication type");
}

void set_zero_stage(Plan& plan, int stage, const std::string& where, const std::string& field) {
  if (stage < 0 || stage > MAX_ZERO_STAGE) {
    throw InputError(input_message(where, field,
                                   fmt::format("{} is not a valid ZeRO stage (valid: 0 none, 1 optimizer state, 2 + "
                                               "gradients, 3 + parameters = FSDP)",
                                               stage)));
  }
  plan.zero_stage = stage;
  plan.distributed_optimizer = stage >= 1;
}

std::vector<int> layers_per_stage(const Plan& plan, std::int64_t num_layers) {
  return layers_per_stage(plan, num_layers, "");
}

namespace {
// The rules of Megatron-Core's TransformerConfig.__post_init__ (megatron/core/transformer/transformer_config.py) for
// account_for_embedding_in_pipeline_split / account_for_loss_in_pipeline_split: they cannot be combined with
// num_layers_in_first/last_pipeline_stage; num_layers + e + l must divide by pp, and the slots per pipeline rank by
// vp. Megatron's get_num_layers_to_build allows a chunk of zero layers (assert >= 0, "Not enough layers in the first
// virtual pipeline stage"); cuboid refuses it (no consumer of ChunkLayout is tested with an empty chunk).
void check_slot_split(const Plan& plan, std::int64_t num_layers, const std::string& where) {
  const bool embedding = plan.account_for_embedding_in_pipeline_split;
  const bool loss = plan.account_for_loss_in_pipeline_split;
  const char* flag_field =
      embedding ? "plan.account_for_embedding_in_pipeline_split" : "plan.account_for_loss_in_pipeline_split";
  if (plan.first_stage_layers > 0 || plan.last_stage_layers > 0) {
    throw InfeasibleError(message(where, flag_field,
                                  fmt::format("true cannot be combined with first_stage_layers / last_stage_layers "
                                              "({} / {}) (Megatron-Core refuses num_layers_in_first/last_pipeline_"
                                              "stage with the embedding/loss accounting; valid: first_stage_layers = "
                                              "last_stage_layers = 0, or the flag false)",
                                              plan.first_stage_layers, plan.last_stage_layers)));
  }
  const std::int64_t slots = num_layers + (embedding ? 1 : 0) + (loss ? 1 : 0);
  const std::string slots_text = fmt::format("{} layer slots (num_layers = {}{}{})", slots, num_layers,
                                             embedding ? " + 1 embedding" : "", loss ? " + 1 loss" : "");
  if (slots % plan.pp != 0) {
    throw InfeasibleError(message(where, "plan.pp",
                                  fmt::format("{} does not divide the {} of the embedding/loss-aware pipeline split "
                                              "(valid pp: {})",
                                              plan.pp, slots_text, divisors_of(slots))));
  }
  const std::int64_t per_stage = slots / plan.pp;
  if (per_stage % plan.vp != 0) {
    throw InfeasibleError(message(where, "plan.vp",
                                  fmt::format("{} does not divide the {} layer slots of each pipeline stage ({} / pp "
                                              "= {}; valid vp: {})",
                                              plan.vp, per_stage, slots_text, plan.pp, divisors_of(per_stage))));
  }
  const std::int64_t chunks = static_cast<std::int64_t>(plan.pp) * plan.vp;
  if (slots / chunks == 1) {
    throw InfeasibleError(message(where, flag_field,
                                  fmt::format("true leaves the {} model chunk with the {} and no transformer layer "
                                              "({} over pp*vp = {} chunks: 1 slot each); cuboid needs at least one "
                                              "layer per chunk (valid: pp*vp <= {}, 2 or more slots per chunk)",
                                              embedding ? "first" : "last", embedding ? "embedding" : "loss",
                                              slots_text, chunks, slots / 2)));
  }
}
} // namespace

LayerRange pipeline_slot_layers(const Plan& plan, std::int64_t num_layers, int virtual_stage,
                                const std::string& where) {
  check_slot_split(plan, num_layers, where);
  CUBOID_ASSERT(virtual_stage >= 0 && virtual_stage < plan.pp * plan.vp, "virtual stage {} outside pp={} vp={}",
                virtual_stage, plan.pp, plan.vp);
  const std::int64_t embedding = plan.account_for_embedding_in_pipeline_split ? 1 : 0;
  const std::int64_t loss = plan.account_for_loss_in_pipeline_split ? 1 : 0;
  const std::int64_t per_chunk = (num_layers + embedding + loss) / (static_cast<std::int64_t>(plan.pp) * plan.vp);
  // Slots [v P, (v + 1) P) minus the embedding slot in front of the layers and the loss slot behind them.
  const std::int64_t begin = std::max<std::int64_t>(virtual_stage * per_chunk, embedding) - embedding;
  const std::int64_t end = std::min<std::int64_t>((virtual_stage + 1) * per_chunk, embedding + num_layers) - embedding;
  return {static_cast<int>(begin), static_cast<int>(end - begin)};
}

// Megatron --decoder-first-pipeline-num-layers / --decoder-last-pipeline-num-layers: the first and/or last stage
// get the given counts, the middle stages split the rest evenly. Example: Llama 3.1 405B, 126 layers, pp=16,
// first=7, last=7 -> [7, 8 x 14, 7].
std::vector<int> layers_per_stage(const Plan& plan, std::int64_t num_layers, const std::string& where) {
  if (plan.pp <= 0 || plan.vp <= 0 || num_layers <= 0 || plan.first_stage_layers < 0 || plan.last_stage_layers < 0) {
    throw InputError(message(where, "plan",
                             fmt::format("pp = {}, vp = {}, num_layers = {} must be positive and first/last stage "
                                         "layers ({}, {}) non-negative",
                                         plan.pp, plan.vp, num_layers, plan.first_stage_layers,
                                         plan.last_stage_layers)));
  }
  if (plan.accounts_in_pipeline_split()) {
    // Each stage holds the layers of its vp virtual stages (interleaved, or zb-v's V), which need not be equal.
    std::vector<int> layers(static_cast<std::size_t>(plan.pp), 0);
    for (int stage = 0; stage < plan.pp; ++stage) {
      for (int chunk = 0; chunk < plan.vp; ++chunk) {
        layers[static_cast<std::size_t>(stage)] +=
            pipeline_slot_layers(plan, num_layers, virtual_stage_of(plan, stage, chunk), where).num_layers;
      }
    }
    return layers;
  }
  const std::int64_t first = plan.first_stage_layers;
  const std::int64_t last = plan.last_stage_layers;
  const int overridden = (first > 0 ? 1 : 0) + (last > 0 ? 1 : 0);
  if (overridden > 0 && plan.pp == 1) {
    throw InfeasibleError(message(where, first > 0 ? "plan.first_stage_layers" : "plan.last_stage_layers",
                                  fmt::format("{} cannot be set with pp = 1 (a single stage holds all {} layers)",
                                              first > 0 ? first : last, num_layers)));
  }
  const std::int64_t rest = num_layers - first - last;
  const std::int64_t middle_stages = plan.pp - overridden;
  if (overridden == 0 && num_layers % plan.pp != 0) {
    throw InfeasibleError(message(where, "plan.pp",
                                  fmt::format("{} does not divide num_layers = {} (valid pp: {}; or set "
                                              "first_stage_layers/last_stage_layers for an uneven split)",
                                              plan.pp, num_layers, divisors_of(num_layers))));
  }
  const bool rest_ok = middle_stages == 0 ? rest == 0 : rest >= middle_stages && rest % middle_stages == 0;
  if (!rest_ok) {
    throw InfeasibleError(message(where, first > 0 ? "plan.first_stage_layers" : "plan.last_stage_layers",
                                  fmt::format("first = {}, last = {} leave {} of num_layers = {} for {} middle "
                                              "stages: it must split evenly with at least one layer per stage",
                                              first, last, rest, num_layers, middle_stages)));
  }
  const std::int64_t per_middle = middle_stages == 0 ? 0 : rest / middle_stages;
  std::vector<int> layers(static_cast<std::size_t>(plan.pp), static_cast<int>(per_middle));
  if (first > 0) {
    layers.front() = static_cast<int>(first);
  }
  if (last > 0) {
    layers.back() = static_cast<int>(last);
  }
  // Interleaving splits each stage into vp model chunks of equal size (Megatron: layers per virtual stage).
  for (std::size_t stage = 0; stage < layers.size(); ++stage) {
    if (layers[stage] % plan.vp != 0) {
      throw InfeasibleError(message(where, "plan.vp",
                                    fmt::format("{} does not divide the {} layers of pipeline stage {} (each stage is "
                                                "split into vp model chunks)",
                                                plan.vp, layers[stage], stage)));
    }
  }
  return layers;
}

namespace {
// --- mixture of experts ---
void validate_moe(const Plan& plan, const ModelSpec& model, const std::string& where) {
  if (plan.ep < 1) {
    throw InputError(input_message(where, "plan.ep", fmt::format("{} is not valid (expected a positive integer)",
                                                                 plan.ep)));
  }
  if (!(plan.moe_imbalance >= 1.0) || !std::isfinite(plan.moe_imbalance)) {
    throw InputError(input_message(where, "plan.moe_imbalance",
                                   fmt::format("{} is not valid (expected a finite number >= 1: the busiest expert's "
                                               "tokens over the mean)",
                                               plan.moe_imbalance)));
  }
  if (!model.is_moe()) {
    if (plan.ep != 1) {
      throw InputError(input_message(where, "plan.ep",
                                     fmt::format("{} needs a mixture-of-experts model ({} is dense: num_experts = 0; "
                                                 "valid: ep = 1, or set num_experts)",
                                                 plan.ep, model.name)));
    }
    if (plan.moe_imbalance != 1.0) {
      throw InputError(input_message(where, "plan.moe_imbalance",
                                     fmt::format("{} needs a mixture-of-experts model ({} is dense; valid: 1)",
                                                 plan.moe_imbalance, model.name)));
    }
    return;
  }
  // A token visits an expert at most once, so an expert gets at most all tokens: F * tokens * K / E <= tokens.
  const double max_imbalance = static_cast<double>(model.num_experts) / static_cast<double>(model.moe_top_k);
  if (plan.moe_imbalance > max_imbalance) {
    throw InputError(input_message(where, "plan.moe_imbalance",
                                   fmt::format("{} is not valid (expected 1 to num_experts / top_k = {}: the busiest "
                                               "expert cannot receive more than every token)",
                                               plan.moe_imbalance, max_imbalance)));
  }
  if (model.num_experts % plan.ep != 0) {
    throw InfeasibleError(input_message(where, "plan.ep",
                                        fmt::format("{} does not divide num_experts = {} (each EP rank holds "
                                                    "num_experts / ep experts)",
                                                    plan.ep, model.num_experts)));
  }
  if (plan.dp % plan.ep != 0) {
    throw InfeasibleError(input_message(where, "plan.ep",
                                        fmt::format("{} does not divide dp = {} (Megatron carves the expert-parallel "
                                                    "groups out of the data-parallel ranks)",
                                                    plan.ep, plan.dp)));
  }
  if (splits_backward(plan.schedule)) {
    throw InfeasibleError(input_message(where, "plan.schedule",
                                        fmt::format("{} is not supported with a mixture-of-experts model yet (valid "
                                                    "for {}: gpipe, 1f1b, interleaved)",
                                                    to_string(plan.schedule), model.name)));
  }
  if (plan.cp > 1) {
    throw InfeasibleError(input_message(where, "plan.cp",
                                        fmt::format("{} is not supported with a mixture-of-experts model yet (valid "
                                                    "for {}: cp = 1); context parallelism is for dense models",
                                                    plan.cp, model.name)));
  }
  require_tp_divides(plan, model.moe_ffn_hidden_size, "moe_ffn_hidden_size", where);
}
} // namespace

void validate(const Plan& plan, const ModelSpec& model, const ClusterSpec& cluster, const std::string& where) {
  // Malformed values first (InputError), then what cannot run (InfeasibleError).
  const std::pair<const char*, std::int64_t> sizes[] = {
      {"plan.tp", plan.tp}, {"plan.pp", plan.pp}, {"plan.dp", plan.dp}, {"plan.vp", plan.vp}, {"plan.cp", plan.cp},
      {"plan.micro_batch_size", plan.micro_batch_size}, {"plan.global_batch_size", plan.global_batch_size}};
  for (const auto& [field, value] : sizes) {
    if (value <= 0) {
      throw InputError(input_message(where, field, fmt::format("{} is not valid (expected a positive integer)", value)));
    }
  }
  const std::pair<const char*, int> overrides[] = {{"plan.first_stage_layers", plan.first_stage_layers},
                                                   {"plan.last_stage_layers", plan.last_stage_layers}};
  for (const auto& [field, value] : overrides) {
    if (value < 0) {
      throw InputError(input_message(where, field,
                                     fmt::format("{} is not valid (expected an integer >= 0; 0 = even split)", value)));
    }
  }
  if (!(plan.grad_bucket_bytes > 0.0) || !std::isfinite(plan.grad_bucket_bytes)) {
    throw InputError(input_message(where, "plan.grad_bucket_bytes",
                                   fmt::format("{} is not valid (expected a finite positive number)",
                                               plan.grad_bucket_bytes)));
  }
  // --- zero-bubble schedules ---
  // ZB-V (Qi et al. 2024, section 6): exactly two model chunks per pipeline rank, in a V shape.
  if (plan.schedule == Schedule::ZbV && plan.vp != 2) {
    throw InputError(input_message(where, "plan.vp",
                                   fmt::format("{} is not valid with schedule zb-v (valid: vp = 2, the two model "
                                               "chunks of each pipeline rank in a V shape)",
                                               plan.vp)));
  }
  // Megatron: virtual pipeline stages only exist in the interleaved schedule, and it needs them.
  if (plan.vp > 1 && plan.schedule != Schedule::Interleaved && plan.schedule != Schedule::ZbV) {
    throw InputError(input_message(where, "plan.vp",
                                   fmt::format("{} needs schedule interleaved (schedule is {}; valid: vp = 1, "
                                               "schedule interleaved, or vp = 2 with zb-v)",
                                               plan.vp, to_string(plan.schedule))));
  }
  if (plan.schedule == Schedule::Interleaved && plan.vp == 1) {
    throw InputError(input_message(where, "plan.schedule",
                                   "interleaved needs vp > 1 model chunks per pipeline rank (valid: vp >= 2, or "
                                   "schedule 1f1b/gpipe)"));
  }
  // --- ZeRO / FSDP ---
  if (plan.zero_stage < 0 || plan.zero_stage > MAX_ZERO_STAGE) {
    throw InputError(input_message(where, "plan.zero_stage",
                                   fmt::format("{} is not valid (expected 0, 1, 2 or 3)", plan.zero_stage)));
  }
  if (plan.zero_stage >= 1 && !plan.distributed_optimizer) {
    throw InputError(input_message(where, "plan.distributed_optimizer",
                                   fmt::format("false contradicts zero_stage = {} (every ZeRO stage >= 1 shards the "
                                               "optimizer state; valid: distributed_optimizer true, or zero_stage 0)",
                                               plan.zero_stage)));
  }
  if (plan.zero_stage >= 2 && plan.all_reduce_sharded_grads) {
    throw InputError(input_message(where, "plan.zero_stage",
                                   fmt::format("{} reduce-scatters the gradients, which contradicts "
                                               "all_reduce_sharded_grads (DeepSpeed BF16_Optimizer, ZeRO-1 only)",
                                               plan.zero_stage)));
  }
  if (plan.grad_reduce_in_bf16 && plan.get_zero_stage() >= 2) {
    throw InputError(input_message(where, "plan.grad_reduce_in_bf16",
                                   fmt::format("true cannot be combined with zero_stage = {} (it sets the dtype of "
                                               "Megatron's DDP main-grad buffer; ZeRO-2/3 reduce-scatter fp32 "
                                               "gradients; valid: zero_stage 0/1)",
                                               plan.get_zero_stage())));
  }
  if (plan.grad_reduce_in_bf16 && plan.precision == Precision::Fp16) {
    throw InputError(input_message(where, "plan.grad_reduce_in_bf16",
                                   "true cannot be combined with precision fp16 (fp16 plans already reduce 16-bit "
                                   "gradients; valid: precision bf16 or fp8)"));
  }
  if (plan.zero_stage >= 2 && !plan.overlap_grad_reduce) {
    throw InputError(input_message(where, "plan.overlap_grad_reduce",
                                   fmt::format("false cannot be combined with zero_stage = {} (sharded gradients are "
                                               "reduce-scattered right after each micro-batch's backward; valid: "
                                               "overlap_grad_reduce true, or zero_stage 0/1)",
                                               plan.zero_stage)));
  }
  if (plan.zero_stage == 3 && plan.overlap_param_gather) {
    throw InputError(input_message(where, "plan.overlap_param_gather",
                                   "cannot be combined with zero_stage = 3 (ZeRO-3 gathers each layer's parameters "
                                   "before its forward and backward; there is no end-of-step parameter all-gather to "
                                   "overlap; valid: zero_stage 1 or 2 with overlap_param_gather)"));
  }
  // ZeRO-2/3 are built for dense models on the tp-dp-pp grid with the GPipe / 1F1B / interleaved schedules: refuse
  // the beyond-3D combinations not implemented yet rather than predict them wrongly.
  if (plan.zero_stage >= 2) {
    const auto refuse = [&](const char* field, const std::string& what) {
      throw InfeasibleError(input_message(where, field,
                                          fmt::format("{} cannot be combined with zero_stage = {} yet (valid: "
                                                      "zero_stage 0 or 1 with it)",
                                                      what, plan.zero_stage)));
    };
    if (plan.cp > 1) {
      refuse("plan.cp", fmt::format("cp = {}", plan.cp));
    }
    if (model.is_moe()) {
      refuse("plan.zero_stage", fmt::format("the mixture-of-experts model {}", model.name));
    }
    if (splits_backward(plan.schedule)) {
      refuse("plan.schedule", fmt::format("schedule {}", to_string(plan.schedule)));
    }
  }
  validate(model, where, "model.");

  // In double: tp*pp*dp of three arbitrary ints can overflow 64 bits; any product that is exact is < 2^53.
  const double world = static_cast<double>(plan.tp) * plan.pp * plan.dp * plan.cp;
  if (world != static_cast<double>(cluster.num_gpus)) {
    throw InfeasibleError(input_message(
        where, "plan",
        plan.cp == 1 ? fmt::format("tp*pp*dp = {}*{}*{} = {:.0f} != num_gpus = {}", plan.tp, plan.pp, plan.dp, world,
                                   cluster.num_gpus)
                     : fmt::format("tp*cp*pp*dp = {}*{}*{}*{} = {:.0f} != num_gpus = {}", plan.tp, plan.cp, plan.pp,
                                   plan.dp, world, cluster.num_gpus)));
  }
  // --- context parallelism ---
  // Megatron/Transformer Engine's load-balanced causal split cuts each sequence into 2*cp equal chunks
  // (megatron/training/utils.py get_batch_on_this_cp_rank): seq_length must divide by 2*cp.
  if (plan.cp > 1 && model.seq_length % (2 * static_cast<std::int64_t>(plan.cp)) != 0) {
    throw InfeasibleError(input_message(where, "plan.cp",
                                        fmt::format("{}: seq_length = {} is not divisible by 2*cp = {} (the "
                                                    "load-balanced causal split needs 2*cp equal chunks; valid cp: "
                                                    "divisors of seq_length/2 = {})",
                                                    plan.cp, model.seq_length, 2 * plan.cp, model.seq_length / 2)));
  }
  require_tp_divides(plan, model.num_attention_heads, "num_attention_heads", where);
  require_tp_divides(plan, model.num_query_groups, "num_query_groups", where);
  require_tp_divides(plan, model.ffn_hidden_size, "ffn_hidden_size", where);
  // Ulysses (a2a) hands each CP rank heads/(tp*cp) attention heads and query groups (Transformer Engine asserts "The
  // number of attention heads needs to be divisible by CP size!" on the TP-local heads of Q and of K/V).
  if (plan.cp > 1 && plan.cp_comm_type == CpCommType::A2A) {
    for (const auto& [heads, field] : {std::pair{model.num_attention_heads, "num_attention_heads"},
                                       std::pair{model.num_query_groups, "num_query_groups"}}) {
      if ((heads / plan.tp) % plan.cp != 0) {
        throw InfeasibleError(input_message(
            where, "plan.cp_comm_type",
            fmt::format("a2a with cp = {} needs {} / tp = {} / {} = {} divisible by cp (valid: cp dividing {}, or "
                        "cp_comm_type p2p / allgather)",
                        plan.cp, field, heads, plan.tp, heads / plan.tp, heads / plan.tp)));
      }
    }
  }
  // micro_batch_size*dp can overflow; when it exceeds the global batch it cannot divide it.
  const bool per_step_fits = plan.micro_batch_size <= plan.global_batch_size / plan.dp;
  const std::int64_t per_step = per_step_fits ? plan.micro_batch_size * plan.dp : 0;
  if (!per_step_fits || plan.global_batch_size % per_step != 0) {
    throw InfeasibleError(input_message(
        where, "plan.global_batch_size",
        fmt::format("{} is not divisible by micro_batch_size*dp = {}*{} = {}", plan.global_batch_size,
                    plan.micro_batch_size, plan.dp,
                    per_step_fits ? fmt::format("{}", per_step)
                                  : fmt::format("{:.0f}", static_cast<double>(plan.micro_batch_size) * plan.dp))));
  }
  // Bounded resources: every micro-batch becomes forward and backward tasks on every stage.
  constexpr std::int64_t MAX_MICROBATCHES = 1 << 20;
  if (plan.num_microbatches() > MAX_MICROBATCHES) {
    throw InfeasibleError(input_message(
        where, "plan.global_batch_size",
        fmt::format("{} gives {} micro-batches per replica (global_batch_size / (micro_batch_size*dp)), at most {} "
                    "are simulated: raise micro_batch_size or dp",
                    plan.global_batch_size, plan.num_microbatches(), MAX_MICROBATCHES)));
  }
  if (plan.schedule == Schedule::Interleaved) {
    if (plan.pp < 2) {
      throw InfeasibleError(input_message(where, "plan.pp",
                                          fmt::format("{}: the interleaved schedule needs pp >= 2", plan.pp)));
    }
    // Megatron: "number of microbatches must be divisible by pipeline-model-parallel-size when using interleaved".
    if (plan.num_microbatches() % plan.pp != 0) {
      throw InfeasibleError(input_message(
          where, "plan.global_batch_size",
          fmt::format("{} gives {} micro-batches per replica, not a multiple of pp = {} (the interleaved schedule "
                      "needs global_batch_size / (micro_batch_size*dp) divisible by pp)",
                      plan.global_batch_size, plan.num_microbatches(), plan.pp)));
    }
  }
  // --- zero-bubble schedules ---
  if (plan.schedule == Schedule::ZbH1 && plan.num_microbatches() < plan.pp) {
    // The handcrafted ZB-H1 order (warm-up of pp - stage forwards) needs at least pp micro-batches.
    throw InfeasibleError(input_message(
        where, "plan.global_batch_size",
        fmt::format("{} gives {} micro-batches per replica, fewer than pp = {} (schedule zb-h1 needs "
                    "global_batch_size / (micro_batch_size*dp) >= pp)",
                    plan.global_batch_size, plan.num_microbatches(), plan.pp)));
  }
  if (plan.schedule == Schedule::ZbV) {
    if (plan.first_stage_layers != 0 || plan.last_stage_layers != 0) {
      throw InfeasibleError(input_message(where, "plan.first_stage_layers",
                                          fmt::format("uneven first/last stages ({} / {} layers) cannot be combined "
                                                      "with schedule zb-v (valid: 0, an even split)",
                                                      plan.first_stage_layers, plan.last_stage_layers)));
    }
    // With the embedding/loss accounting layers_per_stage checks the layer slots instead (vp = 2 divides them).
    if (!plan.accounts_in_pipeline_split() && model.num_layers % (2 * static_cast<std::int64_t>(plan.pp)) != 0) {
      throw InfeasibleError(input_message(
          where, "plan.pp",
          fmt::format("schedule zb-v needs num_layers = {} divisible by 2*pp = {} (two equal V-shaped chunks per "
                      "pipeline rank)",
                      model.num_layers, 2 * plan.pp)));
    }
  }
  (void)layers_per_stage(plan, model.num_layers, where);
  validate_moe(plan, model, where);
  if (plan.precision == Precision::Fp8 && cluster.gpu.fp8_flops_per_s <= 0.0) {
    throw InfeasibleError(input_message(where, "plan.precision",
                                        fmt::format("fp8 is not supported by {} (no FP8 tensor cores; valid: bf16, "
                                                    "fp16)",
                                                    cluster.gpu.name)));
  }
}

} // namespace cuboid::model

// JSON, CSV and table views of a SimResult; the key names are the interface of `simulate --json` and `search --csv`.
#include "sim/analysis/result_json.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <array>

namespace cuboid::sim::analysis {

namespace {
constexpr double GB = 1e9;

const std::array<std::string, model::NUM_MEM_TAGS> MEM_KEYS = {"weights",    "grads",     "optimizer",
                                                                 "activations", "workspace", "comm_buffers"};

nlohmann::json memory_to_json(const model::MemBytes& bytes) {
  nlohmann::json out = nlohmann::json::object();
  double total = 0.0;
  for (std::size_t tag = 0; tag < bytes.size(); ++tag) {
    out[MEM_KEYS[tag]] = bytes[tag];
    total += bytes[tag];
  }
  out["total"] = total;
  return out;
}

// Shortest representation that reads back to the same double, so a resumed search reproduces rows exactly.
std::string csv_number(double value) { return fmt::format("{}", value); }
// --- ZeRO / FSDP ---
// The ZeRO terms of the peak (stage >= 2): each tag's static part (the 1/dp shards, Rajbhandari et al. 2020 Fig. 1)
// and what tasks hold on top of it at the peak (gathered unit parameters, unsharded gradients before their
// reduce-scatter). Empty for stages 0 and 1.
std::string format_zero_memory(const model::TaskGraph& graph, const SimResult& result) {
  const model::Plan& plan = graph.get_plan();
  const int zero = plan.get_zero_stage();
  const int index = graph.rank_index(result.peak_memory_rank);
  if (zero < 2 || index < 0) {
    return {};
  }
  const model::MemBytes& fixed = graph.ranks()[static_cast<std::size_t>(index)].static_bytes;
  const auto at = [](const model::MemBytes& bytes, model::MemTag tag) { return bytes[static_cast<std::size_t>(tag)]; };
  const auto transient = [&](model::MemTag tag) {
    return std::max(0.0, at(result.peak_memory_breakdown, tag) - at(fixed, tag));
  };
  std::string out = fmt::format("\n# ZeRO-{} terms of that peak (GB; Rajbhandari et al. 2020 Fig. 1 with fp32 grads: "
                                "{} bytes/param)\n",
                                zero, zero >= 3 ? "(2 + 4 + 12)/dp" : "2 + (4 + 12)/dp");
  const std::array<std::pair<std::string, double>, 5> rows = {{
      {zero >= 3 ? "weights shard 2/dp" : "weights 2", at(fixed, model::MemTag::Weights)},
      {"gathered units", transient(model::MemTag::Weights)},
      {"grads shard 4/dp", at(fixed, model::MemTag::Grads)},
      {"unsharded grads", transient(model::MemTag::Grads)},
      {"optimizer shard 12/dp", at(fixed, model::MemTag::Optimizer)},
  }};
  for (const auto& [name, bytes] : rows) {
    if (name == "gathered units" && zero < 3) {
      continue; // ZeRO-2 keeps the parameters replicated
    }
    out += fmt::format("  {:<22} {:>8.2f}\n", name, bytes / GB);
  }
  return out;
}
} // namespace

nlohmann::json plan_to_json(const model::Plan& plan) {
  nlohmann::json out{{"tp", plan.tp},
                        {"pp", plan.pp},
                        {"dp", plan.dp},
                        {"vp", plan.vp},
                        {"micro_batch_size", plan.micro_batch_size},
                        {"global_batch_size", plan.global_batch_size},
                        {"num_microbatches", plan.num_microbatches()},
                        {"schedule", model::to_string(plan.schedule)},
                        {"recompute", model::to_string(plan.recompute)},
                        {"sequence_parallel", plan.sequence_parallel},
                        {"distributed_optimizer", plan.distributed_optimizer},
                        {"precision", model::to_string(plan.precision)},
                        {"overlap_grad_reduce", plan.overlap_grad_reduce},
                        {"grad_reduce_in_bf16", plan.grad_reduce_in_bf16},
                        {"overlap_param_gather", plan.overlap_param_gather},
                        {"tp_comm_overlap", plan.tp_comm_overlap},
                        {"async_tp_grad_reduce", plan.async_tp_grad_reduce},
                        {"first_stage_layers", plan.first_stage_layers},
                        {"last_stage_layers", plan.last_stage_layers},
                        {"account_for_embedding_in_pipeline_split", plan.account_for_embedding_in_pipeline_split},
                        {"account_for_loss_in_pipeline_split", plan.account_for_loss_in_pipeline_split},
                        {"zero_stage", plan.get_zero_stage()}};
  if (plan.cp > 1) { // --- context parallelism --- (only when in use: outputs without CP stay as they were)
    out["cp"] = plan.cp;
    out["cp_comm_type"] = model::to_string(plan.cp_comm_type);
  }
  return out;
}

nlohmann::json model_to_json(const model::ModelSpec& spec) {
  return nlohmann::json{{"name", spec.name},
                        {"num_layers", spec.num_layers},
                        {"hidden_size", spec.hidden_size},
                        {"num_attention_heads", spec.num_attention_heads},
                        {"num_query_groups", spec.num_query_groups},
                        {"ffn_hidden_size", spec.ffn_hidden_size},
                        {"vocab_size", spec.vocab_size},
                        {"seq_length", spec.seq_length},
                        {"gated_mlp", spec.gated_mlp},
                        {"tied_embeddings", spec.tied_embeddings},
                        {"num_parameters", spec.num_parameters()},
                        {"source", spec.source}};
}

nlohmann::json cluster_to_json(const model::ClusterSpec& cluster) {
  return nlohmann::json{{"system", cluster.name},
                        {"gpu", cluster.gpu.name},
                        {"num_gpus", cluster.num_gpus},
                        {"gpus_per_node", cluster.gpus_per_node},
                        {"nvlink_bw_bytes_per_s", cluster.nvlink_bw_bytes_per_s},
                        {"nic_bw_bytes_per_s", cluster.nic_bw_bytes_per_s},
                        {"source", cluster.source}};
}

nlohmann::json result_to_json(const SimResult& result) {
  nlohmann::json out;
  out["step_time_s"] = result.step_time_s;
  out["tokens_per_s"] = result.tokens_per_s;
  out["tokens_per_s_per_gpu"] = result.tokens_per_s_per_gpu;
  out["tflops_per_gpu"] = result.model_tflops_per_gpu;
  out["hw_tflops_per_gpu"] = result.hw_tflops_per_gpu;
  out["mfu"] = result.mfu;
  out["bubble_fraction"] = result.bubble_fraction;
  out["peak_memory_bytes"] = result.peak_memory_bytes;
  out["peak_memory_rank"] = result.peak_memory_rank;
  out["hbm_bytes"] = result.hbm_bytes;
  out["fits"] = result.fits;
  if (!result.fits) {
    out["oom_reason"] = result.oom_reason;
  }
  const Breakdown& b = result.breakdown;
  out["breakdown"] = nlohmann::json{{"compute_s", b.compute_s},
                                    {"recompute_s", b.recompute_s},
                                    {"tp_comm_exposed_s", b.tp_comm_exposed_s},
                                    {"pp_comm_exposed_s", b.pp_comm_exposed_s},
                                    {"dp_comm_exposed_s", b.dp_comm_exposed_s},
                                    {"bubble_s", b.bubble_s},
                                    {"optimizer_s", b.optimizer_s}};
  out["bottleneck_rank"] = result.bottleneck_rank;
  out["memory"] = memory_to_json(result.peak_memory_breakdown);
  return out;
}

nlohmann::json simulation_to_json(const model::TaskGraph& graph, const model::CostModel& cost,
                                  const SimResult& result) {
  nlohmann::json out;
  out["plan"] = plan_to_json(graph.get_plan());
  out["model"] = model_to_json(graph.get_model());
  out["cluster"] = cluster_to_json(graph.get_cluster());
  out.update(result_to_json(result));
  if (graph.get_model().is_moe()) { // --- mixture of experts --- (dense outputs keep their keys)
    const model::ModelSpec& spec = graph.get_model();
    out["model"]["num_experts"] = spec.num_experts;
    out["model"]["moe_top_k"] = spec.moe_top_k;
    out["model"]["moe_ffn_hidden_size"] = spec.moe_ffn_hidden_size;
    out["model"]["num_shared_experts"] = spec.num_shared_experts;
    out["model"]["first_k_dense_layers"] = spec.first_k_dense_layers;
    out["model"]["active_parameters"] = spec.active_parameters();
    out["plan"]["ep"] = graph.get_plan().ep;
    out["plan"]["moe_imbalance"] = graph.get_plan().moe_imbalance;
    out["breakdown"]["ep_comm_exposed_s"] = result.breakdown.ep_comm_exposed_s;
  }
  if (graph.get_plan().cp > 1) { // --- context parallelism ---
    out["breakdown"]["cp_comm_exposed_s"] = result.breakdown.cp_comm_exposed_s;
  }
  out["instantiation"] = graph.get_instantiation() == model::Instantiation::AllRanks ? "all-ranks" : "rank-classes";
  out["num_tasks"] = graph.num_tasks();
  out["num_events"] = result.num_events;
  std::vector<std::string> assumptions = graph.get_cluster().assumptions;
  for (const auto& line : cost.assumptions()) {
    assumptions.push_back(line);
  }
  out["assumptions"] = assumptions;
  return out;
}

std::vector<std::string> csv_header() {
  return {"tp",
          "pp",
          "dp",
          "vp",
          "micro_batch_size",
          "global_batch_size",
          "schedule",
          "recompute",
          "sequence_parallel",
          "distributed_optimizer",
          "precision",
          "zero_stage",
          "step_time_s",
          "tokens_per_s",
          "tokens_per_s_per_gpu",
          "tflops_per_gpu",
          "hw_tflops_per_gpu",
          "mfu",
          "bubble_fraction",
          "peak_memory_bytes",
          "hbm_bytes",
          "fits",
          "breakdown.compute_s",
          "breakdown.recompute_s",
          "breakdown.tp_comm_exposed_s",
          "breakdown.pp_comm_exposed_s",
          "breakdown.dp_comm_exposed_s",
          "breakdown.bubble_s",
          "breakdown.optimizer_s"};
}

std::vector<std::string> csv_row(const model::Plan& plan, const SimResult& result) {
  const Breakdown& b = result.breakdown;
  return {std::to_string(plan.tp),
          std::to_string(plan.pp),
          std::to_string(plan.dp),
          std::to_string(plan.vp),
          std::to_string(plan.micro_batch_size),
          std::to_string(plan.global_batch_size),
          model::to_string(plan.schedule),
          model::to_string(plan.recompute),
          plan.sequence_parallel ? "true" : "false",
          plan.distributed_optimizer ? "true" : "false",
          model::to_string(plan.precision),
          std::to_string(plan.get_zero_stage()),
          csv_number(result.step_time_s),
          csv_number(result.tokens_per_s),
          csv_number(result.tokens_per_s_per_gpu),
          csv_number(result.model_tflops_per_gpu),
          csv_number(result.hw_tflops_per_gpu),
          csv_number(result.mfu),
          csv_number(result.bubble_fraction),
          csv_number(result.peak_memory_bytes),
          csv_number(result.hbm_bytes),
          result.fits ? "true" : "false",
          csv_number(b.compute_s),
          csv_number(b.recompute_s),
          csv_number(b.tp_comm_exposed_s),
          csv_number(b.pp_comm_exposed_s),
          csv_number(b.dp_comm_exposed_s),
          csv_number(b.bubble_s),
          csv_number(b.optimizer_s)};
}

namespace {
// The "# split" line of a plan with Megatron-Core's embedding/loss accounting, e.g. Llama 3.1 405B pp 8 vp 8:
// "layers per stage 15,16,16,16,16,16,16,15 (... virtual stage 0: embedding + 1 layer, 63: 1 layer + loss)". Empty for
// other plans (their output stays as it was).
std::string split_line(const model::ModelSpec& spec, const model::Plan& plan) {
  if (!plan.accounts_in_pipeline_split()) {
    return "";
  }
  const bool embedding = plan.account_for_embedding_in_pipeline_split;
  const bool loss = plan.account_for_loss_in_pipeline_split;
  const std::int64_t slots = spec.num_layers + (embedding ? 1 : 0) + (loss ? 1 : 0);
  const int last_virtual = plan.pp * plan.vp - 1;
  const auto layers_text = [&](int virtual_stage) {
    const int count = model::pipeline_slot_layers(plan, spec.num_layers, virtual_stage).num_layers;
    return fmt::format("{} layer{}", count, count == 1 ? "" : "s");
  };
  return fmt::format("# split    layers per stage {} ({} counted as a layer: {} slots, {} per model chunk; "
                     "virtual stage 0: {}{}, {}: {}{})\n",
                     fmt::join(model::layers_per_stage(plan, spec.num_layers), ","),
                     embedding && loss ? "embedding and loss each" : (embedding ? "embedding" : "loss"), slots,
                     slots / (plan.pp * plan.vp), embedding ? "embedding + " : "", layers_text(0), last_virtual,
                     layers_text(last_virtual), loss ? " + loss" : "");
}
} // namespace

std::string format_summary(const model::TaskGraph& graph, const model::CostModel& cost, const SimResult& result) {
  const model::Plan& plan = graph.get_plan();
  const model::ModelSpec& spec = graph.get_model();
  const model::ClusterSpec& cluster = graph.get_cluster();
  std::string out;
  out += fmt::format("# model    {} ({:.1f} B parameters, {} layers, hidden {}, seq {})\n", spec.name,
                     spec.num_parameters() / GB, spec.num_layers, spec.hidden_size, spec.seq_length);
  out += fmt::format("# cluster  {} x {} ({} per node, system {})\n", cluster.num_gpus, cluster.gpu.name,
                     cluster.gpus_per_node, cluster.name);
  out += fmt::format("# plan     tp={} pp={} dp={} vp={} mbs={} gbs={} ({} micro-batches) schedule={} recompute={} "
                     "sp={} dist-opt={} {}\n",
                     plan.tp, plan.pp, plan.dp, plan.vp, plan.micro_batch_size, plan.global_batch_size,
                     plan.num_microbatches(), model::to_string(plan.schedule), model::to_string(plan.recompute),
                     plan.sequence_parallel ? "on" : "off", plan.distributed_optimizer ? "on" : "off",
                     model::to_string(plan.precision));
  out += split_line(spec, plan);
  if (spec.is_moe()) { // --- mixture of experts ---
    out += fmt::format("# moe      {} experts (top-{}, F_e {}, {} shared), {} MoE layers, {:.1f} B active "
                       "parameters; ep={} expert-dp={} imbalance={:.2f}\n",
                       spec.num_experts, spec.moe_top_k, spec.moe_ffn_hidden_size, spec.num_shared_experts,
                       spec.num_moe_layers(), spec.active_parameters() / GB, plan.ep, plan.expert_dp(),
                       plan.moe_imbalance);
  }
  if (plan.cp > 1) { // --- context parallelism ---
    const char* exchange = plan.cp_comm_type == model::CpCommType::P2P         ? "p2p ring attention"
                           : plan.cp_comm_type == model::CpCommType::AllGather ? "K/V all-gathered (allgather)"
                                                                               : "Ulysses all-to-alls (a2a)";
    out += fmt::format("# cp       cp={} (sequence split over {} ranks, {}; gradients reduced over dp*cp = {})\n",
                       plan.cp, plan.cp, exchange, plan.dp_cp_size());
  }
  if (plan.dp_cp_size() > 1 && plan.get_zero_stage() <= 1) {
    out += fmt::format("# grads    {} over dp={} in {}, {}{}\n",
                       plan.distributed_optimizer && !plan.all_reduce_sharded_grads ? "reduce-scatter" : "all-reduce",
                       plan.dp_cp_size(), plan.dp_grad_bytes() == 2.0 ? (plan.grad_reduce_in_bf16 ? "bf16" : "fp16") : "fp32",
                       plan.overlap_grad_reduce ? "bucketed behind the backward" : "after the backward",
                       spec.tied_embeddings && plan.pp > 1 && plan.schedule != model::Schedule::ZbV ? "; tied embedding all-reduced first <-> last stage" : "");
  }
  // --- ZeRO / FSDP --- (stage 1 is dist-opt=on above)
  if (plan.get_zero_stage() >= 2) {
    out += fmt::format("# zero     stage {} over dp={} ({})\n", plan.get_zero_stage(), plan.dp,
                       plan.get_zero_stage() >= 3 ? "params, grads and optimizer state sharded: FSDP"
                                                  : "grads and optimizer state sharded");
  }
  out += "#\n";
  out += fmt::format("# {:>12} {:>14} {:>12} {:>10} {:>8} {:>9} {:>11} {:>6}\n", "step", "tokens/s", "tokens/s/gpu",
                     "TFLOP/s", "MFU", "bubble", "peak mem", "fits");
  out += fmt::format("# {:>12} {:>14} {:>12} {:>10} {:>8} {:>9} {:>11} {:>6}\n", "(s)", "(1/s)", "(1/s)",
                     "(/gpu)", "(%)", "(%)", "(GB)", "");
  out += fmt::format("  {:>12.4f} {:>14.4g} {:>12.1f} {:>10.1f} {:>8.1f} {:>9.1f} {:>11.2f} {:>6}\n",
                     result.step_time_s, result.tokens_per_s, result.tokens_per_s_per_gpu,
                     result.model_tflops_per_gpu, 100.0 * result.mfu, 100.0 * result.bubble_fraction,
                     result.peak_memory_bytes / GB, result.fits ? "yes" : "NO");
  if (!result.fits) {
    out += fmt::format("\nDOES NOT FIT: {}\n", result.oom_reason);
  }
  const Breakdown& b = result.breakdown;
  const double step = result.step_time_s > 0.0 ? result.step_time_s : 1.0;
  out += fmt::format("\n# time breakdown on the bottleneck rank {} (s, % of step)\n", result.bottleneck_rank);
  const std::array<std::pair<const char*, double>, 7> parts = {{{"compute", b.compute_s},
                                                                {"recompute", b.recompute_s},
                                                                {"tp comm (exposed)", b.tp_comm_exposed_s},
                                                                {"pp comm (exposed)", b.pp_comm_exposed_s},
                                                                {"dp comm (exposed)", b.dp_comm_exposed_s},
                                                                {"pipeline bubble", b.bubble_s},
                                                                {"optimizer", b.optimizer_s}}};
  for (const auto& [name, seconds] : parts) {
    out += fmt::format("  {:<20} {:>10.4f} {:>6.1f}%\n", name, seconds, 100.0 * seconds / step);
  }
  if (spec.is_moe()) { // --- mixture of experts --- (compute above excludes it)
    out += fmt::format("  {:<20} {:>10.4f} {:>6.1f}%\n", "ep all-to-all (exp.)", b.ep_comm_exposed_s,
                       100.0 * b.ep_comm_exposed_s / step);
  }
  if (plan.cp > 1) { // --- context parallelism --- (compute above excludes it)
    out += fmt::format("  {:<20} {:>10.4f} {:>6.1f}%\n", "cp comm (exposed)", b.cp_comm_exposed_s,
                       100.0 * b.cp_comm_exposed_s / step);
  }
  out += fmt::format("\n# memory on rank {} at its peak (GB; HBM {:.1f} GB)\n", result.peak_memory_rank,
                     result.hbm_bytes / GB);
  double total = 0.0;
  for (std::size_t tag = 0; tag < result.peak_memory_breakdown.size(); ++tag) {
    out += fmt::format("  {:<20} {:>10.2f}\n", MEM_KEYS[tag], result.peak_memory_breakdown[tag] / GB);
    total += result.peak_memory_breakdown[tag];
  }
  out += fmt::format("  {:<20} {:>10.2f}\n", "total", total / GB);
  out += format_zero_memory(graph, result);
  out += "\n# assumptions (override with flags or --profile FILE)\n";
  for (const auto& line : graph.get_cluster().assumptions) {
    out += fmt::format("  - {}\n", line);
  }
  for (const auto& line : cost.assumptions()) {
    out += fmt::format("  - {}\n", line);
  }
  return out;
}

} // namespace cuboid::sim::analysis

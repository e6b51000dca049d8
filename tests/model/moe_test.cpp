// Mixture of experts and expert parallelism in model/: parameter counts against the published totals, the HF
// loader, MoE FLOPs (closed form and the IR's per-block sums), EP / expert-DP groups of the rank grid, plan checks,
// the IR's EP all-to-alls and expert-gradient collectives, memory divided by ep, and the all-to-all cost.
#include "ir_fixtures.hpp"

#include "model/cost_model.hpp"
#include "model/cost_profile.hpp"
#include "model/errors.hpp"
#include "model/memory_model.hpp"
#include "model/model_catalog.hpp"
#include "model/op_catalog.hpp"
#include "model/rank_grid.hpp"
#include "model/scenario.hpp"
#include "model/step_builder.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <unistd.h>

using namespace cuboid::model;
using namespace cuboid::model::testing;
using Catch::Matchers::Contains;
using cuboid::InfeasibleError;
using cuboid::InputError;
using Catch::Matchers::WithinRel;

namespace {

constexpr double EXACT = 1e-9;
const std::string MODELS_DIR = std::string(CUBOID_SOURCE_DIR) + "/scenarios/models/";

// A small Mixtral-shaped MoE (Llama layout) for the IR tests: 4 layers, h 256, 8 experts of 512, top-2.
ModelSpec small_moe(std::int64_t first_dense = 0, std::int64_t shared = 0) {
  ModelSpec spec = llama_model(4, 256, 8, 4, 1024, 512, 1024);
  spec.name = "moe-test";
  spec.num_experts = 8;
  spec.moe_top_k = 2;
  spec.moe_ffn_hidden_size = 512;
  spec.num_shared_experts = shared;
  spec.first_k_dense_layers = first_dense;
  return spec;
}

std::pair<double, double> graph_flops(const TaskGraph& graph) {
  double model = 0.0;
  double hw = 0.0;
  for (const Task& task : graph.tasks()) {
    if (task.block < 0) {
      continue;
    }
    const OpBlock& block = graph.blocks()[static_cast<std::size_t>(task.block)];
    const double multiplicity = graph.ranks()[static_cast<std::size_t>(graph.rank_index(task.rank))].multiplicity;
    model += block.model_flops * multiplicity;
    hw += block.hw_flops * multiplicity;
  }
  return {model, hw};
}

} // namespace

// Mistral AI, "Mixtral of experts" (2023-12-11): "Mixtral has 46.7B total parameters but only uses 12.9B parameters
// per token". scenarios/models/SOURCES.md computes 46.703B / 12.880B from the config (router included).
TEST_CASE("model::ModelSpec: mixtral-8x7b has 46.7B parameters, 12.9B active", "[moe]") {
  const ModelSpec spec = find_model("mixtral-8x7b");
  CHECK(spec.is_moe());
  CHECK_THAT(spec.num_parameters(), WithinRel(46.703e9, 1e-4));
  CHECK_THAT(spec.active_parameters(), WithinRel(12.880e9, 1e-4));
  CHECK_THAT(spec.num_parameters(), WithinRel(46.7e9, 1e-3));
  CHECK_THAT(spec.active_parameters(), WithinRel(12.9e9, 2e-3));
  SECTION("the shipped config.json loads to the same architecture") {
    const ModelSpec hf = load_hf_config_file(MODELS_DIR + "mixtral-8x7b-instruct-v0.1.config.json");
    CHECK(hf.num_experts == 8);
    CHECK(hf.moe_top_k == 2);
    CHECK(hf.moe_ffn_hidden_size == 14336);
    CHECK(hf.num_parameters() == spec.num_parameters());
    CHECK(hf.active_parameters() == spec.active_parameters());
  }
}

// SOURCES.md: Qwen3-30B-A3B 30.532B total (+ ~12k q/k-norm weights cuboid does not model), 3.353B active.
TEST_CASE("model::load_hf_config_file: qwen3-30b-a3b (num_experts / moe_intermediate_size keys)", "[moe]") {
  const ModelSpec spec = load_hf_config_file(MODELS_DIR + "qwen3-30b-a3b.config.json");
  CHECK(spec.num_experts == 128);
  CHECK(spec.moe_top_k == 8);
  CHECK(spec.moe_ffn_hidden_size == 768);
  CHECK_THAT(spec.num_parameters(), WithinRel(30.532e9, 1e-4));
  CHECK_THAT(spec.active_parameters(), WithinRel(3.353e9, 1e-3));
}

// DeepSeek-V3 Technical Report (arXiv:2412.19437), abstract: 671B total, 37B activated per token. The catalog entry
// approximates MLA by a GQA shape of equal parameters (model_catalog.cpp); "37B" is rounded, so 2 %.
TEST_CASE("model::ModelSpec: deepseek-v3 has about 671B parameters, 37B active", "[moe]") {
  const ModelSpec spec = find_model("deepseek-v3");
  CHECK(spec.num_moe_layers() == 58);
  CHECK_FALSE(spec.is_moe_layer(2));
  CHECK(spec.is_moe_layer(3));
  CHECK_THAT(spec.num_parameters(), WithinRel(671e9, 5e-3));
  CHECK_THAT(spec.active_parameters(), WithinRel(37e9, 2e-2));
}

TEST_CASE("model::model_from_hf_config: MoE keys", "[moe]") {
  nlohmann::json config = {{"model_type", "mixtral"},        {"num_hidden_layers", 4}, {"hidden_size", 256},
                           {"num_attention_heads", 8},        {"num_key_value_heads", 4}, {"intermediate_size", 512},
                           {"vocab_size", 1024},              {"num_local_experts", 8}, {"num_experts_per_tok", 2}};
  SECTION("DeepSeek keys: shared experts and leading dense layers") {
    config.erase("num_local_experts");
    config["n_routed_experts"] = 8;
    config["moe_intermediate_size"] = 128;
    config["n_shared_experts"] = 1;
    config["first_k_dense_replace"] = 1;
    const ModelSpec spec = model_from_hf_config(config, "ds.config.json");
    CHECK(spec.num_shared_experts == 1);
    CHECK(spec.first_k_dense_layers == 1);
    CHECK(spec.moe_ffn_hidden_size == 128);
    CHECK(spec.num_moe_layers() == 3);
  }
  SECTION("top-k above the expert count") {
    config["num_experts_per_tok"] = 9;
    REQUIRE_THROWS_AS(model_from_hf_config(config, "m.json"), InputError);
    REQUIRE_THROWS_WITH(model_from_hf_config(config, "m.json"), Contains("m.json: num_experts_per_tok: 9"));
  }
  SECTION("missing num_experts_per_tok") {
    config.erase("num_experts_per_tok");
    REQUIRE_THROWS_WITH(model_from_hf_config(config, "m.json"), Contains("num_experts_per_tok: missing"));
  }
  SECTION("MLA (kv_lora_rank) is refused with a pointer to the catalog entry") {
    config["kv_lora_rank"] = 512;
    REQUIRE_THROWS_WITH(model_from_hf_config(config, "m.json"), Contains("deepseek-v3"));
  }
  SECTION("sparse steps other than 1 are refused") {
    config["decoder_sparse_step"] = 2;
    REQUIRE_THROWS_WITH(model_from_hf_config(config, "m.json"), Contains("decoder_sparse_step: 2"));
  }
}

// Per token, a MoE layer's forward GEMMs cost 2 FLOPs per active weight (attention, router, top_k experts) plus the
// attention core 4 s q: for Mixtral 2 * (41.94M + 32,768 + 2 * 176.16M) + 4 * 4096 * 4096.
TEST_CASE("model::moe_layer_forward_flops_per_token: 2 x active weights + attention core", "[moe]") {
  const ModelSpec spec = find_model("mixtral-8x7b");
  const double h = 4096.0;
  const double attention = h * (4096.0 + 2.0 * 1024.0) + 4096.0 * h;
  const double experts = 2.0 * 3.0 * h * 14336.0;
  const double expected = 2.0 * (attention + h * 8.0 + experts) + 4.0 * 4096.0 * 4096.0;
  CHECK_THAT(moe_layer_forward_flops_per_token(spec), WithinRel(expected, EXACT));
  const Plan plan = make_plan(1, 1, 1, 8);
  const double tokens = 8.0 * 4096.0;
  CHECK_THAT(model_flops_per_step(spec, plan),
             WithinRel(3.0 * tokens * (32.0 * expected + 2.0 * h * 32000.0), EXACT));
}

// The blocks' FLOPs summed over every task and rank equal the closed form (balanced load: imbalance 1), for
// TP with and without sequence parallelism (the replicated router is discounted), shared experts, dense layers
// mixed with MoE layers over two stages, and full recompute.
TEST_CASE("model::build_step_graph: MoE block FLOPs sum to model_flops_per_step", "[moe]") {
  const bool sp = GENERATE(false, true);
  const auto recompute = GENERATE(Recompute::None, Recompute::Full);
  const ModelSpec spec = small_moe(1, 1);
  Plan plan = make_plan(2, 2, 4, 16);
  plan.ep = 2;
  plan.sequence_parallel = sp;
  plan.recompute = recompute;
  const TaskGraph graph = build_step_graph(spec, test_cluster(16), plan, Instantiation::RankClasses);
  const auto [model, hw] = graph_flops(graph);
  CHECK_THAT(model, WithinRel(model_flops_per_step(spec, plan), EXACT));
  if (recompute == Recompute::Full) {
    const double router_redundancy = sp ? 0.0 : 1.0; // replicated routers redo their (tiny) GEMMs: hw >= closed form
    CHECK(hw >= hw_flops_per_step(spec, plan) * (1.0 - EXACT));
    CHECK_THAT(hw, WithinRel(hw_flops_per_step(spec, plan), router_redundancy > 0.0 ? 1e-2 : EXACT));
  }
}

TEST_CASE("model::make_step_blocks: MoE layers dispatch and combine by all-to-all", "[moe]") {
  const ModelSpec spec = small_moe();
  Plan plan = make_plan(1, 1, 4, 16, 2);
  plan.ep = 4;
  const StepBlocks blocks = make_step_blocks(spec, plan);
  const auto count = [](const OpBlock& block, OpKind kind) {
    return std::count_if(block.ops.begin(), block.ops.end(), [kind](const Op& op) { return op.kind == kind; });
  };
  // Forward: dispatch + combine; backward: the same two in reverse (gradients), as Megatron's alltoall dispatcher.
  CHECK(count(blocks.moe_layer_fwd, OpKind::EpCollective) == 2);
  CHECK(count(blocks.moe_layer_bwd, OpKind::EpCollective) == 2);
  CHECK(count(blocks.layer_fwd, OpKind::EpCollective) == 0);
  // Each rank's experts get T * K rows (b = 2, s = 512, K = 2): E/ep = 2 local experts of 1024 rows each.
  const auto fc1 = std::find_if(blocks.moe_layer_fwd.ops.begin(), blocks.moe_layer_fwd.ops.end(),
                                [](const Op& op) { return op.name == "expert.fc1"; });
  REQUIRE(fc1 != blocks.moe_layer_fwd.ops.end());
  CHECK(fc1->batch == 2);
  CHECK(fc1->m == 1024);
  CHECK(fc1->n == 1024); // gated: 2 F_e
  const auto dispatch = std::find_if(blocks.moe_layer_fwd.ops.begin(), blocks.moe_layer_fwd.ops.end(),
                                     [](const Op& op) { return op.name == "dispatch.alltoall"; });
  CHECK(dispatch->msg_bytes == 2048.0 * 256.0 * 2.0);
  SECTION("load imbalance scales the busiest rank's expert rows") {
    plan.moe_imbalance = 1.5;
    const StepBlocks skewed = make_step_blocks(spec, plan);
    const auto skewed_fc1 = std::find_if(skewed.moe_layer_fwd.ops.begin(), skewed.moe_layer_fwd.ops.end(),
                                         [](const Op& op) { return op.name == "expert.fc1"; });
    CHECK(skewed_fc1->m == 1536);
    CHECK_THAT(skewed_fc1->flops, WithinRel(1.5 * fc1->flops, EXACT));
  }
}

// tp=2 dp=4 pp=1, ep=2: the worked example of rank_grid.hpp, and a naive-loop oracle over several shapes.
TEST_CASE("model::RankGrid: expert-parallel and expert-data-parallel groups", "[moe]") {
  const RankGrid grid(2, 4, 1);
  CHECK(grid.all_ep_groups(2) == std::vector<std::vector<int>>{{0, 2}, {1, 3}, {4, 6}, {5, 7}});
  CHECK(grid.all_expert_dp_groups(2) == std::vector<std::vector<int>>{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  const auto [tp, dp, pp, ep] = GENERATE(table<int, int, int, int>({{1, 8, 1, 8}, {2, 8, 2, 4}, {4, 4, 2, 2}}));
  const RankGrid big(tp, dp, pp);
  for (int rank = 0; rank < big.world_size(); ++rank) {
    const RankCoord coord = big.coord_of(rank);
    std::vector<int> ep_expected;
    std::vector<int> edp_expected;
    for (int dp_rank = 0; dp_rank < dp; ++dp_rank) {
      RankCoord other = coord;
      other.dp_rank = dp_rank;
      if (dp_rank / ep == coord.dp_rank / ep) {
        ep_expected.push_back(big.rank_of(other));
      }
      if (dp_rank % ep == coord.dp_rank % ep) {
        edp_expected.push_back(big.rank_of(other));
      }
    }
    CHECK(big.ep_group(rank, ep) == ep_expected);
    CHECK(big.expert_dp_group(rank, ep) == edp_expected);
  }
}

TEST_CASE("model::validate(Plan): expert parallelism", "[moe]") {
  const ModelSpec moe = small_moe();
  Plan plan = make_plan(1, 1, 4, 16);
  SECTION("ep must divide the experts") {
    plan.dp = 6;
    plan.global_batch_size = 12;
    plan.ep = 3;
    REQUIRE_THROWS_AS(validate(plan, moe, test_cluster(6), "p.yaml"), InfeasibleError);
    REQUIRE_THROWS_WITH(validate(plan, moe, test_cluster(6), "p.yaml"), Contains("num_experts = 8"));
  }
  SECTION("ep must divide dp") {
    plan.ep = 8;
    REQUIRE_THROWS_WITH(validate(plan, moe, test_cluster(4), "p.yaml"), Contains("dp = 4"));
  }
  SECTION("ep on a dense model") {
    plan.ep = 2;
    REQUIRE_THROWS_AS(validate(plan, gpt_model(4, 256, 8), test_cluster(4), "p.yaml"), InputError);
  }
  SECTION("imbalance below 1 or above E/K") {
    plan.moe_imbalance = GENERATE(0.5, 4.5);
    REQUIRE_THROWS_WITH(validate(plan, moe, test_cluster(4), "p.yaml"), Contains("plan.moe_imbalance"));
  }
  SECTION("a valid plan") {
    plan.ep = 4;
    plan.moe_imbalance = 2.0;
    CHECK_NOTHROW(validate(plan, moe, test_cluster(4), "p.yaml"));
  }
}

// Expert gradients go to the dp/ep expert-DP group: one collective per chunk with MoE layers (two with the
// distributed optimizer: reduce-scatter and all-gather); none when ep == dp (no two ranks share experts).
TEST_CASE("model::build_step_graph: expert gradients over the expert-DP group", "[moe]") {
  const ModelSpec spec = small_moe();
  const bool dist_opt = GENERATE(false, true);
  const int ep = GENERATE(1, 2, 4);
  Plan plan = make_plan(1, 1, 4, 16);
  plan.ep = ep;
  plan.distributed_optimizer = dist_opt;
  const TaskGraph graph = build_step_graph(spec, test_cluster(4), plan, Instantiation::AllRanks);
  std::set<std::int32_t> groups;
  std::size_t expert_collectives = 0;
  for (const Task& task : graph.tasks()) {
    if (task.kind == TaskKind::Collective && task.group == GroupKind::ExpertDp) {
      ++expert_collectives;
      CHECK(task.group_size == 4 / ep);
      CHECK_THAT(task.msg_bytes, WithinRel(4.0 * moe_expert_params_per_rank(spec, plan) * 4.0 *
                                               (task.collective == CollectiveKind::AllGather ? 0.5 : 1.0),
                                           EXACT));
      groups.insert(task.group_index);
    }
  }
  const std::size_t per_rank = ep == 4 ? 0U : (dist_opt ? 2U : 1U);
  CHECK(expert_collectives == per_rank * 4U);
  CHECK(groups.size() == (per_rank > 0 ? static_cast<std::size_t>(ep) : 0U));
}

// Weights hold E/ep experts per rank: going from ep=1 to ep=4 frees 3/4 of the routed-expert weights (2 B each).
TEST_CASE("model::static_memory: expert weights, grads and optimizer states divided by ep", "[moe]") {
  const ModelSpec spec = small_moe();
  Plan plan = make_plan(1, 1, 4, 16);
  const double experts_ep1 = 4.0 * 8.0 * 3.0 * 256.0 * 512.0; // 4 layers x 8 experts x SwiGLU 3 h F_e
  CHECK_THAT(expert_params_per_rank(spec, plan, 0), WithinRel(experts_ep1, EXACT));
  const MemBytes ep1 = static_memory(spec, plan, 0);
  plan.ep = 4;
  const MemBytes ep4 = static_memory(spec, plan, 0);
  const auto tag = [](MemTag t) { return static_cast<std::size_t>(t); };
  CHECK_THAT(ep1[tag(MemTag::Weights)] - ep4[tag(MemTag::Weights)], WithinRel(2.0 * 0.75 * experts_ep1, EXACT));
  CHECK_THAT(ep1[tag(MemTag::Grads)] - ep4[tag(MemTag::Grads)], WithinRel(4.0 * 0.75 * experts_ep1, EXACT));
  SECTION("distributed optimizer: expert states over dp/ep, dense ones over dp") {
    plan.distributed_optimizer = true;
    const double dense = params_per_rank(spec, plan, 0) - expert_params_per_rank(spec, plan, 0);
    CHECK_THAT(static_memory(spec, plan, 0)[tag(MemTag::Optimizer)],
               WithinRel(12.0 * dense / 4.0 + 12.0 * experts_ep1 / 4.0 / 1.0, EXACT));
  }
  SECTION("activations: the dispatched rows and the expert outputs") {
    const Plan dense_plan = make_plan(1, 1, 4, 16);
    CHECK(moe_layer_activation_bytes(spec, dense_plan) > 0.0);
    Plan skewed = dense_plan;
    skewed.moe_imbalance = 2.0;
    const double rows = 512.0 * 2.0; // T * K, b = 1
    CHECK_THAT(moe_layer_activation_bytes(spec, skewed) - moe_layer_activation_bytes(spec, dense_plan),
               WithinRel(2.0 * rows * (256.0 + 3.0 * 512.0), EXACT));
  }
}

// EP all-to-all on the topology: 8 ranks inside one node move 7/8 of the buffer over NVLink; spread over 8 nodes
// (tp = 8 puts every EP peer on another node) they move 7/8 over the NIC, which is 12x slower in test_cluster.
TEST_CASE("model::CostModel: EP all-to-all inside a node vs across nodes", "[moe]") {
  const ModelSpec spec = small_moe();
  Op op;
  op.kind = OpKind::EpCollective;
  op.collective = CollectiveKind::AllToAll;
  op.msg_bytes = 64e6;
  Plan intra = make_plan(1, 1, 8, 8);
  intra.ep = 8;
  const CostModel intra_cost(test_cluster(8), default_profile("a100-80gb"), intra);
  CHECK(intra_cost.ep_members_per_node() == 8);
  const LinkParams nvlink = intra_cost.nvlink();
  CHECK_THAT(intra_cost.ep_collective_time_s(op),
             WithinRel(7.0 * nvlink.latency_s + 7.0 / 8.0 * 64e6 / nvlink.bw_bytes_per_s, EXACT));
  Plan inter = make_plan(8, 1, 8, 8);
  inter.ep = 8;
  const CostModel inter_cost(test_cluster(64), default_profile("a100-80gb"), inter);
  CHECK(inter_cost.ep_members_per_node() == 1);
  const LinkParams nic = inter_cost.network();
  CHECK_THAT(inter_cost.ep_collective_time_s(op),
             WithinRel(7.0 * nic.latency_s + 7.0 / 8.0 * 64e6 / nic.bw_bytes_per_s, EXACT));
  CHECK(inter_cost.ep_collective_time_s(op) > intra_cost.ep_collective_time_s(op));
  Plan none = make_plan(1, 1, 8, 8);
  CHECK(CostModel(test_cluster(8), default_profile("a100-80gb"), none).ep_collective_time_s(op) == 0.0);
  (void)spec;
}

// scenarios/examples/moe-tiny-ep2.yaml: MoE fields in a model YAML and ep / moe_imbalance plan keys.
TEST_CASE("model::load_scenario: MoE model and EP plan keys", "[moe]") {
  const Scenario loaded = load_scenario(std::string(CUBOID_SOURCE_DIR) + "/scenarios/examples/moe-tiny-ep2.yaml");
  CHECK(loaded.model.num_experts == 4);
  CHECK(loaded.model.moe_top_k == 2);
  CHECK(loaded.model.moe_ffn_hidden_size == 128);
  CHECK(loaded.model.num_moe_layers() == 3);
  CHECK(loaded.plan.ep == 2);
  CHECK(loaded.plan.expert_dp() == 2);
  CHECK(loaded.plan.moe_imbalance == 1.25);
  const std::string path =
      (std::filesystem::temp_directory_path() / ("cuboid-moe-test-" + std::to_string(::getpid()) + ".yaml")).string();
  const auto load_text = [&path](const std::string& text) {
    std::ofstream(path) << text;
    return load_model(path);
  };
  SECTION("a model YAML with top-k above the experts is an input error naming the field") {
    REQUIRE_THROWS_WITH(load_text("{base: llama-tiny, num_experts: 4, moe_top_k: 5, moe_ffn_hidden_size: 128}"),
                        Contains("moe_top_k: 5 is not valid"));
  }
  SECTION("MoE fields on a dense model are refused") {
    REQUIRE_THROWS_WITH(load_text("{base: llama-tiny, moe_top_k: 2}"), Contains("num_experts is 0"));
  }
  std::filesystem::remove(path);
}

// Context parallelism in model/: the tp-cp-dp-pp rank grid against naive loops and Megatron's worked example, plan
// validation (seq divisible by 2*cp, world size), the ring-attention ops of the layer blocks, the IR (task counts,
// the dp*cp gradient group) and the memory model (activations / cp, ring buffers).
#include "ir_fixtures.hpp"

#include "model/errors.hpp"
#include "model/memory_model.hpp"
#include "model/op_catalog.hpp"
#include "model/rank_grid.hpp"
#include "model/step_builder.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <set>

using cuboid::InfeasibleError;
using cuboid::InputError;
using namespace cuboid::model;
using namespace cuboid::model::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

int count_kind(const OpBlock& block, OpKind kind) {
  return static_cast<int>(
      std::count_if(block.ops.begin(), block.ops.end(), [kind](const Op& op) { return op.kind == kind; }));
}

double sum_flops(const OpBlock& block, OpKind kind) {
  double total = 0.0;
  for (const Op& op : block.ops) {
    total += op.kind == kind ? op.flops : 0.0;
  }
  return total;
}

} // namespace

TEST_CASE("model::RankGrid: tp-cp-dp-pp order against naive loops", "[model][cp]") {
  const int tp = GENERATE(1, 2);
  const int cp = GENERATE(1, 2, 4);
  const int dp = GENERATE(1, 3);
  const int pp = GENERATE(1, 2);
  const RankGrid grid(tp, cp, dp, pp);
  REQUIRE(grid.world_size() == tp * cp * dp * pp);
  int expected_rank = 0;
  // Naive oracle (Megatron RankGenerator order "tp-cp-dp-pp"): TP innermost, then CP, DP, PP.
  for (int pp_rank = 0; pp_rank < pp; ++pp_rank) {
    for (int dp_rank = 0; dp_rank < dp; ++dp_rank) {
      for (int cp_rank = 0; cp_rank < cp; ++cp_rank) {
        for (int tp_rank = 0; tp_rank < tp; ++tp_rank) {
          RankCoord coord{tp_rank, dp_rank, pp_rank};
          coord.cp_rank = cp_rank;
          REQUIRE(grid.rank_of(coord) == expected_rank);
          REQUIRE(grid.coord_of(expected_rank) == coord);
          ++expected_rank;
        }
      }
    }
  }
  for (int rank = 0; rank < grid.world_size(); ++rank) {
    const RankCoord coord = grid.coord_of(rank);
    // A CP group varies only cp_rank; the gradient group varies dp_rank and cp_rank.
    for (const int member : grid.cp_group(rank)) {
      const RankCoord other = grid.coord_of(member);
      REQUIRE((other.tp_rank == coord.tp_rank && other.dp_rank == coord.dp_rank && other.pp_rank == coord.pp_rank));
    }
    const std::vector<int> grad_group = grid.dp_cp_group(rank);
    REQUIRE(static_cast<int>(grad_group.size()) == dp * cp);
    REQUIRE(std::is_sorted(grad_group.begin(), grad_group.end()));
    for (const int member : grad_group) {
      const RankCoord other = grid.coord_of(member);
      REQUIRE((other.tp_rank == coord.tp_rank && other.pp_rank == coord.pp_rank));
    }
  }
  for (const auto& groups : {grid.all_cp_groups(), grid.all_dp_cp_groups()}) {
    std::multiset<int> seen;
    for (const auto& group : groups) {
      seen.insert(group.begin(), group.end());
    }
    REQUIRE(static_cast<int>(seen.size()) == grid.world_size());
    REQUIRE(static_cast<int>(std::set<int>(seen.begin(), seen.end()).size()) == grid.world_size());
  }
  if (cp == 1) {
    REQUIRE(grid.all_dp_cp_groups() == grid.all_dp_groups());
  }
}

TEST_CASE("model::RankGrid: tp=2 cp=2 dp=2 worked example (rank_grid.hpp)", "[model][cp]") {
  using Groups = std::vector<std::vector<int>>;
  const RankGrid grid(2, 2, 2, 1);
  REQUIRE(grid.all_tp_groups() == Groups{{0, 1}, {2, 3}, {4, 5}, {6, 7}});
  REQUIRE(grid.all_cp_groups() == Groups{{0, 2}, {1, 3}, {4, 6}, {5, 7}});
  REQUIRE(grid.all_dp_groups() == Groups{{0, 4}, {1, 5}, {2, 6}, {3, 7}});
  REQUIRE(grid.all_dp_cp_groups() == Groups{{0, 2, 4, 6}, {1, 3, 5, 7}});
  REQUIRE(grid.all_pp_groups() == Groups{{0}, {1}, {2}, {3}, {4}, {5}, {6}, {7}});
}

TEST_CASE("model::validate: context-parallel plans", "[model][cp]") {
  const ModelSpec spec = gpt_model(4, 256, 4, 1024, 1024);
  SECTION("world size counts cp") {
    Plan plan = make_plan(1, 1, 2, 8);
    plan.cp = 2;
    REQUIRE(plan.world_size() == 4);
    REQUIRE(plan.dp_cp_size() == 4);
    REQUIRE_NOTHROW(validate(plan, spec, test_cluster(4), "test"));
    REQUIRE_THROWS_WITH(validate(plan, spec, test_cluster(2), "test"), Contains("tp*cp*pp*dp = 1*2*1*2 = 4"));
  }
  SECTION("seq_length must divide by 2*cp") {
    Plan plan = make_plan(1, 1, 1, 8);
    plan.cp = 3; // 1024 % 6 != 0
    REQUIRE_THROWS_AS(validate(plan, spec, test_cluster(3), "test"), InfeasibleError);
    REQUIRE_THROWS_WITH(validate(plan, spec, test_cluster(3), "test"),
                        Contains("plan.cp") && Contains("not divisible by 2*cp = 6"));
  }
  SECTION("cp must be positive") {
    Plan plan = make_plan(1, 1, 1, 8);
    plan.cp = 0;
    REQUIRE_THROWS_AS(validate(plan, spec, test_cluster(1), "test"), InputError);
  }
}

TEST_CASE("model::make_step_blocks: ring attention in cp steps", "[model][cp]") {
  const ModelSpec spec = GENERATE(gpt_model(4, 512, 8, 2048, 1024), llama_model(4, 512, 8, 2, 1536, 2048, 1024));
  const int cp = GENERATE(2, 4);
  const int tp = GENERATE(1, 2);
  Plan base = make_plan(tp, 1, 1, 8);
  base.recompute = GENERATE(Recompute::None, Recompute::Selective);
  Plan plan = base;
  plan.cp = cp;
  const StepBlocks one = make_step_blocks(spec, base);
  const StepBlocks ring = make_step_blocks(spec, plan);
  // Forward: cp attention steps and cp-1 K/V exchanges; backward: the same, plus a recomputed forward ring.
  REQUIRE(count_kind(one.layer_fwd, OpKind::CpRing) == 0);
  REQUIRE(count_kind(ring.layer_fwd, OpKind::Attention) == cp);
  REQUIRE(count_kind(ring.layer_fwd, OpKind::CpRing) == cp - 1);
  const int recomputed = base.recompute == Recompute::Selective ? 1 : 0;
  REQUIRE(count_kind(ring.layer_bwd, OpKind::Attention) == cp * (1 + recomputed));
  REQUIRE(count_kind(ring.layer_bwd, OpKind::CpRing) == (cp - 1) * (1 + recomputed));
  // Every CP rank does 1/cp of the unsplit rank's work (GEMMs and attention: the load-balanced split).
  CHECK_THAT(sum_flops(ring.layer_fwd, OpKind::Attention),
             WithinRel(sum_flops(one.layer_fwd, OpKind::Attention) / cp, 1e-12));
  CHECK_THAT(sum_flops(ring.layer_bwd, OpKind::Gemm), WithinRel(sum_flops(one.layer_bwd, OpKind::Gemm) / cp, 1e-12));
  CHECK_THAT(ring.layer_fwd.model_flops, WithinRel(one.layer_fwd.model_flops / cp, 1e-12));
  // Each exchange moves this rank's K and V block: 2 * (b*s/cp) * kv/t * 2 bytes; backward adds dK and dV.
  const double kv_block = 2.0 * (2048.0 / cp) * static_cast<double>(spec.kv_width()) / tp * 2.0;
  for (const Op& op : ring.layer_fwd.ops) {
    if (op.kind == OpKind::CpRing) {
      CHECK_THAT(op.msg_bytes, WithinRel(kv_block, 1e-12));
    }
  }
  for (const Op& op : ring.layer_bwd.ops) {
    if (op.kind == OpKind::CpRing && !op.recompute) {
      CHECK_THAT(op.msg_bytes, WithinRel(2.0 * kv_block, 1e-12));
    }
  }
}

TEST_CASE("model::build_step_graph: cp multiplies ranks, not tasks per rank; gradients over dp*cp", "[ir][cp]") {
  const ModelSpec spec = gpt_model(4, 256, 4, 1024, 1024);
  const int dp = GENERATE(1, 2);
  Plan base = make_plan(1, 2, dp, 8);
  base.distributed_optimizer = GENERATE(false, true);
  Plan plan = base;
  plan.cp = 2;
  const TaskGraph one = build_step_graph(spec, test_cluster(base.world_size()), base, Instantiation::AllRanks);
  const TaskGraph ring = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::AllRanks);
  REQUIRE(ring.ranks().size() == 2 * one.ranks().size());
  // Per rank: the same compute and P2P tasks; with dp = 1 the cp ranks still reduce gradients (DP x CP group of 2).
  std::size_t one_compute = 0;
  std::size_t ring_compute = 0;
  std::size_t ring_collectives = 0;
  for (const Task& task : one.tasks()) {
    one_compute += task.kind == TaskKind::Compute ? 1 : 0;
  }
  for (const Task& task : ring.tasks()) {
    ring_compute += task.kind == TaskKind::Compute ? 1 : 0;
    if (task.kind == TaskKind::Collective) {
      ++ring_collectives;
      REQUIRE(task.group_size == 2 * dp);
      REQUIRE(static_cast<int>(ring.groups()[static_cast<std::size_t>(task.group_index)].size()) == 2 * dp);
    }
    if (task.kind == TaskKind::P2P) {
      CHECK_THAT(task.msg_bytes, WithinRel(1024.0 * 256.0 * 2.0 / 2.0, 1e-12)); // the rank's s/cp tokens
    }
  }
  REQUIRE(ring_compute == 2 * one_compute);
  REQUIRE(ring_collectives > 0);
  const TaskGraph classes = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::RankClasses);
  REQUIRE(classes.ranks().size() == 2); // one representative per pipeline stage
  CHECK_THAT(classes.ranks()[0].multiplicity, WithinRel(2.0 * dp, 1e-12));
}

TEST_CASE("model::memory: activations divided by cp, ring buffers, optimizer sharded over dp*cp", "[model][cp]") {
  const ModelSpec spec = llama_model(4, 512, 8, 2, 1536, 4096, 1024);
  Plan base = make_plan(2, 1, 2, 8);
  base.sequence_parallel = true;
  base.distributed_optimizer = true;
  Plan plan = base;
  plan.cp = 4;
  CHECK_THAT(layer_activation_bytes(spec, plan), WithinRel(layer_activation_bytes(spec, base) / 4.0, 1e-12));
  CHECK_THAT(head_activation_bytes(spec, plan), WithinRel(head_activation_bytes(spec, base) / 4.0, 1e-12));
  REQUIRE(cp_comm_buffer_bytes(spec, base, false) == 0.0);
  // Two K/V blocks of (4096/4) tokens, kv = 2 groups * 64 = 128 wide, over tp = 2, bf16: 2 * 2 * 1024 * 64 * 2.
  const double kv_block = 2.0 * 1024.0 * 64.0 * 2.0;
  CHECK_THAT(cp_comm_buffer_bytes(spec, plan, false), WithinRel(2.0 * kv_block, 1e-12));
  CHECK_THAT(cp_comm_buffer_bytes(spec, plan, true), WithinRel(4.0 * kv_block, 1e-12));
  // allgather: the whole sequence's K/V (cp = 4 blocks); backward also the whole-sequence dK/dV.
  Plan gather = plan;
  gather.cp_comm_type = CpCommType::AllGather;
  CHECK_THAT(cp_comm_buffer_bytes(spec, gather, false), WithinRel(4.0 * kv_block, 1e-12));
  CHECK_THAT(cp_comm_buffer_bytes(spec, gather, true), WithinRel(8.0 * kv_block, 1e-12));
  // a2a: one Q/K/V of the rank's 1024 tokens, (q + 2 kv) / tp = (512 + 256) / 2 wide, bf16.
  Plan ulysses = plan;
  ulysses.cp_comm_type = CpCommType::A2A;
  CHECK_THAT(cp_comm_buffer_bytes(spec, ulysses, false), WithinRel(1024.0 * 384.0 * 2.0, 1e-12));
  CHECK_THAT(layer_backward_workspace_bytes(spec, gather) - layer_backward_workspace_bytes(spec, plan),
             WithinRel(4.0 * kv_block, 1e-12));
  const MemBytes one = static_memory(spec, base, 0);
  const MemBytes ring = static_memory(spec, plan, 0);
  const auto optimizer = static_cast<std::size_t>(MemTag::Optimizer);
  const auto weights = static_cast<std::size_t>(MemTag::Weights);
  CHECK_THAT(ring[optimizer], WithinRel(one[optimizer] / 4.0, 1e-12)); // 12 B/param / (dp*cp) instead of / dp
  CHECK_THAT(ring[weights], WithinRel(one[weights], 1e-12));           // weights are replicated over CP
}

// --- cp_comm_type (Megatron --cp-comm-type) ---

TEST_CASE("model::parse_cp_comm_type: Megatron's names, TE's all_gather, a2a+p2p refused", "[model][cp]") {
  CHECK(parse_cp_comm_type("p2p", "test") == CpCommType::P2P);
  CHECK(parse_cp_comm_type("allgather", "test") == CpCommType::AllGather);
  CHECK(parse_cp_comm_type("all_gather", "test") == CpCommType::AllGather);
  CHECK(parse_cp_comm_type("a2a", "test") == CpCommType::A2A);
  for (const CpCommType type : {CpCommType::P2P, CpCommType::AllGather, CpCommType::A2A}) {
    CHECK(parse_cp_comm_type(to_string(type), "test") == type);
  }
  REQUIRE_THROWS_AS(parse_cp_comm_type("a2a+p2p", "test"), InputError);
  REQUIRE_THROWS_WITH(parse_cp_comm_type("a2a+p2p", "test"), Contains("hierarchical") && Contains("valid: p2p"));
  REQUIRE_THROWS_WITH(parse_cp_comm_type("ring", "where.yaml"),
                      Contains("where.yaml") && Contains("'ring'") && Contains("allgather"));
}

TEST_CASE("model::validate: a2a needs the TP-local heads and query groups divisible by cp", "[model][cp]") {
  const ModelSpec spec = llama_model(4, 512, 8, 2, 1536, 2048, 1024); // 8 heads, 2 query groups
  Plan plan = make_plan(1, 1, 1, 8);
  plan.cp = 2;
  plan.cp_comm_type = CpCommType::A2A;
  REQUIRE_NOTHROW(validate(plan, spec, test_cluster(2), "test")); // 8/1 and 2/1 divide by 2
  plan.cp = 4;                                                      // 2 query groups over 4 CP ranks
  REQUIRE_THROWS_AS(validate(plan, spec, test_cluster(4), "test"), InfeasibleError);
  REQUIRE_THROWS_WITH(validate(plan, spec, test_cluster(4), "test"),
                      Contains("plan.cp_comm_type") && Contains("num_query_groups") && Contains("p2p / allgather"));
  plan.cp_comm_type = CpCommType::AllGather; // the K/V exchanges need no head split
  REQUIRE_NOTHROW(validate(plan, spec, test_cluster(4), "test"));
  Plan tp2 = make_plan(2, 1, 1, 8);
  tp2.cp = 2;
  tp2.cp_comm_type = CpCommType::A2A; // 2 groups / tp 2 = 1 per TP rank, not divisible by cp 2
  REQUIRE_THROWS_WITH(validate(tp2, spec, test_cluster(4), "test"), Contains("num_query_groups / tp = 2 / 2 = 1"));
}

TEST_CASE("model::make_step_blocks: allgather and a2a attention ops", "[model][cp]") {
  const ModelSpec spec = llama_model(4, 512, 8, 4, 1536, 2048, 1024);
  const int cp = GENERATE(2, 4);
  const int tp = GENERATE(1, 2);
  Plan base = make_plan(tp, 1, 1, 8);
  base.recompute = GENERATE(Recompute::None, Recompute::Selective);
  base.cp = cp;
  const StepBlocks p2p = make_step_blocks(spec, base);
  const double tokens = 2048.0 / cp;
  const double kv = static_cast<double>(spec.kv_width()) / tp;
  const double q = static_cast<double>(spec.q_width()) / tp;
  const int recomputed = base.recompute == Recompute::Selective ? 1 : 0;
  const auto names = [](const OpBlock& block, OpKind kind) {
    std::vector<std::string> out;
    for (const Op& op : block.ops) {
      if (op.kind == kind && !op.recompute) {
        out.push_back(op.name);
      }
    }
    return out;
  };
  SECTION("allgather") {
    Plan plan = base;
    plan.cp_comm_type = CpCommType::AllGather;
    const StepBlocks blocks = make_step_blocks(spec, plan);
    REQUIRE(count_kind(blocks.layer_fwd, OpKind::CpRing) == 0);
    REQUIRE(names(blocks.layer_fwd, OpKind::CpCollective) == std::vector<std::string>{"attn.cp_allgather"});
    REQUIRE(names(blocks.layer_bwd, OpKind::CpCollective) ==
            std::vector<std::string>{"attn.bwd.cp_allgather", "attn.bwd.cp_reducescatter"});
    REQUIRE(count_kind(blocks.layer_fwd, OpKind::Attention) == 2); // the rank's two chunks
    REQUIRE(count_kind(blocks.layer_bwd, OpKind::CpCollective) == 2 + recomputed);
    for (const OpBlock* block : {&blocks.layer_fwd, &blocks.layer_bwd}) {
      for (const Op& op : block->ops) {
        if (op.kind == OpKind::CpCollective) { // the whole sequence's K and V: cp blocks of 2 * tokens * kv * 2 B
          CHECK_THAT(op.msg_bytes, WithinRel(cp * 2.0 * tokens * kv * 2.0, 1e-12));
        }
      }
    }
    // The same attention work as the ring (the load-balanced split), the same model FLOPs.
    CHECK_THAT(sum_flops(blocks.layer_bwd, OpKind::Attention),
               WithinRel(sum_flops(p2p.layer_bwd, OpKind::Attention), 1e-12));
    CHECK_THAT(blocks.layer_fwd.model_flops, WithinRel(p2p.layer_fwd.model_flops, 1e-12));
  }
  SECTION("a2a") {
    Plan plan = base;
    plan.cp_comm_type = CpCommType::A2A;
    const StepBlocks blocks = make_step_blocks(spec, plan);
    REQUIRE(names(blocks.layer_fwd, OpKind::CpCollective) ==
            std::vector<std::string>{"attn.cp_a2a.qkv", "attn.cp_a2a.out"});
    REQUIRE(names(blocks.layer_bwd, OpKind::CpCollective) ==
            std::vector<std::string>{"attn.bwd.cp_a2a.out_dout", "attn.bwd.cp_a2a.dqkv"});
    REQUIRE(count_kind(blocks.layer_bwd, OpKind::CpCollective) == 2 * (1 + recomputed));
    for (const Op& op : blocks.layer_fwd.ops) {
      if (op.kind == OpKind::CpCollective) {
        CHECK(op.collective == CollectiveKind::AllToAll);
        CHECK_THAT(op.msg_bytes, WithinRel(tokens * (op.name.ends_with("qkv") ? q + 2.0 * kv : q) * 2.0, 1e-12));
      }
      if (op.kind == OpKind::Attention) { // the whole sequence for heads / (tp cp)
        CHECK(op.batch == 8 / (tp * cp));
        CHECK(op.m == 2048);
      }
    }
    CHECK_THAT(sum_flops(blocks.layer_fwd, OpKind::Attention),
               WithinRel(sum_flops(p2p.layer_fwd, OpKind::Attention), 1e-12));
  }
}

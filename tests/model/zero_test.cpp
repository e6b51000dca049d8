// ZeRO stages 1-3 / FSDP in the plan, the memory model and the IR: set_zero_stage / validate, static bytes per
// parameter against Rajbhandari et al. 2020 Fig. 1 (with Megatron's fp32 grads), and the per-unit all-gathers and
// reduce-scatters of ZeRO-2/3 with their dependencies (prefetch depth 1) and memory effects.
#include "ir_fixtures.hpp"

#include "model/errors.hpp"
#include "model/memory_model.hpp"
#include "model/scenario.hpp"
#include "model/step_builder.hpp"

#include <boost/graph/adjacency_list.hpp>
#include <catch2/catch.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <map>

using namespace cuboid::model;
using namespace cuboid::model::testing;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

constexpr double EXACT = 1e-12;

bool has_edge(const TaskGraph& graph, TaskId from, TaskId to) { return boost::edge(from, to, graph.graph()).second; }

std::vector<TaskId> predecessors(const TaskGraph& graph, TaskId id) {
  std::vector<TaskId> out;
  for (auto [it, end] = boost::in_edges(id, graph.graph()); it != end; ++it) {
    out.push_back(static_cast<TaskId>(boost::source(*it, graph.graph())));
  }
  return out;
}

// Parameters (per TP rank, unsharded) of the unit a compute task runs, from the memory model's formulas.
double unit_params(const ModelSpec& spec, const Plan& plan, const TaskGraph& graph, const Task& t, bool embedding_here) {
  if (t.layer >= 0) {
    return layer_params_per_tp_rank(spec, plan.tp);
  }
  const std::string& name = graph.blocks()[static_cast<std::size_t>(t.block)].name;
  return name.rfind("embed", 0) == 0 ? embedding_params_per_rank(spec, plan)
                                     : head_params_per_rank(spec, plan, embedding_here);
}

double mem(const MemBytes& bytes, MemTag tag) { return bytes[static_cast<std::size_t>(tag)]; }

} // namespace

TEST_CASE("model::set_zero_stage: 0..3, distributed_optimizer follows, bad stages and contradictions rejected",
          "[ir][zero]") {
  const ModelSpec spec = gpt_model(8, 1024, 16, 1024, 32000);
  Plan plan = make_plan(2, 2, 4, 64);
  const ClusterSpec cluster = test_cluster(plan.world_size());
  for (const int stage : {0, 1, 2, 3}) {
    set_zero_stage(plan, stage, "test", "--zero");
    CHECK(plan.get_zero_stage() == stage);
    CHECK(plan.distributed_optimizer == (stage >= 1));
    CHECK_NOTHROW(validate(plan, spec, cluster, "test"));
  }
  // A plan that only sets the distributed optimizer is ZeRO-1.
  Plan legacy = make_plan(2, 2, 4, 64);
  legacy.distributed_optimizer = true;
  CHECK(legacy.get_zero_stage() == 1);
  for (const int bad : {-1, 4, 7}) {
    REQUIRE_THROWS_AS(set_zero_stage(plan, bad, "test", "--zero"), cuboid::InputError);
    REQUIRE_THROWS_WITH(set_zero_stage(plan, bad, "test", "--zero"),
                        Contains("--zero") && Contains(std::to_string(bad)) && Contains("valid: 0"));
  }
  SECTION("zero_stage without the distributed optimizer is a contradiction") {
    Plan broken = make_plan(2, 2, 4, 64);
    broken.zero_stage = 3; // not through set_zero_stage
    REQUIRE_THROWS_WITH(validate(broken, spec, cluster, "test"),
                        Contains("plan.distributed_optimizer") && Contains("zero_stage = 3"));
  }
  SECTION("ZeRO-2/3 reduce-scatter right after backward: no overlap_grad_reduce = false, no BF16_Optimizer") {
    set_zero_stage(plan, 2, "test", "--zero");
    plan.overlap_grad_reduce = false;
    REQUIRE_THROWS_WITH(validate(plan, spec, cluster, "test"), Contains("plan.overlap_grad_reduce"));
    plan.overlap_grad_reduce = true;
    plan.all_reduce_sharded_grads = true;
    REQUIRE_THROWS_AS(validate(plan, spec, cluster, "test"), cuboid::InputError);
  }
  SECTION("ZeRO-3 has no end-of-step parameter all-gather to overlap") {
    set_zero_stage(plan, 3, "test", "--zero");
    plan.overlap_param_gather = true;
    REQUIRE_THROWS_WITH(validate(plan, spec, cluster, "test"), Contains("plan.overlap_param_gather"));
  }
}

TEST_CASE("model::static_memory: ZeRO stages divide params, grads, optimizer by dp (ZeRO Fig. 1)", "[ir][zero]") {
  // Rajbhandari et al. 2020 Fig. 1 with K = 12 and Megatron's 4-byte fp32 grads, Psi = the rank's parameters:
  //   stage 0: (2 + 4 + 12) Psi; 1: (2 + 4) Psi + 12 Psi/dp; 2: 2 Psi + 16 Psi/dp; 3: 18 Psi/dp.
  const ModelSpec spec = gpt_model(8, 1024, 16, 1024, 32000);
  const int dp = GENERATE(1, 2, 8);
  Plan plan = make_plan(2, 2, dp, 64);
  for (int stage = 0; stage < plan.pp; ++stage) {
    const double psi = params_per_rank(spec, plan, stage);
    const double weights[] = {2.0, 2.0, 2.0, 2.0 / dp};
    const double grads[] = {4.0, 4.0, 4.0 / dp, 4.0 / dp};
    const double optimizer[] = {12.0, 12.0 / dp, 12.0 / dp, 12.0 / dp};
    for (const int zero : {0, 1, 2, 3}) {
      set_zero_stage(plan, zero, "test", "--zero");
      const MemBytes bytes = static_memory(spec, plan, stage);
      CHECK_THAT(mem(bytes, MemTag::Weights), WithinRel(weights[zero] * psi, EXACT));
      CHECK_THAT(mem(bytes, MemTag::Grads), WithinRel(grads[zero] * psi, EXACT));
      CHECK_THAT(mem(bytes, MemTag::Optimizer), WithinRel(optimizer[zero] * psi, EXACT));
      CHECK_THAT(static_bytes_per_param(plan), WithinRel(weights[zero] + grads[zero] + optimizer[zero], EXACT));
    }
  }
}

TEST_CASE("model::build_step_graph: ZeRO-3 gathers every unit before each forward and backward, with prefetch",
          "[ir][zero]") {
  const Instantiation inst = GENERATE(Instantiation::AllRanks, Instantiation::RankClasses);
  const int pp = GENERATE(1, 2);
  const ModelSpec spec = gpt_model(8, 512, 8, 512, 8192);
  Plan plan = make_plan(2, pp, 2, 8);
  set_zero_stage(plan, 3, "test", "--zero");
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, inst);
  const int m = static_cast<int>(plan.num_microbatches());
  for (const RankInfo& info : graph.ranks()) {
    std::vector<TaskId> compute;
    std::map<TaskId, TaskId> gather_of;  // compute -> its all-gather
    std::map<TaskId, TaskId> scatter_of; // backward compute -> its reduce-scatter
    TaskId optimizer = 0;
    double gathered_bytes = 0.0;
    double scattered_bytes = 0.0;
    MemBytes allocated{};
    MemBytes freed{};
    for (TaskId id = 0; id < graph.num_tasks(); ++id) {
      const Task& t = graph.task(id);
      if (t.rank != info.rank) {
        continue;
      }
      for (std::size_t tag = 0; tag < allocated.size(); ++tag) {
        allocated[tag] += t.alloc_at_start[tag];
        freed[tag] += t.free_at_end[tag];
      }
      if (t.kind == TaskKind::Compute) {
        compute.push_back(id);
      } else if (t.kind == TaskKind::Optimizer) {
        optimizer = id;
      } else if (t.kind == TaskKind::Collective) {
        REQUIRE(t.group == GroupKind::Dp);
        CHECK(t.stream == Stream::DpComm);
        CHECK(t.group_size == plan.dp);
        REQUIRE(t.microbatch >= 0); // no end-of-step bucket collectives under ZeRO-3
        for (auto [it, end] = boost::out_edges(id, graph.graph()); it != end; ++it) {
          const auto target = static_cast<TaskId>(boost::target(*it, graph.graph()));
          if (t.collective == CollectiveKind::AllGather && graph.task(target).kind == TaskKind::Compute) {
            CHECK(gather_of.emplace(target, id).second);
          }
        }
        for (const TaskId source : predecessors(graph, id)) {
          if (t.collective == CollectiveKind::ReduceScatter && graph.task(source).kind == TaskKind::Compute) {
            CHECK(scatter_of.emplace(source, id).second);
          }
        }
        (t.collective == CollectiveKind::AllGather ? gathered_bytes : scattered_bytes) += t.msg_bytes;
      }
    }
    // One gather per compute task, one reduce-scatter per backward task, for the unit the task runs.
    REQUIRE(gather_of.size() == compute.size());
    bool embedding_here = false;
    for (const TaskId id : compute) {
      embedding_here = embedding_here || graph.label(id).find("embed") != std::string::npos;
    }
    std::size_t backward = 0;
    for (std::size_t k = 0; k < compute.size(); ++k) {
      const Task& c = graph.task(compute[k]);
      const Task& g = graph.task(gather_of.at(compute[k]));
      const double params = unit_params(spec, plan, graph, c, embedding_here);
      CHECK(g.layer == c.layer);
      CHECK(g.microbatch == c.microbatch);
      CHECK(g.phase == c.phase);
      CHECK_THAT(g.msg_bytes, WithinRel(2.0 * params, EXACT));
      CHECK_THAT(mem(g.alloc_at_start, MemTag::Weights), WithinRel(2.0 * params, EXACT));
      CHECK_THAT(mem(c.free_at_end, MemTag::Weights), WithinRel(2.0 * params, EXACT));
      // Prefetch depth 1: gather k waits for compute k-2 (its buffer is free), so it overlaps compute k-1.
      if (k >= 2) {
        CHECK(has_edge(graph, compute[k - 2], gather_of.at(compute[k])));
        CHECK(has_edge(graph, gather_of.at(compute[k - 1]), gather_of.at(compute[k])));
      }
      if (c.phase == Phase::Backward) {
        ++backward;
        const Task& s = graph.task(scatter_of.at(compute[k]));
        CHECK_THAT(s.msg_bytes, WithinRel(4.0 * params, EXACT));
        CHECK_THAT(mem(c.alloc_at_start, MemTag::Grads), WithinRel(4.0 * params, EXACT));
        CHECK_THAT(mem(s.free_at_end, MemTag::Grads), WithinRel(4.0 * params, EXACT));
      }
    }
    CHECK(scatter_of.size() == backward);
    CHECK(2 * backward == compute.size());
    // Every parameter is gathered 2m times (forward and backward of each micro-batch) and reduced m times.
    const double psi = params_per_rank(spec, plan, info.stage);
    CHECK_THAT(gathered_bytes, WithinRel(2.0 * m * 2.0 * psi, 1e-9));
    CHECK_THAT(scattered_bytes, WithinRel(4.0 * m * psi, 1e-9));
    // The optimizer waits for the last reduce-scatter; transient buffers balance.
    TaskId last_scatter = 0;
    for (const auto& [bwd, scatter] : scatter_of) {
      last_scatter = std::max(last_scatter, scatter);
    }
    CHECK(has_edge(graph, last_scatter, optimizer));
    for (std::size_t tag = 0; tag < allocated.size(); ++tag) {
      CHECK_THAT(allocated[tag], WithinRel(freed[tag], 1e-9));
    }
  }
}

TEST_CASE("model::build_step_graph: ZeRO-2 reduce-scatters every micro-batch's buckets, gathers once", "[ir][zero]") {
  const ModelSpec spec = gpt_model(16, 2048, 16, 1024, 32000);
  Plan plan = make_plan(2, 2, 4, 64, 1, GENERATE(1, 2));
  set_zero_stage(plan, 2, "test", "--zero");
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::RankClasses);
  const int m = static_cast<int>(plan.num_microbatches());
  for (const RankInfo& info : graph.ranks()) {
    double reduced = 0.0;
    double gathered = 0.0;
    double grads_allocated = 0.0;
    double grads_freed = 0.0;
    std::map<int, int> scatters_per_microbatch;
    for (TaskId id = 0; id < graph.num_tasks(); ++id) {
      const Task& t = graph.task(id);
      if (t.rank != info.rank) {
        continue;
      }
      grads_allocated += mem(t.alloc_at_start, MemTag::Grads);
      grads_freed += mem(t.free_at_end, MemTag::Grads);
      if (t.kind != TaskKind::Collective) {
        continue;
      }
      if (t.collective == CollectiveKind::ReduceScatter) {
        REQUIRE(t.microbatch >= 0);
        ++scatters_per_microbatch[t.microbatch];
        reduced += t.msg_bytes;
        // Each waits for the backward of its bucket's last unit in that micro-batch.
        bool after_backward = false;
        for (const TaskId source : predecessors(graph, id)) {
          const Task& s = graph.task(source);
          after_backward = after_backward || (s.kind == TaskKind::Compute && s.phase == Phase::Backward &&
                                              s.microbatch == t.microbatch);
        }
        CHECK(after_backward);
      } else {
        CHECK(t.collective == CollectiveKind::AllGather);
        CHECK(t.microbatch == -1);
        gathered += t.msg_bytes;
      }
    }
    const double psi = params_per_rank(spec, plan, info.stage);
    CHECK(static_cast<int>(scatters_per_microbatch.size()) == m);
    CHECK(scatters_per_microbatch.begin()->second == scatters_per_microbatch.rbegin()->second);
    CHECK_THAT(reduced, WithinRel(4.0 * m * psi, 1e-9));
    CHECK_THAT(gathered, WithinRel(2.0 * psi, 1e-9));
    CHECK_THAT(grads_allocated, WithinRel(4.0 * m * psi, 1e-9));
    CHECK_THAT(grads_freed, WithinRel(grads_allocated, 1e-9));
  }
}

TEST_CASE("model::build_step_graph: ZeRO with dp = 1 shards nothing; rank classes match all ranks", "[ir][zero]") {
  const ModelSpec spec = gpt_model(8, 512, 8, 512, 8192);
  Plan single = make_plan(2, 2, 1, 8);
  set_zero_stage(single, 3, "test", "--zero");
  const TaskGraph graph = build_step_graph(spec, test_cluster(single.world_size()), single, Instantiation::AllRanks);
  for (const Task& t : graph.tasks()) {
    CHECK(t.kind != TaskKind::Collective);
  }
  Plan plan = make_plan(2, 2, 2, 8);
  set_zero_stage(plan, GENERATE(2, 3), "test", "--zero");
  const TaskGraph all = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::AllRanks);
  const TaskGraph classes = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::RankClasses);
  std::map<int, std::size_t> per_rank_all;
  std::map<int, std::size_t> per_rank_classes;
  for (const Task& t : all.tasks()) {
    ++per_rank_all[t.rank];
  }
  for (const Task& t : classes.tasks()) {
    ++per_rank_classes[t.rank];
  }
  for (const auto& [rank, count] : per_rank_classes) {
    CHECK(per_rank_all.at(rank) == count);
  }
}

TEST_CASE("model::load_plan_yaml: zero_stage sets the stage and the distributed optimizer; contradictions fail",
          "[ir][zero]") {
  const auto load = [](const char* text) { return load_plan_yaml(YAML::Load(text), "s.yaml", "plan", 8); };
  for (const int stage : {0, 1, 2, 3}) {
    const Plan plan = load(("{global_batch_size: 8, zero_stage: " + std::to_string(stage) + "}").c_str());
    CHECK(plan.get_zero_stage() == stage);
    CHECK(plan.distributed_optimizer == (stage >= 1));
  }
  CHECK(load("{global_batch_size: 8, zero_stage: 2, distributed_optimizer: true}").get_zero_stage() == 2);
  CHECK(load("{global_batch_size: 8, distributed_optimizer: true}").get_zero_stage() == 1);
  REQUIRE_THROWS_WITH(load("{global_batch_size: 8, zero_stage: 3, distributed_optimizer: false}"),
                      Contains("s.yaml") && Contains("plan.zero_stage") && Contains("contradicts"));
  REQUIRE_THROWS_WITH(load("{global_batch_size: 8, zero_stage: 4}"),
                      Contains("plan.zero_stage") && Contains("4") && Contains("valid: 0"));
  REQUIRE_THROWS_AS(load("{global_batch_size: 8, zero_stage: -1}"), cuboid::InputError);
}

TEST_CASE("model::build_step_graph: ZeRO-3 head gathers a tied word embedding of its own stage", "[ir][zero]") {
  // Tied embeddings with pp = 1: the head's logits GEMM reads the word embedding (V h / t parameters), which
  // head_params_per_rank leaves to the embedding unit, so the head's all-gather must carry it as well.
  ModelSpec spec = gpt_model(4, 512, 8, 512, 8192);
  spec.tied_embeddings = true;
  Plan plan = make_plan(2, 1, 2, 8);
  set_zero_stage(plan, 3, "test", "--zero");
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::RankClasses);
  const double head = head_params_per_rank(spec, plan, true) + 8192.0 * 512.0 / 2.0;
  int head_gathers = 0;
  for (const Task& t : graph.tasks()) {
    if (t.kind == TaskKind::Collective && t.collective == CollectiveKind::AllGather && t.layer < 0 &&
        graph.blocks()[static_cast<std::size_t>(t.block)].name.rfind("head", 0) == 0) {
      CHECK_THAT(t.msg_bytes, WithinRel(2.0 * head, EXACT));
      ++head_gathers;
    }
  }
  CHECK(head_gathers == 2 * static_cast<int>(plan.num_microbatches()));
}

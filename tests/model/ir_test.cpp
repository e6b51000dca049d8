// TaskGraph structure from build_step_graph: acyclic, no dangling tasks, each (layer, micro-batch) forward and
// backward once per rank, rank classes == all ranks per representative, bucketed DP sync, memory balance, the task
// limit, and build time for GPT-3 175B on 1024 GPUs.
#include "ir_fixtures.hpp"

#include "model/errors.hpp"
#include "model/memory_model.hpp"
#include "model/step_builder.hpp"

#include <boost/graph/topological_sort.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <iterator>
#include <map>
#include <tuple>

using namespace cuboid::model;
using namespace cuboid::model::testing;
using Catch::Matchers::WithinRel;

namespace {

auto key(const Task& t) {
  return std::tie(t.kind, t.phase, t.stream, t.peer, t.stage, t.chunk, t.microbatch, t.layer, t.block, t.collective,
                  t.group, t.group_size, t.msg_bytes, t.bucket, t.alloc_at_start, t.free_at_end);
}

std::vector<TaskId> tasks_of(const TaskGraph& graph, int rank) {
  std::vector<TaskId> ids;
  for (TaskId id = 0; id < graph.num_tasks(); ++id) {
    if (graph.task(id).rank == rank) {
      ids.push_back(id);
    }
  }
  return ids;
}

Plan plan_for(Schedule schedule, int vp) {
  Plan plan = make_plan(2, 4, 2, 32, 2, vp);
  plan.schedule = schedule;
  return plan;
}

} // namespace

TEST_CASE("model::build_step_graph: acyclic, single sources, forward and backward once per (layer, mb)", "[ir]") {
  const auto [schedule, vp] = GENERATE(table<Schedule, int>(
      {{Schedule::GPipe, 1}, {Schedule::OneFOneB, 1}, {Schedule::Interleaved, 2}, {Schedule::GPipe, 2}}));
  const Instantiation inst = GENERATE(Instantiation::AllRanks, Instantiation::RankClasses);
  const ModelSpec spec = gpt_model(16, 512, 8, 512, 8192);
  Plan plan = plan_for(schedule, vp);
  plan.distributed_optimizer = GENERATE(false, true);
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, inst);
  const int m = static_cast<int>(plan.num_microbatches());

  std::vector<TaskGraph::Graph::vertex_descriptor> order;
  REQUIRE_NOTHROW(boost::topological_sort(graph.graph(), std::back_inserter(order)));
  REQUIRE(order.size() == graph.num_tasks());

  std::map<int, TaskId> first_compute; // rank -> its first task (the start of its compute chain)
  for (TaskId id = 0; id < graph.num_tasks(); ++id) {
    first_compute.try_emplace(graph.task(id).rank, id);
  }
  for (TaskId id = 0; id < graph.num_tasks(); ++id) {
    const Task& t = graph.task(id);
    // Sources: only the first task of a stage-0 rank. Sinks: the optimizer or the last parameter all-gather.
    if (boost::in_degree(id, graph.graph()) == 0) {
      CHECK((t.stage == 0 && first_compute[t.rank] == id));
    }
    if (boost::out_degree(id, graph.graph()) == 0) {
      CHECK((t.kind == TaskKind::Optimizer || t.collective == CollectiveKind::AllGather));
    }
  }
  for (const RankInfo& info : graph.ranks()) {
    std::map<std::tuple<int, int, int>, int> runs; // (phase, layer, mb) -> count
    MemBytes balance{};
    for (const TaskId id : tasks_of(graph, info.rank)) {
      const Task& t = graph.task(id);
      for (std::size_t tag = 0; tag < balance.size(); ++tag) {
        balance[tag] += t.alloc_at_start[tag] - t.free_at_end[tag];
      }
      if (t.kind == TaskKind::Compute && t.layer >= 0) {
        ++runs[{static_cast<int>(t.phase), t.layer, t.microbatch}];
      }
    }
    for (const double bytes : balance) {
      CHECK(bytes == 0.0); // every allocation is freed within the step
    }
    const int layers_on_rank = static_cast<int>(spec.num_layers) / plan.pp;
    CHECK(runs.size() == static_cast<std::size_t>(2 * layers_on_rank * m));
    for (const auto& [what, count] : runs) {
      CHECK(count == 1);
    }
  }
}

TEST_CASE("model::build_step_graph: a representative's tasks are the same in both instantiations", "[ir]") {
  const auto [schedule, vp] = GENERATE(table<Schedule, int>({{Schedule::OneFOneB, 1}, {Schedule::Interleaved, 2}}));
  const ModelSpec spec = gpt_model(16, 512, 8, 512, 8192);
  Plan plan = plan_for(schedule, vp);
  plan.sequence_parallel = true;
  plan.distributed_optimizer = GENERATE(false, true);
  const ClusterSpec cluster = test_cluster(plan.world_size());
  const TaskGraph all = build_step_graph(spec, cluster, plan, Instantiation::AllRanks);
  const TaskGraph classes = build_step_graph(spec, cluster, plan, Instantiation::RankClasses);
  REQUIRE(classes.ranks().size() == static_cast<std::size_t>(plan.pp));
  CHECK(all.ranks().size() == static_cast<std::size_t>(plan.world_size()));
  CHECK(all.num_tasks() == classes.num_tasks() * static_cast<std::size_t>(plan.tp * plan.dp));
  for (const RankInfo& rep : classes.ranks()) {
    CHECK(rep.multiplicity == plan.tp * plan.dp);
    const auto lhs = tasks_of(all, rep.rank);
    const auto rhs = tasks_of(classes, rep.rank);
    REQUIRE(lhs.size() == rhs.size());
    for (std::size_t pos = 0; pos < lhs.size(); ++pos) {
      const Task& a = all.task(lhs[pos]);
      const Task& b = classes.task(rhs[pos]);
      REQUIRE(key(a) == key(b));
      CHECK(all.blocks()[static_cast<std::size_t>(std::max(a.block, 0))].name ==
            classes.blocks()[static_cast<std::size_t>(std::max(b.block, 0))].name);
      CHECK(boost::in_degree(lhs[pos], all.graph()) == boost::in_degree(rhs[pos], classes.graph()));
      CHECK(boost::out_degree(lhs[pos], all.graph()) == boost::out_degree(rhs[pos], classes.graph()));
      CHECK(all.label(lhs[pos]) == classes.label(rhs[pos]));
    }
    CHECK(all.ranks()[static_cast<std::size_t>(all.rank_index(rep.rank))].static_bytes == rep.static_bytes);
  }
}

TEST_CASE("model::build_step_graph: DP buckets cover the rank's parameters", "[ir]") {
  // 40M-parameter buckets of fp32 grads (Megatron default): the all-reduced bytes of a rank are 4 B x its params.
  const ModelSpec spec = gpt_model(16, 2048, 16, 1024, 32000);
  Plan plan = make_plan(2, 2, 4, 64, 1, GENERATE(1, 2));
  plan.distributed_optimizer = GENERATE(false, true);
  plan.overlap_grad_reduce = GENERATE(true, false);
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::RankClasses);
  for (const RankInfo& info : graph.ranks()) {
    double reduced = 0.0;
    double gathered = 0.0;
    int buckets = 0;
    for (const TaskId id : tasks_of(graph, info.rank)) {
      const Task& t = graph.task(id);
      if (t.kind != TaskKind::Collective) {
        continue;
      }
      CHECK(t.group_size == plan.dp);
      CHECK(graph.groups()[static_cast<std::size_t>(t.group_index)] == std::vector<int>{info.rank});
      if (t.collective == CollectiveKind::AllGather) {
        gathered += t.msg_bytes;
      } else {
        CHECK(t.collective == (plan.distributed_optimizer ? CollectiveKind::ReduceScatter : CollectiveKind::AllReduce));
        reduced += t.msg_bytes;
        ++buckets;
      }
    }
    const double params = params_per_rank(spec, plan, info.stage);
    CHECK_THAT(reduced, WithinRel(4.0 * params, 1e-12));
    CHECK_THAT(gathered, WithinRel(plan.distributed_optimizer ? 2.0 * params : 0.0, 1e-12));
    CHECK(buckets >= static_cast<int>(4.0 * params / plan.grad_bucket_bytes));
  }
  plan.dp = 1;
  plan.global_batch_size = 16;
  const TaskGraph single = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::AllRanks);
  for (const Task& t : single.tasks()) {
    CHECK(t.kind != TaskKind::Collective);
  }
}

TEST_CASE("model::build_step_graph: --grad-reduce-in-bf16 halves the reduced bytes and the main-grad memory", "[ir]") {
  const ModelSpec spec = gpt_model(16, 2048, 16, 1024, 32000);
  Plan plan = make_plan(2, 2, 4, 64);
  plan.distributed_optimizer = GENERATE(false, true);
  plan.grad_reduce_in_bf16 = true;
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, Instantiation::RankClasses);
  for (const RankInfo& info : graph.ranks()) {
    double reduced = 0.0;
    for (const TaskId id : tasks_of(graph, info.rank)) {
      const Task& t = graph.task(id);
      if (t.kind == TaskKind::Collective && t.collective != CollectiveKind::AllGather) {
        reduced += t.msg_bytes;
      }
    }
    const double params = params_per_rank(spec, plan, info.stage);
    CHECK_THAT(reduced, WithinRel(2.0 * params, 1e-12));
    CHECK_THAT(static_memory(spec, plan, info.stage)[static_cast<std::size_t>(MemTag::Grads)],
               WithinRel(2.0 * params, 1e-12));
  }
  plan.zero_stage = 2;
  plan.distributed_optimizer = true;
  CHECK_THROWS_AS(validate(plan, spec, test_cluster(plan.world_size()), "test"), cuboid::InputError);
  plan.zero_stage = 0;
  plan.precision = Precision::Fp16;
  CHECK_THROWS_AS(validate(plan, spec, test_cluster(plan.world_size()), "test"), cuboid::InputError);
}

// Megatron's embedding group: with tied embeddings on two stages, each (tp, dp) pair of first- and last-stage ranks
// all-reduces the word embedding's gradient (V/tp x h, fp32 main grads) after its DP reduction and before its
// optimizer. Nothing without tying, with pp = 1, or with zb-v (both ends on stage 0).
TEST_CASE("model::build_step_graph: tied embeddings all-reduce over the embedding group", "[ir]") {
  ModelSpec spec = gpt_model(8, 1024, 16, 1024, 32000);
  spec.tied_embeddings = true;
  Plan plan = make_plan(2, 4, 2, 16, 1, GENERATE(1, 2));
  const auto inst = GENERATE(Instantiation::RankClasses, Instantiation::AllRanks);
  const TaskGraph graph = build_step_graph(spec, test_cluster(plan.world_size()), plan, inst);
  std::map<int, TaskId> embed_task; // rank -> its embedding-group all-reduce
  for (TaskId id = 0; id < graph.num_tasks(); ++id) {
    const Task& t = graph.task(id);
    if (t.kind == TaskKind::Collective && t.group == GroupKind::Embedding) {
      CHECK(embed_task.emplace(t.rank, id).second);
      CHECK(t.collective == CollectiveKind::AllReduce);
      CHECK(t.stream == Stream::DpComm);
      CHECK(t.group_size == 2);
      CHECK_THAT(t.msg_bytes, WithinRel(32000.0 * 1024.0 / 2.0 * 4.0, 1e-12));
      const std::vector<int>& members = graph.groups()[static_cast<std::size_t>(t.group_index)];
      REQUIRE(members.size() == 2);
      CHECK(graph.ranks()[static_cast<std::size_t>(graph.rank_index(members[0]))].stage == 0);
      CHECK(graph.ranks()[static_cast<std::size_t>(graph.rank_index(members[1]))].stage == plan.pp - 1);
      bool gates_optimizer = false;
      for (const auto& [from, to] : graph.edges()) {
        gates_optimizer = gates_optimizer || (from == id && graph.task(to).kind == TaskKind::Optimizer &&
                                              graph.task(to).rank == t.rank);
      }
      CHECK(gates_optimizer);
    }
  }
  // Every first- and last-stage rank has one: 2 in rank classes, 2 x tp x dp with all ranks.
  CHECK(embed_task.size() == (inst == Instantiation::RankClasses ? 2U : static_cast<std::size_t>(2 * plan.tp * plan.dp)));

  const auto count_embedding = [](const TaskGraph& g) {
    return std::count_if(g.tasks().begin(), g.tasks().end(), [](const Task& t) {
      return t.kind == TaskKind::Collective && t.group == GroupKind::Embedding;
    });
  };
  spec.tied_embeddings = false;
  CHECK(count_embedding(build_step_graph(spec, test_cluster(plan.world_size()), plan, inst)) == 0);
  spec.tied_embeddings = true;
  Plan zbv = make_plan(1, 2, 1, 4, 1, 2);
  zbv.schedule = Schedule::ZbV;
  CHECK(count_embedding(build_step_graph(spec, test_cluster(2), zbv, inst)) == 0);
  const Plan flat = make_plan(2, 1, 2, 16);
  CHECK(count_embedding(build_step_graph(spec, test_cluster(4), flat, inst)) == 0);
}

TEST_CASE("model::build_step_graph: the task limit is checked before building", "[ir]") {
  const ModelSpec spec = gpt_model(16, 512, 8, 512, 8192);
  const Plan plan = plan_for(Schedule::OneFOneB, 1);
  REQUIRE_THROWS_AS(build_step_graph(spec, test_cluster(16), plan, Instantiation::AllRanks, 1000),
                    cuboid::InfeasibleError);
  REQUIRE_THROWS_WITH(build_step_graph(spec, test_cluster(16), plan, Instantiation::AllRanks, 1000),
                      Catch::Contains("plan would create") && Catch::Contains("tasks (limit 1000)"));
  const TaskGraph graph = build_step_graph(spec, test_cluster(16), plan, Instantiation::AllRanks);
  CHECK_NOTHROW(build_step_graph(spec, test_cluster(16), plan, Instantiation::AllRanks, graph.num_tasks()));
}

TEST_CASE("model::build_step_graph: GPT-3 175B on 1024 GPUs, rank classes: task count", "[ir]") {
  // tp 8, pp 16, dp 8, global batch 1536, micro-batch 1: 192 micro-batches, 6 layers per stage, so
  // 16 x 192 x 6 x 2 = 36,864 layer tasks plus 2 x 192 embedding and 2 x 192 head tasks in rank-class mode.
  const ModelSpec spec = gpt3_175b();
  Plan plan = make_plan(8, 16, 8, 1536);
  plan.sequence_parallel = true;
  plan.distributed_optimizer = true;
  const ClusterSpec cluster = test_cluster(1024);
  const TaskGraph graph = build_step_graph(spec, cluster, plan, Instantiation::RankClasses);
  std::size_t compute = 0;
  for (const Task& t : graph.tasks()) {
    compute += t.kind == TaskKind::Compute ? 1U : 0U;
  }
  CHECK(compute == 36'864 + 4 * 192);
}

TEST_CASE("model::build_step_graph: GPT-3 175B on 1024 GPUs, all ranks", "[ir][slow]") {
  const ModelSpec spec = gpt3_175b();
  Plan plan = make_plan(8, 16, 8, 1536);
  plan.sequence_parallel = true;
  const TaskGraph graph = build_step_graph(spec, test_cluster(1024), plan, Instantiation::AllRanks);
  CHECK(graph.ranks().size() == 1024U);
  CHECK(graph.num_tasks() > 64U * 37'000U);
}

TEST_CASE("model::build_step_graph: uneven first/last stages follow layers_per_stage", "[ir]") {
  // Llama 3.1 405B style split: 14 layers, pp = 4, first = 3, last = 3 -> [3, 4, 4, 3]; each stage runs exactly
  // its layers, the embedding on stage 0 and the head on stage 3.
  const ModelSpec spec = gpt_model(14, 512, 8, 512, 8192);
  Plan plan = make_plan(1, 4, 1, 8);
  plan.first_stage_layers = 3;
  plan.last_stage_layers = 3;
  const TaskGraph graph = build_step_graph(spec, test_cluster(4), plan, Instantiation::AllRanks);
  const std::vector<int> expected_layers = {3, 4, 4, 3};
  for (const RankInfo& info : graph.ranks()) {
    std::map<int, int> layers; // layer -> forward count
    int embeds = 0;
    int heads = 0;
    for (const TaskId id : tasks_of(graph, info.rank)) {
      const Task& t = graph.task(id);
      if (t.kind != TaskKind::Compute || t.phase != Phase::Forward) {
        continue;
      }
      const std::string& block = graph.blocks()[static_cast<std::size_t>(t.block)].name;
      embeds += block == "embed.fwd" ? 1 : 0;
      heads += block == "head.fwd" ? 1 : 0;
      if (t.layer >= 0) {
        ++layers[t.layer];
      }
    }
    CHECK(layers.size() == static_cast<std::size_t>(expected_layers[static_cast<std::size_t>(info.stage)]));
    CHECK(embeds == (info.stage == 0 ? 8 : 0));
    CHECK(heads == (info.stage == 3 ? 8 : 0));
  }
  CHECK(graph.label(0) == "fwd embed mb0 s0c0 r0");
  CHECK(graph.label(1) == "fwd L0 mb0 s0c0 r0");
}

TEST_CASE("model::TaskGraph: moving keeps tasks, edges, blocks and ranks", "[ir]") {
  const ModelSpec spec = gpt_model(4, 256, 4, 256, 4096);
  const Plan plan = make_plan(1, 2, 2, 8);
  TaskGraph graph = build_step_graph(spec, test_cluster(4), plan, Instantiation::AllRanks);
  const std::size_t tasks = graph.num_tasks();
  const std::size_t edges = graph.num_edges();
  const std::string label = graph.label(3);
  TaskGraph moved(std::move(graph));
  CHECK(moved.num_tasks() == tasks);
  CHECK(moved.num_edges() == edges);
  CHECK(moved.label(3) == label);
  CHECK(moved.get_model().name == spec.name);
  CHECK(moved.rank_index(3) == 3);
  TaskGraph assigned(spec, test_cluster(4), plan, Instantiation::RankClasses);
  assigned = std::move(moved);
  CHECK(assigned.num_edges() == edges);
  CHECK(assigned.get_instantiation() == Instantiation::AllRanks);
  CHECK(assigned.model_flops_per_step > 0.0);
}

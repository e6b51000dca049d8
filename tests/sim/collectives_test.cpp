// Collective algorithms: closed-form times (nccl-tests factors), algorithm choice, and bandwidth sharing with P2P.
#include "sim/collectives/collective.hpp"
#include "sim/engine.hpp"
#include "sim/program.hpp"
#include "tests/sim/invariants.hpp"

#include <catch2/catch.hpp>

#include <cmath>

using namespace cuboid::sim;
using cuboid::model::CollectiveKind;
using cuboid::model::Stream;
using Catch::Matchers::WithinRel;

namespace {

constexpr double NIC_BW = 25e9;
constexpr double NVLINK_BW = 250e9;
constexpr double NIC_ALPHA = 10e-6;
constexpr double NVLINK_ALPHA = 3e-6;
const collectives::Links LINKS{{NVLINK_BW, NVLINK_ALPHA}, {NIC_BW, NIC_ALPHA}};

/// One collective over ranks [0, n): one participant task per rank on DpComm, one flow per rank per phase.
std::vector<std::uint32_t> add_collective(ProgramBuilder& builder, std::uint32_t n,
                                          const std::vector<collectives::PhaseSpec>& phases) {
  const std::uint32_t inst = builder.add_instance(n);
  for (const collectives::PhaseSpec& phase : phases) {
    builder.add_phase(inst, phase.latency_s);
    for (std::uint32_t rank_idx = 0; rank_idx < n; ++rank_idx) {
      if (phase.nvlink_bytes > 0.0) {
        builder.add_flow(phase.nvlink_bytes, port_id(rank_idx, PortKind::NvlinkOut), port_id(rank_idx, PortKind::NvlinkIn));
      }
      if (phase.nic_bytes > 0.0) {
        builder.add_flow(phase.nic_bytes, port_id(rank_idx, PortKind::NicOut), port_id(rank_idx, PortKind::NicIn));
      }
    }
  }
  std::vector<std::uint32_t> tasks;
  for (std::uint32_t rank_idx = 0; rank_idx < n; ++rank_idx) {
    tasks.push_back(builder.add_comm_task(inst, rank_idx, Stream::DpComm, TaskCategory::DpComm));
  }
  return tasks;
}

} // namespace

TEST_CASE("sim::collectives: ring all-reduce matches 2(n-1)/n * S/B + 2(n-1) alpha", "[sim]") {
  // n ranks, one per node, ring over the NIC: NCCL ring all-reduce = 2(n-1) steps of S/n bytes
  // (nccl-tests doc/PERFORMANCE.md), simulated with one flow per rank on its own NIC ports.
  const std::uint32_t n = GENERATE(2U, 4U, 8U, 64U);
  const double msg_bytes = GENERATE(1e6, 1e9);
  const auto members = static_cast<double>(n);
  const double expected_s = 2.0 * (members - 1.0) / members * msg_bytes / NIC_BW + 2.0 * (members - 1.0) * NIC_ALPHA;
  const auto phases =
      collectives::ring(CollectiveKind::AllReduce, msg_bytes, static_cast<int>(n), collectives::Fabric::Nic, LINKS.nic);
  CHECK_THAT(collectives::isolated_time_s(phases, LINKS), WithinRel(expected_s, 1e-12));
  ProgramBuilder builder(n, NVLINK_BW, NIC_BW);
  const auto tasks = add_collective(builder, n, phases);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  for (const std::uint32_t task : tasks) {
    CHECK_THAT(run.end_s[task], WithinRel(expected_s, 1e-12));
  }
  testing::check_invariants(program, run);
}

TEST_CASE("sim::collectives: reduce-scatter and all-gather move (n-1)/n * S in (n-1) steps", "[sim]") {
  // Half the all-reduce traffic and steps (nccl-tests bus bandwidth factor (n-1)/n).
  const int n = 8;
  const double msg_bytes = 4e8;
  for (const CollectiveKind kind : {CollectiveKind::ReduceScatter, CollectiveKind::AllGather}) {
    const auto phases = collectives::ring(kind, msg_bytes, n, collectives::Fabric::Nvlink, LINKS.nvlink);
    CHECK_THAT(collectives::isolated_time_s(phases, LINKS),
               WithinRel(7.0 / 8.0 * msg_bytes / NVLINK_BW + 7.0 * NVLINK_ALPHA, 1e-12));
  }
}

TEST_CASE("sim::collectives: tree all-reduce = 2 S/B + 2 ceil(log2 n) alpha", "[sim]") {
  // NCCL double binary tree: every rank sends and receives 2S; depth ceil(log2 n) up and down.
  const double msg_bytes = 1e6;
  const auto phases = collectives::tree(CollectiveKind::AllReduce, msg_bytes, 100, collectives::Fabric::Nic, LINKS.nic);
  CHECK_THAT(collectives::isolated_time_s(phases, LINKS),
             WithinRel(2.0 * msg_bytes / NIC_BW + 2.0 * 7.0 * NIC_ALPHA, 1e-12));
  CHECK(collectives::tree(CollectiveKind::AllGather, msg_bytes, 100, collectives::Fabric::Nic, LINKS.nic).empty());
}

TEST_CASE("sim::collectives: hierarchical all-reduce pipelines NVLink RS/AG with a NIC all-reduce of S/k", "[sim]") {
  // 4 nodes x 8 GPUs, S = 1 GB, one pipelined phase: NVLink carries the in-node reduce-scatter + all-gather,
  // 2*7/8 S = 7 ms at 250 GB/s, with 14 alphas; the NIC carries a ring all-reduce of S/8 over 4 nodes,
  // 2*3/4 * S/8 = 7.5 ms at 25 GB/s, with 6 alphas. Time = alphas + max(7, 7.5) ms.
  const double msg_bytes = 1e9;
  const collectives::GroupLayout layout{32, 8, 4};
  const auto phases = collectives::hierarchical(CollectiveKind::AllReduce, msg_bytes, layout, LINKS);
  REQUIRE(phases.size() == 1);
  const double expected_s = 14.0 * NVLINK_ALPHA + 6.0 * NIC_ALPHA + 1.5 * msg_bytes / 8.0 / NIC_BW;
  CHECK_THAT(collectives::isolated_time_s(phases, LINKS), WithinRel(expected_s, 1e-12));
  // Simulated with flows on both fabrics of all 32 ranks: the NIC flows finish last.
  ProgramBuilder builder(32, NVLINK_BW, NIC_BW);
  const auto tasks = add_collective(builder, 32, phases);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK_THAT(run.end_s[tasks.front()], WithinRel(expected_s, 1e-12));
  testing::check_invariants(program, run);
}

TEST_CASE("sim::collectives: NVLS all-reduce inside a node when the link has it", "[sim]") {
  // H100-like NVLink: ring busbw 250 GB/s, NVLS algbw 480 GB/s + 20 us for >= 4 ranks. For 8 ranks and 1 GB NVLS
  // takes 20 us + 2.08 ms vs the ring's 2*7/8 * 4 ms = 7 ms: chosen. For 2 ranks NVLS is not allowed.
  collectives::Links links = LINKS;
  links.nvlink.nvls_bw_bytes_per_s = 480e9;
  links.nvlink.nvls_latency_s = 20e-6;
  links.nvlink.nvls_min_ranks = 4;
  const auto schedule = collectives::choose(CollectiveKind::AllReduce, 1e9, collectives::GroupLayout{8, 8, 1}, links);
  CHECK(schedule.algorithm == collectives::Algorithm::Nvls);
  CHECK_THAT(collectives::isolated_time_s(schedule.phases, links), WithinRel(20e-6 + 1e9 / 480e9, 1e-12));
  CHECK(collectives::choose(CollectiveKind::AllReduce, 1e9, collectives::GroupLayout{2, 2, 1}, links).algorithm ==
        collectives::Algorithm::Ring);
}

TEST_CASE("sim::collectives: algorithm choice follows the group layout", "[sim]") {
  cuboid::model::ClusterSpec cluster;
  cluster.num_gpus = 64;
  cluster.gpus_per_node = 8;
  SECTION("all members in one node -> ring on NVLink") {
    const auto layout = collectives::layout_of({0, 1, 2, 3}, cluster);
    CHECK(layout.num_nodes == 1);
    CHECK(layout.members_per_node == 4);
    const auto schedule = collectives::choose(CollectiveKind::AllReduce, 1e9, layout, LINKS);
    CHECK(schedule.algorithm == collectives::Algorithm::Ring);
    CHECK(schedule.phases.front().nvlink_bytes > 0.0);
    CHECK(schedule.phases.front().nic_bytes == 0.0);
  }
  SECTION("several members on each of several nodes -> hierarchical") {
    // dp group of tp=2: ranks 0,2,...,30 -> 4 per node on 4 nodes.
    std::vector<int> members;
    for (int rank = 0; rank < 32; rank += 2) {
      members.push_back(rank);
    }
    const auto layout = collectives::layout_of(members, cluster);
    CHECK(layout.num_nodes == 4);
    CHECK(layout.members_per_node == 4);
    CHECK(collectives::choose(CollectiveKind::AllReduce, 1e9, layout, LINKS).algorithm ==
          collectives::Algorithm::Hierarchical);
  }
  SECTION("one member per node -> ring on the NIC for large messages, tree for small ones") {
    // tp=8: dp group 0, 8, 16, ..., 56 -> one member on each of 8 nodes. For 1 GB the ring's 2*7/8 S/B beats the
    // tree's 2 S/B; for 1 KB latency dominates: 2*3 alphas (tree) < 14 alphas (ring).
    const auto layout = collectives::layout_of({0, 8, 16, 24, 32, 40, 48, 56}, cluster);
    CHECK(layout.members_per_node == 1);
    const auto large = collectives::choose(CollectiveKind::AllReduce, 1e9, layout, LINKS);
    CHECK(large.algorithm == collectives::Algorithm::Ring);
    CHECK(large.phases.front().nic_bytes > 0.0);
    CHECK(large.phases.front().nvlink_bytes == 0.0);
    CHECK(collectives::choose(CollectiveKind::AllReduce, 1e3, layout, LINKS).algorithm ==
          collectives::Algorithm::Tree);
  }
  SECTION("a group of one needs no communication") {
    CHECK(collectives::choose(CollectiveKind::AllReduce, 1e9, collectives::layout_of({5}, cluster), LINKS)
              .phases.empty());
  }
}

TEST_CASE("sim::collectives: a DP all-reduce sharing a NIC port with a P2P flow takes longer", "[sim]") {
  // Ranks 0 and 1 on different nodes. Alone, the 2-rank ring all-reduce of S takes 2 alpha + S/B. When rank 0 also
  // sends a P2P message of S to rank 1 at t = 0, both flows share rank 0's NIC out-port and rank 1's in-port at
  // B/2, so both the all-reduce and the P2P take longer than alone.
  const double msg_bytes = 5e8;
  const auto phases = collectives::ring(CollectiveKind::AllReduce, msg_bytes, 2, collectives::Fabric::Nic, LINKS.nic);
  const double alone_s = collectives::isolated_time_s(phases, LINKS);
  CHECK_THAT(alone_s, WithinRel(2.0 * NIC_ALPHA + msg_bytes / NIC_BW, 1e-12));

  ProgramBuilder builder(2, NVLINK_BW, NIC_BW);
  const auto allreduce = add_collective(builder, 2, phases);
  const std::uint32_t p2p = builder.add_p2p(0, 1, false, msg_bytes, NIC_ALPHA, true);
  const SimProgram program = builder.finish();
  const EngineResult run = run_engine(program);
  CHECK(run.end_s[allreduce[0]] > alone_s * 1.5);
  CHECK(run.end_s[p2p] - run.start_s[p2p] > (NIC_ALPHA + msg_bytes / NIC_BW) * 1.5);
  testing::check_invariants(program, run);
}

TEST_CASE("sim::collectives: isolated times agree with CostModel's closed forms", "[sim]") {
  // Differential oracle: the simulator's phases alone on an idle cluster must reproduce model/cost_model.cpp's
  // ring (collective_time_s) and pipelined hierarchical (hierarchical_allreduce_time_s) formulas.
  cuboid::model::ClusterSpec cluster;
  cluster.gpu.name = "toy";
  cluster.gpu.bf16_flops_per_s = 1e15;
  cluster.num_gpus = 64;
  cluster.gpus_per_node = 8;
  cluster.nvlink_bw_bytes_per_s = 300e9;
  cluster.nic_bw_bytes_per_s = 50e9;
  cuboid::model::CostProfile prof;
  cuboid::model::Plan plan;
  const cuboid::model::CostModel cost(cluster, prof, plan);
  const collectives::Links links{cost.nvlink(), cost.network()};
  const double msg_bytes = GENERATE(1e7, 1e9);
  for (const CollectiveKind kind : {CollectiveKind::AllReduce, CollectiveKind::ReduceScatter, CollectiveKind::AllGather}) {
    const auto phases = collectives::ring(kind, msg_bytes, 8, collectives::Fabric::Nvlink, links.nvlink);
    CHECK_THAT(collectives::isolated_time_s(phases, links),
               WithinRel(cost.collective_time_s(kind, msg_bytes, 8, links.nvlink), 1e-12));
  }
  // CostModel's hierarchical form always uses a ring across nodes; the simulator may pick a tree there for small
  // shards (10 MB / 8 over 4 nodes: 2 log2(4) alphas beat 6), so only large messages must agree exactly.
  const auto hier = collectives::hierarchical(CollectiveKind::AllReduce, msg_bytes, {32, 8, 4}, links);
  const double closed_form_s = cost.hierarchical_allreduce_time_s(msg_bytes, 8, 4);
  if (msg_bytes >= 1e9) {
    CHECK_THAT(collectives::isolated_time_s(hier, links), WithinRel(closed_form_s, 1e-12));
  } else {
    CHECK(collectives::isolated_time_s(hier, links) <= closed_form_s);
  }
}

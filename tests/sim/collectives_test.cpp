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
    const bool nvlink = phase.fabric == collectives::Fabric::Nvlink;
    for (std::uint32_t rank_idx = 0; rank_idx < n; ++rank_idx) {
      builder.add_flow(phase.bytes_per_member, port_id(rank_idx, nvlink ? PortKind::NvlinkOut : PortKind::NicOut),
                       port_id(rank_idx, nvlink ? PortKind::NvlinkIn : PortKind::NicIn));
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

TEST_CASE("sim::collectives: hierarchical all-reduce = NVLink RS + NIC all-reduce of S/k + NVLink AG", "[sim]") {
  // 4 nodes x 8 GPUs, S = 1 GB: RS and AG inside the node each 7/8 S / B_nvlink + 7 alpha_nv; across nodes a ring
  // all-reduce of S/8 over 4 nodes: 2*3/4 * S/8 / B_nic + 6 alpha_nic (the ring beats the tree at this size).
  const double msg_bytes = 1e9;
  const collectives::GroupLayout layout{32, 8, 4};
  const auto phases = collectives::hierarchical(CollectiveKind::AllReduce, msg_bytes, layout, LINKS);
  REQUIRE(phases.size() == 3);
  const double intra_s = 7.0 / 8.0 * msg_bytes / NVLINK_BW + 7.0 * NVLINK_ALPHA;
  const double inter_s = 1.5 * msg_bytes / 8.0 / NIC_BW + 6.0 * NIC_ALPHA;
  CHECK_THAT(collectives::isolated_time_s(phases, LINKS), WithinRel(2.0 * intra_s + inter_s, 1e-12));
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
    CHECK(schedule.phases.front().fabric == collectives::Fabric::Nvlink);
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
    CHECK(large.phases.front().fabric == collectives::Fabric::Nic);
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

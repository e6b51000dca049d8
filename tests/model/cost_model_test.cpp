// Tests for the roofline cost model (model/cost_model.hpp): GEMM efficiency curve, op times, collective formulas,
// and the NVLink fit against the published nccl-tests rows (scenarios/validation/published_collectives.csv).
#include "model/cost_model.hpp"
#include "model/errors.hpp"
#include "model/model_catalog.hpp"
#include "model/op_catalog.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

using namespace cuboid::model;
using Catch::Matchers::WithinRel;

namespace {

// Spec-sheet numbers (shared/specs/gpus.csv), so the tests do not depend on the hardware catalog.
ClusterSpec make_test_cluster(const std::string& gpu, int num_gpus) {
  ClusterSpec cluster;
  cluster.name = "test";
  cluster.gpu.name = gpu;
  const bool ampere = gpu.rfind("a100", 0) == 0;
  cluster.gpu.bf16_flops_per_s = ampere ? 312e12 : 989e12;
  cluster.gpu.fp16_flops_per_s = cluster.gpu.bf16_flops_per_s;
  cluster.gpu.fp8_flops_per_s = ampere ? 0.0 : 1979e12;
  cluster.gpu.hbm_bw_bytes_per_s = ampere ? 2.039e12 : (gpu == "h200" ? 4.8e12 : 3.35e12);
  cluster.gpu.nvlink_bw_bytes_per_s = ampere ? 300e9 : 450e9;
  cluster.num_gpus = num_gpus;
  cluster.gpus_per_node = 8;
  cluster.nvlink_bw_bytes_per_s = cluster.gpu.nvlink_bw_bytes_per_s;
  cluster.nic_bw_bytes_per_s = ampere ? 25e9 : 50e9; // 200 / 400 Gb/s per GPU
  return cluster;
}

Plan make_plan(int tp, Precision precision = Precision::Bf16) {
  Plan plan;
  plan.tp = tp;
  plan.precision = precision;
  return plan;
}

// Minimal RFC-4180 reader for the test (quoted fields with commas and doubled quotes).
std::vector<std::map<std::string, std::string>> read_csv(const std::string& path) {
  std::ifstream file(path);
  REQUIRE(file.good());
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false;
  char ch = 0;
  while (file.get(ch)) {
    if (quoted) {
      if (ch == '"' && file.peek() == '"') {
        field += '"';
        file.get(ch);
      } else if (ch == '"') {
        quoted = false;
      } else {
        field += ch;
      }
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      row.push_back(field);
      field.clear();
    } else if (ch == '\n') {
      row.push_back(field);
      field.clear();
      rows.push_back(row);
      row.clear();
    } else if (ch != '\r') {
      field += ch;
    }
  }
  if (!field.empty() || !row.empty()) {
    row.push_back(field);
    rows.push_back(row);
  }
  std::vector<std::map<std::string, std::string>> records;
  for (std::size_t row_idx = 1; row_idx < rows.size(); ++row_idx) {
    std::map<std::string, std::string> record;
    for (std::size_t col = 0; col < rows[0].size() && col < rows[row_idx].size(); ++col) {
      record[rows[0][col]] = rows[row_idx][col];
    }
    records.push_back(record);
  }
  return records;
}

std::string gpu_of_system(const std::string& system) {
  if (system.find("A100") != std::string::npos) {
    return "a100-80gb";
  }
  return system.find("H200") != std::string::npos ? "h200" : "h100-sxm";
}

} // namespace

// Efficiency of C(m,n) = A(m,k) B(k,n) grows with size (Hockney half-performance term) and never exceeds the
// best-shape MAMF fraction; square sizes are multiples of 128 so tile padding does not break monotonicity.
TEST_CASE("model::CostModel: GEMM efficiency is monotone in size and bounded by max", "[cost]") {
  const std::string gpu = GENERATE(std::string("a100-80gb"), std::string("h100-sxm"));
  const CostModel cost(make_test_cluster(gpu, 8), default_profile(gpu), make_plan(1));
  const double max_eff = cost.get_profile().gemm_max_efficiency;
  double previous = 0.0;
  for (double size = 128.0; size <= 65536.0; size *= 2.0) {
    const double eff = cost.gemm_efficiency(size, size, size, 1.0, false);
    CHECK(eff > previous);
    CHECK(eff <= max_eff);
    previous = eff;
  }
  CHECK_THAT(previous, WithinRel(max_eff, 0.01));
  SECTION("half of max at gemm_half_efficiency_flops when quantisation is perfect") {
    // 128 x 128 x K: one tile, so q = 1 and eff = max * F / (F + F_half); choose K so that F = F_half.
    const double k = cost.get_profile().gemm_half_efficiency_flops / (2.0 * 128.0 * 128.0);
    CHECK_THAT(cost.gemm_efficiency(128.0, 128.0, k, 1.0, false), WithinRel(max_eff / 2.0, 1e-9));
  }
}

// A GEMM much larger than F_half whose tiles fill whole waves (216 tiles of 128x256 = 2 waves on 108 SMs) runs at
// the best-shape rate: t = F / (peak * max_eff) within the 0.5 % left by the Hockney term, plus launch overhead.
TEST_CASE("model::CostModel: big GEMM op time is flops / (peak * max efficiency)", "[cost]") {
  const CostModel cost(make_test_cluster("a100-80gb", 8), default_profile("a100-80gb"), make_plan(1));
  Op op;
  op.kind = OpKind::Gemm;
  op.m = 128 * 216;
  op.n = 256;
  op.k = 16384;
  op.flops = 2.0 * static_cast<double>(op.m * op.n * op.k);
  op.hbm_bytes = 2.0 * static_cast<double>(op.m * op.k + op.k * op.n + op.m * op.n);
  const double ideal = op.flops / (312e12 * cost.get_profile().gemm_max_efficiency);
  CHECK_THAT(cost.op_time_s(op) - cost.get_profile().launch_overhead_s, WithinRel(ideal, 0.006));
  SECTION("FP8 uses the FP8 peak and FP8 efficiency") {
    const CostModel fp8(make_test_cluster("h100-sxm", 8), default_profile("h100-sxm"), make_plan(1, Precision::Fp8));
    // 16384^3 on 132 SMs: 8192 tiles of 128x256 = 62.06 waves -> q = 0.985 (wave quantisation), Hockney ~ 1.
    Op big;
    big.kind = OpKind::Gemm;
    big.m = big.n = big.k = 16384;
    big.flops = 2.0 * 16384.0 * 16384.0 * 16384.0;
    big.hbm_bytes = 3.0 * 16384.0 * 16384.0;
    const double ideal8 = big.flops / (1979e12 * fp8.get_profile().gemm_fp8_max_efficiency);
    CHECK(fp8.op_time_s(big) - fp8.get_profile().launch_overhead_s >= ideal8);
    CHECK_THAT(fp8.op_time_s(big) - fp8.get_profile().launch_overhead_s, WithinRel(ideal8, 0.02));
  }
  SECTION("FP8 on A100 is infeasible") {
    REQUIRE_THROWS_AS(CostModel(make_test_cluster("a100-80gb", 8), default_profile("a100-80gb"),
                                make_plan(1, Precision::Fp8)),
                      cuboid::InfeasibleError);
  }
}

// Elementwise ops are memory bound: t = bytes / (HBM bw * hbm_efficiency) + launch overhead, exactly.
TEST_CASE("model::CostModel: memory-bound op time", "[cost]") {
  const CostModel cost(make_test_cluster("h100-sxm", 8), default_profile("h100-sxm"), make_plan(1));
  Op op;
  op.kind = GENERATE(OpKind::Elementwise, OpKind::Norm, OpKind::Loss);
  op.hbm_bytes = 1e9;
  op.flops = 1e9;
  const auto& profile = cost.get_profile();
  CHECK_THAT(cost.op_time_s(op), WithinRel(1e9 / (3.35e12 * profile.hbm_efficiency) + profile.launch_overhead_s, 1e-12));
}

// Fused attention runs at the flash-attention fraction of the 16-bit peak in FlashAttention's FLOP convention: causal
// attention does half of Megatron's full s x s count, and the backward counts 2.5x the forward (Op::flops: 2x).
TEST_CASE("model::CostModel: attention uses forward and backward efficiencies", "[cost]") {
  const CostModel cost(make_test_cluster("a100-80gb", 8), default_profile("a100-80gb"), make_plan(1));
  Op op;
  op.kind = OpKind::Attention;
  op.name = "attn";
  op.flops = 1e12;
  const auto& profile = cost.get_profile();
  const double fwd = cost.op_time_s(op, Phase::Forward) - profile.launch_overhead_s;
  CHECK_THAT(fwd, WithinRel(0.5e12 / (312e12 * profile.attention_efficiency), 1e-12));
  op.name = "attn.bwd";
  op.flops = 2e12;
  CHECK_THAT(cost.op_time_s(op) - profile.launch_overhead_s,
             WithinRel(1.25e12 / (312e12 * profile.attention_bwd_efficiency), 1e-12));
}

// Unfused attention (pre-FlashAttention Megatron): the s x s scores go through HBM, so at a small head dimension it
// costs far more than the fused kernel and at least the score traffic: forward 13 B, backward 19 B per score.
TEST_CASE("model::CostModel: unfused attention pays the score traffic", "[cost]") {
  Plan plan = make_plan(1);
  plan.flash_attention = false;
  const CostModel unfused(make_test_cluster("a100-80gb", 8), default_profile("a100-80gb"), plan);
  const CostModel fused(make_test_cluster("a100-80gb", 8), default_profile("a100-80gb"), make_plan(1));
  Op op;
  op.kind = OpKind::Attention;
  op.m = op.n = 2048;
  op.k = 96;
  op.batch = 24; // b * heads / t (GPT 1.7B of SC21)
  op.flops = 4.0 * 2048.0 * 2048.0 * 96.0 * 24.0;
  const double scores = 24.0 * 2048.0 * 2048.0;
  const double bw = 2.039e12 * unfused.get_profile().hbm_efficiency;
  CHECK(unfused.op_time_s(op, Phase::Forward) > 13.0 * scores / bw);
  CHECK(unfused.op_time_s(op, Phase::Forward) > 2.0 * fused.op_time_s(op, Phase::Forward));
  op.flops *= 2.0;
  CHECK(unfused.op_time_s(op, Phase::Backward) > 19.0 * scores / bw);
}

// nccl-tests ring formulas: all-reduce 2(n-1) alpha + 2(n-1)/n S/B; reduce-scatter / all-gather (n-1) alpha +
// (n-1)/n S/B. NVLS (H100) replaces the all-reduce when faster and n >= nvls_min_ranks.
TEST_CASE("model::CostModel: ring collective formulas", "[cost]") {
  const CostModel cost(make_test_cluster("a100-80gb", 64), default_profile("a100-80gb"), make_plan(8));
  const int n = GENERATE(2, 4, 8, 16);
  const double bytes = GENERATE(1e6, 256e6);
  LinkParams link;
  link.bw_bytes_per_s = 100e9;
  link.latency_s = 5e-6;
  const double nd = n;
  CHECK_THAT(cost.collective_time_s(CollectiveKind::AllReduce, bytes, n, link),
             WithinRel(2.0 * (nd - 1) * 5e-6 + 2.0 * (nd - 1) / nd * bytes / 100e9, 1e-12));
  CHECK_THAT(cost.collective_time_s(CollectiveKind::ReduceScatter, bytes, n, link),
             WithinRel((nd - 1) * 5e-6 + (nd - 1) / nd * bytes / 100e9, 1e-12));
  CHECK_THAT(cost.collective_time_s(CollectiveKind::AllGather, bytes, n, link),
             WithinRel((nd - 1) * 5e-6 + (nd - 1) / nd * bytes / 100e9, 1e-12));
  CHECK(cost.collective_time_s(CollectiveKind::AllReduce, bytes, 1, link) == 0.0);
  SECTION("NVLS all-reduce is taken when faster") {
    link.nvls_bw_bytes_per_s = 200e9;
    link.nvls_latency_s = 50e-6;
    link.nvls_min_ranks = 5;
    const double ring = 2.0 * (nd - 1) * 5e-6 + 2.0 * (nd - 1) / nd * bytes / 100e9;
    const double expected = n >= 5 ? std::min(ring, 50e-6 + bytes / 200e9) : ring;
    CHECK_THAT(cost.collective_time_s(CollectiveKind::AllReduce, bytes, n, link), WithinRel(expected, 1e-12));
  }
  SECTION("TP collective uses NVLink inside a node") {
    Op op;
    op.kind = OpKind::TpCollective;
    op.collective = CollectiveKind::AllReduce;
    op.msg_bytes = bytes;
    CHECK_THAT(cost.op_time_s(op), WithinRel(cost.collective_time_s(CollectiveKind::AllReduce, bytes, 8,
                                                                     cost.nvlink()), 1e-12));
    CHECK(cost.is_tp_intra_node());
  }
}

// --tp-comm-overlap (cost_model.cpp overlapped_tp_comm_s): a sequence-parallel all-gather pipelined with the GEMM
// that follows exposes c / tp when the GEMM is longer than the rest of the collective, and c/tp + (c(tp-1)/tp -
// t_gemm) when it is shorter; all-reduces (no sequence parallelism) stay fully exposed.
TEST_CASE("model::CostModel: TP communication overlap with the paired GEMM", "[cost]") {
  Plan plan = make_plan(4);
  plan.sequence_parallel = true;
  const ClusterSpec cluster = make_test_cluster("h100-sxm", 8);
  Op gather;
  gather.name = "fc1.allgather";
  gather.kind = OpKind::TpCollective;
  gather.collective = CollectiveKind::AllGather;
  gather.msg_bytes = 64e6;
  Op gemm;
  gemm.name = "fc1";
  gemm.kind = OpKind::Gemm;
  const double m = GENERATE(256.0, 8192.0); // short and long GEMMs
  gemm.m = static_cast<std::int64_t>(m);
  gemm.n = 12288;
  gemm.k = 12288;
  gemm.flops = 2.0 * m * 12288.0 * 12288.0;
  OpBlock block;
  block.name = "layer.fwd";
  block.ops = {gather, gemm};
  const CostModel exposed(cluster, default_profile("h100-sxm"), plan);
  plan.tp_comm_overlap = true;
  const CostModel overlapped(cluster, default_profile("h100-sxm"), plan);
  const double comm_s = exposed.tp_collective_time_s(gather);
  const double gemm_s = overlapped.op_time_s(gemm, Phase::Forward);
  const double expected_s = comm_s / 4.0 + std::max(0.0, 0.75 * comm_s - gemm_s);
  CHECK_THAT(exposed.block_cost(block).tp_comm_s, WithinRel(comm_s, 1e-12));
  CHECK_THAT(overlapped.block_cost(block).tp_comm_s, WithinRel(expected_s, 1e-12));
  CHECK(overlapped.block_cost(block).tp_comm_s < comm_s);
  SECTION("an all-reduce is not overlapped") {
    block.ops[0].collective = CollectiveKind::AllReduce;
    CHECK_THAT(overlapped.block_cost(block).tp_comm_s,
               WithinRel(overlapped.tp_collective_time_s(block.ops[0]), 1e-12));
  }
}

// Plan::async_tp_grad_reduce (cost_model.cpp overlapped_tp_comm_s): the input-gradient all-reduce right after a
// column-parallel linear's wgrad GEMM exposes max(0, c - t_wgrad); a recomputed forward all-reduce, or one after a
// forward GEMM, stays fully exposed.
TEST_CASE("model::CostModel: asynchronous grad-input reduction behind the wgrad GEMM", "[cost]") {
  Plan plan = make_plan(8);
  const ClusterSpec cluster = make_test_cluster("a100-80gb", 8);
  Op wgrad;
  wgrad.name = "fc1.wgrad";
  wgrad.kind = OpKind::Gemm;
  const double k = GENERATE(256.0, 8192.0); // a wgrad shorter and one longer than the all-reduce
  wgrad.m = 12288;
  wgrad.n = 6144;
  wgrad.k = static_cast<std::int64_t>(k);
  wgrad.flops = 2.0 * 12288.0 * 6144.0 * k;
  Op reduce;
  reduce.name = "fc1.allreduce";
  reduce.kind = OpKind::TpCollective;
  reduce.collective = CollectiveKind::AllReduce;
  reduce.msg_bytes = 50e6;
  OpBlock block;
  block.name = "layer.bwd";
  block.ops = {wgrad, reduce};
  const CostModel sync(cluster, default_profile("a100-80gb"), plan);
  plan.async_tp_grad_reduce = true;
  const CostModel async(cluster, default_profile("a100-80gb"), plan);
  const double comm_s = sync.tp_collective_time_s(reduce);
  const double wgrad_s = async.op_time_s(wgrad, Phase::Backward);
  CHECK_THAT(sync.block_cost(block).tp_comm_s, WithinRel(comm_s, 1e-12));
  CHECK_THAT(async.block_cost(block).tp_comm_s + 1.0, WithinRel(std::max(0.0, comm_s - wgrad_s) + 1.0, 1e-12));
  CHECK(async.block_cost(block).tp_comm_s < comm_s);
  SECTION("a recomputed forward all-reduce is not overlapped") {
    block.ops[1].recompute = true;
    CHECK_THAT(async.block_cost(block).tp_comm_s, WithinRel(comm_s, 1e-12));
  }
  SECTION("an all-reduce after a forward GEMM is not overlapped") {
    block.ops[0].name = "fc2";
    CHECK_THAT(async.block_cost(block).tp_comm_s, WithinRel(comm_s, 1e-12));
  }
}

// Adam is memory bound: 42 B per parameter (cost_model.cpp OPTIMIZER_BYTES_PER_PARAM) plus 4 kernel launches.
TEST_CASE("model::CostModel: optimizer time", "[cost]") {
  const CostModel cost(make_test_cluster("a100-80gb", 8), default_profile("a100-80gb"), make_plan(1));
  const auto& profile = cost.get_profile();
  CHECK_THAT(cost.optimizer_time_s(1e9),
             WithinRel(42e9 / (2.039e12 * profile.hbm_efficiency) + 4.0 * profile.launch_overhead_s, 1e-12));
  const auto lines = cost.assumptions();
  REQUIRE(lines.size() >= 5);
  // 0.671 = A100 MAMF 0.869 x the in-training factor 0.772 fitted on the H100 rows (cost_profile.cpp; was the bare
  // MAMF before the validation fit, docs/validation.md).
  CHECK(lines[0].find("GEMM efficiency: max 0.671 of 312 TFLOP/s (bf16)") != std::string::npos);
  CHECK(lines[3].find("NVLink: 300 GB/s x 0.783 = 235 GB/s") != std::string::npos);
}

// The shipped NVLink numbers are recomputed from the published rows, and the model's bus bandwidth stays within
// 10 % of every single-node measurement >= 64 MiB of the profile's GPU (busbw = factor * S / predicted time). The
// A100 alpha is a least-squares fit over >= 16 MiB: its >= 64 MiB rows within 15 % (worst: the sweep's 128 / 256 MiB
// rows at +14 / +12 %) and its 16-64 MiB rows (the TP all-reduce sizes of the A100 validation rows) within 7 %.
TEST_CASE("model::CostModel: NVLink fit against published nccl-tests rows", "[cost]") {
  const auto rows = read_csv(std::string(CUBOID_SOURCE_DIR) + "/scenarios/validation/published_collectives.csv");
  REQUIRE(rows.size() == 60);
  std::map<std::string, double> by_id;
  for (const auto& row : rows) {
    by_id[row.at("id")] = std::stod(row.at("measured_busbw_gbps"));
  }
  CHECK_THAT(default_profile("a100-80gb").nvlink_efficiency,
             WithinRel(by_id.at("mle-nccl-allreduce-a100-8gpu-16GiB") / 300.0, 1e-9));
  CHECK_THAT(default_profile("h100-sxm").nvlink_efficiency,
             WithinRel(by_id.at("mle-nccl-allreduce-h200-8gpu-8GiB-nvls-off") / 450.0, 1e-9));
  const double nvls_algbw = by_id.at("dgxc-nccl-allreduce-dgxh100-8gpu-16GiB") / 1.75; // busbw / 2(n-1)/n
  CHECK_THAT(default_profile("h200").nvls_efficiency, WithinRel(nvls_algbw / 450.0, 1e-3));

  int checked = 0;
  for (const auto& row : rows) {
    const double bytes = std::stod(row.at("message_bytes"));
    const int n = std::stoi(row.at("num_gpus"));
    const std::string gpu = gpu_of_system(row.at("gpu_system"));
    const bool large = bytes >= 64.0 * 1024 * 1024;
    const bool a100 = gpu.rfind("a100", 0) == 0;
    const bool a100_mid = a100 && bytes >= 16.0 * 1024 * 1024 && !large;
    if ((!large && !a100_mid) || std::stoi(row.at("num_nodes")) != 1) {
      continue;
    }
    const CostModel cost(make_test_cluster(gpu, 8), default_profile(gpu), make_plan(8));
    LinkParams link = cost.nvlink();
    const std::string& id = row.at("id");
    if (id.find("nvls-off") != std::string::npos || id.find("ring") != std::string::npos) {
      link.nvls_bw_bytes_per_s = 0.0; // NCCL_NVLS_ENABLE=0
    }
    const std::string& name = row.at("collective");
    const CollectiveKind kind = name.rfind("all_gather", 0) == 0       ? CollectiveKind::AllGather
                                : name.rfind("reduce_scatter", 0) == 0 ? CollectiveKind::ReduceScatter
                                                                       : CollectiveKind::AllReduce;
    const double factor = kind == CollectiveKind::AllReduce ? 2.0 * (n - 1) / n : (n - 1.0) / n;
    const double busbw_gbps = factor * bytes / cost.collective_time_s(kind, bytes, n, link) / 1e9;
    INFO(id << ": predicted " << busbw_gbps << " GB/s, measured " << row.at("measured_busbw_gbps"));
    CHECK_THAT(busbw_gbps, WithinRel(std::stod(row.at("measured_busbw_gbps")), a100_mid ? 0.07 : (a100 ? 0.15 : 0.10)));
    ++checked;
  }
  CHECK(checked == 34); // 11 A100 (2 of them 16-64 MiB) + 9 DGX H100 + 14 H200 rows
}

// Multi-node rows run on fabrics other than InfiniBand (GCP TCPXO, AWS EFA) with unknown NCCL settings: only
// their bandwidth regime (>= 1 GiB) is checked, at 15 %, with the fabric's NIC rate (a3mega: 200 Gb/s per GPU;
// p5en: 3200 Gb/s per node = 400 Gb/s per GPU) and the hierarchical all-reduce model.
TEST_CASE("model::CostModel: multi-node all-reduce against published rows", "[cost]") {
  const auto rows = read_csv(std::string(CUBOID_SOURCE_DIR) + "/scenarios/validation/published_collectives.csv");
  int checked = 0;
  for (const auto& row : rows) {
    const double bytes = std::stod(row.at("message_bytes"));
    const int nodes = std::stoi(row.at("num_nodes"));
    if (nodes == 1 || bytes < 1024.0 * 1024 * 1024) {
      continue;
    }
    const std::string gpu = gpu_of_system(row.at("gpu_system"));
    ClusterSpec cluster = make_test_cluster(gpu, 8 * nodes);
    cluster.nic_bw_bytes_per_s = gpu == "h200" ? 50e9 : 25e9;
    const CostModel cost(cluster, default_profile(gpu), make_plan(8));
    const int n = std::stoi(row.at("num_gpus"));
    const double busbw_gbps = 2.0 * (n - 1) / n * bytes / cost.hierarchical_allreduce_time_s(bytes, 8, nodes) / 1e9;
    INFO(row.at("id") << ": predicted " << busbw_gbps << " GB/s, measured " << row.at("measured_busbw_gbps"));
    CHECK_THAT(busbw_gbps, WithinRel(std::stod(row.at("measured_busbw_gbps")), 0.15));
    ++checked;
  }
  CHECK(checked == 6);
}

// --- CPU prediction across models (branch cpux) ---
// A Norm / Elementwise op tagged with a CPU backend kernel costs elements x the profile's seconds per element plus
// the per-op cost when the profile measured that kernel, and its bytes otherwise (every GPU profile: unchanged).
TEST_CASE("model::CostModel: CPU kernel ops priced per element only when the profile measured the kernel", "[cost]") {
  Op op;
  op.kind = OpKind::Norm;
  op.cpu_kernel = CpuKernel::RmsNormFwd;
  op.m = 1000;
  op.hbm_bytes = 1e9;
  CostProfile profile = default_profile("h100-sxm");
  const double bytes_s = 1e9 / (3.35e12 * profile.hbm_efficiency) + profile.launch_overhead_s;
  {
    const CostModel gpu(make_test_cluster("h100-sxm", 8), profile, make_plan(1));
    CHECK_THAT(gpu.op_time_s(op), WithinRel(bytes_s, 1e-12));
  }
  profile.cpu_layernorm_fwd_s_per_element = 5e-9; // another kernel: still priced by bytes
  CHECK_THAT(CostModel(make_test_cluster("h100-sxm", 8), profile, make_plan(1)).op_time_s(op),
             WithinRel(bytes_s, 1e-12));
  profile.cpu_rmsnorm_fwd_s_per_element = 2e-9;
  const CostModel cpu(make_test_cluster("h100-sxm", 8), profile, make_plan(1));
  CHECK_THAT(cpu.op_time_s(op), WithinRel(1000 * 2e-9 + profile.launch_overhead_s, 1e-12));
  op.cpu_kernel = CpuKernel::LayerNormFwd;
  CHECK_THAT(cpu.op_time_s(op), WithinRel(1000 * 5e-9 + profile.launch_overhead_s, 1e-12));
  op.cpu_kernel = CpuKernel::None; // an untagged op never uses the kernel table
  CHECK_THAT(cpu.op_time_s(op), WithinRel(bytes_s, 1e-12));
}

// RoPE rotates Q and K next to the attention op on the CPU backend: a CPU profile adds rope_elements x its seconds
// per element to the attention op; a GPU profile (0) leaves the op's time exactly as it was.
TEST_CASE("model::CostModel: RoPE cost on the attention op only with a CPU profile", "[cost]") {
  CostProfile profile = default_profile("a100-80gb");
  Op attn;
  attn.name = "attn";
  attn.kind = OpKind::Attention;
  attn.flops = 1e12;
  attn.hbm_bytes = 1e6;
  const CostModel before(make_test_cluster("a100-80gb", 8), profile, make_plan(1));
  const double without_s = before.op_time_s(attn, Phase::Forward);
  attn.rope_elements = 1e6;
  CHECK(before.op_time_s(attn, Phase::Forward) == without_s); // bit-identical for GPU profiles
  profile.cpu_rope_s_per_element = 3e-9;
  const CostModel cpu(make_test_cluster("a100-80gb", 8), profile, make_plan(1));
  CHECK_THAT(cpu.op_time_s(attn, Phase::Forward), WithinRel(without_s + 1e6 * 3e-9, 1e-12));
  CHECK_THAT(cpu.op_time_s(attn, Phase::Backward) - before.op_time_s(attn, Phase::Backward),
             WithinRel(1e6 * 3e-9, 1e-9));
}

// The op catalog tags each norm and activation with the kernel the CPU backend runs for the model, and puts the
// values RoPE rotates (tokens x (q + kv) / tp) on the attention ops of RoPE models only.
TEST_CASE("model::make_step_blocks: CPU kernel tags follow the model's norm, activation and positions", "[cost]") {
  Plan plan = make_plan(2);
  plan.micro_batch_size = 2;
  const auto kernel_of = [](const OpBlock& block, const std::string& name) {
    const auto it = std::find_if(block.ops.begin(), block.ops.end(), [&](const Op& op) { return op.name == name; });
    REQUIRE(it != block.ops.end());
    return *it;
  };
  const ModelSpec gpt = find_model("gpt-tiny");
  const StepBlocks g = make_step_blocks(gpt, plan);
  CHECK(kernel_of(g.layer_fwd, "ln1").cpu_kernel == CpuKernel::LayerNormFwd);
  CHECK(kernel_of(g.layer_fwd, "act").cpu_kernel == CpuKernel::GeluFwd);
  CHECK(kernel_of(g.layer_bwd, "act.bwd").cpu_kernel == CpuKernel::GeluBwd);
  CHECK(kernel_of(g.head_bwd, "ln_f.bwd").cpu_kernel == CpuKernel::LayerNormBwd);
  CHECK(kernel_of(g.layer_fwd, "bda1").cpu_kernel == CpuKernel::None);
  CHECK(kernel_of(g.layer_fwd, "attn").rope_elements == 0.0);
  const ModelSpec llama = find_model("llama-tiny");
  const StepBlocks l = make_step_blocks(llama, plan);
  CHECK(kernel_of(l.layer_fwd, "ln2").cpu_kernel == CpuKernel::RmsNormFwd);
  CHECK(kernel_of(l.layer_bwd, "ln1.bwd").cpu_kernel == CpuKernel::RmsNormBwd);
  CHECK(kernel_of(l.layer_fwd, "act").cpu_kernel == CpuKernel::SwigluFwd);
  CHECK(kernel_of(l.layer_bwd, "act.bwd").cpu_kernel == CpuKernel::SwigluBwd);
  const double tokens = 2.0 * static_cast<double>(llama.seq_length);
  const double rotated = tokens * static_cast<double>(llama.q_width() + llama.kv_width()) / 2.0;
  CHECK(kernel_of(l.layer_fwd, "attn").rope_elements == rotated);
  CHECK(kernel_of(l.layer_bwd, "attn.bwd").rope_elements == rotated);
  CHECK(kernel_of(l.layer_fwd, "act").m == static_cast<std::int64_t>(tokens) * llama.ffn_hidden_size / 2);
}

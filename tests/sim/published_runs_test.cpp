// Tests for the published-runs reader, row mapping and measured-step conversion (sim/analysis/published_runs.hpp).
#include "sim/analysis/published_runs.hpp"

#include "model/errors.hpp"

#include <catch2/catch.hpp>

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <map>

using namespace cuboid::sim::analysis;
using Catch::Matchers::Contains;
using Catch::Matchers::WithinRel;

namespace {

const std::string RUNS_CSV = std::string(CUBOID_SOURCE_DIR) + "/scenarios/validation/published_runs.csv";
const std::string HOLDOUT_CSV = std::string(CUBOID_SOURCE_DIR) + "/scenarios/validation/holdout_runs.csv";

std::string write_temp(const std::string& name, const std::string& text) {
  const auto path = (std::filesystem::temp_directory_path() / ("cuboid_published_runs_" + name)).string();
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

std::map<std::string, PublishedRun> runs_by_id(const std::string& csv = RUNS_CSV) {
  std::map<std::string, PublishedRun> runs;
  for (auto& run : read_published_runs(csv)) {
    runs.emplace(run.id, run);
  }
  return runs;
}

} // namespace

TEST_CASE("sim::analysis::read_csv_table: quoted fields and errors", "[validate]") {
  SECTION("quotes, doubled quotes, commas and newlines inside fields; CRLF") {
    const auto path = write_temp("ok.csv", "a,b,c\r\n1,\"x, \"\"y\"\"\",\"two\nlines\"\r\n,,\n");
    const CsvTable table = read_csv_table(path);
    REQUIRE(table.rows.size() == 2);
    CHECK(table.rows[0][1] == "x, \"y\"");
    CHECK(table.rows[0][2] == "two\nlines");
    CHECK(table.row_lines[1] == 4);
  }
  SECTION("stray quote names line and column") {
    const auto path = write_temp("stray.csv", "a,b\n1,ab\"c\n");
    REQUIRE_THROWS_WITH(read_csv_table(path), Contains(path + ":2:5:") && Contains("inside an unquoted field"));
  }
  SECTION("text after a closing quote") {
    const auto path = write_temp("after.csv", "a,b\n\"1\"x,2\n");
    REQUIRE_THROWS_WITH(read_csv_table(path), Contains(path + ":2:4:") && Contains("after a closing quote"));
  }
  SECTION("unterminated quote points at the opening quote") {
    const auto path = write_temp("open.csv", "a,b\n1,\"never closed\n");
    REQUIRE_THROWS_WITH(read_csv_table(path), Contains(path + ":2:3:") && Contains("unterminated"));
  }
  SECTION("wrong field count") {
    const auto path = write_temp("count.csv", "a,b\n1,2,3\n");
    REQUIRE_THROWS_WITH(read_csv_table(path), Contains(path + ":2:") && Contains("3 fields, the header has 2"));
  }
  SECTION("bad number names the column") {
    std::ifstream in(RUNS_CSV);
    std::string header;
    std::getline(in, header);
    std::string row = "x,src,loc,m,1,abc";
    for (int col = 6; col < 29; ++col) {
      row += ",";
    }
    const auto path = write_temp("number.csv", header + "\n" + row + "\n");
    REQUIRE_THROWS_WITH(read_published_runs(path),
                        Contains(path + ":2: column 6 'num_layers': 'abc' is not a non-negative number"));
  }
}

TEST_CASE("sim::analysis::read_published_runs: the shipped file", "[validate]") {
  const auto runs = read_published_runs(RUNS_CSV);
  REQUIRE(runs.size() == 96);
  std::map<std::string, int> per_source;
  for (const auto& run : runs) {
    ++per_source[run.source_kind];
  }
  CHECK(per_source["sc21"] == 17);
  CHECK(per_source["megatron-lm-readme"] == 11);
  CHECK(per_source["bloom"] == 22);
  CHECK(per_source["nemo"] == 10);
  CHECK(per_source["dgxc"] == 36);
  CHECK(runs.front().note("precision") == "mixed-16bit (paper: 'mixed precision')");
}

// SC21 Table 1, 1T row: 3072 GPUs at 163 TFLOP/s with eq. 3 (hardware FLOPs incl. recompute). Converting the step
// time back with the same formula must give 163 TFLOP/s exactly, and the model-FLOPs ratio must be the README's
// 72(1+s/6h+V/12lh) / 96(1+s/6h+V/16lh) (~3/4).
TEST_CASE("sim::analysis::measured_step_time: SC21 conversion round trip", "[validate]") {
  const auto runs = runs_by_id();
  const PublishedRun& run = runs.at("megatron-sc21-t1-1t");
  const MappedRun mapped = map_run(run);
  REQUIRE(mapped.status == RunStatus::Ok);
  CHECK(mapped.plan.recompute == cuboid::model::Recompute::Full);
  CHECK(mapped.plan.tp == 8);
  CHECK(mapped.plan.pp == 64);
  CHECK(mapped.plan.dp == 6);
  const auto step = measured_step_time(run, mapped);
  REQUIRE(step);
  const double hw = hw_flops_incl_recompute(3072, 2048, 128, 25600, 51200);
  CHECK_THAT(hw / step->step_time_s / 3072 / 1e12, WithinRel(163.0, 1e-12));
  const double ratio = model_flops_per_step(1, 2048, 128, 25600, 51200) / hw_flops_incl_recompute(1, 2048, 128, 25600,
                                                                                                    51200);
  const double s_6h = 2048.0 / (6 * 25600);
  CHECK_THAT(ratio, WithinRel(72 * (1 + s_6h + 51200.0 / (12 * 128 * 25600)) /
                                  (96 * (1 + s_6h + 51200.0 / (16 * 128 * 25600))), 1e-12));
  CHECK(ratio > 0.74);
  CHECK(ratio < 0.76);
}

TEST_CASE("sim::analysis::measured_step_time: other bases", "[validate]") {
  const auto runs = runs_by_id();
  SECTION("step time column is used directly") {
    const auto& run = runs.at("bloom-176b-main-run-384gpu");
    const auto step = measured_step_time(run, map_run(run));
    CHECK(step->step_time_s == 104.70);
  }
  SECTION("tokens/s/GPU: step = gbs*seq / (tok/s/GPU * GPUs)") {
    const auto& run = runs.at("nemo-24.07-fp8-gpt3-5b-64gpu");
    const auto step = measured_step_time(run, map_run(run));
    CHECK_THAT(step->step_time_s, WithinRel(2048.0 * 2048.0 / (23406.0 * 64.0), 1e-12));
  }
  SECTION("model TFLOP/s with the model formula") {
    const auto& run = runs.at("megatron-lm-readme-h100-weak-1.7b");
    const auto step = measured_step_time(run, map_run(run));
    CHECK_THAT(step->step_time_s,
               WithinRel(model_flops_per_step(192, 4096, 24, 2048, 131072) / (408.8e12 * 48), 1e-12));
  }
}

TEST_CASE("sim::analysis::map_run: defaults and skips", "[validate]") {
  const auto runs = runs_by_id();
  SECTION("SC21 Table 2 gives no tp/pp split") {
    const auto mapped = map_run(runs.at("megatron-sc21-t2-ptdp-175b-384"));
    CHECK(mapped.status == RunStatus::Skipped);
    CHECK_THAT(mapped.reason, Contains("no layout"));
  }
  SECTION("context parallelism: cp from the row, dp as stated (gpus / (tp*pp*cp))") {
    const auto mapped = map_run(runs.at("nemo-24.07-fp8-llama3-8b-8gpu"));
    REQUIRE(mapped.status == RunStatus::Ok);
    CHECK(mapped.plan.cp == 2);
    CHECK(mapped.plan.dp == 4);
    CHECK(mapped.plan.world_size() == 8);
    const auto dgxc = map_run(runs.at("dgxc-v25.02-llama31-8b-bf16-128gpu"));
    REQUIRE(dgxc.status == RunStatus::Ok);
    CHECK(dgxc.plan.cp == 2);
    CHECK(dgxc.plan.dp == 64);
  }
  SECTION("Llama 2 70B: GQA, SwiGLU, FP8, interleaved") {
    const auto mapped = map_run(runs.at("nemo-24.07-fp8-llama2-70b-64gpu"));
    REQUIRE(mapped.status == RunStatus::Ok);
    CHECK(mapped.gpu == "h100-sxm");
    CHECK(mapped.model.num_query_groups == 8);
    CHECK(mapped.model.gated_mlp);
    CHECK(mapped.model.vocab_size == 32000);
    CHECK(mapped.plan.precision == cuboid::model::Precision::Fp8);
    CHECK(mapped.plan.schedule == cuboid::model::Schedule::Interleaved);
    CHECK(mapped.plan.vp == 20);
    CHECK(mapped.plan.sequence_parallel);
    CHECK_FALSE(mapped.recompute_stated);
    // Megatron-Core recipe defaults (published_runs_map.cpp): both overlaps on, and printed as an assumption.
    CHECK(mapped.plan.tp_comm_overlap);
    CHECK(mapped.plan.overlap_param_gather);
    CHECK(std::any_of(mapped.assumptions.begin(), mapped.assumptions.end(),
                      [](const std::string& line) { return line.find("--tp-comm-overlap") != std::string::npos; }));
  }
  SECTION("SC21 predates the Megatron-Core overlaps; Table 1 as the authors' run_table_1.sh launched it") {
    const auto mapped = map_run(runs.at("megatron-sc21-t1-18b"));
    REQUIRE(mapped.status == RunStatus::Ok);
    CHECK_FALSE(mapped.plan.tp_comm_overlap);
    CHECK_FALSE(mapped.plan.overlap_param_gather);
    CHECK_FALSE(mapped.plan.async_tp_grad_reduce); // SC21-era Megatron-LM reduced the input gradient synchronously
    // MBS=8, DDP=torch: PyTorch DDP overlaps its 25 MB fp16 buckets (12.5M parameters) with the backward.
    CHECK(mapped.plan.micro_batch_size == 8);
    CHECK(mapped.plan.overlap_grad_reduce);
    CHECK(mapped.plan.grad_bucket_bytes == 12.5e6 * 4.0);
    CHECK(mapped.plan.vp == 1);
    // pp > 1 rows: Megatron's local DDP (all-reduce after the backward) and the script's virtual stages.
    const auto deep = map_run(runs.at("megatron-sc21-t1-76b"));
    REQUIRE(deep.status == RunStatus::Ok);
    CHECK(deep.plan.micro_batch_size == 2);
    CHECK(deep.plan.vp == 3); // 60 layers / pp 4 = 15 per stage, 5 per virtual stage
    CHECK_FALSE(deep.plan.overlap_grad_reduce);
    const auto trillion = map_run(runs.at("megatron-sc21-t1-1t"));
    REQUIRE(trillion.status == RunStatus::Ok);
    CHECK(trillion.plan.vp == 1); // the script sets no virtual stages for 1T
    CHECK(trillion.plan.schedule == cuboid::model::Schedule::OneFOneB);
  }
  SECTION("BLOOM: embedding counted as a stage layer, ffn 4h, not gated, A100 80GB") {
    const auto mapped = map_run(runs.at("bloom-176b-main-run-384gpu"));
    REQUIRE(mapped.status == RunStatus::Ok);
    CHECK(mapped.gpu == "a100-80gb");
    CHECK(mapped.model.ffn_hidden_size == 4 * 14336);
    CHECK_FALSE(mapped.model.gated_mlp);
    CHECK(mapped.plan.first_stage_layers == 5);
    CHECK(mapped.plan.last_stage_layers == 5);
    CHECK(mapped.plan.micro_batch_size == 2);
    CHECK(mapped.plan.precision == cuboid::model::Precision::Bf16);
    CHECK(mapped.plan.distributed_optimizer);
    CHECK(mapped.plan.all_reduce_sharded_grads); // DeepSpeed BF16 optimizer
    CHECK_FALSE(mapped.plan.overlap_grad_reduce);
  }
  SECTION("A100 is the 80 GB part unless the gpu text says 40 GB") {
    PublishedRun run = runs.at("bloom-176b-main-run-384gpu");
    run.gpu_text = "A100-SXM4-40GB";
    CHECK(map_run(run).gpu == "a100-40gb");
    run.gpu_text = "NVIDIA A100 40 GB";
    CHECK(map_run(run).gpu == "a100-40gb");
    run.gpu_text = "A100-SXM4-80GB";
    CHECK(map_run(run).gpu == "a100-80gb");
  }
}

TEST_CASE("sim::analysis::map_run: the held-out sources", "[validate]") {
  const auto runs = runs_by_id(HOLDOUT_CSV);
  SECTION("Korthikanti et al. 2022: Megatron-LM of 2022, no distributed optimizer, no FlashAttention") {
    const PublishedRun& run = runs.at("ho-nvpapers-k22-175b-selective-sp");
    CHECK(run.source_kind == "korthikanti22");
    const auto mapped = map_run(run);
    REQUIRE(mapped.status == RunStatus::Ok);
    CHECK_FALSE(mapped.plan.distributed_optimizer);
    CHECK_FALSE(mapped.plan.flash_attention);
    CHECK(mapped.plan.async_tp_grad_reduce); // section 6.2: all-reduce behind the weight-gradient GEMM
    CHECK(mapped.plan.recompute == cuboid::model::Recompute::Selective);
    CHECK(mapped.plan.sequence_parallel);
    CHECK(mapped.plan.vp == 3);
  }
  SECTION("micro-batch-level recompute is listed as unsupported, not priced as selective") {
    const auto mapped = map_run(runs.at("ho-nvpapers-k22-175b-microbatch-level"));
    CHECK(mapped.status == RunStatus::Unsupported);
    CHECK_THAT(mapped.reason, Contains("micro-batch-level"));
  }
  SECTION("Megatron-Bridge: Megatron-Core overlaps, bf16 gradient reduction; Megatron FSDP unsupported") {
    const PublishedRun& run = runs.at("ho-nemo-mb2511-70b-64gpu");
    CHECK(run.source_kind == "megatron-bridge");
    const auto mapped = map_run(run);
    REQUIRE(mapped.status == RunStatus::Ok);
    CHECK(mapped.plan.grad_reduce_in_bf16);
    CHECK(mapped.plan.overlap_param_gather);
    CHECK(mapped.plan.tp_comm_overlap);
    CHECK_FALSE(mapped.full_recompute_allowed);
    // Llama 3.1 405B: 126 layers + embedding + loss = 128 slots over PP 8 x VP 8 (llama31_405b_pretrain_config).
    const auto split = map_run(runs.at("ho-nemo-mb2511-405b-1024gpu"));
    REQUIRE(split.status == RunStatus::Ok);
    CHECK(split.plan.account_for_embedding_in_pipeline_split);
    CHECK(split.plan.account_for_loss_in_pipeline_split);
    CHECK(split.plan.first_stage_layers == 0);
    CHECK_FALSE(mapped.plan.account_for_embedding_in_pipeline_split);
    const auto fsdp = map_run(runs.at("ho-nemo-mb2511-8b-8gpu"));
    CHECK(fsdp.status == RunStatus::Unsupported);
    CHECK_THAT(fsdp.reason, Contains("FSDP"));
  }
  SECTION("no held-out row repeats an id of the shipped file") {
    const auto shipped = runs_by_id();
    for (const auto& [id, run] : runs) {
      CHECK(shipped.count(id) == 0);
    }
  }
}

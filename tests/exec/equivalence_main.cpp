// cuboid_exec_equivalence: runs one DP x TP x PP plan on gpt-tiny under MPI and proves it computes the same training
// as a single rank: per-step losses over --steps steps within 1e-4 relative and the full weights after step 1
// within 1e-5 relative (L2 over the whole model) of a single-rank run computed in-process on rank 0 with the same
// seed and global batch; the per-step global gradient norms (computed from the plan's shards) within 1e-4 relative.
// With --clip-grad C both runs clip to C and the check also requires that clipping engaged (some norm > C).
// Exits non-zero with a message on mismatch. Hidden test options inject a fault.
// MoE models (--model moe-tiny / moe-llama-tiny, --ep N) must also route every token as the single-rank run does.
#include "test_models.hpp"

#include "exec/comm_environment.hpp"
#include "exec/local_communicator.hpp"
#include "exec/runtime.hpp"
#include "model/errors.hpp"
#include "model/schedule.hpp"
#include "model/timeline.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace {

using cuboid::exec::RunOptions;
using cuboid::exec::Trainer;

constexpr double LOSS_REL_TOL = 1e-4;
constexpr double WEIGHT_REL_TOL = 1e-5;

struct Args {
  int tp = 1;
  int dp = 1;
  int pp = 1;
  int vp = 1;
  std::string schedule = "1f1b";
  std::string recompute = "none";
  bool sequence_parallel = false;
  int steps = 10;
  std::int64_t micro_batch = 1;
  std::int64_t global_batch = 8;
  double timeout_s = 120.0;
  int fault_rank = -1;
  int fault_step = -1;
  std::string program = "ir";
  std::string model = "gpt-tiny";
  std::string trace_file;
  double grad_bucket_bytes = 0.0;
  int first_stage_layers = 0;
  int last_stage_layers = 0;
  bool distributed_optimizer = false;
  int cp = 1; // context parallelism
  std::string cp_comm_type = "allgather"; // allgather | a2a (the runtime's two exchanges)
  int zero = 0; // --- ZeRO / FSDP ---
  float clip_grad = 0.0f; // gradient clipping (0 = none)
  int ep = 1;   // --- mixture of experts --- (moe-tiny / moe-llama-tiny)
  std::int64_t num_layers = 0; // 0: the model's; else its layer count (the reference run gets the same model)
  // Megatron-Core's embedding/loss-aware pipeline split (pp > 1 only; the single-rank reference has one chunk)
  bool account_for_embedding = false;
  bool account_for_loss = false;
};



// Local parsers (the test must not depend on the CLI's): the same spellings as tools/.
cuboid::model::Schedule parse_schedule(const std::string& text) {
  if (text == "gpipe") {
    return cuboid::model::Schedule::GPipe;
  }
  if (text == "interleaved") {
    return cuboid::model::Schedule::Interleaved;
  }
  if (text == "1f1b") {
    return cuboid::model::Schedule::OneFOneB;
  }
  if (text == "zb-h1") {
    return cuboid::model::Schedule::ZbH1;
  }
  if (text == "zb-v") {
    return cuboid::model::Schedule::ZbV;
  }
  throw cuboid::InputError("command line: --schedule: unknown value '" + text +
                           "' (valid: gpipe, 1f1b, interleaved, zb-h1, zb-v)");
}

cuboid::model::Recompute parse_recompute(const std::string& text) {
  if (text == "selective") {
    return cuboid::model::Recompute::Selective;
  }
  if (text == "full") {
    return cuboid::model::Recompute::Full;
  }
  if (text == "none") {
    return cuboid::model::Recompute::None;
  }
  throw cuboid::InputError("command line: --recompute: unknown value '" + text + "' (valid: none, selective, full)");
}

cuboid::model::CpCommType parse_cp_comm_type(const std::string& text) {
  if (text == "allgather") {
    return cuboid::model::CpCommType::AllGather;
  }
  if (text == "a2a") {
    return cuboid::model::CpCommType::A2A;
  }
  throw cuboid::InputError("command line: --cp-comm-type: unknown value '" + text + "' (valid: allgather, a2a)");
}

RunOptions make_options(const Args& args, int tp, int dp, int pp, int vp, int cp = 1, int ep = 1) {
  RunOptions options;
  if (args.model == "gpt-tiny") {
    options.model = cuboid::exec::test::gpt_tiny_shape();
  } else if (args.model == "llama-tiny") {
    options.model = cuboid::exec::test::llama_tiny_shape();
  } else if (args.model == "moe-tiny") {
    options.model = cuboid::exec::test::moe_tiny_shape();
  } else if (args.model == "moe-llama-tiny") {
    options.model = cuboid::exec::test::moe_llama_tiny_shape();
  } else {
    throw cuboid::InputError("command line: --model: unknown value '" + args.model +
                             "' (valid: gpt-tiny, llama-tiny, moe-tiny, moe-llama-tiny)");
  }
  if (args.num_layers > 0) {
    options.model.num_layers = args.num_layers;
  }
  options.plan.ep = ep;
  options.plan.tp = tp;
  options.plan.dp = dp;
  options.plan.pp = pp;
  options.plan.vp = vp;
  options.plan.cp = cp;
  options.plan.cp_comm_type = parse_cp_comm_type(args.cp_comm_type);
  options.plan.micro_batch_size = args.micro_batch;
  options.plan.global_batch_size = args.global_batch;
  options.plan.schedule = parse_schedule(args.schedule);
  options.plan.recompute = parse_recompute(args.recompute);
  options.plan.sequence_parallel = args.sequence_parallel && tp > 1;
  options.plan.distributed_optimizer = args.distributed_optimizer;
  if (args.zero > 0) {
    cuboid::model::set_zero_stage(options.plan, args.zero, "command line", "--zero");
  }
  options.plan.first_stage_layers = pp > 1 ? args.first_stage_layers : 0;
  options.plan.last_stage_layers = pp > 1 ? args.last_stage_layers : 0;
  options.plan.account_for_embedding_in_pipeline_split = pp > 1 && args.account_for_embedding;
  options.plan.account_for_loss_in_pipeline_split = pp > 1 && args.account_for_loss;
  if (args.grad_bucket_bytes > 0.0) {
    options.plan.grad_bucket_bytes = args.grad_bucket_bytes;
  }
  options.cluster.name = "cpu";
  options.cluster.num_gpus = tp * cp * dp * pp;
  options.cluster.gpus_per_node = tp * cp * dp * pp;
  options.steps = args.steps;
  options.optimizer.max_grad_norm = args.clip_grad;
  options.seed = 2024;
  options.timeout_s = args.timeout_s;
  options.fault_rank = args.fault_rank;
  options.trace = !args.trace_file.empty();
  options.fault_step = args.fault_step;
  options.program_source =
      args.program == "internal" ? cuboid::exec::ProgramSource::Internal : cuboid::exec::ProgramSource::TaskGraph;
  return options;
}

double relative_l2(const std::vector<float>& got, const std::vector<float>& want, double& max_abs) {
  double diff = 0.0;
  double norm = 0.0;
  max_abs = 0.0;
  for (std::size_t idx = 0; idx < want.size(); ++idx) {
    const double d = static_cast<double>(got[idx]) - static_cast<double>(want[idx]);
    diff += d * d;
    norm += static_cast<double>(want[idx]) * static_cast<double>(want[idx]);
    max_abs = std::max(max_abs, std::abs(d));
  }
  return std::sqrt(diff / norm);
}

int run(const Args& args, cuboid::exec::Communicator& world) {
  const RunOptions options = make_options(args, args.tp, args.dp, args.pp, args.vp, args.cp, args.ep);
  Trainer trainer(options, world);
  std::vector<double> losses;
  std::vector<double> norms;
  losses.push_back(trainer.step());
  norms.push_back(trainer.last_grad_norm());
  const std::vector<float> weights = trainer.gather_full_weights();
  for (int step = 1; step < args.steps; ++step) {
    losses.push_back(trainer.step());
    norms.push_back(trainer.last_grad_norm());
  }
  const std::uint64_t routing = trainer.gather_routing_fingerprint(); // --- mixture of experts ---
  if (options.trace) {
    const auto events = trainer.gather_timeline();
    if (world.rank() == 0) {
      cuboid::model::write_chrome_trace(args.trace_file, {{"measured", events}});
      std::printf("# trace of step %d: %zu events written to %s\n", args.steps, events.size(), args.trace_file.c_str());
    }
  }
  if (world.rank() != 0) {
    world.barrier();
    return 0;
  }
  // Single-rank reference with the same seed, batch and schedule kind.
  Args single = args;
  single.fault_rank = -1;
  single.trace_file.clear();
  RunOptions reference = make_options(single, 1, 1, 1, 1);
  reference.plan.schedule = cuboid::model::Schedule::OneFOneB;
  reference.program_source = options.program_source;
  cuboid::exec::LocalCommunicator local;
  Trainer ref(reference, local);
  std::vector<double> ref_losses;
  std::vector<double> ref_norms;
  ref_losses.push_back(ref.step());
  ref_norms.push_back(ref.last_grad_norm());
  const std::vector<float> ref_weights = ref.gather_full_weights();
  for (int step = 1; step < args.steps; ++step) {
    ref_losses.push_back(ref.step());
    ref_norms.push_back(ref.last_grad_norm());
  }
  int failures = 0;
  // --- mixture of experts --- Top-k routing is discontinuous: where the K-th and (K+1)-th router logits of a token
  // nearly tie, a rounding difference between plans could send it to another expert. The plan must have routed
  // every token of every step exactly as the reference (equal fingerprints); the smallest margin shows how close
  // the reference came to a tie.
  if (reference.model.is_moe()) {
    const bool ok = routing == ref.gather_routing_fingerprint();
    failures += ok ? 0 : 1;
    std::printf("# routing over %d steps: %s the single-rank run's (its smallest top-%ld logit margin %.3e)%s\n",
                args.steps, ok ? "identical to" : "DIFFERENT from", static_cast<long>(reference.model.moe_top_k),
                ref.min_router_margin(), ok ? "" : "  MISMATCH");
  }
  std::printf("# model %s plan tp=%d cp=%d dp=%d pp=%d vp=%d ep=%d schedule=%s recompute=%s sp=%d mb=%ld gb=%ld "
              "zero=%d\n",
              args.model.c_str(), args.tp, args.cp, args.dp, args.pp, args.vp, args.ep, args.schedule.c_str(),
              args.recompute.c_str(), args.sequence_parallel ? 1 : 0, static_cast<long>(args.micro_batch),
              static_cast<long>(args.global_batch), args.zero);
  if (options.plan.accounts_in_pipeline_split()) {
    std::printf("# %ld layers; counted as a layer in the pipeline split: embedding %s, loss %s; stage 0 chunks:",
                static_cast<long>(options.model.num_layers),
                options.plan.account_for_embedding_in_pipeline_split ? "yes" : "no",
                options.plan.account_for_loss_in_pipeline_split ? "yes" : "no");
    for (const auto& chunk : cuboid::model::chunk_layouts(options.plan, options.model.num_layers, 0)) {
      std::printf(" %s[%d, %d)", chunk.has_embedding ? "E " : "", chunk.first_layer,
                  chunk.first_layer + chunk.num_layers);
    }
    std::printf("\n");
  }
  std::printf("# step  loss(plan)  loss(single)  rel.diff  grad-norm(plan)  grad-norm(single)  rel.diff\n");
  int clipped_steps = 0;
  for (std::size_t step = 0; step < losses.size(); ++step) {
    const double rel = std::abs(losses[step] - ref_losses[step]) / std::abs(ref_losses[step]);
    const double norm_rel = std::abs(norms[step] - ref_norms[step]) / std::max(1e-30, std::abs(ref_norms[step]));
    const bool ok = rel <= LOSS_REL_TOL && norm_rel <= LOSS_REL_TOL && std::isfinite(norms[step]);
    failures += ok ? 0 : 1;
    clipped_steps += args.clip_grad > 0.0f && ref_norms[step] > static_cast<double>(args.clip_grad) ? 1 : 0;
    std::printf("%6zu  %10.6f  %12.6f  %.2e  %15.6f  %17.6f  %.2e%s\n", step + 1, losses[step], ref_losses[step], rel,
                norms[step], ref_norms[step], norm_rel, ok ? "" : "  MISMATCH");
  }
  if (args.clip_grad > 0.0f) {
    std::printf("# --clip-grad %g: clipping engaged in %d of %zu steps\n", static_cast<double>(args.clip_grad),
                clipped_steps, losses.size());
    if (clipped_steps == 0) {
      std::fprintf(stderr, "clipping never engaged (every gradient norm <= %g): the case tests nothing\n",
                   static_cast<double>(args.clip_grad));
      ++failures;
    }
  }
  if (weights.size() != ref_weights.size()) {
    std::fprintf(stderr, "weights: %zu values gathered, single-rank model has %zu\n", weights.size(), ref_weights.size());
    ++failures;
  } else {
    double max_abs = 0.0;
    const double rel = relative_l2(weights, ref_weights, max_abs);
    const bool ok = rel <= WEIGHT_REL_TOL;
    failures += ok ? 0 : 1;
    std::printf("# weights after step 1: %zu values, relative L2 difference %.2e (max abs %.2e)%s\n", weights.size(),
                rel, max_abs, ok ? "" : "  MISMATCH");
  }
  world.barrier();
  if (failures > 0) {
    std::fprintf(stderr, "equivalence FAILED: %d mismatches (tolerances: loss %.0e, weights %.0e relative)\n", failures,
                 LOSS_REL_TOL, WEIGHT_REL_TOL);
    return 1;
  }
  std::printf("equivalence OK\n");
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  cuboid::exec::CommEnvironment env(argc, argv);
  Args args;
  CLI::App app{"Runs a DP x TP x PP plan on gpt-tiny and compares it with a single-rank run"};
  app.add_option("--model", args.model,
                 "gpt-tiny, llama-tiny (RMSNorm, SwiGLU, RoPE, GQA), or their MoE versions moe-tiny, moe-llama-tiny");
  app.add_option("--ep", args.ep, "expert-parallel size (MoE models; divides dp)");
  app.add_option("--tp", args.tp);
  app.add_option("--cp", args.cp, "context-parallel size (sequence split over cp ranks)");
  app.add_option("--cp-comm-type", args.cp_comm_type, "CP exchange: allgather (default) or a2a (Ulysses)");
  app.add_option("--dp", args.dp);
  app.add_option("--pp", args.pp);
  app.add_option("--vp", args.vp);
  app.add_option("--schedule", args.schedule, "gpipe, 1f1b, interleaved, zb-h1 or zb-v (pass --vp 2 with zb-v)");
  app.add_option("--recompute", args.recompute, "none, selective or full");
  app.add_flag("--sequence-parallel", args.sequence_parallel);
  app.add_flag("--distributed-optimizer", args.distributed_optimizer);
  app.add_option("--zero", args.zero, "ZeRO stage 0..3 (2, 3: sharded grads / params on the DP group)");
  app.add_option("--first-stage-layers", args.first_stage_layers, "uneven pipeline: layers of the first stage");
  app.add_option("--last-stage-layers", args.last_stage_layers, "uneven pipeline: layers of the last stage");
  app.add_option("--num-layers", args.num_layers, "override the model's layer count (0: the model's)");
  app.add_flag("--account-for-embedding-in-pipeline-split", args.account_for_embedding,
               "the embedding counts as one layer in the pipeline split (Megatron-Core)");
  app.add_flag("--account-for-loss-in-pipeline-split", args.account_for_loss,
               "the loss counts as one layer in the pipeline split (Megatron-Core)");
  app.add_option("--clip-grad", args.clip_grad, "clip gradients to this global L2 norm (0: no clipping)");
  app.add_option("--grad-bucket-bytes", args.grad_bucket_bytes, "DP gradient bucket size (default: the plan's)");
  CLI::Option* steps = app.add_option("--steps", args.steps,
                                      "training steps (default 10, or $CUBOID_EQUIVALENCE_STEPS: tools/test --sanitize "
                                      "runs 3, the same checks on fewer steps under ASan's ~10x slowdown)");
  app.add_option("--micro-batch", args.micro_batch);
  app.add_option("--global-batch", args.global_batch);
  app.add_option("--timeout", args.timeout_s, "seconds per step before the watchdog aborts the job");
  app.add_option("--trace", args.trace_file, "write the measured timeline of the last step (Chrome trace JSON)");
  app.add_option("--program", args.program, "ir (lowered TaskGraph) or internal (schedule built from the plan)");
  app.add_option("--inject-fault-rank", args.fault_rank)->group("");
  app.add_option("--inject-fault-step", args.fault_step)->group("");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (const char* env_steps = std::getenv("CUBOID_EQUIVALENCE_STEPS"); env_steps != nullptr && steps->count() == 0) {
    char* end = nullptr;
    const long value = std::strtol(env_steps, &end, 10);
    if (end == env_steps || *end != '\0' || value < 2 || value > 1000) {
      std::fprintf(stderr, "CUBOID_EQUIVALENCE_STEPS: '%s' is not a step count (valid: an integer in 2..1000)\n",
                   env_steps);
      return 2;
    }
    args.steps = static_cast<int>(value);
  }
  try {
    return run(args, env.world());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "rank %d: %s\n", env.world().rank(), e.what());
    if (env.world().size() > 1) {
      env.world().abort(1);
    }
    return 1;
  }
}

// Runtime: trains a GPT model for real on CPUs with DP x TP x PP, one process per rank, executing the per-rank
// Program lowered from the step's TaskGraph (so the simulated schedule is the run schedule), and measures every
// task. Entry points: run_training() for whole runs (used by `cuboid run`) and Trainer for step-by-step control
// (used by the equivalence tests).
#pragma once

#include "exec/communicator.hpp"
#include "exec/cpu/adamw.hpp"
#include "exec/program.hpp"
#include "model/gpu_spec.hpp"
#include "model/model_spec.hpp"
#include "model/plan.hpp"
#include "model/timeline.hpp"

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace cuboid::exec {

/// Where the per-rank programs come from.
enum class ProgramSource {
  TaskGraph, // lower model::build_step_graph(..., Instantiation::AllRanks) (the default)
  Internal,  // build_internal_program(): the schedule written directly from the plan (reference / fallback)
};

/// Test-only fault injection (RunOptions::fault_kind): what the faulty rank does at the start of its first forward
/// task of the faulty step.
enum class FaultKind {
  Throw,   // throws (an error in an op)
  NanLoss, // poisons its activation with NaN, so the loss of the step becomes NaN downstream
  Hang,    // blocks forever (a hung op or collective; only the watchdog ends the job)
  Crash,   // kills its own process with SIGKILL (a rank that dies without a word)
};

/// Does what `kind` says at the faulty rank's fault point (both backends): throws for Throw, never returns for Hang
/// and Crash, returns for NanLoss (the caller poisons its activation or loss).
void inject_fault(FaultKind kind, int world_rank, int step);

struct RunOptions {
  model::ModelSpec model;
  model::Plan plan;
  model::ClusterSpec cluster;  // only for building the IR; its num_gpus should equal plan.world_size()
  int steps = 10;
  std::uint64_t seed = 1234;   // weights and data
  cpu::AdamWConfig optimizer;  // lr, betas, eps, weight decay, optional clipping
  std::string data_file;       // raw little-endian uint16 tokens; empty = synthetic stream
  double timeout_s = 0.0;      // > 0: the watchdog aborts the job when one step runs longer
  bool trace = false;          // record per-task timings (gathered to rank 0)
  ProgramSource program_source = ProgramSource::TaskGraph;
  bool abort_on_error = true;  // multi-rank: print "rank R: step S: task T: what" and abort the job on any error
  // Test-only fault injection: world rank `fault_rank` fails at the start of step `fault_step` (1-based).
  int fault_rank = -1;
  int fault_step = -1;
  FaultKind fault_kind = FaultKind::Throw;
  // --- CUDA backend (issue 9) ---
  bool cuda_tensor_core_attention = true; // --backend cuda: false = scalar-FMA attention kernels everywhere
  // --backend cuda --gemm-algo: true = autotune (each new GEMM shape times cuBLASLt's top 8 algorithms once, one host
  // sync per shape; exec/cuda/gemm.hpp GemmAlgoSelection::Autotune), false = the cuBLASLt heuristic's first
  bool cuda_gemm_autotune = true;
};

struct RunResult {
  std::vector<double> losses;       // per step, mean over the global batch (valid on rank 0)
  std::vector<double> step_time_s;  // per step, wall clock on rank 0 (steps end with a world reduction)
  /// Per step, the global gradient L2 norm before clipping (Megatron's "grad norm"), the same on every rank.
  std::vector<double> grad_norms;
  double median_step_time_s = 0.0;  // median over steps after the first (the first if only one)
  /// CPU time of rank 0's process per step (all its threads) and its median as above: on a machine shared with
  /// other jobs, wall time / CPU time shows how much of a core the rank actually had.
  std::vector<double> step_cpu_time_s;
  double median_step_cpu_time_s = 0.0;
  /// Measured per-task timings of the last step, every rank, start/end relative to the rank's step start
  /// (rank 0 only, and only with RunOptions::trace). Event ids are IR task ids.
  std::vector<model::TimelineEvent> timeline;
  /// Thread CPU time of each timeline event (same order; an event of several instructions: their sum).
  std::vector<double> timeline_cpu_s;
};

/// Error raised on a rank while it runs a step, with "rank R: step S: task <label>: <what>".
class RunError : public std::runtime_error {
public:
  using std::runtime_error::runtime_error;
};

class Trainer {
public:
  /// Collective over `world`. Throws InputError when world.size() != plan.world_size() or the options are invalid.
  Trainer(const RunOptions& options, Communicator& world);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Runs one training step (forward, backward, gradient reduction, optimizer) on every rank; returns the global
  /// mean loss (the same on every rank). Collective.
  double step();
  /// Full model weights in canonical order (the single-rank parameter order), assembled on rank 0 from dp_rank 0's
  /// shards; empty on other ranks. Collective.
  [[nodiscard]] std::vector<float> gather_full_weights();
  /// Measured events of the last step (rank 0: all ranks; others: empty). Collective. `cpu_s` (optional, rank 0)
  /// receives each event's thread CPU time, in the same order.
  [[nodiscard]] std::vector<model::TimelineEvent> gather_timeline(std::vector<double>* cpu_s = nullptr);
  [[nodiscard]] const Program& program() const;
  [[nodiscard]] int steps_done() const;
  /// Global L2 norm of the gradients of the last step, before clipping (the same on every rank).
  [[nodiscard]] double last_grad_norm() const;
  /// --- mixture of experts --- Smallest router top-k margin (cpu::router_topk_margin) over every MoE forward of
  /// this rank so far; +inf for dense models.
  [[nodiscard]] double min_router_margin() const;
  /// Sum over every rank of GptModel::routing_fingerprint (rank 0; 0 elsewhere): equal for two runs of the same
  /// steps exactly when they routed every token alike. Collective.
  [[nodiscard]] std::uint64_t gather_routing_fingerprint();

private:
  struct State;
  std::unique_ptr<State> state_;
};

/// Trains for options.steps steps. Collective over `world`.
RunResult run_training(const RunOptions& options, Communicator& world);

/// The checks Trainer runs on its options (world size vs plan, divisibility, steps); for other backends' runtimes
/// (exec/cuda/cuda_runtime.cpp) that execute the same programs. Throws InputError.
void validate_run_options(const RunOptions& options, const Communicator& world);
/// --- context parallelism --- What `cuboid run` executes of a CP plan (no --sequence-parallel with cp > 1;
/// cp_comm_type allgather or a2a, not the p2p ring); part of validate_run_options, and checked by the CUDA backend
/// before it looks for a device.
void validate_context_parallel_run(const model::Plan& plan);

/// --- mixture of experts --- What `cuboid run` executes of a MoE model (checked by validate_run_options, and by the
/// CLI before any calibration): routed experts without shared ones, tp = 1 (no expert tensor parallelism), ep | dp
/// and ep | E (model::validate), any pp / vp / micro-batching, zero 0 or 1, the program lowered from the TaskGraph.
/// Throws InputError naming the field, the value and what is valid. No-op for dense models.
void validate_moe_run(const model::ModelSpec& model, const model::Plan& plan, ProgramSource program_source);

/// The per-rank programs of `ranks` for `options` (its program_source: lowered from the step's TaskGraph, or the
/// internal schedule), shared by the CPU and CUDA runtimes so both run the same program.
std::vector<Program> build_rank_programs(const RunOptions& options, const std::vector<int>& ranks);

/// Full weights of a run, see Trainer::gather_full_weights().
std::vector<float> gather_full_weights(Trainer& trainer);

} // namespace cuboid::exec

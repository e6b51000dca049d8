// The CUDA training runtime with several ranks, on the CUDA emulator: the four canonical plans (1 GPU; DP 2; DP 2 x
// TP 2; DP 2 x TP 2 x PP 2) of gpt-tiny, and three variants (interleaved 1F1B; llama-tiny with GQA split over TP
// and full recompute; the distributed optimizer), each rank a process of `cuboid_emu run --backend cuda` launched as
// torchrun does (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), NCCL through the emulator's
// cross-process transport. Their losses must follow the CPU backend's single-process run of the same global batch
// (the CPU backend's multi-rank runs equal its single-rank run to ~3e-6, tests/exec/equivalence), within the bf16
// tolerance of tests/exec/cuda/cuda_runtime_gpu_test.cpp (2 % per step). No GPU can run these plans here (the lent
// GPU machines have one GPU; NCCL does not put two ranks on one GPU), so this is where their wiring is tested:
// process groups, TP all-reduces, PP send / recv, DP buckets on the communication stream, the embedding group.
#include "exec/local_communicator.hpp"
#include "exec/runtime.hpp"
#include "model/model_catalog.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ; // NOLINT: posix_spawn passes the environment

using namespace cuboid;

namespace {

constexpr double LOSS_REL_TOLERANCE = 0.02;
constexpr double GRAD_NORM_REL_TOLERANCE = 0.05;
constexpr double MEMORY_REL_TOLERANCE = 0.10;
constexpr int STEPS = 3;
constexpr int MICRO_BATCH = 2;
constexpr int GLOBAL_BATCH = 8;
constexpr auto RUN_TIMEOUT = std::chrono::seconds(600);

// A TCP port that was free a moment ago on 127.0.0.1 (bound to port 0, then released).
int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return ntohs(addr.sin_port);
}

struct Plan {
  int dp = 1;
  int tp = 1;
  int pp = 1;
  std::string model = "gpt-tiny";
  std::vector<std::string> flags; // more `cuboid run` flags
  std::vector<std::pair<std::string, std::string>> env; // more environment variables of every rank
  int global_batch = GLOBAL_BATCH;
  int cp = 1; // context parallelism
  [[nodiscard]] int ranks() const { return dp * tp * pp * cp; }
  [[nodiscard]] std::string name() const {
    std::string out = fmt::format("{}_dp{}_tp{}_pp{}", model, dp, tp, pp) + (cp > 1 ? fmt::format("_cp{}", cp) : "");
    for (const auto& f : flags) {
      out += '_';
      for (const char c : f) {
        if (c != '-') {
          out += c;
        }
      }
    }
    for (const auto& e : env) {
      out += '_' + e.first;
    }
    return out;
  }
};

// Launches `ranks` processes of cuboid_emu with the torchrun environment; rank 0's stdout goes to `json_path`.
// Returns the exit codes (-1 for a process that had to be killed after RUN_TIMEOUT).
std::vector<int> launch(const Plan& plan, const std::string& json_path, const std::string& log_prefix) {
  const int port = free_port();
  std::vector<std::string> args = {CUBOID_EMU_BINARY, "run", "--backend", "cuda", "--model", plan.model,
                                   "--dp", std::to_string(plan.dp), "--tp", std::to_string(plan.tp), "--pp",
                                   std::to_string(plan.pp), "--cp", std::to_string(plan.cp),
                                   "--micro-batch-size", std::to_string(MICRO_BATCH),
                                   "--global-batch-size", std::to_string(plan.global_batch), "--steps",
                                   std::to_string(STEPS), "--json"};
  if (plan.ranks() > 1) {
    // cuBLASLt autotuning (the default) runs each new GEMM shape 13 times, which costs seconds per process on the
    // emulator; the 1-GPU plans keep it (the runtime's default path), the multi-rank plans test the rest.
    args.insert(args.end(), {"--gemm-algo", "heuristic"});
  }
  args.insert(args.end(), plan.flags.begin(), plan.flags.end());
  std::vector<pid_t> pids;
  for (int rank = 0; rank < plan.ranks(); ++rank) {
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      env_strings.emplace_back(*e);
    }
    for (const auto& [name, value] :
         std::vector<std::pair<std::string, std::string>>{{"RANK", std::to_string(rank)},
                                                          {"WORLD_SIZE", std::to_string(plan.ranks())},
                                                          {"LOCAL_RANK", std::to_string(rank)},
                                                          {"LOCAL_WORLD_SIZE", std::to_string(plan.ranks())},
                                                          {"MASTER_ADDR", "127.0.0.1"},
                                                          {"MASTER_PORT", std::to_string(port)},
                                                          {"CUBOID_EMU_DEVICES", std::to_string(plan.ranks())}}) {
      env_strings.push_back(name + "=" + value);
    }
    for (const auto& [name, value] : plan.env) {
      env_strings.push_back(name + "=" + value);
    }
    std::vector<char*> envp;
    for (auto& s : env_strings) {
      envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    std::vector<std::string> argv_strings = args;
    std::vector<char*> argv;
    for (auto& s : argv_strings) {
      argv.push_back(s.data());
    }
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string out = rank == 0 ? json_path : fmt::format("{}.rank{}.out", log_prefix, rank);
    const std::string err = fmt::format("{}.rank{}.err", log_prefix, rank);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = 0;
    const int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
    pids.push_back(pid);
  }
  std::vector<int> codes(pids.size(), -2);
  const auto deadline = std::chrono::steady_clock::now() + RUN_TIMEOUT;
  std::size_t left = pids.size();
  while (left > 0) {
    for (std::size_t idx = 0; idx < pids.size(); ++idx) {
      if (codes[idx] != -2) {
        continue;
      }
      int status = 0;
      if (waitpid(pids[idx], &status, WNOHANG) == pids[idx]) {
        codes[idx] = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        --left;
      }
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (std::size_t idx = 0; idx < pids.size(); ++idx) {
        if (codes[idx] == -2) {
          kill(pids[idx], SIGKILL);
          waitpid(pids[idx], nullptr, 0);
          codes[idx] = -1;
        }
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return codes;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

} // namespace

TEST_CASE("CUDA runtime on the emulator: the canonical DP/TP/PP plans follow the CPU backend's losses",
          "[emu][exec][cuda]") {
  const Plan plan =
      GENERATE(Plan{1, 1, 1, "gpt-tiny", {}, {}}, Plan{2, 1, 1, "gpt-tiny", {}, {}}, Plan{2, 2, 1, "gpt-tiny", {}, {}},
               Plan{2, 2, 2, "gpt-tiny", {}, {}},
               Plan{1, 1, 2, "gpt-tiny", {"--vp", "2"}, {}},
               // sequence parallelism: GPT (biases, LayerNorm, learned positions) and Llama (RMSNorm, RoPE, GQA)
               Plan{1, 2, 1, "gpt-tiny", {"--sequence-parallel"}, {}},
               Plan{1, 2, 2, "llama-tiny", {"--recompute", "full", "--sequence-parallel"}, {}},
               // and with cuBLASLt refusing epilogues: bias kernels instead of the fused biases and residuals
               Plan{2, 1, 1, "gpt-tiny", {"--distributed-optimizer"}, {{"CUBOID_EMU_CUBLASLT_NO_EPILOGUE", "1"}}},
               // the distributed optimizer with the tied word embedding on two stages (its own shard segments),
               // its parameter all-gather behind the next forward
               Plan{2, 1, 2, "gpt-tiny", {"--distributed-optimizer", "--overlap-param-gather"}, {}},
               // ZeRO-2: gradients reduce-scattered per bucket and micro-batch, the tied embedding on two stages
               Plan{2, 1, 2, "gpt-tiny", {"--zero", "2"}, {}},
               // ZeRO-3 / FSDP: the bf16 copy gathered per unit before its forward and backward (full recompute:
               // the backward's gather serves the recomputed forward), with sequence parallelism
               Plan{2, 2, 1, "llama-tiny", {"--zero", "3", "--sequence-parallel", "--recompute", "full"}, {}},
               // zero-bubble schedules: W deferred after B (ZB-H1, DP buckets waiting for W), and the V of two chunks
               // per rank (ZB-V)
               Plan{2, 1, 2, "gpt-tiny", {"--schedule", "zb-h1"}, {}},
               Plan{1, 2, 2, "llama-tiny", {"--vp", "2", "--schedule", "zb-v", "--sequence-parallel"}, {}},
               // context parallelism (K/V all-gathered per layer, two query chunks per rank): learned positions
               // with a pipeline; RoPE and GQA with the distributed optimizer sharded over dp*cp, full recompute
               Plan{1, 1, 2, "gpt-tiny", {}, {}, GLOBAL_BATCH, 2},
               Plan{2, 1, 1, "llama-tiny", {"--distributed-optimizer", "--recompute", "full"}, {}, GLOBAL_BATCH, 2},
               // Ulysses (--cp-comm-type a2a): Q/K/V and O all-to-all'd to heads / cp, GQA under TP 2
               Plan{1, 2, 1, "llama-tiny", {"--cp-comm-type", "a2a"}, {}, GLOBAL_BATCH, 2});
  CAPTURE(plan.name());

  // The CPU backend's single-process run of the same model and global batch (its multi-rank runs equal it).
  exec::RunOptions options;
  options.model = model::find_model(plan.model);
  options.plan.micro_batch_size = MICRO_BATCH;
  options.plan.global_batch_size = GLOBAL_BATCH;
  options.cluster.num_gpus = 1;
  options.cluster.gpus_per_node = 1;
  options.steps = STEPS;
  exec::LocalCommunicator world;
  const exec::RunResult cpu = exec::run_training(options, world);

  const std::string prefix = fmt::format("{}/cuda_emu_ranks_{}", CUBOID_TEST_WORK_DIR, plan.name());
  const std::string json_path = prefix + ".json";
  const std::vector<int> codes = launch(plan, json_path, prefix);
  for (std::size_t rank = 0; rank < codes.size(); ++rank) {
    INFO("rank " << rank << " exit code " << codes[rank] << "; its stderr (" << prefix << ".rank" << rank
                 << ".err):\n"
                 << slurp(fmt::format("{}.rank{}.err", prefix, rank)));
    REQUIRE(codes[rank] == 0);
  }
  const nlohmann::json out = nlohmann::json::parse(slurp(json_path));
  CHECK(out.at("backend") == "cuda");
  CHECK(out.at("ranks") == plan.ranks());
  const auto losses = out.at("losses").get<std::vector<double>>();
  REQUIRE(losses.size() == cpu.losses.size());
  for (std::size_t step = 0; step < losses.size(); ++step) {
    CAPTURE(step, cpu.losses[step], losses[step]);
    CHECK(std::isfinite(losses[step]));
    CHECK(std::abs(losses[step] - cpu.losses[step]) <= LOSS_REL_TOLERANCE * cpu.losses[step]);
  }
  CHECK(losses.back() < losses.front() - 0.1); // it learns, as the CPU run does
  // The gradient norm sees every parameter, also those that move the loss little (norms, biases: under sequence
  // parallelism their gradients are summed over TP), within tests/exec/cuda/cuda_runtime_gpu_test.cpp's 5 %.
  const auto norms = out.at("grad_norms").get<std::vector<double>>();
  REQUIRE(norms.size() == cpu.grad_norms.size());
  for (std::size_t step = 0; step < norms.size(); ++step) {
    CAPTURE(step, cpu.grad_norms[step], norms[step]);
    CHECK(std::abs(norms[step] - cpu.grad_norms[step]) <= GRAD_NORM_REL_TOLERANCE * cpu.grad_norms[step]);
  }
  // Every rank's device memory, the emulated pool's high-water mark, against the simulator's peak for that rank less
  // NCCL's buffers (outside the pool). For these models it is mostly parameters, gradients, AdamW state and the
  // cuBLASLt workspace; activations are a few MB. Pipeline stages differ (embedding, head, micro-batches in flight).
  CHECK(out.at("predicted_peak_bytes_rank0").get<double>() >= out.at("predicted_pool_bytes_rank0").get<double>());
  CHECK(out.at("peak_reserved_bytes_rank0").get<double>() ==
        out.at("memory_per_rank").at(0).at("measured_pool_bytes").get<double>());
  REQUIRE(out.at("memory_per_rank").size() == static_cast<std::size_t>(plan.ranks()));
  for (const auto& rank : out.at("memory_per_rank")) {
    const double measured_bytes = rank.at("measured_pool_bytes").get<double>();
    const double predicted_bytes = rank.at("predicted_pool_bytes").get<double>();
    CAPTURE(rank.at("rank").get<int>(), measured_bytes, predicted_bytes);
    CHECK(predicted_bytes > 0.0);
    CHECK(std::abs(measured_bytes - predicted_bytes) <= MEMORY_REL_TOLERANCE * predicted_bytes);
  }
}

// Failures of `cuboid run --backend cuda` end every rank non-zero, naming rank, step and task, as the CPU backend's
// exec.cli.fault_* cases do: an op that throws, a NaN loss, a rank killed by SIGKILL. As with NCCL on a GPU, a peer
// of a failed rank waits in its collective until its watchdog (--timeout) ends it; torchrun or mpirun would end it
// sooner. (A hung rank ends through the same watchdog.)
TEST_CASE("CUDA runtime on the emulator: an injected fault ends every rank with a message", "[emu][exec][cuda]") {
  struct Fault {
    std::string kind;
    int faulty_exit; // exit code of rank 1, the faulty rank
    std::string faulty_says;
    std::string peer_says; // rank 0
  };
  const Fault fault = GENERATE(Fault{"throw", 1, "rank 1: step 2: task fwd embed", "rank 0: step 2: task "},
                               Fault{"nan", 1, "rank 1: step 2: task (end of step: the loss summed on the device, "
                                     "read back after the last task): loss is nan",
                                     "rank 0: step 2: task (end of step: the loss summed on the device, "
                                     "read back after the last task): loss is nan"},
                               Fault{"crash", 128 + SIGKILL, "rank 1: step 2: injected crash", "rank 0: step 2: task "});
  CAPTURE(fault.kind);
  // One micro-batch per rank per step (a step takes about 2 s on the emulator, under the 10 s limit).
  const Plan plan{2,
                  1,
                  1,
                  "gpt-tiny",
                  {"--inject-fault-rank", "1", "--inject-fault-step", "2", "--inject-fault-kind", fault.kind,
                   "--timeout", "10"},
                  {},
                  2 * MICRO_BATCH};
  const std::string prefix = fmt::format("{}/cuda_emu_fault_{}", CUBOID_TEST_WORK_DIR, fault.kind);
  const std::vector<int> codes = launch(plan, prefix + ".json", prefix);
  const std::string err0 = slurp(prefix + ".rank0.err");
  const std::string err1 = slurp(prefix + ".rank1.err");
  INFO("rank 0 stderr:\n" << err0 << "\nrank 1 stderr:\n" << err1);
  REQUIRE(codes.size() == 2);
  CHECK(codes[1] == fault.faulty_exit);
  CHECK(codes[0] == 1); // not killed by the test's own time limit (-1)
  CHECK_THAT(err1, Catch::Contains(fault.faulty_says));
  CHECK_THAT(err0, Catch::Contains(fault.peer_says));
  if (fault.kind != "nan") {
    CHECK_THAT(err0, Catch::Contains("timeout"));
  }
  if (fault.kind == "throw") {
    CHECK_THAT(err1, Catch::Contains("injected fault"));
  }
}

// exec::cuda TCP and shared-file rendezvous on localhost: every rank (threads, and forked processes) receives rank
// 0's payload byte for byte; mismatched world sizes and absent peers fail with a DeviceError naming the problem.
#include "exec/cuda/rendezvous.hpp"
#include "exec/device_error.hpp"
#include "model/errors.hpp"

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <numeric>
#include <thread>

using cuboid::exec::DeviceError;
using cuboid::exec::cuda::LaunchEnv;

namespace {

// A port that was free a moment ago (bind to port 0, read it back, close).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

LaunchEnv env_for(int rank, int world, int port) {
  LaunchEnv env;
  env.rank = rank;
  env.world_size = world;
  env.local_rank = rank;
  env.master_addr = "127.0.0.1";
  env.master_port = port;
  env.launcher = "test";
  return env;
}

std::vector<std::uint8_t> id_bytes() {
  std::vector<std::uint8_t> id(128); // sizeof(ncclUniqueId)
  std::iota(id.begin(), id.end(), std::uint8_t{7});
  return id;
}

} // namespace

TEST_CASE("exec::cuda::tcp_broadcast: every rank gets rank 0's payload", "[exec][cuda]") {
  const int world = GENERATE(2, 5);
  const int port = free_port();
  const auto payload = id_bytes();
  std::vector<std::future<std::vector<std::uint8_t>>> ranks;
  // Non-root ranks start first: they must retry until rank 0 listens.
  for (int rank = world - 1; rank >= 0; --rank) {
    ranks.push_back(std::async(std::launch::async, [&, rank] {
      const std::vector<std::uint8_t> mine = rank == 0 ? payload : std::vector<std::uint8_t>{};
      return cuboid::exec::cuda::tcp_broadcast(env_for(rank, world, port), mine, 20.0);
    }));
  }
  for (auto& r : ranks) {
    CHECK(r.get() == payload);
  }
}

TEST_CASE("exec::cuda::tcp_broadcast: separate processes", "[exec][cuda]") {
  constexpr int WORLD = 3;
  const int port = free_port();
  const auto payload = id_bytes();
  std::vector<pid_t> children;
  for (int rank = 1; rank < WORLD; ++rank) {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 1;
      try {
        code = cuboid::exec::cuda::tcp_broadcast(env_for(rank, WORLD, port), {}, 20.0) == payload ? 0 : 2;
      } catch (...) {
        code = 3;
      }
      ::_exit(code); // a forked test child must not run Catch2's exit path
    }
    children.push_back(pid);
  }
  CHECK(cuboid::exec::cuda::tcp_broadcast(env_for(0, WORLD, port), payload, 20.0) == payload);
  for (const pid_t pid : children) {
    int status = -1;
    ::waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
}

TEST_CASE("exec::cuda::tcp_broadcast: failures", "[exec][cuda]") {
  SECTION("one rank: no I/O") {
    const auto payload = id_bytes();
    CHECK(cuboid::exec::cuda::tcp_broadcast(env_for(0, 1, 1), payload, 1.0) == payload);
  }
  SECTION("no rank 0: the joiner times out naming the address") {
    const int port = free_port();
    REQUIRE_THROWS_AS(cuboid::exec::cuda::tcp_broadcast(env_for(1, 2, port), {}, 0.3), DeviceError);
    REQUIRE_THROWS_WITH(cuboid::exec::cuda::tcp_broadcast(env_for(1, 2, port), {}, 0.3),
                        Catch::Contains("timed out connecting to rank 0 at 127.0.0.1") && Catch::Contains("rank 1"));
  }
  SECTION("world sizes disagree") {
    const int port = free_port();
    auto joiner = std::async(std::launch::async, [&] {
      try {
        return cuboid::exec::cuda::tcp_broadcast(env_for(1, 3, port), {}, 2.0).size();
      } catch (const DeviceError&) {
        return std::size_t{0}; // rank 0 hangs up on it
      }
    });
    REQUIRE_THROWS_WITH(cuboid::exec::cuda::tcp_broadcast(env_for(0, 2, port), id_bytes(), 5.0),
                        Catch::Contains("WORLD_SIZE=3") && Catch::Contains("rank 0 has 2"));
    CHECK(joiner.get() == 0);
  }
}

TEST_CASE("exec::cuda::file_broadcast: shared-file rendezvous", "[exec][cuda]") {
  const auto dir = std::filesystem::temp_directory_path() / ("cuboid_rdv_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "nccl_id").string();
  const auto payload = id_bytes();
  SECTION("four ranks, then the files are cleaned up") {
    constexpr int WORLD = 4;
    std::vector<std::future<std::vector<std::uint8_t>>> ranks;
    for (int rank = WORLD - 1; rank >= 0; --rank) {
      ranks.push_back(std::async(std::launch::async, [&, rank] {
        const std::vector<std::uint8_t> mine = rank == 0 ? payload : std::vector<std::uint8_t>{};
        return cuboid::exec::cuda::file_broadcast(path, rank, WORLD, mine, 20.0);
      }));
    }
    for (auto& r : ranks) {
      CHECK(r.get() == payload);
    }
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK_FALSE(std::filesystem::exists(path + ".ack.1"));
  }
  SECTION("a stale file is refused by rank 0") {
    { std::ofstream(path) << "stale"; }
    REQUIRE_THROWS_AS(cuboid::exec::cuda::file_broadcast(path, 0, 2, payload, 1.0), cuboid::InputError);
    REQUIRE_THROWS_WITH(cuboid::exec::cuda::file_broadcast(path, 0, 2, payload, 1.0),
                        Catch::Contains("already exists"));
  }
  SECTION("rank 0 never writes: the reader times out") {
    REQUIRE_THROWS_WITH(cuboid::exec::cuda::file_broadcast(path, 1, 2, {}, 0.2),
                        Catch::Contains("timed out waiting for rank 0"));
  }
  std::filesystem::remove_all(dir);
}

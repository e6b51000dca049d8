// exec::cuda::read_launch_env: torchrun and mpirun variables, single process, and the InputError messages for
// malformed or missing values.
#include "exec/cuda/launch_env.hpp"
#include "model/errors.hpp"

#include <catch2/catch.hpp>

#include <map>

using cuboid::exec::cuda::LaunchEnv;
using cuboid::exec::cuda::read_launch_env;

namespace {
cuboid::exec::cuda::EnvLookup lookup(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) {
      return std::nullopt;
    }
    return it->second;
  };
}

// Replaces one variable (erase + emplace: GCC 12's -Wrestrict misfires on std::string::assign(const char*)).
void set(std::map<std::string, std::string>& vars, const std::string& name, const std::string& value) {
  vars.erase(name);
  vars.emplace(name, value);
}

std::map<std::string, std::string> torchrun(int rank, int world) {
  return {{"RANK", std::to_string(rank)},        {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank % 4)}, {"LOCAL_WORLD_SIZE", "4"},
          {"MASTER_ADDR", "node0"},                 {"MASTER_PORT", "29500"}};
}
} // namespace

TEST_CASE("exec::cuda::read_launch_env: launchers", "[exec][cuda]") {
  SECTION("no variables: one process") {
    const LaunchEnv env = read_launch_env(lookup({}));
    CHECK(env.rank == 0);
    CHECK(env.world_size == 1);
    CHECK(env.launcher == "single process");
  }
  SECTION("torchrun: every field read") {
    const LaunchEnv env = read_launch_env(lookup(torchrun(6, 8)));
    CHECK(env.launcher == "torchrun");
    CHECK(env.rank == 6);
    CHECK(env.world_size == 8);
    CHECK(env.local_rank == 2);
    CHECK(env.local_world_size == 4);
    CHECK(env.master_addr == "node0");
    CHECK(env.master_port == 29500);
  }
  SECTION("mpirun: Open MPI variables plus exported MASTER_*") {
    const LaunchEnv env = read_launch_env(lookup({{"OMPI_COMM_WORLD_RANK", "3"},
                                                  {"OMPI_COMM_WORLD_SIZE", "4"},
                                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                                                  {"MASTER_ADDR", "10.0.0.1"},
                                                  {"MASTER_PORT", "1234"}}));
    CHECK(env.launcher == "mpirun");
    CHECK(env.rank == 3);
    CHECK(env.world_size == 4);
    CHECK(env.local_rank == 1);
    CHECK(env.local_world_size == 0); // not given: unknown, not guessed
  }
  SECTION("torchrun with one rank needs no rendezvous address") {
    const LaunchEnv env = read_launch_env(lookup({{"RANK", "0"}, {"WORLD_SIZE", "1"}}));
    CHECK(env.world_size == 1);
    CHECK(env.master_addr.empty());
  }
}

TEST_CASE("exec::cuda::read_launch_env: bad values name the variable and the valid range", "[exec][cuda]") {
  SECTION("rank out of range") {
    auto vars = torchrun(0, 4);
    set(vars, "RANK", "4");
    REQUIRE_THROWS_WITH(read_launch_env(lookup(vars)),
                        Catch::Contains("RANK") && Catch::Contains("\"4\"") && Catch::Contains("[0, 3]"));
  }
  SECTION("not an integer") {
    auto vars = torchrun(0, 4);
    set(vars, "WORLD_SIZE", "4x");
    REQUIRE_THROWS_AS(read_launch_env(lookup(vars)), cuboid::InputError);
    REQUIRE_THROWS_WITH(read_launch_env(lookup(vars)), Catch::Contains("WORLD_SIZE") && Catch::Contains("4x"));
  }
  SECTION("missing MASTER_ADDR in a multi-process job") {
    auto vars = torchrun(1, 4);
    vars.erase("MASTER_ADDR");
    REQUIRE_THROWS_WITH(read_launch_env(lookup(vars)), Catch::Contains("MASTER_ADDR") && Catch::Contains("not set"));
  }
  SECTION("port out of range") {
    auto vars = torchrun(1, 4);
    set(vars, "MASTER_PORT", "70000");
    REQUIRE_THROWS_WITH(read_launch_env(lookup(vars)), Catch::Contains("MASTER_PORT") && Catch::Contains("65535"));
  }
  SECTION("WORLD_SIZE without RANK") {
    REQUIRE_THROWS_WITH(read_launch_env(lookup({{"WORLD_SIZE", "2"}})), Catch::Contains("RANK: not set"));
  }
  SECTION("local rank not below LOCAL_WORLD_SIZE") {
    auto vars = torchrun(1, 8);
    set(vars, "LOCAL_RANK", "5");
    REQUIRE_THROWS_WITH(read_launch_env(lookup(vars)), Catch::Contains("LOCAL_RANK"));
  }
}

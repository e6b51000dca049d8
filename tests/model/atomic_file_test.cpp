// AtomicFile / write_file_atomically (issue 8, "nothing lost"): the old file survives an interrupted write, the
// temporary file never stays behind, and unwritable paths are InputErrors naming the path.
#include "model/atomic_file.hpp"
#include "model/cost_profile.hpp"
#include "model/errors.hpp"
#include "model/timeline.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

using Catch::Matchers::Contains;

namespace {
std::string read_all(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// A fresh directory per test case; nothing else may appear in it.
std::filesystem::path scratch_dir(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("cuboid-atomic-{}-{}", name, getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

std::size_t count_entries(const std::filesystem::path& dir) {
  return static_cast<std::size_t>(std::distance(std::filesystem::directory_iterator(dir), {}));
}
} // namespace

TEST_CASE("cuboid::AtomicFile: the old file survives an interrupted write", "[model][atomic]") {
  const auto dir = scratch_dir("interrupt");
  const auto path = dir / "trace.json";
  cuboid::write_file_atomically(path.string(), "old contents\n");
  SECTION("exception before commit (a failure mid-write)") {
    try {
      cuboid::AtomicFile file(path.string());
      file.write("half of the new contents");
      CHECK(count_entries(dir) == 2); // the old file and the temporary one
      throw std::runtime_error("interrupted");
    } catch (const std::runtime_error&) {
    }
    CHECK(read_all(path) == "old contents\n");
    CHECK(count_entries(dir) == 1); // temporary file removed
  }
  SECTION("commit replaces the file") {
    cuboid::AtomicFile file(path.string());
    file.write("new ");
    file.write("contents\n");
    CHECK(read_all(path) == "old contents\n"); // not visible before commit
    file.commit();
    CHECK(read_all(path) == "new contents\n");
    CHECK(count_entries(dir) == 1);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("cuboid::write_file_atomically: unwritable paths are input errors naming the path", "[model][atomic]") {
  const std::string path = "/nonexistent-cuboid-dir/out.csv";
  REQUIRE_THROWS_AS(cuboid::write_file_atomically(path, "x"), cuboid::InputError);
  REQUIRE_THROWS_WITH(cuboid::write_file_atomically(path, "x"), Contains(path) && Contains("cannot write"));
}

TEST_CASE("cuboid::model: profiles and traces are written atomically", "[model][atomic]") {
  const auto dir = scratch_dir("outputs");
  SECTION("save_profile round trip leaves no temporary file") {
    const auto path = (dir / "a100.yaml").string();
    const cuboid::model::CostProfile profile = cuboid::model::default_profile("a100-80gb");
    cuboid::model::save_profile(profile, path);
    cuboid::model::save_profile(profile, path); // replacing an existing profile
    CHECK(count_entries(dir) == 1);
    CHECK(cuboid::model::load_profile(path).gemm_max_efficiency == profile.gemm_max_efficiency);
  }
  SECTION("a trace replaces the old one and leaves no temporary file") {
    const auto path = (dir / "trace.json").string();
    cuboid::write_file_atomically(path, "old trace");
    cuboid::model::write_chrome_trace(path, {cuboid::model::TraceSet{"predicted", {}}});
    CHECK_THAT(read_all(path), Contains("traceEvents"));
    CHECK(count_entries(dir) == 1);
  }
  SECTION("an unwritable trace path is an input error naming it") {
    const std::string path = "/nonexistent-cuboid-dir/trace.json";
    REQUIRE_THROWS_AS(cuboid::model::write_chrome_trace(path, {}), cuboid::InputError);
    REQUIRE_THROWS_WITH(cuboid::model::write_chrome_trace(path, {}), Contains(path));
  }
  std::filesystem::remove_all(dir);
}

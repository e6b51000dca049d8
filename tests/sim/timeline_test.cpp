// Chrome trace writer: valid JSON, one X event per timeline event, process/thread names, atomic write.
#include "model/errors.hpp"
#include "model/timeline.hpp"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>

using namespace cuboid::model;

TEST_CASE("model::write_chrome_trace: valid JSON with one X event per task", "[sim]") {
  // Two sets (predicted, measured) of 3 events on ranks 0 and 3: 6 X events; predicted rank 3 is pid 3 and
  // measured rank 3 is pid 4 + 3 = 7 (stride = max rank + 1 = 4); times in microseconds.
  TraceSet predicted{"predicted", {}};
  predicted.events.push_back({0, 0, Stream::Compute, 0.0, 1e-3, "fwd \"L0\" mb0", "compute"});
  predicted.events.push_back({1, 3, Stream::PpComm, 1e-3, 2.5e-3, "send mb0 s0->s1", "p2p"});
  predicted.events.push_back({2, 3, Stream::DpComm, 2e-3, 3e-3, "dp.allreduce b0", "collective"});
  TraceSet measured = predicted;
  measured.title = "measured";
  const std::filesystem::path path = std::filesystem::temp_directory_path() / "cuboid_trace_test.json";
  write_chrome_trace(path.string(), {predicted, measured});
  REQUIRE(!std::filesystem::exists(path.string() + ".tmp"));

  std::ifstream in(path);
  const nlohmann::json trace = nlohmann::json::parse(in);
  int complete = 0;
  bool named_process = false;
  bool named_thread = false;
  for (const auto& event : trace.at("traceEvents")) {
    if (event.at("ph") == "X") {
      ++complete;
      if (event.at("args").at("task_id") == 1 && event.at("pid") == 7) {
        CHECK(event.at("ts").get<double>() == Approx(1000.0));
        CHECK(event.at("dur").get<double>() == Approx(1500.0));
        CHECK(event.at("tid") == 3);
      }
    } else if (event.at("name") == "process_name" && event.at("args").at("name") == "predicted rank 3") {
      named_process = event.at("pid") == 3;
    } else if (event.at("name") == "thread_name" && event.at("args").at("name") == "pp comm") {
      named_thread = true;
    }
  }
  CHECK(complete == 6);
  CHECK(named_process);
  CHECK(named_thread);
  std::filesystem::remove(path);
}

TEST_CASE("model::write_chrome_trace: unwritable path is an InputError", "[sim]") {
  REQUIRE_THROWS_AS(write_chrome_trace("/nonexistent-dir/x/trace.json", {}), cuboid::InputError);
}

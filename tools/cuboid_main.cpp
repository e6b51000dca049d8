// cuboid: plan, predict and run DP x TP x PP training of large language models. This is only the CLI11 front end:
// every command lives in tools/cmd_*.cpp and calls the libraries. Exit codes: 0 answer, 2 bad input, 1 failure.
#include "model/errors.hpp"
#include "tools/commands.hpp"

#include <fmt/format.h>

#include <malloc.h>

#include <cstdio>
#include <exception>

namespace {
constexpr int EXIT_BAD_INPUT = 2;
constexpr int EXIT_FAILURE_INTERNAL = 1;
} // namespace

namespace cuboid::tools {

int error_exit_code(const std::exception& error) {
  const bool bad_input = dynamic_cast<const InputError*>(&error) != nullptr ||
                         dynamic_cast<const InfeasibleError*>(&error) != nullptr;
  return bad_input ? EXIT_BAD_INPUT : EXIT_FAILURE_INTERNAL;
}

int report_error(const std::exception& error) {
  const char* kind = dynamic_cast<const InputError*>(&error) != nullptr        ? "error"
                     : dynamic_cast<const InfeasibleError*>(&error) != nullptr ? "infeasible"
                                                                              : "failed";
  std::fputs(fmt::format("cuboid: {}: {}\n", kind, error.what()).c_str(), stderr);
  return error_exit_code(error);
}

} // namespace cuboid::tools

int main(int argc, char** argv) {
  // glibc's allocator returns freed blocks above 128 KiB (mmap) and a heap top above 128 KiB (trim) to the kernel,
  // so every step of `cuboid run` faulted its activation buffers in again (~8 % of a gpt-tiny step; the graphs of
  // `simulate` grow the same way). Keep them for reuse: blocks up to 32 MiB (glibc's largest allowed threshold) come
  // from the heap, and the heap is not trimmed below 1 GiB of free memory.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  CLI::App app{"cuboid: predict, search and run DP x TP x PP training plans for large language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "cuboid 0.1.0");
  cuboid::tools::Action action;
  try {
    cuboid::tools::add_simulate_command(app, action);
    cuboid::tools::add_list_command(app, action);
    cuboid::tools::add_search_command(app, action);
    cuboid::tools::add_report_command(app, action);
    cuboid::tools::add_run_command(app, action);
    cuboid::tools::add_calibrate_command(app, action);
    cuboid::tools::add_validate_command(app, action);
    try {
      app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
      return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
      return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
      return app.exit(e);
    } catch (const CLI::ParseError& e) {
      std::fputs(fmt::format("cuboid: error: command line: {}\n", e.what()).c_str(), stderr);
      return EXIT_BAD_INPUT;
    }
    return action ? action() : EXIT_BAD_INPUT;
  } catch (const std::exception& e) {
    return cuboid::tools::report_error(e);
  }
}

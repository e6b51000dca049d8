// Sub-command registration for the `cuboid` CLI. Each add_*_command registers its flags on `app` and sets `action`
// to the function that runs it after parsing. Actions return the process exit code and may throw InputError
// (exit 2) or InfeasibleError (exit 2); cuboid_main.cpp maps exceptions to exit codes.
#pragma once

#include <CLI/CLI.hpp>

#include <exception>
#include <functional>

namespace cuboid::tools {

using Action = std::function<int()>;

/// Exit status of an exception that ends a command: 2 for bad input (InputError) or an infeasible plan
/// (InfeasibleError), 1 for anything else.
int error_exit_code(const std::exception& error);
/// Prints the exception's one-line message to stderr ("cuboid: error: ...", "cuboid: infeasible: ..." or
/// "cuboid: failed: ...") and returns error_exit_code(error).
int report_error(const std::exception& error);

void add_simulate_command(CLI::App& app, Action& action);
void add_list_command(CLI::App& app, Action& action);
void add_search_command(CLI::App& app, Action& action);
void add_report_command(CLI::App& app, Action& action);
void add_run_command(CLI::App& app, Action& action);
void add_calibrate_command(CLI::App& app, Action& action);
void add_validate_command(CLI::App& app, Action& action);

} // namespace cuboid::tools

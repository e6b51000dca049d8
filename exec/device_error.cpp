// Formatting of DeviceError messages (shared by every backend).
#include "exec/device_error.hpp"

#include <fmt/format.h>

namespace cuboid::exec {

std::string device_error_message(const std::string& call, int rank, const char* file, int line,
                                 const std::string& detail) {
  return fmt::format("{} failed on rank {} at {}:{}: {}", call, rank, file, line, detail);
}

} // namespace cuboid::exec

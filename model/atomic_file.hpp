// Atomic output files: write to "<path>.tmp.<pid>" then rename over <path>, so an interrupted write never leaves a
// truncated trace, CSV, JSON, profile or report behind (the old file stays intact until the rename).
#pragma once

#include <string>
#include <string_view>

namespace cuboid {

/// Writes `content` to `path` atomically. Throws InputError naming the path if it cannot be written.
void write_file_atomically(const std::string& path, std::string_view content);

} // namespace cuboid

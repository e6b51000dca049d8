// Atomic output files: write to "<path>.tmp.<pid>" then rename over <path>, so an interrupted write never leaves a
// truncated trace, CSV, JSON, profile or report behind (the old file stays intact until the rename).
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace cuboid {

/// Streaming form for outputs too large to build in memory (all-ranks traces). write() appends to the temporary
/// file; commit() flushes, fsyncs and renames it over the path. Destroying an AtomicFile that was not committed
/// (an exception mid-write) removes the temporary file, so the previous file at the path is untouched.
/// Throws InputError naming the path when the file cannot be created, written or renamed.
class AtomicFile {
public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  AtomicFile(AtomicFile&&) = delete;
  AtomicFile& operator=(AtomicFile&&) = delete;

  void write(std::string_view data);
  /// Legal once; after it the file is in place and write() may not be called.
  void commit();
  [[nodiscard]] const std::string& get_path() const { return path_; }

private:
  std::string path_;
  std::string tmp_path_;
  std::FILE* file_ = nullptr;
};

/// Writes `content` to `path` atomically. Throws InputError naming the path if it cannot be written.
void write_file_atomically(const std::string& path, std::string_view content);

} // namespace cuboid

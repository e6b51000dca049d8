// write_file_atomically: temporary file in the same directory, flushed, then renamed (atomic on POSIX).
#include "model/atomic_file.hpp"

#include "model/errors.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

namespace cuboid {

void write_file_atomically(const std::string& path, std::string_view content) {
  const std::string tmp = fmt::format("{}.tmp.{}", path, static_cast<long>(getpid()));
  std::FILE* file = std::fopen(tmp.c_str(), "wb");
  if (file == nullptr) {
    throw InputError(input_message(path, "", fmt::format("cannot write: {}", std::strerror(errno))));
  }
  const std::size_t written = std::fwrite(content.data(), 1, content.size(), file);
  const bool flushed = std::fflush(file) == 0 && fsync(fileno(file)) == 0;
  const bool closed = std::fclose(file) == 0;
  if (written != content.size() || !flushed || !closed) {
    std::filesystem::remove(tmp);
    throw InputError(input_message(path, "", fmt::format("cannot write: {}", std::strerror(errno))));
  }
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  if (error) {
    std::filesystem::remove(tmp);
    throw InputError(input_message(path, "", fmt::format("cannot rename into place: {}", error.message())));
  }
}

} // namespace cuboid

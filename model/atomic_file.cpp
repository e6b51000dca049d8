// AtomicFile and write_file_atomically: temporary file in the same directory, flushed and fsynced, then renamed
// (atomic on POSIX); an uncommitted temporary file is removed.
#include "model/atomic_file.hpp"

#include "model/errors.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

namespace cuboid {

AtomicFile::AtomicFile(std::string path)
    : path_(std::move(path)), tmp_path_(fmt::format("{}.tmp.{}", path_, static_cast<long>(getpid()))) {
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (file_ == nullptr) {
    throw InputError(input_message(path_, "", fmt::format("cannot write: {}", std::strerror(errno))));
  }
}

AtomicFile::~AtomicFile() {
  if (file_ != nullptr) {
    std::fclose(file_);
    std::error_code ignored;
    std::filesystem::remove(tmp_path_, ignored);
  }
}

void AtomicFile::write(std::string_view data) {
  CUBOID_ASSERT(file_ != nullptr, "write to {} after commit", path_);
  if (std::fwrite(data.data(), 1, data.size(), file_) != data.size()) {
    throw InputError(input_message(path_, "", fmt::format("cannot write: {}", std::strerror(errno))));
  }
}

void AtomicFile::commit() {
  CUBOID_ASSERT(file_ != nullptr, "second commit of {}", path_);
  const bool flushed = std::fflush(file_) == 0 && fsync(fileno(file_)) == 0;
  const int flush_errno = errno;
  const bool closed = std::fclose(file_) == 0;
  file_ = nullptr;
  std::error_code error;
  if (!flushed || !closed) {
    std::filesystem::remove(tmp_path_, error);
    throw InputError(
        input_message(path_, "", fmt::format("cannot write: {}", std::strerror(flushed ? errno : flush_errno))));
  }
  std::filesystem::rename(tmp_path_, path_, error);
  if (error) {
    const std::string reason = error.message();
    std::filesystem::remove(tmp_path_, error);
    throw InputError(input_message(path_, "", fmt::format("cannot rename into place: {}", reason)));
  }
}

void write_file_atomically(const std::string& path, std::string_view content) {
  AtomicFile file(path);
  file.write(content);
  file.commit();
}

} // namespace cuboid

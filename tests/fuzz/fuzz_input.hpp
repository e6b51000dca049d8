// Helpers shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp): a private temporary file to hand fuzz bytes to
// the file-based loaders, and a byte reader that turns the input into small (sometimes huge) integers.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace cuboid::fuzz {

/// Writes the input to <private temp dir>/<name> (one directory per process, created on first use) and returns
/// the path, so that loaders taking a path see exactly the fuzz bytes.
inline std::string write_input(const std::uint8_t* data, std::size_t size, const std::string& name) {
  static const std::string dir = [] {
    std::string pattern = (std::filesystem::temp_directory_path() / "cuboid-fuzz-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      std::perror("mkdtemp");
      std::abort();
    }
    return pattern;
  }();
  const std::string path = dir + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  if (!out) {
    std::perror(path.c_str());
    std::abort();
  }
  return path;
}

/// Reads integers from the fuzz input; returns 0 bits once the input is exhausted.
class ByteReader {
public:
  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint64_t bits(int count) {
    std::uint64_t value = 0;
    for (int bit = 0; bit < count; bit += 8) {
      value = (value << 8U) | (pos_ < size_ ? data_[pos_++] : 0U);
    }
    return count >= 64 ? value : value & ((std::uint64_t{1} << static_cast<unsigned>(count)) - 1U);
  }
  /// An integer in [lo, hi].
  std::int64_t in_range(std::int64_t lo, std::int64_t hi) {
    const auto span = static_cast<std::uint64_t>(hi - lo) + 1U;
    return lo + static_cast<std::int64_t>(bits(32) % span);
  }
  /// Mostly small values in [lo, small_hi]; one time in eight a value up to 2^huge_bits (absurd sizes).
  std::int64_t size_like(std::int64_t lo, std::int64_t small_hi, int huge_bits) {
    if (bits(8) % 8 == 0) {
      return static_cast<std::int64_t>(bits(huge_bits));
    }
    return in_range(lo, small_hi);
  }
  bool flag() { return (bits(8) & 1U) != 0; }
  template <typename T, std::size_t N>
  const T& pick(const T (&choices)[N]) {
    return choices[bits(8) % N];
  }

private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

} // namespace cuboid::fuzz

// Tests of the NCCL emulator (nccl_emu.cpp): collectives, p2p, groups, splits and its checks, with ranks as threads
// of this process (ncclCommInitAll, or ncclCommInitRank from several threads) and as forked processes
// (ncclCommInitRank with a unique id made before the fork). Inputs are small integers (or chosen bf16 values) so
// every expected result is exact.
#include "tests/cuda_emu/emu_runtime.hpp"

#include <catch2/catch.hpp>
#include <nccl.h>

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace emu = cuboid::emu;

// Emulated device memory holding `count` elements of T.
template <typename T> class DeviceBuffer {
public:
  explicit DeviceBuffer(std::size_t count) : count_(count), ptr_(static_cast<T*>(emu::allocate_device(bytes()))) {}
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }
  ~DeviceBuffer() { emu::free_device(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  T* get() const { return ptr_; }
  std::size_t bytes() const { return count_ * sizeof(T); }
  void upload(const std::vector<T>& host) { std::memcpy(ptr_, host.data(), host.size() * sizeof(T)); }
  std::vector<T> download() const {
    std::vector<T> host(count_);
    std::memcpy(host.data(), ptr_, bytes());
    return host;
  }

private:
  std::size_t count_;
  T* ptr_;
};

// Runs body(rank, comm) on one thread per rank of an ncclCommInitAll communicator of n ranks.
void on_threads(int n, const std::function<void(int, ncclComm_t)>& body) {
  std::vector<ncclComm_t> comms(static_cast<std::size_t>(n));
  REQUIRE(ncclCommInitAll(comms.data(), n, nullptr) == ncclSuccess);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < n; ++rank) {
    threads.emplace_back(body, rank, comms[static_cast<std::size_t>(rank)]);
  }
  for (auto& thread : threads) {
    thread.join();
  }
  for (auto* comm : comms) {
    REQUIRE(ncclCommDestroy(comm) == ncclSuccess);
  }
}

// Results of a body are checked on the main thread (Catch2 assertions are not thread-safe).
template <typename T> using PerRank = std::vector<std::vector<T>>;

std::uint16_t bf16_bits(float value) { // exact for the values used here (they are bf16 numbers)
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<std::uint16_t>(bits >> 16);
}

float bf16_value(std::uint16_t bits) {
  const std::uint32_t wide = std::uint32_t{bits} << 16;
  float value = 0;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

// Restores CUBOID_EMU_NCCL_TIMEOUT_S when a test that shortens it ends.
class ShortTimeout {
public:
  explicit ShortTimeout(const char* seconds) { setenv("CUBOID_EMU_NCCL_TIMEOUT_S", seconds, 1); }
  ~ShortTimeout() { unsetenv("CUBOID_EMU_NCCL_TIMEOUT_S"); }
  ShortTimeout(const ShortTimeout&) = delete;
  ShortTimeout& operator=(const ShortTimeout&) = delete;
};

} // namespace

TEST_CASE("emu::nccl: all-reduce sum, max, min, prod and avg are exact on small integers", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  // count > one 1 MiB staging slot of floats, so the chunked path runs more than once.
  const std::size_t count = (std::size_t{1} << 18) + 77;
  PerRank<float> sums(4), maxes(4), avgs(4);
  PerRank<double> mins(4);
  PerRank<std::int32_t> prods(4);
  std::vector<ncclResult_t> results(4, ncclInternalError);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    const auto r = static_cast<std::size_t>(rank);
    std::vector<float> host(count);
    std::vector<double> host_d(count);
    std::vector<std::int32_t> host_i(count);
    for (std::size_t idx = 0; idx < count; ++idx) {
      host[idx] = static_cast<float>(rank + static_cast<int>(idx % 13));
      host_d[idx] = static_cast<double>(static_cast<int>(idx % 5) - rank);
      host_i[idx] = (rank + 1) * (idx % 2 == 0 ? 1 : -1);
    }
    DeviceBuffer<float> sum(host), mx(count), avg(host);
    DeviceBuffer<double> mn(host_d);
    DeviceBuffer<std::int32_t> prod(host_i);
    ncclResult_t result = ncclAllReduce(sum.get(), sum.get(), count, ncclFloat, ncclSum, comm, nullptr); // in place
    if (result == ncclSuccess) {
      result = ncclAllReduce(avg.get(), mx.get(), count, ncclFloat, ncclMax, comm, nullptr);
    }
    if (result == ncclSuccess) {
      result = ncclAllReduce(avg.get(), avg.get(), count, ncclFloat, ncclAvg, comm, nullptr);
    }
    if (result == ncclSuccess) {
      result = ncclAllReduce(mn.get(), mn.get(), count, ncclDouble, ncclMin, comm, nullptr);
    }
    if (result == ncclSuccess) {
      result = ncclAllReduce(prod.get(), prod.get(), count, ncclInt32, ncclProd, comm, nullptr);
    }
    results[r] = result;
    sums[r] = sum.download();
    maxes[r] = mx.download();
    avgs[r] = avg.download();
    mins[r] = mn.download();
    prods[r] = prod.download();
  });
  // sum_r (rank + b) = n b + n(n-1)/2; max = b + n - 1; avg = sum / n = b + (n-1)/2 (exact: a multiple of 0.5);
  // min_r (b - rank) = b - (n-1); prod_r ±(rank+1) = ±n! with the sign (-1)^n on odd indices.
  int factorial = 1;
  for (int k = 2; k <= n; ++k) {
    factorial *= k;
  }
  for (std::size_t r = 0; r < static_cast<std::size_t>(n); ++r) {
    REQUIRE(results[r] == ncclSuccess);
    for (std::size_t idx = 0; idx < count; idx += 997) {
      const auto b = static_cast<float>(idx % 13);
      REQUIRE(sums[r][idx] == static_cast<float>(n) * b + static_cast<float>(n * (n - 1) / 2));
      REQUIRE(maxes[r][idx] == b + static_cast<float>(n - 1));
      REQUIRE(avgs[r][idx] == b + static_cast<float>(n - 1) / 2.0f);
      REQUIRE(mins[r][idx] == static_cast<double>(static_cast<int>(idx % 5) - (n - 1)));
      REQUIRE(prods[r][idx] == (idx % 2 == 0 || n % 2 == 0 ? factorial : -factorial));
    }
    REQUIRE(sums[r].back() == sums[0].back());
  }
}

TEST_CASE("emu::nccl: bf16 all-reduce accumulates in fp32 and rounds once to nearest even", "[emu]") {
  // Rank 0 contributes 1, every other rank 2^-8 (half a bf16 ulp at 1). The fp32 sum is 1 + (n-1) 2^-8:
  //  n=2: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> the even one, 1;
  //  n=3: 1 + 2^-7 is a bf16 number (a pairwise bf16 sum would give 1: each step is a tie rounded to 1);
  //  n=4: 1 + 3 2^-8 is a tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even) -> 1 + 2^-6.
  const int n = GENERATE(2, 3, 4);
  const float half_ulp = 1.0f / 256.0f;
  const float expected = n == 2 ? 1.0f : n == 3 ? 1.0f + 2 * half_ulp : 1.0f + 4 * half_ulp;
  PerRank<std::uint16_t> out(4);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    DeviceBuffer<std::uint16_t> buf(std::vector<std::uint16_t>(5, bf16_bits(rank == 0 ? 1.0f : half_ulp)));
    if (ncclAllReduce(buf.get(), buf.get(), 5, ncclBfloat16, ncclSum, comm, nullptr) == ncclSuccess) {
      out[static_cast<std::size_t>(rank)] = buf.download();
    }
  });
  for (std::size_t r = 0; r < static_cast<std::size_t>(n); ++r) {
    REQUIRE(out[r].size() == 5);
    for (const auto bits : out[r]) {
      REQUIRE(bf16_value(bits) == expected);
    }
  }
}

TEST_CASE("emu::nccl: reduce-scatter, all-gather and broadcast", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  const std::size_t count = 1000;
  PerRank<float> scattered(4), scattered_in_place(4);
  PerRank<std::int32_t> gathered(4);
  PerRank<std::uint8_t> gathered_in_place(4);
  PerRank<std::int64_t> broadcast(4);
  std::vector<int> failures(4, 0);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    const auto r = static_cast<std::size_t>(rank);
    const std::size_t total = count * static_cast<std::size_t>(n);
    std::vector<float> host(total);
    for (std::size_t idx = 0; idx < total; ++idx) {
      host[idx] = static_cast<float>(rank + static_cast<int>(idx % 11));
    }
    DeviceBuffer<float> in(host), out(count), in_place(host);
    failures[r] += ncclReduceScatter(in.get(), out.get(), count, ncclFloat, ncclSum, comm, nullptr) != ncclSuccess;
    failures[r] += ncclReduceScatter(in_place.get(), in_place.get() + r * count, count, ncclFloat, ncclSum, comm,
                                     nullptr) != ncclSuccess;
    scattered[r] = out.download();
    const auto whole = in_place.download();
    scattered_in_place[r].assign(whole.begin() + static_cast<std::ptrdiff_t>(r * count),
                                 whole.begin() + static_cast<std::ptrdiff_t>((r + 1) * count));

    DeviceBuffer<std::int32_t> part(std::vector<std::int32_t>{rank, -rank, 7}), all(3 * static_cast<std::size_t>(n));
    failures[r] += ncclAllGather(part.get(), all.get(), 3, ncclInt32, comm, nullptr) != ncclSuccess;
    gathered[r] = all.download();
    DeviceBuffer<std::uint8_t> bytes(2 * static_cast<std::size_t>(n));
    bytes.get()[2 * r] = static_cast<std::uint8_t>(200 + rank);
    bytes.get()[2 * r + 1] = static_cast<std::uint8_t>(rank);
    failures[r] += ncclAllGather(bytes.get() + 2 * r, bytes.get(), 2, ncclUint8, comm, nullptr) != ncclSuccess;
    gathered_in_place[r] = bytes.download();

    // int64 beyond 2^53: exact only if copied, not converted.
    const std::int64_t big = (std::int64_t{1} << 60) + 12345;
    DeviceBuffer<std::int64_t> root_data(std::vector<std::int64_t>(4, rank == n - 1 ? big : 0)), dest(4);
    failures[r] += ncclBroadcast(root_data.get(), dest.get(), 4, ncclInt64, n - 1, comm, nullptr) != ncclSuccess;
    broadcast[r] = dest.download();
  });
  for (int rank = 0; rank < n; ++rank) {
    const auto r = static_cast<std::size_t>(rank);
    REQUIRE(failures[r] == 0);
    // Element j of rank r's block is sum_q (q + (r count + j) % 11) = n ((r count + j) % 11) + n(n-1)/2.
    for (std::size_t idx = 0; idx < count; ++idx) {
      const auto expected = static_cast<float>(n * static_cast<int>((r * count + idx) % 11) + n * (n - 1) / 2);
      REQUIRE(scattered[r][idx] == expected);
      REQUIRE(scattered_in_place[r][idx] == expected);
    }
    for (int peer = 0; peer < n; ++peer) {
      const auto p = static_cast<std::size_t>(peer);
      REQUIRE(gathered[r][3 * p] == peer);
      REQUIRE(gathered[r][3 * p + 1] == -peer);
      REQUIRE(gathered[r][3 * p + 2] == 7);
      REQUIRE(gathered_in_place[r][2 * p] == 200 + peer);
      REQUIRE(gathered_in_place[r][2 * p + 1] == peer);
    }
    REQUIRE(broadcast[r] == std::vector<std::int64_t>(4, (std::int64_t{1} << 60) + 12345));
  }
}

TEST_CASE("emu::nccl: send/recv ring inside a group, and in-order messages between a pair", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  PerRank<double> from_left(4), ordered(4);
  std::vector<ncclResult_t> results(4, ncclInternalError);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    const auto r = static_cast<std::size_t>(rank);
    const int right = (rank + 1) % n;
    const int left = (rank + n - 1) % n;
    DeviceBuffer<double> mine(std::vector<double>(6, 10.0 * rank)), got(6);
    // The recv is issued before the send: the group runs the sends first, so nobody waits for itself.
    ncclGroupStart();
    ncclRecv(got.get(), 6, ncclDouble, left, comm, nullptr);
    ncclSend(mine.get(), 6, ncclDouble, right, comm, nullptr);
    ncclResult_t result = ncclGroupEnd();
    from_left[r] = got.download();
    // Two eager sends to the right, then two receives from the left: they match in issue order.
    DeviceBuffer<double> first(std::vector<double>{1.0 + rank}), second(std::vector<double>{100.0 + rank}), a(1), b(1);
    if (result == ncclSuccess) {
      result = ncclSend(first.get(), 1, ncclDouble, right, comm, nullptr);
    }
    if (result == ncclSuccess) {
      result = ncclSend(second.get(), 1, ncclDouble, right, comm, nullptr);
    }
    if (result == ncclSuccess) {
      result = ncclRecv(a.get(), 1, ncclDouble, left, comm, nullptr);
    }
    if (result == ncclSuccess) {
      result = ncclRecv(b.get(), 1, ncclDouble, left, comm, nullptr);
    }
    ordered[r] = {a.download()[0], b.download()[0]};
    results[r] = result;
  });
  for (int rank = 0; rank < n; ++rank) {
    const auto r = static_cast<std::size_t>(rank);
    const int left = (rank + n - 1) % n;
    REQUIRE(results[r] == ncclSuccess);
    REQUIRE(from_left[r] == std::vector<double>(6, 10.0 * left));
    REQUIRE(ordered[r] == std::vector<double>{1.0 + left, 100.0 + left});
  }
}

TEST_CASE("emu::nccl: split by parity with keys that reverse the order", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  std::vector<int> sizes(4, -1), ranks(4, -1), reduced(4, -1), nulls(4, 0);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    const auto r = static_cast<std::size_t>(rank);
    ncclComm_t sub = nullptr;
    if (ncclCommSplit(comm, rank % 2, -rank, &sub, nullptr) != ncclSuccess || sub == nullptr) {
      return;
    }
    ncclCommCount(sub, &sizes[r]);
    ncclCommUserRank(sub, &ranks[r]);
    DeviceBuffer<std::int32_t> value(std::vector<std::int32_t>{rank});
    if (ncclAllReduce(value.get(), value.get(), 1, ncclInt32, ncclSum, sub, nullptr) == ncclSuccess) {
      reduced[r] = value.download()[0];
    }
    // Rank 0 opts out of a second split: it gets no communicator, the others one of n - 1 ranks.
    ncclComm_t rest = nullptr;
    if (ncclCommSplit(comm, rank == 0 ? NCCL_SPLIT_NOCOLOR : 5, rank, &rest, nullptr) == ncclSuccess) {
      int rest_size = 0;
      if (rest != nullptr) {
        ncclCommCount(rest, &rest_size);
      }
      nulls[r] = rank == 0 ? (rest == nullptr ? 1 : 0) : rest_size;
    }
    ncclCommDestroy(rest);
    ncclCommDestroy(sub);
  });
  for (int rank = 0; rank < n; ++rank) {
    const auto r = static_cast<std::size_t>(rank);
    const int group_size = rank % 2 == 0 ? (n + 1) / 2 : n / 2;
    CHECK(sizes[r] == group_size);
    CHECK(ranks[r] == group_size - 1 - rank / 2); // key -rank: the highest parent rank becomes rank 0
    int parity_sum = 0;
    for (int peer = rank % 2; peer < n; peer += 2) {
      parity_sum += peer;
    }
    CHECK(reduced[r] == parity_sum);
    CHECK(nulls[r] == (rank == 0 ? 1 : n - 1));
  }
}

TEST_CASE("emu::nccl: back-to-back collectives and splits keep every rank in step", "[emu]") {
  // 300 small all-reduces alternating sum and max, with a split every 50: a rank that runs ahead into the next
  // round must not overwrite a call or a slot a slower rank still reads. Round k: sum_r (r + k) = n k + n(n-1)/2,
  // max_r (r + k) = n - 1 + k.
  const int n = GENERATE(2, 3, 4);
  std::vector<int> wrong(4, 0);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    DeviceBuffer<std::int64_t> buf(1);
    for (int round = 0; round < 300; ++round) {
      buf.get()[0] = rank + round;
      const bool sum = round % 2 == 0;
      if (ncclAllReduce(buf.get(), buf.get(), 1, ncclInt64, sum ? ncclSum : ncclMax, comm, nullptr) != ncclSuccess ||
          buf.get()[0] != (sum ? n * round + n * (n - 1) / 2 : n - 1 + round)) {
        ++wrong[static_cast<std::size_t>(rank)];
      }
      if (round % 50 == 49) {
        ncclComm_t sub = nullptr;
        int size = 0;
        if (ncclCommSplit(comm, round % 3 == 0 ? 0 : rank % 2, rank, &sub, nullptr) != ncclSuccess ||
            ncclCommCount(sub, &size) != ncclSuccess ||
            size != (round % 3 == 0  ? n
                     : rank % 2 == 0 ? (n + 1) / 2
                                     : n / 2)) {
          ++wrong[static_cast<std::size_t>(rank)];
        }
        ncclCommDestroy(sub);
      }
    }
  });
  for (std::size_t r = 0; r < static_cast<std::size_t>(n); ++r) {
    CHECK(wrong[r] == 0);
  }
}

TEST_CASE("emu::nccl: mismatched collectives fail with ncclInvalidUsage on every rank", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  std::vector<ncclResult_t> count_mismatch(4), op_mismatch(4), after(4), bad_buffer(4);
  std::vector<float> after_value(4);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    const auto r = static_cast<std::size_t>(rank);
    DeviceBuffer<float> buf(std::vector<float>(16, 1.0f));
    count_mismatch[r] = ncclAllReduce(buf.get(), buf.get(), rank == 0 ? 8 : 16, ncclFloat, ncclSum, comm, nullptr);
    op_mismatch[r] =
        ncclAllReduce(buf.get(), buf.get(), 16, ncclFloat, rank == n - 1 ? ncclMax : ncclSum, comm, nullptr);
    // A host pointer on one rank: every rank fails instead of the others waiting forever.
    std::vector<float> host(16, 1.0f);
    bad_buffer[r] =
        ncclAllReduce(rank == 1 ? host.data() : buf.get(), buf.get(), 16, ncclFloat, ncclSum, comm, nullptr);
    // The communicator is still usable: the buffers were not touched by the failed calls.
    after[r] = ncclAllReduce(buf.get(), buf.get(), 16, ncclFloat, ncclSum, comm, nullptr);
    after_value[r] = buf.download()[15];
  });
  for (std::size_t r = 0; r < static_cast<std::size_t>(n); ++r) {
    CHECK(count_mismatch[r] == ncclInvalidUsage);
    CHECK(op_mismatch[r] == ncclInvalidUsage);
    CHECK(bad_buffer[r] == ncclInvalidArgument);
    CHECK(after[r] == ncclSuccess);
    CHECK(after_value[r] == static_cast<float>(n));
  }
}

TEST_CASE("emu::nccl: a rank that never arrives times out with ncclSystemError", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  const ShortTimeout timeout("0.3");
  std::vector<ncclResult_t> results(4, ncclSuccess), async(4, ncclSuccess), later(4, ncclSuccess);
  on_threads(n, [&](int rank, ncclComm_t comm) {
    const auto r = static_cast<std::size_t>(rank);
    if (rank == n - 1) {
      return; // never calls
    }
    DeviceBuffer<float> buf(4);
    results[r] = ncclAllReduce(buf.get(), buf.get(), 4, ncclFloat, ncclSum, comm, nullptr);
    ncclCommGetAsyncError(comm, &async[r]);
    later[r] = ncclRecv(buf.get(), 4, ncclFloat, n - 1, comm, nullptr); // the communicator stays failed
  });
  for (std::size_t r = 0; r + 1 < static_cast<std::size_t>(n); ++r) {
    CHECK(results[r] == ncclSystemError);
    CHECK(async[r] == ncclSystemError);
    CHECK(later[r] == ncclSystemError);
  }
  // A recv whose sender never sends times out too.
  ncclResult_t recv_result = ncclSuccess;
  on_threads(2, [&](int rank, ncclComm_t comm) {
    if (rank == 1) {
      return;
    }
    DeviceBuffer<float> buf(4);
    recv_result = ncclRecv(buf.get(), 4, ncclFloat, 1, comm, nullptr);
  });
  CHECK(recv_result == ncclSystemError);
}

TEST_CASE("emu::nccl: ncclCommInitRank from threads with one unique id", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  ncclUniqueId id{};
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  std::vector<ncclResult_t> results(4, ncclInternalError);
  std::vector<float> sums(4);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < n; ++rank) {
    // Rank 0 (which creates the shared segment) starts last, so the others wait for it.
    threads.emplace_back([&, rank] {
      if (rank == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      ncclComm_t comm = nullptr;
      ncclResult_t result = ncclCommInitRank(&comm, n, id, rank);
      DeviceBuffer<float> buf(std::vector<float>{static_cast<float>(rank + 1)});
      if (result == ncclSuccess) {
        result = ncclAllReduce(buf.get(), buf.get(), 1, ncclFloat, ncclSum, comm, nullptr);
      }
      sums[static_cast<std::size_t>(rank)] = buf.download()[0];
      results[static_cast<std::size_t>(rank)] = result;
      ncclCommDestroy(comm);
    });
  }
  for (auto& thread : threads) {
    thread.join();
  }
  for (std::size_t r = 0; r < static_cast<std::size_t>(n); ++r) {
    REQUIRE(results[r] == ncclSuccess);
    REQUIRE(sums[r] == static_cast<float>(n * (n + 1) / 2));
  }
  ncclUniqueId foreign{}; // not made by ncclGetUniqueId
  ncclComm_t comm = nullptr;
  CHECK(ncclCommInitRank(&comm, 1, foreign, 0) == ncclInvalidArgument);
  CHECK(ncclCommInitRank(&comm, 2, id, 2) == ncclInvalidArgument);
}

TEST_CASE("emu::nccl: error strings, version and argument checks", "[emu]") {
  CHECK(std::string(ncclGetErrorString(ncclSuccess)) == "no error");
  CHECK(std::string(ncclGetErrorString(ncclInvalidUsage)).rfind("invalid usage", 0) == 0);
  CHECK(std::string(ncclGetErrorString(ncclSystemError)) != ncclGetErrorString(ncclInvalidArgument));
  int version = 0;
  REQUIRE(ncclGetVersion(&version) == ncclSuccess);
  CHECK(version == NCCL_VERSION_CODE);
  CHECK(ncclGroupEnd() == ncclInvalidUsage);
  ncclComm_t comm = nullptr;
  REQUIRE(ncclCommInitAll(&comm, 1, nullptr) == ncclSuccess);
  DeviceBuffer<float> buf(2);
  CHECK(ncclAllReduce(buf.get(), buf.get(), 3, ncclFloat, ncclSum, comm, nullptr) == ncclInvalidArgument); // overrun
  CHECK(ncclAllReduce(buf.get(), buf.get(), 2, ncclFloat16, ncclSum, comm, nullptr) == ncclInvalidArgument);
  CHECK(ncclBroadcast(buf.get(), buf.get(), 2, ncclFloat, 1, comm, nullptr) == ncclInvalidArgument);
  CHECK(ncclSend(buf.get(), 2, ncclFloat, 1, comm, nullptr) == ncclInvalidArgument);
  CHECK(std::string(ncclGetLastError(comm)).find("peer 1") != std::string::npos);
  CHECK(ncclAllReduce(buf.get(), buf.get(), 2, ncclFloat, ncclSum, nullptr, nullptr) == ncclInvalidArgument);
  // One thread driving two ranks' collectives in one group would wait for itself: an error, not a hang.
  std::vector<ncclComm_t> pair(2);
  REQUIRE(ncclCommInitAll(pair.data(), 2, nullptr) == ncclSuccess);
  ncclGroupStart();
  ncclAllReduce(buf.get(), buf.get(), 2, ncclFloat, ncclSum, pair[0], nullptr);
  ncclAllReduce(buf.get(), buf.get(), 2, ncclFloat, ncclSum, pair[1], nullptr);
  CHECK(ncclGroupEnd() == ncclInvalidUsage);
  for (auto* c : pair) {
    ncclCommDestroy(c);
  }
  ncclCommDestroy(comm);
}

namespace {

constexpr int CHILD_KILLED = -1; // the parent killed a child that ran past the deadline

// Forks n children, child `rank` returning body(rank) as its exit code (an exception: 99); returns the exit codes
// (-signal for a child that died of a signal). A child still running after `deadline_s` is killed, so a failing
// child cannot hang the test.
std::vector<int> run_children(int n, const std::function<int(int)>& body, double deadline_s) {
  std::vector<pid_t> pids;
  for (int rank = 0; rank < n; ++rank) {
    const pid_t pid = fork();
    if (pid == 0) {
      int code = 99;
      try {
        code = body(rank);
      } catch (...) {
      }
      _exit(code); // no Catch2 teardown in the child
    }
    pids.push_back(pid);
  }
  std::vector<int> codes(pids.size(), CHILD_KILLED);
  std::vector<bool> done(pids.size(), false);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(deadline_s);
  for (std::size_t left = pids.size(); left > 0;) {
    for (std::size_t idx = 0; idx < pids.size(); ++idx) {
      int status = 0;
      if (done[idx] || pids[idx] <= 0 || waitpid(pids[idx], &status, WNOHANG) != pids[idx]) {
        continue;
      }
      done[idx] = true;
      --left;
      codes[idx] = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    }
    if (left > 0 && std::chrono::steady_clock::now() > deadline) {
      for (std::size_t idx = 0; idx < pids.size(); ++idx) {
        if (!done[idx] && pids[idx] > 0) {
          kill(pids[idx], SIGKILL);
          waitpid(pids[idx], nullptr, 0);
        }
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return codes;
}

// Shared-memory objects this process's unique ids named ("/cuboid_nccl_<pid>_<token>..."), still in /dev/shm.
std::vector<std::string> leftover_segments() {
  std::vector<std::string> names;
  const std::string prefix = "cuboid_nccl_" + std::to_string(getpid()) + "_";
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) {
    return names;
  }
  while (const dirent* entry = readdir(dir)) {
    if (std::string(entry->d_name).rfind(prefix, 0) == 0) {
      names.emplace_back(entry->d_name);
    }
  }
  closedir(dir);
  return names;
}

// One rank of the multi-process run; the exit code says which step failed (0: all results exact).
int process_rank(int rank, int n, const ncclUniqueId& id) {
  ncclComm_t comm = nullptr;
  if (ncclCommInitRank(&comm, n, id, rank) != ncclSuccess) {
    return 10;
  }
  // All-reduce larger than one staging slot: sum_r (r + b) = n b + n(n-1)/2.
  const std::size_t count = (std::size_t{1} << 18) + 5;
  std::vector<float> host(count);
  for (std::size_t idx = 0; idx < count; ++idx) {
    host[idx] = static_cast<float>(rank + static_cast<int>(idx % 13));
  }
  DeviceBuffer<float> sum(host);
  if (ncclAllReduce(sum.get(), sum.get(), count, ncclFloat, ncclSum, comm, nullptr) != ncclSuccess) {
    return 11;
  }
  const auto summed = sum.download();
  for (std::size_t idx = 0; idx < count; ++idx) {
    if (summed[idx] != static_cast<float>(n * static_cast<int>(idx % 13) + n * (n - 1) / 2)) {
      return 12;
    }
  }
  // Ring exchange in a group, recv issued first; 100000 doubles per message.
  const std::size_t msg = 100000;
  DeviceBuffer<double> mine(std::vector<double>(msg, 0.5 * rank)), got(msg);
  ncclGroupStart();
  ncclRecv(got.get(), msg, ncclDouble, (rank + n - 1) % n, comm, nullptr);
  ncclSend(mine.get(), msg, ncclDouble, (rank + 1) % n, comm, nullptr);
  if (ncclGroupEnd() != ncclSuccess) {
    return 13;
  }
  if (got.download() != std::vector<double>(msg, 0.5 * ((rank + n - 1) % n))) {
    return 14;
  }
  // Split by parity, keys reversing the order; an all-gather of the parent ranks in the new order.
  ncclComm_t sub = nullptr;
  if (ncclCommSplit(comm, rank % 2, -rank, &sub, nullptr) != ncclSuccess || sub == nullptr) {
    return 15;
  }
  int sub_size = 0;
  int sub_rank = -1;
  ncclCommCount(sub, &sub_size);
  ncclCommUserRank(sub, &sub_rank);
  const int expected_size = rank % 2 == 0 ? (n + 1) / 2 : n / 2;
  if (sub_size != expected_size || sub_rank != expected_size - 1 - rank / 2) {
    return 16;
  }
  DeviceBuffer<std::int32_t> me(std::vector<std::int32_t>{rank}), all(static_cast<std::size_t>(sub_size));
  if (ncclAllGather(me.get(), all.get(), 1, ncclInt32, sub, nullptr) != ncclSuccess) {
    return 17;
  }
  const auto members = all.download();
  for (int idx = 0; idx < sub_size; ++idx) {
    // New rank idx is the parent rank with the idx-th largest value of that parity.
    const int highest = (n - 1) % 2 == rank % 2 ? n - 1 : n - 2;
    if (members[static_cast<std::size_t>(idx)] != highest - 2 * idx) {
      return 18;
    }
  }
  // Back-to-back small collectives across processes: a rank running ahead must not overwrite a slower one's call.
  DeviceBuffer<std::int32_t> step(1);
  for (int round = 0; round < 200; ++round) {
    step.get()[0] = rank * round;
    if (ncclAllReduce(step.get(), step.get(), 1, ncclInt32, ncclSum, comm, nullptr) != ncclSuccess ||
        step.get()[0] != round * n * (n - 1) / 2) {
      return 20;
    }
  }
  if (ncclCommDestroy(sub) != ncclSuccess || ncclCommDestroy(comm) != ncclSuccess) {
    return 19;
  }
  return 0;
}

} // namespace

TEST_CASE("emu::nccl: ranks as processes (all-reduce, send/recv ring, split)", "[emu]") {
  const int n = GENERATE(2, 3, 4);
  const ShortTimeout timeout("20");
  ncclUniqueId id{};
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess); // made before the fork, as rank 0 would send it over TCP
  const auto codes = run_children(
      n, [&](int rank) { return process_rank(rank, n, id); }, 60.0);
  for (int rank = 0; rank < n; ++rank) {
    INFO("rank " << rank);
    CHECK(codes[static_cast<std::size_t>(rank)] == 0);
  }
  CHECK(leftover_segments().empty());
}

TEST_CASE("emu::nccl: a process that dies does not hang the others", "[emu]") {
  const int n = GENERATE(2, 3);
  const ShortTimeout timeout("1");
  ncclUniqueId id{};
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  const auto codes = run_children(
      n,
      [&](int rank) {
        ncclComm_t comm = nullptr;
        if (ncclCommInitRank(&comm, n, id, rank) != ncclSuccess) {
          return 10;
        }
        if (rank == n - 1) {
          raise(SIGKILL); // dies without a word
        }
        DeviceBuffer<float> buf(std::vector<float>(8, 1.0f));
        const auto start = std::chrono::steady_clock::now();
        if (ncclAllReduce(buf.get(), buf.get(), 8, ncclFloat, ncclSum, comm, nullptr) != ncclSystemError) {
          return 11;
        }
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(comm, &async) != ncclSuccess || async != ncclSystemError) {
          return 12;
        }
        if (std::chrono::steady_clock::now() - start > std::chrono::seconds(30)) {
          return 13;
        }
        ncclCommAbort(comm);
        return 0;
      },
      60.0);
  for (int rank = 0; rank + 1 < n; ++rank) {
    INFO("rank " << rank);
    CHECK(codes[static_cast<std::size_t>(rank)] == 0);
  }
  CHECK(codes[static_cast<std::size_t>(n - 1)] == -SIGKILL);
  CHECK(leftover_segments().empty()); // the name went away once every rank had attached
}

// The shared state of one emulated NCCL communicator (nccl_emu.cpp): a segment holding a header with a
// process-shared robust mutex and condition variable, each rank's posted call, a mailbox per ordered rank pair and a
// staging slot per rank. HeapSegment keeps it in this process's memory (ranks are threads), ShmSegment in a POSIX
// shared-memory object that every rank maps (ranks are processes or threads); the protocol on top is the same.
#pragma once

#include <nccl.h>

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

namespace cuboid::emu::nccl {

constexpr std::size_t SLOT_BYTES = std::size_t{1} << 20; // staging per rank and chunk; a multiple of every dtype size
constexpr std::uint32_t MAILBOX_DEPTH = 64;              // pending messages per ordered rank pair
constexpr std::uint32_t SEGMENT_MAGIC = 0x4e43434cU;     // "NCCL"
constexpr std::size_t REASON_BYTES = 512;
constexpr auto JOIN_POLL = std::chrono::milliseconds(2);

enum class Op : std::int32_t { Init, AllReduce, ReduceScatter, AllGather, Broadcast, Split, SplitCreated };

// The call a rank posts at a barrier. `result` is the rank's local verdict on its own arguments (a bad buffer):
// a barrier returns the first non-success result of any rank, so one rank's bad call fails all of them at once.
struct CallDesc {
  std::uint64_t round = ~std::uint64_t{0};
  std::uint64_t call_index = 0; // user-visible collectives on this communicator before this one
  std::uint64_t count = 0;
  Op op = Op::Init;
  std::int32_t dtype = 0;
  std::int32_t redop = 0;
  std::int32_t root = 0;
  std::int32_t color = 0;
  std::int32_t key = 0;
  std::int32_t result = ncclSuccess;
  std::int32_t data_phase = 0; // a barrier between the chunks of the collective (after its matching barrier)
};

struct Message {
  std::uint64_t token = 0; // heap: the payload's address; shm: unused (the name derives from the pair and seq)
  std::uint64_t count = 0;
  std::int32_t dtype = 0;
  std::int32_t poisoned = 0; // the sender's buffer was invalid: the recv fails too instead of waiting
};

struct Mailbox {
  std::uint64_t head = 0; // messages received
  std::uint64_t tail = 0; // messages sent (also the sequence number of the next one)
  Message ring[MAILBOX_DEPTH];
};

// Start of every segment; the arrays follow at the recorded offsets (computed from nranks by the creator).
struct Header {
  std::uint32_t magic;
  std::uint32_t ready; // set (atomically) once the creator has initialised everything
  std::int32_t nranks;
  std::int32_t attached;
  std::int32_t detached;
  std::int32_t arrived;
  std::uint64_t completed_rounds;
  std::uint64_t total_bytes;
  std::uint64_t calls_offset;   // CallDesc[2][nranks], indexed by round parity (a fast rank may post the next round
                                // while a slow one still reads this one; it cannot get two rounds ahead)
  std::uint64_t verdict_offset; // int32[2]
  std::uint64_t joined_offset;  // int32[nranks]
  std::uint64_t mailbox_offset; // Mailbox[nranks * nranks], [src * nranks + dst]
  std::uint64_t staging_offset; // SLOT_BYTES per rank
  std::int32_t failed;
  char failed_reason[REASON_BYTES];
  pthread_mutex_t mutex;
  pthread_cond_t cond;
};

inline std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Byte offsets of a segment's parts for `nranks` ranks.
struct Layout {
  std::uint64_t calls, verdict, joined, mailbox, staging, total;
};

inline Layout layout_for(int nranks) {
  const auto n = static_cast<std::uint64_t>(nranks);
  Layout layout{};
  layout.calls = align_up(sizeof(Header), 64);
  layout.verdict = align_up(layout.calls + 2 * n * sizeof(CallDesc), 64);
  layout.joined = layout.verdict + 64;
  layout.mailbox = align_up(layout.joined + n * sizeof(std::int32_t), 64);
  layout.staging = align_up(layout.mailbox + n * n * sizeof(Mailbox), 256);
  layout.total = layout.staging + n * SLOT_BYTES;
  return layout;
}

// Initialises a zero-filled segment of layout_for(nranks).total bytes; `ready` is set last.
inline void init_header(void* memory, int nranks) {
  const auto n = static_cast<std::uint64_t>(nranks);
  const Layout layout = layout_for(nranks);
  auto* header = new (memory) Header{};
  header->magic = SEGMENT_MAGIC;
  header->nranks = nranks;
  header->calls_offset = layout.calls;
  header->verdict_offset = layout.verdict;
  header->joined_offset = layout.joined;
  header->mailbox_offset = layout.mailbox;
  header->staging_offset = layout.staging;
  header->total_bytes = layout.total;
  auto* base = static_cast<std::byte*>(memory);
  std::uninitialized_fill_n(reinterpret_cast<CallDesc*>(base + layout.calls), 2 * n, CallDesc{});
  std::uninitialized_fill_n(reinterpret_cast<Mailbox*>(base + layout.mailbox), n * n, Mailbox{});
  pthread_mutexattr_t mutex_attr;
  pthread_mutexattr_init(&mutex_attr);
  pthread_mutexattr_setpshared(&mutex_attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&mutex_attr, PTHREAD_MUTEX_ROBUST); // a peer dying inside a call must not wedge us
  pthread_mutex_init(&header->mutex, &mutex_attr);
  pthread_mutexattr_destroy(&mutex_attr);
  pthread_condattr_t cond_attr;
  pthread_condattr_init(&cond_attr);
  pthread_condattr_setpshared(&cond_attr, PTHREAD_PROCESS_SHARED);
  pthread_condattr_setclock(&cond_attr, CLOCK_MONOTONIC);
  pthread_cond_init(&header->cond, &cond_attr);
  pthread_condattr_destroy(&cond_attr);
  std::atomic_ref<std::uint32_t>(header->ready).store(1, std::memory_order_release);
}

// An error that a call returns: the NCCL code and what to print.
struct EmuError : std::runtime_error {
  ncclResult_t code;
  EmuError(ncclResult_t c, const std::string& what) : std::runtime_error(what), code(c) {}
};

// The memory of one communicator's shared state and how its payloads and child segments are named and found.
class Segment {
public:
  virtual ~Segment() = default;
  Segment() = default;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;

  Header& header() const { return *static_cast<Header*>(base_); }
  CallDesc* calls(std::uint64_t round) const {
    return reinterpret_cast<CallDesc*>(bytes() + header().calls_offset) +
           (round % 2) * static_cast<std::uint64_t>(header().nranks);
  }
  std::int32_t& verdict(std::uint64_t round) const {
    return reinterpret_cast<std::int32_t*>(bytes() + header().verdict_offset)[round % 2];
  }
  std::int32_t& joined(int rank) const {
    return reinterpret_cast<std::int32_t*>(bytes() + header().joined_offset)[rank];
  }
  Mailbox& mailbox(int src, int dst) const {
    return reinterpret_cast<Mailbox*>(bytes() + header().mailbox_offset)[src * header().nranks + dst];
  }
  std::byte* slot(int rank) const {
    return bytes() + header().staging_offset + static_cast<std::uint64_t>(rank) * SLOT_BYTES;
  }
  const std::string& name() const { return name_; }

  /// Stores a message's payload before it is posted; returns Message::token.
  virtual std::uint64_t put_payload(int src, int dst, std::uint64_t seq, const void* data, std::size_t bytes) = 0;
  /// Copies a received payload out and frees it.
  virtual void take_payload(int src, int dst, std::uint64_t seq, std::uint64_t token, void* out, std::size_t bytes) = 0;
  /// Frees the payload of a message that nobody will receive.
  virtual void drop_payload(int src, int dst, std::uint64_t seq, std::uint64_t token) = 0;
  /// A new segment for `nranks` ranks that other ranks find under `name` (open_child) until unlink_child.
  virtual std::shared_ptr<Segment> create_child(const std::string& name, int nranks) = 0;
  virtual std::shared_ptr<Segment> open_child(const std::string& name, double timeout_s) = 0;
  /// Called once every rank has attached: the name is no longer needed to find the segment.
  virtual void unlink_name() = 0;

protected:
  std::byte* bytes() const { return static_cast<std::byte*>(base_); }
  void* base_ = nullptr;
  std::string name_;
};

// Ranks are threads of this process: one Segment object shared by all of them.
class HeapSegment final : public Segment {
public:
  explicit HeapSegment(int nranks, std::string name) {
    name_ = std::move(name);
    const auto bytes = layout_for(nranks).total;
    base_ = std::aligned_alloc(256, bytes);
    if (base_ == nullptr) {
      throw EmuError(ncclSystemError, fmt::format("out of host memory ({} bytes)", bytes));
    }
    std::memset(base_, 0, bytes);
    init_header(base_, nranks);
  }
  ~HeapSegment() override {
    pthread_cond_destroy(&header().cond);
    pthread_mutex_destroy(&header().mutex);
    std::free(base_);
  }
  HeapSegment(const HeapSegment&) = delete;
  HeapSegment& operator=(const HeapSegment&) = delete;

  std::uint64_t put_payload(int, int, std::uint64_t, const void* data, std::size_t bytes) override {
    void* copy = std::malloc(std::max<std::size_t>(bytes, 1));
    if (copy == nullptr) {
      throw EmuError(ncclSystemError, fmt::format("out of host memory ({} bytes)", bytes));
    }
    std::memcpy(copy, data, bytes);
    return reinterpret_cast<std::uint64_t>(copy);
  }
  void take_payload(int, int, std::uint64_t, std::uint64_t token, void* out, std::size_t bytes) override {
    std::memcpy(out, reinterpret_cast<void*>(token), bytes);
    std::free(reinterpret_cast<void*>(token));
  }
  void drop_payload(int, int, std::uint64_t, std::uint64_t token) override {
    std::free(reinterpret_cast<void*>(token));
  }
  // The parent keeps the child findable until every rank of it has attached (unlink_name); the parent outlives
  // that moment because the attaching happens inside ncclCommSplit on the parent.
  std::shared_ptr<Segment> create_child(const std::string& name, int nranks) override {
    auto child = std::make_shared<HeapSegment>(nranks, name);
    child->parent_ = this;
    const std::lock_guard lock(children_mutex_);
    children_[name] = child;
    return child;
  }
  std::shared_ptr<Segment> open_child(const std::string& name, double) override {
    const std::lock_guard lock(children_mutex_);
    const auto it = children_.find(name);
    if (it == children_.end()) {
      throw EmuError(ncclInternalError, fmt::format("no segment {}", name));
    }
    return it->second;
  }
  void unlink_name() override {
    if (parent_ == nullptr) {
      return;
    }
    const std::lock_guard lock(parent_->children_mutex_);
    parent_->children_.erase(name_);
    parent_ = nullptr;
  }

private:
  std::map<std::string, std::shared_ptr<HeapSegment>> children_;
  std::mutex children_mutex_;
  HeapSegment* parent_ = nullptr;
};

inline std::string shm_payload_name(const std::string& segment, int src, int dst, std::uint64_t seq) {
  return fmt::format("{}.p{}.{}.{}", segment, src, dst, seq);
}

// Ranks are processes (or threads) that each map the POSIX shared-memory object `name`.
class ShmSegment final : public Segment {
public:
  static std::shared_ptr<ShmSegment> create(const std::string& name, int nranks) {
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, S_IRUSR | S_IWUSR);
    if (fd < 0) {
      throw EmuError(ncclSystemError, fmt::format("shm_open({}) failed: {}", name, std::strerror(errno)));
    }
    const auto bytes = layout_for(nranks).total;
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      const int err = errno;
      close(fd);
      shm_unlink(name.c_str());
      throw EmuError(ncclSystemError, fmt::format("ftruncate({}, {}) failed: {}", name, bytes, std::strerror(err)));
    }
    auto segment = map(fd, name, bytes);
    init_header(segment->base_, nranks);
    return segment;
  }
  // Waits (polling) until the creator has made and initialised `name`.
  static std::shared_ptr<ShmSegment> open(const std::string& name, double timeout_s) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    for (;;) {
      const int fd = shm_open(name.c_str(), O_RDWR, 0);
      struct stat info {};
      if (fd >= 0 && fstat(fd, &info) == 0 && info.st_size > 0) {
        auto segment = map(fd, name, static_cast<std::size_t>(info.st_size));
        while (std::atomic_ref<std::uint32_t>(segment->header().ready).load(std::memory_order_acquire) == 0) {
          if (std::chrono::steady_clock::now() > deadline) {
            break;
          }
          std::this_thread::sleep_for(JOIN_POLL);
        }
        if (segment->header().ready != 0 && segment->header().magic != SEGMENT_MAGIC) {
          throw EmuError(ncclInvalidUsage, fmt::format("shared memory {} is not an emulated NCCL communicator", name));
        }
        if (segment->header().ready != 0) {
          return segment;
        }
      } else if (fd >= 0) {
        close(fd);
      }
      if (std::chrono::steady_clock::now() > deadline) {
        throw EmuError(ncclSystemError,
                       fmt::format("shared memory {} was not created within {} s (CUBOID_EMU_NCCL_TIMEOUT_S): did "
                                   "rank 0 call ncclCommInitRank with this unique id?",
                                   name, timeout_s));
      }
      std::this_thread::sleep_for(JOIN_POLL);
    }
  }
  ~ShmSegment() override { munmap(base_, size_); }
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  std::uint64_t put_payload(int src, int dst, std::uint64_t seq, const void* data, std::size_t bytes) override {
    const auto name = shm_payload_name(name_, src, dst, seq);
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, S_IRUSR | S_IWUSR);
    if (fd < 0) {
      throw EmuError(ncclSystemError, fmt::format("shm_open({}) failed: {}", name, std::strerror(errno)));
    }
    std::size_t done = 0;
    while (done < bytes) {
      const auto written = write(fd, static_cast<const std::byte*>(data) + done, bytes - done);
      if (written <= 0) {
        const int err = errno;
        close(fd);
        shm_unlink(name.c_str());
        throw EmuError(ncclSystemError, fmt::format("write to {} failed: {}", name, std::strerror(err)));
      }
      done += static_cast<std::size_t>(written);
    }
    close(fd);
    return 0;
  }
  void take_payload(int src, int dst, std::uint64_t seq, std::uint64_t, void* out, std::size_t bytes) override {
    const auto name = shm_payload_name(name_, src, dst, seq);
    const int fd = shm_open(name.c_str(), O_RDONLY, 0);
    if (fd < 0) {
      throw EmuError(ncclSystemError, fmt::format("shm_open({}) failed: {}", name, std::strerror(errno)));
    }
    std::size_t done = 0;
    while (done < bytes) {
      const auto got = pread(fd, static_cast<std::byte*>(out) + done, bytes - done, static_cast<off_t>(done));
      if (got <= 0) {
        break;
      }
      done += static_cast<std::size_t>(got);
    }
    close(fd);
    shm_unlink(name.c_str());
    if (done != bytes) {
      throw EmuError(ncclSystemError, fmt::format("{} holds {} of {} bytes", name, done, bytes));
    }
  }
  void drop_payload(int src, int dst, std::uint64_t seq, std::uint64_t) override {
    shm_unlink(shm_payload_name(name_, src, dst, seq).c_str());
  }
  std::shared_ptr<Segment> create_child(const std::string& name, int nranks) override { return create(name, nranks); }
  std::shared_ptr<Segment> open_child(const std::string& name, double timeout_s) override {
    return open(name, timeout_s);
  }
  void unlink_name() override { shm_unlink(name_.c_str()); }

private:
  ShmSegment(void* base, std::size_t size, std::string name) : size_(size) {
    base_ = base;
    name_ = std::move(name);
  }
  static std::shared_ptr<ShmSegment> map(int fd, const std::string& name, std::size_t bytes) {
    void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int err = errno;
    close(fd);
    if (base == MAP_FAILED) {
      throw EmuError(ncclSystemError, fmt::format("mmap({}) failed: {}", name, std::strerror(err)));
    }
    return std::shared_ptr<ShmSegment>(new ShmSegment(base, bytes, name)); // NOLINT: private constructor
  }
  std::size_t size_ = 0;
};

// Locks the segment's robust mutex; a peer that died holding it marks the communicator failed.
class SegmentLock {
public:
  explicit SegmentLock(Header& header) : header_(header) {
    if (pthread_mutex_lock(&header_.mutex) == EOWNERDEAD) {
      recover();
    }
  }
  ~SegmentLock() { pthread_mutex_unlock(&header_.mutex); }
  SegmentLock(const SegmentLock&) = delete;
  SegmentLock& operator=(const SegmentLock&) = delete;
  // Waits on the condition variable until `deadline`; false on timeout.
  bool wait_until(const timespec& deadline) {
    const int rc = pthread_cond_timedwait(&header_.cond, &header_.mutex, &deadline);
    if (rc == EOWNERDEAD) {
      recover();
    }
    return rc != ETIMEDOUT;
  }

private:
  void recover() {
    pthread_mutex_consistent(&header_.mutex);
    if (header_.failed == 0) {
      header_.failed = 1;
      std::snprintf(header_.failed_reason, REASON_BYTES, "a rank died inside an NCCL call");
    }
  }
  Header& header_;
};

inline void fail_locked(Header& header, const std::string& reason) {
  if (header.failed == 0) {
    header.failed = 1;
    std::snprintf(header.failed_reason, REASON_BYTES, "%s", reason.c_str());
  }
  pthread_cond_broadcast(&header.cond);
}

} // namespace cuboid::emu::nccl

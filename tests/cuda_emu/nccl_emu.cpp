// NCCL emulator (see emu_runtime.hpp): the NCCL 2.28 entry points cuboid calls (exec/cuda/lazy_libs.cpp), run on
// the CPU. Every operation completes in the calling thread when issued (the stream is ignored). A collective blocks
// until every rank of the communicator has issued it, then each rank gets the exact result (reductions in rank order,
// bf16 reduced in fp32 and rounded once to nearest even); sends are eager (copied into the receiver's mailbox), a
// recv blocks until the matching send of that peer, and messages between two ranks match in issue order. Inside
// ncclGroupStart/End the calls are queued and run at the outermost ncclGroupEnd: all sends first, then the rest in
// issue order, so a group of sends and recvs in any order cannot deadlock.
// One implementation serves both transports: a segment (header with a process-shared robust mutex + condition
// variable, the posted call of each rank, a mailbox per ordered rank pair, one staging slot per rank) lives in heap
// memory for ncclCommInitAll (ranks are threads of this process) and in POSIX shared memory for ncclCommInitRank
// (ranks are threads or processes; the name comes from the unique id: random token + pid). Collectives move data in
// chunks of one slot (fixed size, no re-mapping): copy in, barrier, compute from all slots, barrier. A p2p payload is
// its own heap block / shm object, so sends never block (except when MAILBOX_DEPTH messages to one peer are pending).
// The shm names are unlinked as soon as every rank has attached (the mappings keep the memory), so a crashed process
// leaks nothing but the payloads of messages it never received.
// Checks a GPU does not make: every rank of a collective must issue the same op, datatype, count, reduce op and root
// (else ncclInvalidUsage on all ranks, with every rank's call on stderr); buffers must be live emulated device memory
// (ncclInvalidArgument); every wait times out after CUBOID_EMU_NCCL_TIMEOUT_S (default 120) s with ncclSystemError
// naming the ranks that did not arrive, and the communicator stays failed (ncclCommGetAsyncError).
// Not emulated: a thread driving several ranks inside one group (it would wait for itself: detected for collectives,
// an error), non-blocking communicators (config is ignored), fp16/fp8 reductions, user-defined reduce ops.
#include "tests/cuda_emu/emu_runtime.hpp"

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
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace cuboid::emu {
namespace {

constexpr std::size_t SLOT_BYTES = std::size_t{1} << 20; // staging per rank and chunk; a multiple of every dtype size
constexpr std::uint32_t MAILBOX_DEPTH = 64;              // pending messages per ordered rank pair
constexpr std::uint32_t SEGMENT_MAGIC = 0x4e43434cU;     // "NCCL"
constexpr double DEFAULT_TIMEOUT_S = 120.0;
constexpr std::size_t REASON_BYTES = 512;
constexpr char ID_MAGIC[] = "cuboid-emu-nccl";
constexpr auto JOIN_POLL = std::chrono::milliseconds(2);

enum class Op : std::int32_t { Init, AllReduce, ReduceScatter, AllGather, Broadcast, Split, SplitCreated };

const char* op_name(Op op) {
  switch (op) {
  case Op::Init: return "ncclCommInitRank";
  case Op::AllReduce: return "ncclAllReduce";
  case Op::ReduceScatter: return "ncclReduceScatter";
  case Op::AllGather: return "ncclAllGather";
  case Op::Broadcast: return "ncclBroadcast";
  case Op::Split: return "ncclCommSplit";
  case Op::SplitCreated: return "ncclCommSplit (creation of the new communicators)";
  }
  return "?";
}

const char* dtype_name(std::int32_t dtype) {
  static constexpr const char* NAMES[] = {"int8",    "uint8",   "int32",    "uint32",   "int64",      "uint64",
                                          "float16", "float32", "float64",  "bfloat16", "float8e4m3", "float8e5m2"};
  return dtype >= 0 && dtype < ncclNumTypes ? NAMES[dtype] : "invalid datatype";
}

const char* redop_name(std::int32_t op) {
  static constexpr const char* NAMES[] = {"sum", "prod", "max", "min", "avg"};
  return op >= 0 && op < ncclNumOps ? NAMES[op] : "invalid reduce op";
}

std::size_t dtype_bytes(ncclDataType_t dtype) {
  switch (dtype) {
  case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
  case ncclFloat16: case ncclBfloat16: return 2;
  case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
  case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
  default: return 0;
  }
}

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

std::string describe_call(const CallDesc& call) {
  switch (call.op) {
  case Op::AllReduce:
  case Op::ReduceScatter:
    return fmt::format("{}(count {}, {}, {})", op_name(call.op), call.count, dtype_name(call.dtype),
                       redop_name(call.redop));
  case Op::AllGather: return fmt::format("{}(count {}, {})", op_name(call.op), call.count, dtype_name(call.dtype));
  case Op::Broadcast:
    return fmt::format("{}(count {}, {}, root {})", op_name(call.op), call.count, dtype_name(call.dtype), call.root);
  case Op::Split: return fmt::format("{}(color {}, key {})", op_name(call.op), call.color, call.key);
  default: return op_name(call.op);
  }
}

std::string describe(const CallDesc& call) {
  return call.data_phase != 0 ? describe_call(call) + " (data phase)" : describe_call(call);
}

bool same_call(const CallDesc& a, const CallDesc& b) {
  if (a.op != b.op) return false;
  switch (a.op) {
  case Op::AllReduce:
  case Op::ReduceScatter: return a.count == b.count && a.dtype == b.dtype && a.redop == b.redop;
  case Op::AllGather: return a.count == b.count && a.dtype == b.dtype;
  case Op::Broadcast: return a.count == b.count && a.dtype == b.dtype && a.root == b.root;
  default: return true;
  }
}

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
  std::uint64_t calls_offset;    // CallDesc[2][nranks], indexed by round parity (a fast rank may post the next round
                                 // while a slow one still reads this one; it cannot get two rounds ahead)
  std::uint64_t verdict_offset;  // int32[2]
  std::uint64_t joined_offset;   // int32[nranks]
  std::uint64_t mailbox_offset;  // Mailbox[nranks * nranks], [src * nranks + dst]
  std::uint64_t staging_offset;  // SLOT_BYTES per rank
  std::int32_t failed;
  char failed_reason[REASON_BYTES];
  pthread_mutex_t mutex;
  pthread_cond_t cond;
};

std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

// Byte offsets of a segment's parts for `nranks` ranks.
struct Layout {
  std::uint64_t calls, verdict, joined, mailbox, staging, total;
};

Layout layout_for(int nranks) {
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
void init_header(void* memory, int nranks) {
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
  virtual void take_payload(int src, int dst, std::uint64_t seq, std::uint64_t token, void* out,
                            std::size_t bytes) = 0;
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
    if (base_ == nullptr) throw EmuError(ncclSystemError, fmt::format("out of host memory ({} bytes)", bytes));
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
    if (copy == nullptr) throw EmuError(ncclSystemError, fmt::format("out of host memory ({} bytes)", bytes));
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
    if (it == children_.end()) throw EmuError(ncclInternalError, fmt::format("no segment {}", name));
    return it->second;
  }
  void unlink_name() override {
    if (parent_ == nullptr) return;
    const std::lock_guard lock(parent_->children_mutex_);
    parent_->children_.erase(name_);
    parent_ = nullptr;
  }

private:
  std::map<std::string, std::shared_ptr<HeapSegment>> children_;
  std::mutex children_mutex_;
  HeapSegment* parent_ = nullptr;
};

std::string shm_payload_name(const std::string& segment, int src, int dst, std::uint64_t seq) {
  return fmt::format("{}.p{}.{}.{}", segment, src, dst, seq);
}

// Ranks are processes (or threads) that each map the POSIX shared-memory object `name`.
class ShmSegment final : public Segment {
public:
  static std::shared_ptr<ShmSegment> create(const std::string& name, int nranks) {
    const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, S_IRUSR | S_IWUSR);
    if (fd < 0) throw EmuError(ncclSystemError, fmt::format("shm_open({}) failed: {}", name, std::strerror(errno)));
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
          if (std::chrono::steady_clock::now() > deadline) break;
          std::this_thread::sleep_for(JOIN_POLL);
        }
        if (segment->header().ready != 0) return segment;
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
    if (fd < 0) throw EmuError(ncclSystemError, fmt::format("shm_open({}) failed: {}", name, std::strerror(errno)));
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
    if (fd < 0) throw EmuError(ncclSystemError, fmt::format("shm_open({}) failed: {}", name, std::strerror(errno)));
    std::size_t done = 0;
    while (done < bytes) {
      const auto got = pread(fd, static_cast<std::byte*>(out) + done, bytes - done, static_cast<off_t>(done));
      if (got <= 0) break;
      done += static_cast<std::size_t>(got);
    }
    close(fd);
    shm_unlink(name.c_str());
    if (done != bytes) throw EmuError(ncclSystemError, fmt::format("{} holds {} of {} bytes", name, done, bytes));
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
    if (base == MAP_FAILED) throw EmuError(ncclSystemError, fmt::format("mmap({}) failed: {}", name, std::strerror(err)));
    return std::shared_ptr<ShmSegment>(new ShmSegment(base, bytes, name)); // NOLINT: private constructor
  }
  std::size_t size_ = 0;
};

double timeout_from_env() {
  const char* text = std::getenv("CUBOID_EMU_NCCL_TIMEOUT_S");
  if (text == nullptr || *text == '\0') return DEFAULT_TIMEOUT_S;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value > 0)) {
    std::fprintf(stderr, "cuboid NCCL emulator: CUBOID_EMU_NCCL_TIMEOUT_S=\"%s\" is not a positive number of "
                         "seconds; using %g\n", text, DEFAULT_TIMEOUT_S);
    return DEFAULT_TIMEOUT_S;
  }
  return value;
}

timespec deadline_after(double seconds) {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const double whole = std::floor(seconds);
  auto sec = now.tv_sec + static_cast<time_t>(whole);
  auto nsec = now.tv_nsec + static_cast<long>((seconds - whole) * 1e9);
  if (nsec >= 1000000000L) {
    sec += 1;
    nsec -= 1000000000L;
  }
  return timespec{sec, nsec};
}

} // namespace
} // namespace cuboid::emu

using cuboid::emu::CallDesc;
using cuboid::emu::EmuError;
using cuboid::emu::Op;
using cuboid::emu::Segment;

// The opaque communicator of nccl.h: one rank's view of a segment.
struct ncclComm {
  std::shared_ptr<Segment> segment;
  int rank = 0;
  int nranks = 1;
  double timeout_s = cuboid::emu::DEFAULT_TIMEOUT_S;
  std::uint64_t round = 0;       // barriers this rank has entered
  std::uint64_t calls = 0;       // collectives this rank has issued (for messages)
  std::uint64_t splits = 0;      // ncclCommSplit calls (names the children)
  bool failed_seen = false;      // a timeout or a peer's failure was observed: ncclCommGetAsyncError reports it
  std::string last_error;
};

namespace cuboid::emu {
namespace {

// Locks the segment's robust mutex; a peer that died holding it marks the communicator failed.
class SegmentLock {
public:
  explicit SegmentLock(Header& header) : header_(header) {
    if (pthread_mutex_lock(&header_.mutex) == EOWNERDEAD) recover();
  }
  ~SegmentLock() { pthread_mutex_unlock(&header_.mutex); }
  SegmentLock(const SegmentLock&) = delete;
  SegmentLock& operator=(const SegmentLock&) = delete;
  // Waits on the condition variable until `deadline`; false on timeout.
  bool wait_until(const timespec& deadline) {
    const int rc = pthread_cond_timedwait(&header_.cond, &header_.mutex, &deadline);
    if (rc == EOWNERDEAD) recover();
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

void fail_locked(Header& header, const std::string& reason) {
  if (header.failed == 0) {
    header.failed = 1;
    std::snprintf(header.failed_reason, REASON_BYTES, "%s", reason.c_str());
  }
  pthread_cond_broadcast(&header.cond);
}

EmuError failed_error(ncclComm& comm, const Header& header) {
  comm.failed_seen = true;
  return EmuError(ncclSystemError, fmt::format("the communicator has failed: {}", header.failed_reason));
}

// Every rank posts `mine`; returns all ranks' calls once all have arrived. Throws the first non-success result of
// any rank, ncclInvalidUsage when the calls differ, ncclSystemError on timeout or a failed communicator.
std::vector<CallDesc> barrier(ncclComm& comm, CallDesc mine) {
  Segment& segment = *comm.segment;
  Header& header = segment.header();
  const std::uint64_t round = comm.round++;
  mine.round = round;
  mine.call_index = comm.calls;
  SegmentLock lock(header);
  if (header.failed != 0) throw failed_error(comm, header);
  CallDesc* calls = segment.calls(round);
  calls[comm.rank] = mine;
  if (++header.arrived == comm.nranks) {
    header.arrived = 0;
    std::int32_t verdict = ncclSuccess;
    for (int rank = 0; rank < comm.nranks && verdict == ncclSuccess; ++rank) verdict = calls[rank].result;
    if (verdict == ncclSuccess && !std::all_of(calls, calls + comm.nranks,
                                               [&](const CallDesc& c) { return same_call(c, calls[0]); })) {
      verdict = ncclInvalidUsage;
      std::string text = fmt::format("cuboid NCCL emulator: mismatched collective (call {} on a communicator of {} "
                                     "ranks; all ranks return ncclInvalidUsage):",
                                     mine.call_index, comm.nranks);
      for (int rank = 0; rank < comm.nranks; ++rank) text += fmt::format("\n  rank {}: {}", rank, describe(calls[rank]));
      std::fprintf(stderr, "%s\n", text.c_str());
    }
    segment.verdict(round) = verdict;
    header.completed_rounds = round + 1;
    pthread_cond_broadcast(&header.cond);
  } else {
    const timespec deadline = deadline_after(comm.timeout_s);
    while (header.completed_rounds <= round && header.failed == 0) {
      if (!lock.wait_until(deadline) && header.completed_rounds <= round && header.failed == 0) {
        std::string missing;
        for (int rank = 0; rank < comm.nranks; ++rank) {
          if (calls[rank].round != round) missing += fmt::format("{}{}", missing.empty() ? "" : ", ", rank);
        }
        const auto reason = fmt::format("rank(s) {} of {} did not arrive at {} (call {} on this communicator) within "
                                        "{} s (CUBOID_EMU_NCCL_TIMEOUT_S)",
                                        missing, comm.nranks, describe(mine), mine.call_index, comm.timeout_s);
        fail_locked(header, reason);
        comm.failed_seen = true;
        throw EmuError(ncclSystemError, reason);
      }
    }
    if (header.completed_rounds <= round) throw failed_error(comm, header);
  }
  const auto verdict = static_cast<ncclResult_t>(segment.verdict(round));
  std::vector<CallDesc> all(calls, calls + comm.nranks);
  if (verdict == ncclInvalidUsage && mine.result == ncclSuccess) {
    throw EmuError(verdict, fmt::format("{}: the ranks' calls do not match (listed above)", describe(mine)));
  }
  if (verdict != ncclSuccess) {
    std::string culprits;
    for (const CallDesc& call : all) {
      if (call.result != ncclSuccess) {
        culprits += fmt::format("{}{}", culprits.empty() ? "" : ", ", &call - all.data());
      }
    }
    throw EmuError(verdict, fmt::format("{}: invalid arguments on rank(s) {} (see their messages)", describe(mine),
                                        culprits));
  }
  return all;
}

void chunk_barrier(ncclComm& comm, CallDesc call) {
  call.data_phase = 1;
  barrier(comm, call);
}

// ---- reduction: every rank reduces the same slots in rank order, so all get bit-identical results.

float bf16_to_float(std::uint16_t bits) {
  const std::uint32_t wide = std::uint32_t{bits} << 16;
  float value = 0;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

std::uint16_t float_to_bf16(float value) { // round to nearest even; NaN stays a (quiet) NaN
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  if (std::isnan(value)) return static_cast<std::uint16_t>((bits >> 16) | 0x40U);
  bits += 0x7fffU + ((bits >> 16) & 1U);
  return static_cast<std::uint16_t>(bits >> 16);
}

template <typename Acc> Acc combine(Acc a, Acc b, ncclRedOp_t op) {
  switch (op) {
  case ncclProd: return static_cast<Acc>(a * b);
  case ncclMax: return std::max(a, b);
  case ncclMin: return std::min(a, b);
  default: return static_cast<Acc>(a + b); // sum, avg
  }
}

// Elem as stored, Acc as combined (unsigned for the integers, so that overflow wraps as on a GPU). NCCL has no
// 16-bit integer type, so <std::uint16_t, float> unambiguously means bf16 bits reduced in fp32.
template <typename Elem, typename Acc>
void reduce_typed(const std::vector<const std::byte*>& inputs, std::size_t len, ncclRedOp_t op, std::byte* out) {
  const auto load = [](const std::byte* base, std::size_t idx) {
    Elem value{};
    std::memcpy(&value, base + idx * sizeof(Elem), sizeof(Elem));
    if constexpr (std::is_same_v<Elem, std::uint16_t> && std::is_same_v<Acc, float>) return bf16_to_float(value);
    else return static_cast<Acc>(value);
  };
  for (std::size_t idx = 0; idx < len; ++idx) {
    Acc acc = load(inputs[0], idx);
    for (std::size_t rank = 1; rank < inputs.size(); ++rank) acc = combine(acc, load(inputs[rank], idx), op);
    Elem result{};
    if constexpr (std::is_same_v<Elem, std::uint16_t> && std::is_same_v<Acc, float>) {
      result = float_to_bf16(op == ncclAvg ? acc / static_cast<float>(inputs.size()) : acc);
    } else {
      result = static_cast<Elem>(acc); // integers: the wrapped sum, then the (truncating) division of avg
      if (op == ncclAvg) result = static_cast<Elem>(result / static_cast<Elem>(inputs.size()));
    }
    std::memcpy(out + idx * sizeof(Elem), &result, sizeof(Elem));
  }
}

// Signed integer types combine as signed for max/min and as unsigned (wrapping) for sum/prod/avg.
template <typename Signed, typename Unsigned>
void reduce_signed(const std::vector<const std::byte*>& inputs, std::size_t len, ncclRedOp_t op, std::byte* out) {
  if (op != ncclMax && op != ncclMin) reduce_typed<Signed, Unsigned>(inputs, len, op, out);
  else reduce_typed<Signed, Signed>(inputs, len, op, out);
}

bool can_reduce(ncclDataType_t dtype) {
  return dtype != ncclFloat16 && dtype != ncclFloat8e4m3 && dtype != ncclFloat8e5m2 && dtype_bytes(dtype) != 0;
}

void reduce(const std::vector<const std::byte*>& inputs, std::size_t len, ncclDataType_t dtype, ncclRedOp_t op,
            std::byte* out) {
  switch (dtype) {
  case ncclInt8: reduce_signed<std::int8_t, std::uint8_t>(inputs, len, op, out); break;
  case ncclUint8: reduce_typed<std::uint8_t, std::uint8_t>(inputs, len, op, out); break;
  case ncclInt32: reduce_signed<std::int32_t, std::uint32_t>(inputs, len, op, out); break;
  case ncclUint32: reduce_typed<std::uint32_t, std::uint32_t>(inputs, len, op, out); break;
  case ncclInt64: reduce_signed<std::int64_t, std::uint64_t>(inputs, len, op, out); break;
  case ncclUint64: reduce_typed<std::uint64_t, std::uint64_t>(inputs, len, op, out); break;
  case ncclFloat32: reduce_typed<float, float>(inputs, len, op, out); break;
  case ncclFloat64: reduce_typed<double, double>(inputs, len, op, out); break;
  case ncclBfloat16: reduce_typed<std::uint16_t, float>(inputs, len, op, out); break;
  default: throw EmuError(ncclInternalError, "reduce of an unsupported datatype");
  }
}

// ---- argument checks made before a rank posts its call: their verdict travels with the call.

ncclResult_t check_buffer(const void* ptr, std::size_t bytes, const char* what, std::string& detail) {
  try {
    check_device_range(ptr, bytes, what);
    return ncclSuccess;
  } catch (const std::out_of_range& error) {
    detail = error.what();
    return ncclInvalidArgument;
  }
}

struct CollectiveArgs {
  Op op;
  const void* send;
  void* recv;
  std::size_t count; // per-rank count as NCCL's argument (recvcount / sendcount / count)
  ncclDataType_t dtype;
  ncclRedOp_t redop;
  int root;
};

ncclResult_t check_collective(const ncclComm& comm, const CollectiveArgs& args, std::string& detail) {
  const std::size_t elem = dtype_bytes(args.dtype);
  if (elem == 0) {
    detail = fmt::format("datatype {} is not an NCCL datatype", static_cast<int>(args.dtype));
    return ncclInvalidArgument;
  }
  const bool reduces = args.op == Op::AllReduce || args.op == Op::ReduceScatter;
  if (reduces && (args.redop < 0 || args.redop >= ncclNumOps)) {
    detail = fmt::format("reduce op {} is not sum, prod, max, min or avg", static_cast<int>(args.redop));
    return ncclInvalidArgument;
  }
  if (reduces && !can_reduce(args.dtype)) {
    detail = fmt::format("reductions of {} are not emulated", dtype_name(args.dtype));
    return ncclInvalidArgument;
  }
  if (args.op == Op::Broadcast && (args.root < 0 || args.root >= comm.nranks)) {
    detail = fmt::format("root {} is not a rank of a communicator of {}", args.root, comm.nranks);
    return ncclInvalidArgument;
  }
  const auto n = static_cast<std::size_t>(comm.nranks);
  const std::size_t bytes = args.count * elem;
  const std::size_t send_bytes = args.op == Op::ReduceScatter ? bytes * n : bytes;
  const std::size_t recv_bytes = args.op == Op::AllGather ? bytes * n : bytes;
  const bool sends = args.op != Op::Broadcast || args.root == comm.rank;
  ncclResult_t result = sends ? check_buffer(args.send, send_bytes, "sendbuff", detail) : ncclSuccess;
  return result == ncclSuccess ? check_buffer(args.recv, recv_bytes, "recvbuff", detail) : result;
}

// Runs a collective in chunks of one staging slot per rank.
void run_collective(ncclComm& comm, const CollectiveArgs& args) {
  std::string detail;
  CallDesc mine;
  mine.op = args.op;
  mine.dtype = args.dtype;
  mine.count = args.count;
  mine.redop = args.redop;
  mine.root = args.root;
  mine.result = check_collective(comm, args, detail);
  if (mine.result != ncclSuccess) {
    std::fprintf(stderr, "cuboid NCCL emulator: rank %d: %s: %s\n", comm.rank, describe(mine).c_str(),
                 detail.c_str());
  }
  barrier(comm, mine); // all ranks' calls match and are valid from here on
  ++comm.calls;
  Segment& segment = *comm.segment;
  const auto n = static_cast<std::size_t>(comm.nranks);
  const auto me = static_cast<std::size_t>(comm.rank);
  const std::size_t elem = dtype_bytes(args.dtype);
  const auto* send = static_cast<const std::byte*>(args.send);
  auto* recv = static_cast<std::byte*>(args.recv);
  const std::size_t chunk = args.op == Op::ReduceScatter ? SLOT_BYTES / (n * elem) : SLOT_BYTES / elem;
  std::vector<const std::byte*> slots(n);
  for (std::size_t rank = 0; rank < n; ++rank) slots[rank] = segment.slot(static_cast<int>(rank));
  for (std::size_t first = 0; first < args.count; first += chunk) {
    const std::size_t len = std::min(chunk, args.count - first);
    const std::size_t len_bytes = len * elem;
    std::byte* my_slot = segment.slot(comm.rank);
    switch (args.op) { // copy in
    case Op::ReduceScatter:
      for (std::size_t dst = 0; dst < n; ++dst) {
        std::memcpy(my_slot + dst * len_bytes, send + (dst * args.count + first) * elem, len_bytes);
      }
      break;
    case Op::Broadcast:
      if (comm.rank == args.root) std::memcpy(my_slot, send + first * elem, len_bytes);
      break;
    default: std::memcpy(my_slot, send + first * elem, len_bytes); break;
    }
    chunk_barrier(comm, mine);
    switch (args.op) { // compute and copy out
    case Op::AllReduce: reduce(slots, len, args.dtype, args.redop, recv + first * elem); break;
    case Op::ReduceScatter: {
      std::vector<const std::byte*> pieces(n);
      for (std::size_t rank = 0; rank < n; ++rank) pieces[rank] = slots[rank] + me * len_bytes;
      reduce(pieces, len, args.dtype, args.redop, recv + first * elem);
      break;
    }
    case Op::AllGather:
      for (std::size_t rank = 0; rank < n; ++rank) {
        std::memcpy(recv + (rank * args.count + first) * elem, slots[rank], len_bytes);
      }
      break;
    case Op::Broadcast:
      std::memcpy(recv + first * elem, slots[static_cast<std::size_t>(args.root)], len_bytes);
      break;
    default: break;
    }
    chunk_barrier(comm, mine); // nobody refills a slot before everyone has read it
  }
}

// ---- point to point

void post_send(ncclComm& comm, const void* data, std::size_t count, ncclDataType_t dtype, int peer) {
  const std::size_t elem = dtype_bytes(dtype);
  if (elem == 0) throw EmuError(ncclInvalidArgument, fmt::format("ncclSend: datatype {} invalid", static_cast<int>(dtype)));
  if (peer < 0 || peer >= comm.nranks) {
    throw EmuError(ncclInvalidArgument, fmt::format("ncclSend: peer {} of {} ranks", peer, comm.nranks));
  }
  std::string detail;
  const ncclResult_t valid = check_buffer(data, count * elem, "ncclSend sendbuff", detail);
  Segment& segment = *comm.segment;
  Header& header = segment.header();
  Mailbox& box = segment.mailbox(comm.rank, peer);
  SegmentLock lock(header);
  if (header.failed != 0) throw failed_error(comm, header);
  const timespec deadline = deadline_after(comm.timeout_s);
  while (box.tail - box.head >= MAILBOX_DEPTH && header.failed == 0) {
    if (!lock.wait_until(deadline) && box.tail - box.head >= MAILBOX_DEPTH) {
      const auto reason = fmt::format("ncclSend from rank {} to {}: {} messages pending, none received within {} s",
                                      comm.rank, peer, MAILBOX_DEPTH, comm.timeout_s);
      fail_locked(header, reason);
      comm.failed_seen = true;
      throw EmuError(ncclSystemError, reason);
    }
  }
  if (header.failed != 0) throw failed_error(comm, header);
  Message message;
  message.count = count;
  message.dtype = dtype;
  message.poisoned = valid != ncclSuccess ? 1 : 0;
  if (valid == ncclSuccess) message.token = segment.put_payload(comm.rank, peer, box.tail, data, count * elem);
  box.ring[box.tail % MAILBOX_DEPTH] = message;
  ++box.tail;
  pthread_cond_broadcast(&header.cond);
  if (valid != ncclSuccess) throw EmuError(valid, fmt::format("ncclSend to {}: {}", peer, detail));
}

void receive(ncclComm& comm, void* data, std::size_t count, ncclDataType_t dtype, int peer) {
  const std::size_t elem = dtype_bytes(dtype);
  if (elem == 0) throw EmuError(ncclInvalidArgument, fmt::format("ncclRecv: datatype {} invalid", static_cast<int>(dtype)));
  if (peer < 0 || peer >= comm.nranks) {
    throw EmuError(ncclInvalidArgument, fmt::format("ncclRecv: peer {} of {} ranks", peer, comm.nranks));
  }
  std::string detail;
  const ncclResult_t valid = check_buffer(data, count * elem, "ncclRecv recvbuff", detail);
  Segment& segment = *comm.segment;
  Header& header = segment.header();
  Mailbox& box = segment.mailbox(peer, comm.rank);
  Message message;
  std::uint64_t seq = 0;
  {
    SegmentLock lock(header);
    if (header.failed != 0) throw failed_error(comm, header);
    const timespec deadline = deadline_after(comm.timeout_s);
    while (box.tail == box.head && header.failed == 0) {
      if (!lock.wait_until(deadline) && box.tail == box.head) {
        const auto reason = fmt::format("ncclRecv on rank {} of {}: rank {} sent nothing within {} s "
                                        "(CUBOID_EMU_NCCL_TIMEOUT_S; count {}, {})",
                                        comm.rank, comm.nranks, peer, comm.timeout_s, count, dtype_name(dtype));
        fail_locked(header, reason);
        comm.failed_seen = true;
        throw EmuError(ncclSystemError, reason);
      }
    }
    if (box.tail == box.head) throw failed_error(comm, header);
    seq = box.head;
    message = box.ring[seq % MAILBOX_DEPTH];
    ++box.head;
    pthread_cond_broadcast(&header.cond); // a sender may wait for room
  }
  const bool same = message.count * dtype_bytes(static_cast<ncclDataType_t>(message.dtype)) == count * elem;
  if (message.poisoned != 0 || valid != ncclSuccess || !same) {
    if (message.poisoned == 0) segment.drop_payload(peer, comm.rank, seq, message.token);
    if (message.poisoned != 0) throw EmuError(ncclInvalidArgument, fmt::format("rank {}'s matching ncclSend had an "
                                                                               "invalid buffer", peer));
    if (valid != ncclSuccess) throw EmuError(valid, fmt::format("ncclRecv from {}: {}", peer, detail));
    throw EmuError(ncclInvalidUsage,
                   fmt::format("ncclRecv(count {}, {}) on rank {} matched ncclSend(count {}, {}) of rank {} (message "
                               "{} between them): sizes differ",
                               count, dtype_name(dtype), comm.rank, message.count, dtype_name(message.dtype), peer,
                               seq));
  }
  segment.take_payload(peer, comm.rank, seq, message.token, data, count * elem);
}

// ---- communicators

ncclComm* attach(std::shared_ptr<Segment> segment, int rank, double timeout_s) {
  auto comm = std::make_unique<ncclComm>();
  comm->nranks = segment->header().nranks;
  comm->segment = std::move(segment);
  comm->rank = rank;
  comm->timeout_s = timeout_s;
  Header& header = comm->segment->header();
  SegmentLock lock(header);
  if (comm->segment->joined(rank) != 0) {
    throw EmuError(ncclInvalidUsage, fmt::format("rank {} joined communicator {} twice", rank,
                                                 comm->segment->name()));
  }
  comm->segment->joined(rank) = 1;
  if (++header.attached == header.nranks) comm->segment->unlink_name(); // every rank has it mapped
  return comm.release();
}

void detach(ncclComm* comm) {
  const std::unique_ptr<ncclComm> owned(comm);
  Segment& segment = *comm->segment;
  Header& header = segment.header();
  SegmentLock lock(header);
  if (++header.detached < header.nranks) return;
  for (int src = 0; src < header.nranks; ++src) { // last one out: free what nobody received
    for (int dst = 0; dst < header.nranks; ++dst) {
      Mailbox& box = segment.mailbox(src, dst);
      for (; box.head < box.tail; ++box.head) {
        const Message& message = box.ring[box.head % MAILBOX_DEPTH];
        if (message.poisoned == 0) segment.drop_payload(src, dst, box.head, message.token);
      }
    }
  }
}

std::string segment_name_from_id(const ncclUniqueId& id) {
  const char* token = id.internal + sizeof(ID_MAGIC);
  return fmt::format("/cuboid_nccl_{}", std::string(token, strnlen(token, NCCL_UNIQUE_ID_BYTES - sizeof(ID_MAGIC))));
}

std::uint64_t fnv1a(const std::string& text) {
  std::uint64_t hash = 0xcbf29ce484222325ULL;
  for (const char c : text) hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  return hash;
}

ncclComm* split(ncclComm& parent, int color, int key, double timeout_s) {
  CallDesc mine;
  mine.op = Op::Split;
  mine.color = color;
  mine.key = key;
  if (color < 0 && color != NCCL_SPLIT_NOCOLOR) {
    std::fprintf(stderr, "cuboid NCCL emulator: rank %d: ncclCommSplit color %d is neither >= 0 nor "
                         "NCCL_SPLIT_NOCOLOR\n", parent.rank, color);
    mine.result = ncclInvalidArgument;
  }
  const auto calls = barrier(parent, mine);
  const std::uint64_t split_index = parent.splits++;
  std::vector<int> members; // parent ranks of my color, ordered by key then parent rank
  for (int rank = 0; rank < parent.nranks; ++rank) {
    if (color != NCCL_SPLIT_NOCOLOR && calls[static_cast<std::size_t>(rank)].color == color) members.push_back(rank);
  }
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
    return calls[static_cast<std::size_t>(a)].key < calls[static_cast<std::size_t>(b)].key;
  });
  const auto new_rank = static_cast<int>(std::find(members.begin(), members.end(), parent.rank) - members.begin());
  const std::string root_name = parent.segment->name().substr(0, parent.segment->name().find('.'));
  const std::string name = fmt::format("{}.{:016x}", root_name,
                                       fnv1a(fmt::format("{}/{}/{}", parent.segment->name(), split_index, color)));
  std::shared_ptr<Segment> child;
  CallDesc created;
  created.op = Op::SplitCreated;
  if (!members.empty() && new_rank == 0) {
    try {
      child = parent.segment->create_child(name, static_cast<int>(members.size()));
    } catch (const EmuError& error) {
      std::fprintf(stderr, "cuboid NCCL emulator: rank %d: ncclCommSplit: %s\n", parent.rank, error.what());
      created.result = error.code;
    }
  }
  try {
    barrier(parent, created); // every new communicator exists from here on
  } catch (const EmuError&) {
    if (child != nullptr) child->unlink_name();
    throw;
  }
  if (members.empty()) return nullptr;
  if (child == nullptr) child = parent.segment->open_child(name, timeout_s);
  return attach(std::move(child), new_rank, timeout_s);
}

// ---- groups: per thread, as in NCCL.

struct GroupState {
  int depth = 0;
  std::vector<std::function<void()>> sends;
  std::vector<std::function<void()>> others;
  std::vector<const ncclComm*> collective_comms;
};

GroupState& group() {
  thread_local GroupState state; // NOLINT: NCCL's group nesting is per thread by definition
  return state;
}

thread_local std::string thread_last_error; // NOLINT: ncclGetLastError(nullptr) reports the thread's last error

ncclResult_t report(ncclComm* comm, const char* call, const EmuError& error) {
  const auto text = fmt::format("cuboid NCCL emulator: {}{}: {}", call,
                                comm != nullptr ? fmt::format(" (rank {} of {})", comm->rank, comm->nranks) : "",
                                error.what());
  std::fprintf(stderr, "%s\n", text.c_str());
  thread_last_error = text;
  if (comm != nullptr) comm->last_error = text;
  return error.code;
}

// Runs `body` now, or queues it when inside a group (then its error is reported by ncclGroupEnd).
ncclResult_t issue(ncclComm* comm, const char* call, bool is_send, bool is_collective, std::function<void()> body) {
  if (comm == nullptr) return report(nullptr, call, EmuError(ncclInvalidArgument, "comm is null"));
  GroupState& state = group();
  if (state.depth > 0) {
    if (is_collective) state.collective_comms.push_back(comm);
    auto wrapped = [comm, call, body = std::move(body)] {
      try {
        body();
      } catch (const EmuError& error) {
        report(comm, call, error);
        throw;
      }
    };
    (is_send ? state.sends : state.others).push_back(std::move(wrapped));
    return ncclSuccess;
  }
  try {
    body();
    return ncclSuccess;
  } catch (const EmuError& error) {
    return report(comm, call, error);
  }
}

ncclResult_t collective(const CollectiveArgs& args, ncclComm* comm, const char* call) {
  return issue(comm, call, false, true, [comm, args] { run_collective(*comm, args); });
}

} // namespace
} // namespace cuboid::emu

using cuboid::emu::CollectiveArgs;

// ---- the NCCL API (nccl.h declares these extern "C")

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
  case ncclSuccess: return "no error";
  case ncclUnhandledCudaError: return "unhandled cuda error (the emulator's message on stderr says more)";
  case ncclSystemError: return "unhandled system error (the emulator's message on stderr says more)";
  case ncclInternalError: return "internal error - please report this issue to the cuboid developers";
  case ncclInvalidArgument: return "invalid argument (the emulator's message on stderr says more)";
  case ncclInvalidUsage: return "invalid usage (the emulator's message on stderr says more)";
  case ncclRemoteError: return "remote process exited or there was a network error";
  case ncclInProgress: return "NCCL operation in progress";
  default: return "unknown result code";
  }
}

const char* ncclGetLastError(ncclComm_t comm) {
  return comm != nullptr ? comm->last_error.c_str() : cuboid::emu::thread_last_error.c_str();
}

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* unique_id) {
  if (unique_id == nullptr) return ncclInvalidArgument;
  std::random_device entropy;
  const std::uint64_t token = (std::uint64_t{entropy()} << 32) ^ entropy();
  *unique_id = ncclUniqueId{};
  std::memcpy(unique_id->internal, cuboid::emu::ID_MAGIC, sizeof(cuboid::emu::ID_MAGIC));
  const auto text = fmt::format("{}_{:016x}", static_cast<long>(getpid()), token);
  std::memcpy(unique_id->internal + sizeof(cuboid::emu::ID_MAGIC), text.c_str(), text.size() + 1);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId comm_id, int rank) {
  using namespace cuboid::emu;
  try {
    if (comm == nullptr) throw EmuError(ncclInvalidArgument, "comm is null");
    *comm = nullptr;
    if (nranks < 1 || rank < 0 || rank >= nranks) {
      throw EmuError(ncclInvalidArgument, fmt::format("rank {} of nranks {} is not in [0, nranks)", rank, nranks));
    }
    if (std::memcmp(comm_id.internal, ID_MAGIC, sizeof(ID_MAGIC)) != 0) {
      throw EmuError(ncclInvalidArgument, "the unique id was not made by (this emulator's) ncclGetUniqueId");
    }
    const double timeout_s = timeout_from_env();
    const auto name = segment_name_from_id(comm_id);
    std::shared_ptr<Segment> segment;
    if (rank == 0) segment = ShmSegment::create(name, nranks);
    else segment = ShmSegment::open(name, timeout_s);
    if (segment->header().nranks != nranks) {
      throw EmuError(ncclInvalidUsage, fmt::format("rank {} called ncclCommInitRank with nranks {}, rank 0 with {}",
                                                   rank, nranks, segment->header().nranks));
    }
    std::unique_ptr<ncclComm> mine(attach(segment, rank, timeout_s));
    CallDesc init;
    init.op = Op::Init;
    try {
      barrier(*mine, init); // NCCL's init returns once every rank has joined
    } catch (const EmuError&) {
      segment->unlink_name(); // not every rank attached: nobody else will remove the name
      throw;
    }
    *comm = mine.release();
    return ncclSuccess;
  } catch (const EmuError& error) {
    return report(nullptr, "ncclCommInitRank", error);
  }
}

ncclResult_t ncclCommInitAll(ncclComm_t* comm, int ndev, const int* devlist) {
  using namespace cuboid::emu;
  try {
    if (comm == nullptr || ndev < 1) throw EmuError(ncclInvalidArgument, fmt::format("ndev {} or comm null", ndev));
    if (devlist != nullptr) {
      std::vector<int> devices(devlist, devlist + ndev);
      std::sort(devices.begin(), devices.end());
      if (std::adjacent_find(devices.begin(), devices.end()) != devices.end()) {
        throw EmuError(ncclInvalidUsage, "devlist names a device twice");
      }
    }
    ncclUniqueId id{};
    ncclGetUniqueId(&id);
    const auto segment = std::make_shared<HeapSegment>(ndev, segment_name_from_id(id));
    const double timeout_s = timeout_from_env();
    for (int rank = 0; rank < ndev; ++rank) comm[rank] = attach(segment, rank, timeout_s);
    return ncclSuccess;
  } catch (const EmuError& error) {
    return report(nullptr, "ncclCommInitAll", error);
  }
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  static_cast<void>(config); // blocking communicators only
  if (newcomm == nullptr) {
    return cuboid::emu::report(comm, "ncclCommSplit", EmuError(ncclInvalidArgument, "newcomm is null"));
  }
  *newcomm = nullptr;
  return cuboid::emu::issue(comm, "ncclCommSplit", false, true, [comm, color, key, newcomm] {
    *newcomm = cuboid::emu::split(*comm, color, key, comm->timeout_s);
  });
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  cuboid::emu::detach(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) return ncclSuccess;
  {
    cuboid::emu::Header& header = comm->segment->header();
    const cuboid::emu::SegmentLock lock(header);
    cuboid::emu::fail_locked(header, fmt::format("rank {} called ncclCommAbort", comm->rank));
  }
  cuboid::emu::detach(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (comm == nullptr || count == nullptr) return ncclInvalidArgument;
  *count = comm->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (comm == nullptr || rank == nullptr) return ncclInvalidArgument;
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (comm == nullptr || async_error == nullptr) return ncclInvalidArgument;
  cuboid::emu::Header& header = comm->segment->header();
  const cuboid::emu::SegmentLock lock(header);
  *async_error = comm->failed_seen || header.failed != 0 ? ncclSystemError : ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return cuboid::emu::collective({Op::AllReduce, sendbuff, recvbuff, count, datatype, op, 0}, comm, "ncclAllReduce");
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return cuboid::emu::collective({Op::ReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, 0}, comm,
                                 "ncclReduceScatter");
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return cuboid::emu::collective({Op::AllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0}, comm,
                                 "ncclAllGather");
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return cuboid::emu::collective({Op::Broadcast, sendbuff, recvbuff, count, datatype, ncclSum, root}, comm,
                                 "ncclBroadcast");
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  static_cast<void>(stream);
  return cuboid::emu::issue(comm, "ncclSend", true, false,
                            [=] { cuboid::emu::post_send(*comm, sendbuff, count, datatype, peer); });
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  static_cast<void>(stream);
  return cuboid::emu::issue(comm, "ncclRecv", false, false,
                            [=] { cuboid::emu::receive(*comm, recvbuff, count, datatype, peer); });
}

ncclResult_t ncclGroupStart() {
  ++cuboid::emu::group().depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  using namespace cuboid::emu;
  GroupState& state = group();
  if (state.depth == 0) {
    return report(nullptr, "ncclGroupEnd", EmuError(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart"));
  }
  if (--state.depth > 0) return ncclSuccess;
  GroupState work = std::move(state);
  state = GroupState{};
  std::vector<const ncclComm*> comms = work.collective_comms;
  std::sort(comms.begin(), comms.end(), [](const ncclComm* a, const ncclComm* b) {
    return a->segment->name() < b->segment->name() || (a->segment->name() == b->segment->name() && a < b);
  });
  comms.erase(std::unique(comms.begin(), comms.end()), comms.end());
  for (std::size_t idx = 1; idx < comms.size(); ++idx) {
    if (comms[idx]->segment->name() == comms[idx - 1]->segment->name()) {
      return report(nullptr, "ncclGroupEnd",
                    EmuError(ncclInvalidUsage, "one thread issued collectives of several ranks of one communicator "
                                               "in a group: the emulator runs each call synchronously, so use one "
                                               "thread per rank"));
    }
  }
  ncclResult_t first_error = ncclSuccess;
  for (auto* list : {&work.sends, &work.others}) {
    for (auto& body : *list) {
      try {
        body();
      } catch (const EmuError& error) {
        if (first_error == ncclSuccess) first_error = error.code;
      }
    }
  }
  return first_error;
}

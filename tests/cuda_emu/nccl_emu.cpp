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
// (ranks are threads or processes; the name comes from the unique id: random token + pid). Sizing: the segment is
// fixed at creation (SLOT_BYTES = 1 MiB per rank plus n^2 mailboxes), never re-mapped; collectives of any size move
// in chunks of one slot: copy in, barrier, compute from all slots, barrier. A p2p payload is its own heap block / shm
// object, so sends never block (except when MAILBOX_DEPTH = 64 messages to one peer are pending).
// The shm names are unlinked as soon as every rank has attached (the mappings keep the memory), so a crashed process
// leaks nothing but the payloads of messages it never received.
// Checks a GPU does not make: every rank of a collective must issue the same op, datatype, count, reduce op and root
// (else ncclInvalidUsage on all ranks, with every rank's call on stderr); a recv must match its send's size (else
// ncclInvalidUsage on the receiver); buffers must be live emulated device memory (ncclInvalidArgument, on all ranks
// of a collective); every wait times out after CUBOID_EMU_NCCL_TIMEOUT_S (default 120) s with ncclSystemError
// naming the ranks that did not arrive, and the communicator stays failed (ncclCommGetAsyncError).
// Not emulated: a thread driving several ranks' collectives or inits inside one group (it would wait for itself:
// collectives are detected, an error; inits time out), ncclCommInitAll communicators shared across fork(),
// non-blocking communicators (config is ignored), fp16/fp8 reductions, user-defined reduce ops.
#include "tests/cuda_emu/emu_runtime.hpp"
#include "tests/cuda_emu/nccl_emu_reduce.hpp"
#include "tests/cuda_emu/nccl_emu_segment.hpp"

#include <nccl.h>

#include <pthread.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace cuboid::emu::nccl {
namespace {

constexpr double DEFAULT_TIMEOUT_S = 120.0;
constexpr char ID_MAGIC[] = "cuboid-emu-nccl";

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
  static constexpr const char* NAMES[] = {"int8",    "uint8",   "int32",   "uint32",   "int64",      "uint64",
                                          "float16", "float32", "float64", "bfloat16", "float8e4m3", "float8e5m2"};
  return dtype >= 0 && dtype < ncclNumTypes ? NAMES[dtype] : "invalid datatype";
}

const char* redop_name(std::int32_t op) {
  static constexpr const char* NAMES[] = {"sum", "prod", "max", "min", "avg"};
  return op >= 0 && op < ncclNumOps ? NAMES[op] : "invalid reduce op";
}

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
  if (a.op != b.op) {
    return false;
  }
  switch (a.op) {
  case Op::AllReduce:
  case Op::ReduceScatter: return a.count == b.count && a.dtype == b.dtype && a.redop == b.redop;
  case Op::AllGather: return a.count == b.count && a.dtype == b.dtype;
  case Op::Broadcast: return a.count == b.count && a.dtype == b.dtype && a.root == b.root;
  default: return true;
  }
}

double timeout_from_env() {
  const char* text = std::getenv("CUBOID_EMU_NCCL_TIMEOUT_S");
  if (text == nullptr || *text == '\0') {
    return DEFAULT_TIMEOUT_S;
  }
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value > 0)) {
    std::fprintf(stderr,
                 "cuboid NCCL emulator: CUBOID_EMU_NCCL_TIMEOUT_S=\"%s\" is not a positive number of "
                 "seconds; using %g\n",
                 text, DEFAULT_TIMEOUT_S);
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
} // namespace cuboid::emu::nccl

using cuboid::emu::nccl::CallDesc;
using cuboid::emu::nccl::EmuError;
using cuboid::emu::nccl::Op;
using cuboid::emu::nccl::Segment;

// The opaque communicator of nccl.h: one rank's view of a segment.
struct ncclComm {
  std::shared_ptr<Segment> segment;
  int rank = 0;
  int nranks = 1;
  double timeout_s = cuboid::emu::nccl::DEFAULT_TIMEOUT_S;
  std::uint64_t round = 0;  // barriers this rank has entered
  std::uint64_t calls = 0;  // collectives this rank has issued (for messages)
  std::uint64_t splits = 0; // ncclCommSplit calls (names the children)
  bool failed_seen = false; // a timeout or a peer's failure was observed: ncclCommGetAsyncError reports it
  std::string last_error;
};

namespace cuboid::emu::nccl {
namespace {

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
  if (header.failed != 0) {
    throw failed_error(comm, header);
  }
  CallDesc* calls = segment.calls(round);
  calls[comm.rank] = mine;
  if (++header.arrived == comm.nranks) {
    header.arrived = 0;
    std::int32_t verdict = ncclSuccess;
    for (int rank = 0; rank < comm.nranks && verdict == ncclSuccess; ++rank) {
      verdict = calls[rank].result;
    }
    if (verdict == ncclSuccess &&
        !std::all_of(calls, calls + comm.nranks, [&](const CallDesc& c) { return same_call(c, calls[0]); })) {
      verdict = ncclInvalidUsage;
      std::string text = fmt::format("cuboid NCCL emulator: mismatched collective (call {} on a communicator of {} "
                                     "ranks; all ranks return ncclInvalidUsage):",
                                     mine.call_index, comm.nranks);
      for (int rank = 0; rank < comm.nranks; ++rank) {
        text += fmt::format("\n  rank {}: {}", rank, describe(calls[rank]));
      }
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
          if (calls[rank].round != round) {
            missing += fmt::format("{}{}", missing.empty() ? "" : ", ", rank);
          }
        }
        const auto reason = fmt::format("rank(s) {} of {} did not arrive at {} (call {} on this communicator) within "
                                        "{} s (CUBOID_EMU_NCCL_TIMEOUT_S)",
                                        missing, comm.nranks, describe(mine), mine.call_index, comm.timeout_s);
        fail_locked(header, reason);
        comm.failed_seen = true;
        throw EmuError(ncclSystemError, reason);
      }
    }
    if (header.completed_rounds <= round) {
      throw failed_error(comm, header);
    }
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
    throw EmuError(verdict,
                   fmt::format("{}: invalid arguments on rank(s) {} (see their messages)", describe(mine), culprits));
  }
  return all;
}

void chunk_barrier(ncclComm& comm, CallDesc call) {
  call.data_phase = 1;
  barrier(comm, call);
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

// Counts a collective call when it ends (succeeded or not: every rank counts it alike).
class CallCounter {
public:
  explicit CallCounter(ncclComm& comm) : comm_(comm) {}
  ~CallCounter() { ++comm_.calls; }
  CallCounter(const CallCounter&) = delete;
  CallCounter& operator=(const CallCounter&) = delete;

private:
  ncclComm& comm_;
};

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
    std::fprintf(stderr, "cuboid NCCL emulator: rank %d: %s: %s\n", comm.rank, describe(mine).c_str(), detail.c_str());
  }
  const CallCounter counted(comm);
  barrier(comm, mine); // all ranks' calls match and are valid from here on
  Segment& segment = *comm.segment;
  const auto n = static_cast<std::size_t>(comm.nranks);
  const auto me = static_cast<std::size_t>(comm.rank);
  const std::size_t elem = dtype_bytes(args.dtype);
  const auto* send = static_cast<const std::byte*>(args.send);
  auto* recv = static_cast<std::byte*>(args.recv);
  const std::size_t chunk = args.op == Op::ReduceScatter ? SLOT_BYTES / (n * elem) : SLOT_BYTES / elem;
  std::vector<const std::byte*> slots(n);
  for (std::size_t rank = 0; rank < n; ++rank) {
    slots[rank] = segment.slot(static_cast<int>(rank));
  }
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
      if (comm.rank == args.root) {
        std::memcpy(my_slot, send + first * elem, len_bytes);
      }
      break;
    default: std::memcpy(my_slot, send + first * elem, len_bytes); break;
    }
    chunk_barrier(comm, mine);
    switch (args.op) { // compute and copy out
    case Op::AllReduce: reduce(slots, len, args.dtype, args.redop, recv + first * elem); break;
    case Op::ReduceScatter: {
      std::vector<const std::byte*> pieces(n);
      for (std::size_t rank = 0; rank < n; ++rank) {
        pieces[rank] = slots[rank] + me * len_bytes;
      }
      reduce(pieces, len, args.dtype, args.redop, recv + first * elem);
      break;
    }
    case Op::AllGather:
      for (std::size_t rank = 0; rank < n; ++rank) {
        std::memcpy(recv + (rank * args.count + first) * elem, slots[rank], len_bytes);
      }
      break;
    case Op::Broadcast: std::memcpy(recv + first * elem, slots[static_cast<std::size_t>(args.root)], len_bytes); break;
    default: break;
    }
    chunk_barrier(comm, mine); // nobody refills a slot before everyone has read it
  }
}

// ---- point to point

// The element size of a send's / recv's datatype; throws ncclInvalidArgument for an invalid datatype or peer.
std::size_t p2p_element_bytes(const ncclComm& comm, const char* call, ncclDataType_t dtype, int peer) {
  const std::size_t elem = dtype_bytes(dtype);
  if (elem == 0) {
    throw EmuError(ncclInvalidArgument, fmt::format("{}: datatype {} invalid", call, static_cast<int>(dtype)));
  }
  if (peer < 0 || peer >= comm.nranks) {
    throw EmuError(ncclInvalidArgument, fmt::format("{}: peer {} of {} ranks", call, peer, comm.nranks));
  }
  return elem;
}

void post_send(ncclComm& comm, const void* data, std::size_t count, ncclDataType_t dtype, int peer) {
  const std::size_t elem = p2p_element_bytes(comm, "ncclSend", dtype, peer);
  std::string detail;
  const ncclResult_t valid = check_buffer(data, count * elem, "ncclSend sendbuff", detail);
  Segment& segment = *comm.segment;
  Header& header = segment.header();
  Mailbox& box = segment.mailbox(comm.rank, peer);
  std::uint64_t seq = 0;
  {
    const SegmentLock lock(header);
    if (header.failed != 0) {
      throw failed_error(comm, header);
    }
    seq = box.tail; // only this rank's sends to `peer` advance it
  }
  Message message;
  message.count = count;
  message.dtype = dtype;
  message.poisoned = valid != ncclSuccess ? 1 : 0;
  // The copy runs outside the lock (it may be large); the message is posted once it is complete.
  if (valid == ncclSuccess) {
    message.token = segment.put_payload(comm.rank, peer, seq, data, count * elem);
  }
  SegmentLock lock(header);
  const timespec deadline = deadline_after(comm.timeout_s);
  while (box.tail - box.head >= MAILBOX_DEPTH && header.failed == 0) {
    if (!lock.wait_until(deadline) && box.tail - box.head >= MAILBOX_DEPTH) {
      const auto reason = fmt::format("ncclSend from rank {} to {}: {} messages pending, none received within {} s",
                                      comm.rank, peer, MAILBOX_DEPTH, comm.timeout_s);
      fail_locked(header, reason);
    }
  }
  if (header.failed != 0) {
    if (valid == ncclSuccess) {
      segment.drop_payload(comm.rank, peer, seq, message.token);
    }
    throw failed_error(comm, header);
  }
  box.ring[seq % MAILBOX_DEPTH] = message;
  box.tail = seq + 1;
  pthread_cond_broadcast(&header.cond);
  if (valid != ncclSuccess) {
    throw EmuError(valid, fmt::format("ncclSend to {}: {}", peer, detail));
  }
}

void receive(ncclComm& comm, void* data, std::size_t count, ncclDataType_t dtype, int peer) {
  const std::size_t elem = p2p_element_bytes(comm, "ncclRecv", dtype, peer);
  std::string detail;
  const ncclResult_t valid = check_buffer(data, count * elem, "ncclRecv recvbuff", detail);
  Segment& segment = *comm.segment;
  Header& header = segment.header();
  Mailbox& box = segment.mailbox(peer, comm.rank);
  Message message;
  std::uint64_t seq = 0;
  {
    SegmentLock lock(header);
    if (header.failed != 0) {
      throw failed_error(comm, header);
    }
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
    if (box.tail == box.head) {
      throw failed_error(comm, header);
    }
    seq = box.head;
    message = box.ring[seq % MAILBOX_DEPTH];
    ++box.head;
    pthread_cond_broadcast(&header.cond); // a sender may wait for room
  }
  const bool same = message.count * dtype_bytes(static_cast<ncclDataType_t>(message.dtype)) == count * elem;
  if (message.poisoned != 0 || valid != ncclSuccess || !same) {
    if (message.poisoned == 0) {
      segment.drop_payload(peer, comm.rank, seq, message.token);
    }
    if (message.poisoned != 0) {
      throw EmuError(ncclInvalidArgument, fmt::format("rank {}'s matching ncclSend had an invalid buffer", peer));
    }
    if (valid != ncclSuccess) {
      throw EmuError(valid, fmt::format("ncclRecv from {}: {}", peer, detail));
    }
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
    throw EmuError(ncclInvalidUsage, fmt::format("rank {} joined communicator {} twice", rank, comm->segment->name()));
  }
  comm->segment->joined(rank) = 1;
  if (++header.attached == header.nranks) {
    comm->segment->unlink_name(); // every rank has it mapped
  }
  return comm.release();
}

void detach(ncclComm* comm) {
  const std::unique_ptr<ncclComm> owned(comm);
  Segment& segment = *comm->segment;
  Header& header = segment.header();
  SegmentLock lock(header);
  if (++header.detached < header.nranks) {
    return;
  }
  for (int src = 0; src < header.nranks; ++src) { // last one out: free what nobody received
    for (int dst = 0; dst < header.nranks; ++dst) {
      Mailbox& box = segment.mailbox(src, dst);
      for (; box.head < box.tail; ++box.head) {
        const Message& message = box.ring[box.head % MAILBOX_DEPTH];
        if (message.poisoned == 0) {
          segment.drop_payload(src, dst, box.head, message.token);
        }
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
  for (const char c : text) {
    hash = (hash ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
  }
  return hash;
}

ncclComm* split(ncclComm& parent, int color, int key, double timeout_s) {
  CallDesc mine;
  mine.op = Op::Split;
  mine.color = color;
  mine.key = key;
  if (color < 0 && color != NCCL_SPLIT_NOCOLOR) {
    std::fprintf(stderr,
                 "cuboid NCCL emulator: rank %d: ncclCommSplit color %d is neither >= 0 nor "
                 "NCCL_SPLIT_NOCOLOR\n",
                 parent.rank, color);
    mine.result = ncclInvalidArgument;
  }
  const CallCounter counted(parent);
  const auto calls = barrier(parent, mine);
  const std::uint64_t split_index = parent.splits++;
  std::vector<int> members; // parent ranks of my color, ordered by key then parent rank
  for (int rank = 0; rank < parent.nranks; ++rank) {
    if (color != NCCL_SPLIT_NOCOLOR && calls[static_cast<std::size_t>(rank)].color == color) {
      members.push_back(rank);
    }
  }
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
    return calls[static_cast<std::size_t>(a)].key < calls[static_cast<std::size_t>(b)].key;
  });
  const auto new_rank = static_cast<int>(std::find(members.begin(), members.end(), parent.rank) - members.begin());
  const std::string root_name = parent.segment->name().substr(0, parent.segment->name().find('.'));
  const std::string name =
      fmt::format("{}.{:016x}", root_name, fnv1a(fmt::format("{}/{}/{}", parent.segment->name(), split_index, color)));
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
    if (child != nullptr) {
      child->unlink_name();
    }
    throw;
  }
  if (members.empty()) {
    return nullptr;
  }
  if (child == nullptr) {
    child = parent.segment->open_child(name, timeout_s);
  }
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
  const auto text =
      fmt::format("cuboid NCCL emulator: {}{}: {}", call,
                  comm != nullptr ? fmt::format(" (rank {} of {})", comm->rank, comm->nranks) : "", error.what());
  std::fprintf(stderr, "%s\n", text.c_str());
  thread_last_error = text;
  if (comm != nullptr) {
    comm->last_error = text;
  }
  return error.code;
}

// Runs `body` now, or queues it when inside a group (then its error is reported by ncclGroupEnd).
ncclResult_t issue(ncclComm* comm, const char* call, bool is_send, bool is_collective, std::function<void()> body) {
  if (comm == nullptr) {
    return report(nullptr, call, EmuError(ncclInvalidArgument, "comm is null"));
  }
  GroupState& state = group();
  if (state.depth > 0) {
    if (is_collective) {
      state.collective_comms.push_back(comm);
    }
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
} // namespace cuboid::emu::nccl

// ---- the NCCL API (nccl.h declares these extern "C")

namespace impl = cuboid::emu::nccl;

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
  return comm != nullptr ? comm->last_error.c_str() : impl::thread_last_error.c_str();
}

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) {
    return ncclInvalidArgument;
  }
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* unique_id) {
  if (unique_id == nullptr) {
    return ncclInvalidArgument;
  }
  std::random_device entropy;
  const std::uint64_t token = (std::uint64_t{entropy()} << 32) ^ entropy();
  *unique_id = ncclUniqueId{};
  std::memcpy(unique_id->internal, impl::ID_MAGIC, sizeof(impl::ID_MAGIC));
  const auto text = fmt::format("{}_{:016x}", static_cast<long>(getpid()), token);
  std::memcpy(unique_id->internal + sizeof(impl::ID_MAGIC), text.c_str(), text.size() + 1);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId comm_id, int rank) {
  using namespace impl;
  try {
    if (comm == nullptr) {
      throw EmuError(ncclInvalidArgument, "comm is null");
    }
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
    if (rank == 0) {
      segment = ShmSegment::create(name, nranks);
    } else {
      segment = ShmSegment::open(name, timeout_s);
    }
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
  using namespace impl;
  try {
    if (comm == nullptr || ndev < 1) {
      throw EmuError(ncclInvalidArgument, fmt::format("ndev {} or comm null", ndev));
    }
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
    for (int rank = 0; rank < ndev; ++rank) {
      comm[rank] = attach(segment, rank, timeout_s);
    }
    return ncclSuccess;
  } catch (const EmuError& error) {
    return report(nullptr, "ncclCommInitAll", error);
  }
}

ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  static_cast<void>(config); // blocking communicators only
  if (newcomm == nullptr) {
    return impl::report(comm, "ncclCommSplit", EmuError(ncclInvalidArgument, "newcomm is null"));
  }
  *newcomm = nullptr;
  return impl::issue(comm, "ncclCommSplit", false, true,
                     [comm, color, key, newcomm] { *newcomm = impl::split(*comm, color, key, comm->timeout_s); });
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  if (comm == nullptr) {
    return ncclSuccess;
  }
  impl::detach(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) {
  if (comm == nullptr) {
    return ncclSuccess;
  }
  {
    impl::Header& header = comm->segment->header();
    const impl::SegmentLock lock(header);
    impl::fail_locked(header, fmt::format("rank {} called ncclCommAbort", comm->rank));
  }
  impl::detach(comm);
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  if (comm == nullptr || count == nullptr) {
    return ncclInvalidArgument;
  }
  *count = comm->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  if (comm == nullptr || rank == nullptr) {
    return ncclInvalidArgument;
  }
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* async_error) {
  if (comm == nullptr || async_error == nullptr) {
    return ncclInvalidArgument;
  }
  impl::Header& header = comm->segment->header();
  const impl::SegmentLock lock(header);
  *async_error = comm->failed_seen || header.failed != 0 ? ncclSystemError : ncclSuccess;
  return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return impl::collective({Op::AllReduce, sendbuff, recvbuff, count, datatype, op, 0}, comm, "ncclAllReduce");
}

ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount, ncclDataType_t datatype,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return impl::collective({Op::ReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, 0}, comm,
                          "ncclReduceScatter");
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                           ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return impl::collective({Op::AllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, 0}, comm, "ncclAllGather");
}

ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  static_cast<void>(stream);
  return impl::collective({Op::Broadcast, sendbuff, recvbuff, count, datatype, ncclSum, root}, comm, "ncclBroadcast");
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  static_cast<void>(stream);
  return impl::issue(comm, "ncclSend", true, false, [=] { impl::post_send(*comm, sendbuff, count, datatype, peer); });
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  static_cast<void>(stream);
  return impl::issue(comm, "ncclRecv", false, false, [=] { impl::receive(*comm, recvbuff, count, datatype, peer); });
}

ncclResult_t ncclGroupStart() {
  ++impl::group().depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  using namespace impl;
  GroupState& state = group();
  if (state.depth == 0) {
    return report(nullptr, "ncclGroupEnd", EmuError(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart"));
  }
  if (--state.depth > 0) {
    return ncclSuccess;
  }
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
        if (first_error == ncclSuccess) {
          first_error = error.code;
        }
      }
    }
  }
  return first_error;
}

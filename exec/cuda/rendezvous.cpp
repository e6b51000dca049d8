// TCP and shared-file rendezvous (POSIX sockets and files; no CUDA, no MPI, so it is tested on any machine).
#include "exec/cuda/rendezvous.hpp"

#include "exec/device_error.hpp"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

namespace cuboid::exec::cuda {

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint32_t MAGIC = 0x63756230; // "cub0"
constexpr std::size_t MAX_PAYLOAD_BYTES = 1 << 20;
constexpr auto RETRY_DELAY = std::chrono::milliseconds(20);

[[noreturn]] void fail(int rank, const std::string& call, const std::string& detail, int line) {
  throw DeviceError(device_error_message("rendezvous " + call, rank, __FILE__, line, detail));
}

// Owns a socket descriptor.
class Socket {
public:
  explicit Socket(int fd = -1) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Socket(Socket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Socket& operator=(Socket&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  [[nodiscard]] int fd() const { return fd_; }

private:
  int fd_;
};

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left > 0 ? static_cast<int>(left) : 0;
}

// Waits until fd is readable (or writable) before the deadline; false on timeout.
bool wait_fd(int fd, short events, Clock::time_point deadline) {
  pollfd p{fd, events, 0};
  while (true) {
    const int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc > 0) {
      return true;
    }
    if (rc == 0) {
      return false;
    }
    if (errno != EINTR) {
      return false;
    }
  }
}

void read_exact(int fd, void* buf, std::size_t bytes, Clock::time_point deadline, int rank, const std::string& peer) {
  auto* out = static_cast<std::uint8_t*>(buf);
  std::size_t done = 0;
  while (done < bytes) {
    if (!wait_fd(fd, POLLIN, deadline)) {
      fail(rank, "recv", fmt::format("timed out waiting for {}", peer), __LINE__);
    }
    const ssize_t got = ::recv(fd, out + done, bytes - done, 0);
    if (got == 0) {
      fail(rank, "recv", fmt::format("{} closed the connection", peer), __LINE__);
    }
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      fail(rank, "recv", fmt::format("{}: {}", peer, std::strerror(errno)), __LINE__);
    }
    done += static_cast<std::size_t>(got);
  }
}

void write_all(int fd, const void* buf, std::size_t bytes, Clock::time_point deadline, int rank,
               const std::string& peer) {
  const auto* in = static_cast<const std::uint8_t*>(buf);
  std::size_t done = 0;
  while (done < bytes) {
    if (!wait_fd(fd, POLLOUT, deadline)) {
      fail(rank, "send", fmt::format("timed out sending to {}", peer), __LINE__);
    }
    const ssize_t put = ::send(fd, in + done, bytes - done, MSG_NOSIGNAL);
    if (put < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        continue;
      }
      fail(rank, "send", fmt::format("{}: {}", peer, std::strerror(errno)), __LINE__);
    }
    done += static_cast<std::size_t>(put);
  }
}

struct Hello {
  std::uint32_t magic;
  std::uint32_t rank;
  std::uint32_t world_size;
};

std::vector<std::uint8_t> serve(const LaunchEnv& env, std::span<const std::uint8_t> payload,
                                Clock::time_point deadline) {
  Socket listener(::socket(AF_INET6, SOCK_STREAM, 0));
  bool ipv6 = listener.fd() >= 0;
  if (!ipv6) {
    listener = Socket(::socket(AF_INET, SOCK_STREAM, 0));
  }
  if (listener.fd() < 0) {
    fail(env.rank, "socket", std::strerror(errno), __LINE__);
  }
  const int one = 1;
  const int zero = 0;
  ::setsockopt(listener.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int bound = -1;
  if (ipv6) {
    ::setsockopt(listener.fd(), IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)); // accept IPv4 peers too
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<std::uint16_t>(env.master_port));
    bound = ::bind(listener.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<std::uint16_t>(env.master_port));
    bound = ::bind(listener.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  }
  if (bound != 0) {
    fail(env.rank, "bind", fmt::format("port {} (MASTER_PORT): {}", env.master_port, std::strerror(errno)), __LINE__);
  }
  if (::listen(listener.fd(), env.world_size) != 0) {
    fail(env.rank, "listen", std::strerror(errno), __LINE__);
  }
  std::vector<Socket> peers(static_cast<std::size_t>(env.world_size));
  for (int accepted = 1; accepted < env.world_size; ++accepted) {
    if (!wait_fd(listener.fd(), POLLIN, deadline)) {
      fail(env.rank, "accept",
           fmt::format("timed out after {} of {} ranks connected to port {}", accepted - 1, env.world_size - 1,
                       env.master_port),
           __LINE__);
    }
    Socket peer(::accept(listener.fd(), nullptr, nullptr));
    if (peer.fd() < 0) {
      fail(env.rank, "accept", std::strerror(errno), __LINE__);
    }
    Hello hello{};
    read_exact(peer.fd(), &hello, sizeof(hello), deadline, env.rank, "a connecting rank");
    if (hello.magic != MAGIC) {
      fail(env.rank, "accept", fmt::format("a peer on port {} is not a cuboid rank (bad magic)", env.master_port),
           __LINE__);
    }
    if (static_cast<int>(hello.world_size) != env.world_size) {
      fail(env.rank, "accept",
           fmt::format("rank {} has WORLD_SIZE={}, rank 0 has {}", hello.rank, hello.world_size, env.world_size),
           __LINE__);
    }
    const auto r = static_cast<int>(hello.rank);
    if (r <= 0 || r >= env.world_size || peers[static_cast<std::size_t>(r)].fd() >= 0) {
      fail(env.rank, "accept", fmt::format("rank {} connected twice or is out of range [1, {})", r, env.world_size),
           __LINE__);
    }
    peers[static_cast<std::size_t>(r)] = std::move(peer);
  }
  const auto bytes = static_cast<std::uint32_t>(payload.size());
  for (int r = 1; r < env.world_size; ++r) {
    const int fd = peers[static_cast<std::size_t>(r)].fd();
    const std::string name = fmt::format("rank {}", r);
    write_all(fd, &MAGIC, sizeof(MAGIC), deadline, env.rank, name);
    write_all(fd, &bytes, sizeof(bytes), deadline, env.rank, name);
    write_all(fd, payload.data(), payload.size(), deadline, env.rank, name);
  }
  for (int r = 1; r < env.world_size; ++r) {
    std::uint8_t ack = 0;
    read_exact(peers[static_cast<std::size_t>(r)].fd(), &ack, 1, deadline, env.rank, fmt::format("rank {}", r));
  }
  return {payload.begin(), payload.end()};
}

Socket connect_to_root(const LaunchEnv& env, Clock::time_point deadline) {
  const std::string root = fmt::format("rank 0 at {}:{}", env.master_addr, env.master_port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  std::string last_error = "no attempt";
  while (true) {
    addrinfo* found = nullptr;
    const std::string port = std::to_string(env.master_port);
    const int gai = ::getaddrinfo(env.master_addr.c_str(), port.c_str(), &hints, &found);
    if (gai != 0) {
      last_error = fmt::format("cannot resolve MASTER_ADDR \"{}\": {}", env.master_addr, ::gai_strerror(gai));
    } else {
      for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
        Socket s(::socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol));
        if (s.fd() < 0) {
          continue;
        }
        if (::connect(s.fd(), ai->ai_addr, ai->ai_addrlen) == 0) {
          ::freeaddrinfo(found);
          return s;
        }
        last_error = std::strerror(errno);
      }
      ::freeaddrinfo(found);
    }
    if (Clock::now() + RETRY_DELAY >= deadline) {
      fail(env.rank, "connect", fmt::format("timed out connecting to {}: {}", root, last_error), __LINE__);
    }
    std::this_thread::sleep_for(RETRY_DELAY); // rank 0 may not be listening yet
  }
}

std::vector<std::uint8_t> join(const LaunchEnv& env, Clock::time_point deadline) {
  const Socket s = connect_to_root(env, deadline);
  const std::string root = fmt::format("rank 0 at {}:{}", env.master_addr, env.master_port);
  const Hello hello{MAGIC, static_cast<std::uint32_t>(env.rank), static_cast<std::uint32_t>(env.world_size)};
  write_all(s.fd(), &hello, sizeof(hello), deadline, env.rank, root);
  std::uint32_t magic = 0;
  std::uint32_t bytes = 0;
  read_exact(s.fd(), &magic, sizeof(magic), deadline, env.rank, root);
  read_exact(s.fd(), &bytes, sizeof(bytes), deadline, env.rank, root);
  if (magic != MAGIC || bytes > MAX_PAYLOAD_BYTES) {
    fail(env.rank, "recv", fmt::format("{} is not a cuboid rendezvous (bad header)", root), __LINE__);
  }
  std::vector<std::uint8_t> out(bytes);
  read_exact(s.fd(), out.data(), out.size(), deadline, env.rank, root);
  const std::uint8_t ack = 1;
  write_all(s.fd(), &ack, 1, deadline, env.rank, root);
  return out;
}

Clock::time_point deadline_after(double timeout_s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
}

void check_args(int rank, int world_size, std::size_t payload_bytes, double timeout_s) {
  CUBOID_ASSERT(world_size >= 1 && rank >= 0 && rank < world_size, "rank {} of {}", rank, world_size);
  CUBOID_ASSERT(timeout_s > 0.0, "timeout {}", timeout_s);
  if (rank == 0 && payload_bytes > MAX_PAYLOAD_BYTES) {
    fail(rank, "broadcast", fmt::format("payload of {} bytes exceeds 1 MiB", payload_bytes), __LINE__);
  }
}

} // namespace

std::vector<std::uint8_t> tcp_broadcast(const LaunchEnv& env, std::span<const std::uint8_t> payload, double timeout_s) {
  check_args(env.rank, env.world_size, payload.size(), timeout_s);
  if (env.world_size == 1) {
    return {payload.begin(), payload.end()};
  }
  const auto deadline = deadline_after(timeout_s);
  return env.rank == 0 ? serve(env, payload, deadline) : join(env, deadline);
}

std::vector<std::uint8_t> file_broadcast(const std::string& path, int rank, int world_size,
                                         std::span<const std::uint8_t> payload, double timeout_s) {
  namespace fs = std::filesystem;
  check_args(rank, world_size, payload.size(), timeout_s);
  if (world_size == 1) {
    return {payload.begin(), payload.end()};
  }
  const auto deadline = deadline_after(timeout_s);
  const auto ack_path = [&](int r) { return fmt::format("{}.ack.{}", path, r); };
  if (rank == 0) {
    if (fs::exists(path)) {
      throw InputError(input_message("rendezvous file", path,
                                     "already exists (left by an earlier job?); remove it or use a fresh path"));
    }
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      const std::uint32_t header[2] = {MAGIC, static_cast<std::uint32_t>(payload.size())};
      out.write(reinterpret_cast<const char*>(header), sizeof(header));
      out.write(reinterpret_cast<const char*>(payload.data()), static_cast<std::streamsize>(payload.size()));
      if (!out) {
        fail(rank, "write", fmt::format("cannot write {}", tmp), __LINE__);
      }
    }
    std::error_code ec;
    fs::rename(tmp, path, ec); // atomic: readers see the whole file or none
    if (ec) {
      fail(rank, "rename", fmt::format("{} -> {}: {}", tmp, path, ec.message()), __LINE__);
    }
    for (int r = 1; r < world_size; ++r) {
      while (!fs::exists(ack_path(r))) {
        if (Clock::now() >= deadline) {
          fail(rank, "wait", fmt::format("timed out waiting for rank {} to read {}", r, path), __LINE__);
        }
        std::this_thread::sleep_for(RETRY_DELAY);
      }
    }
    fs::remove(path, ec);
    for (int r = 1; r < world_size; ++r) {
      fs::remove(ack_path(r), ec);
    }
    return {payload.begin(), payload.end()};
  }
  while (!fs::exists(path)) {
    if (Clock::now() >= deadline) {
      fail(rank, "wait", fmt::format("timed out waiting for rank 0 to write {}", path), __LINE__);
    }
    std::this_thread::sleep_for(RETRY_DELAY);
  }
  std::ifstream in(path, std::ios::binary);
  std::uint32_t header[2] = {0, 0};
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  if (!in || header[0] != MAGIC || header[1] > MAX_PAYLOAD_BYTES) {
    fail(rank, "read", fmt::format("{} is not a cuboid rendezvous file", path), __LINE__);
  }
  std::vector<std::uint8_t> out(header[1]);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size()));
  if (!in) {
    fail(rank, "read", fmt::format("{} is truncated", path), __LINE__);
  }
  std::ofstream ack(ack_path(rank));
  ack << rank << '\n';
  if (!ack) {
    fail(rank, "write", fmt::format("cannot write {}", ack_path(rank)), __LINE__);
  }
  return out;
}

} // namespace cuboid::exec::cuda

// Watchdog thread: polls every POLL_INTERVAL; cheap enough to run always when a timeout is set.
#include "exec/watchdog.hpp"

#include <fmt/format.h>

namespace cuboid::exec {

namespace {
constexpr auto POLL_INTERVAL = std::chrono::milliseconds(20);

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
} // namespace

Watchdog::Watchdog(double timeout_s, std::function<std::string()> describe,
                   std::function<void(const std::string&)> on_timeout)
    : timeout_s_(timeout_s), describe_(std::move(describe)), on_timeout_(std::move(on_timeout)),
      thread_([this] { run(); }) {}

Watchdog::~Watchdog() {
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Watchdog::arm(int step) {
  start_ns_.store(now_ns());
  step_.store(step);
}

void Watchdog::disarm() { step_.store(0); }

void Watchdog::run() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (!stop_) {
    wake_.wait_for(lock, POLL_INTERVAL);
    const int step = step_.load();
    if (stop_ || step == 0) {
      continue;
    }
    const double elapsed_s = static_cast<double>(now_ns() - start_ns_.load()) * 1e-9;
    if (elapsed_s > timeout_s_) {
      on_timeout_(fmt::format("step {}: task {}: timeout: the step has run {:.1f} s (limit {:.1f} s)", step,
                              describe_(), elapsed_s, timeout_s_));
      step_.store(0);
    }
  }
}

} // namespace cuboid::exec

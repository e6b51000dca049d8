// Watchdog: a thread that ends the job when a training step runs longer than a time limit (a hung collective or a
// peer that died without aborting). It prints "rank R: step S: task <label>: timeout ..." and calls the abort
// callback (MPI_Abort on the world for multi-rank runs).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace cuboid::exec {

class Watchdog {
public:
  /// `describe` returns the current task label; `on_timeout` receives the full message (it should not return).
  Watchdog(double timeout_s, std::function<std::string()> describe, std::function<void(const std::string&)> on_timeout);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  /// Starts timing step `step` (1-based).
  void arm(int step);
  void disarm();

private:
  void run();

  double timeout_s_;
  std::function<std::string()> describe_;
  std::function<void(const std::string&)> on_timeout_;
  std::atomic<int> step_{0}; // 0 = disarmed
  std::atomic<std::int64_t> start_ns_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

} // namespace cuboid::exec

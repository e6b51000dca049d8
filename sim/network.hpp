// Network: ports (one direction of a GPU's NVLink or NIC attachment) with a capacity, and flows that cross up to
// two ports (the sender's out-port and the receiver's in-port). Concurrent flows share a port equally; a flow runs
// at the rate of its most contended port. When a flow starts or ends, only the flows on its ports change rate, and
// their completion events are rescheduled (stale events are recognised by a version number).
#pragma once

#include "sim/event_queue.hpp"

#include <cstdint>
#include <limits>
#include <vector>

namespace cuboid::sim {

/// Equal-share bandwidth model: rate(f) = min over the ports p of f of capacity(p) / active_flows(p).
/// Simpler than max-min fairness (it may leave capacity unused when a flow is limited elsewhere) but local, so a
/// start or an end costs O(flows on the two ports). Two flows on one port get B/2 each (equal weights).
class Network {
public:
  static constexpr std::uint32_t NO_PORT = std::numeric_limits<std::uint32_t>::max();

  /// One entry per port, in bytes/s; every capacity must be > 0.
  explicit Network(std::vector<double> port_capacity_bytes_per_s);

  /// Starts a flow of `bytes` (> 0) at time `now_s` on `port_out` and `port_in` (either may be NO_PORT, not both).
  /// `owner` is returned by finish_flow(). Schedules a FlowEnd event on `queue`. Returns the flow's slot.
  std::uint32_t start_flow(double now_s, double bytes, std::uint32_t port_out, std::uint32_t port_in,
                           std::uint32_t owner, EventQueue& queue);
  /// True when a FlowEnd(slot, version) event still describes the flow's current completion time.
  [[nodiscard]] bool is_current(std::uint32_t slot, std::uint32_t version) const;
  /// Removes a finished flow (legal only for a current FlowEnd event), speeds up its neighbours and returns its owner.
  std::uint32_t finish_flow(double now_s, std::uint32_t slot, EventQueue& queue);

  [[nodiscard]] std::size_t num_ports() const { return ports_.size(); }
  [[nodiscard]] std::size_t num_active_flows() const { return active_flows_; }
  /// Current rate of an active flow, bytes/s.
  [[nodiscard]] double get_rate(std::uint32_t slot) const { return flows_[slot].rate; }
  /// Bytes carried by a port by finished flows so far.
  [[nodiscard]] double get_port_bytes(std::uint32_t port) const { return ports_[port].bytes_done; }
  [[nodiscard]] double get_capacity(std::uint32_t port) const { return ports_[port].capacity; }

private:
  struct Port {
    double capacity = 0.0;
    double bytes_done = 0.0;
    std::vector<std::uint32_t> flows; // active flow slots
  };
  struct Flow {
    double bytes = 0.0;
    double remaining = 0.0;
    double rate = 0.0;
    double last_update_s = 0.0;
    std::uint32_t ports[2] = {NO_PORT, NO_PORT};
    std::uint32_t pos[2] = {0, 0}; // index in ports_[ports[k]].flows
    std::uint32_t owner = 0;
    std::uint32_t version = 0;
    bool active = false;
  };

  [[nodiscard]] double fair_rate(const Flow& flow) const;
  void update_rate(double now_s, std::uint32_t slot, EventQueue& queue);
  void update_port(double now_s, std::uint32_t port, EventQueue& queue);

  std::vector<Port> ports_;
  std::vector<Flow> flows_;
  std::vector<std::uint32_t> free_slots_;
  std::size_t active_flows_ = 0;
};

} // namespace cuboid::sim

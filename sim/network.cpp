// Network implementation. Why versions: a flow's completion time moves every time a neighbour starts or ends;
// instead of deleting events from the heap we bump the version and ignore events that carry an older one.
#include "sim/network.hpp"

#include "model/errors.hpp"

#include <algorithm>

namespace cuboid::sim {

Network::Network(std::vector<double> port_capacity_bytes_per_s) {
  ports_.resize(port_capacity_bytes_per_s.size());
  for (std::size_t port = 0; port < ports_.size(); ++port) {
    CUBOID_ASSERT(port_capacity_bytes_per_s[port] > 0.0, "port {} capacity {} must be > 0", port,
                  port_capacity_bytes_per_s[port]);
    ports_[port].capacity = port_capacity_bytes_per_s[port];
  }
}

double Network::fair_rate(const Flow& flow) const {
  double rate = std::numeric_limits<double>::infinity();
  for (const std::uint32_t port : flow.ports) {
    if (port != NO_PORT) {
      const Port& p = ports_[port];
      rate = std::min(rate, p.capacity / static_cast<double>(p.flows.size()));
    }
  }
  return rate;
}

void Network::update_rate(double now_s, std::uint32_t slot, EventQueue& queue) {
  Flow& flow = flows_[slot];
  const double rate = fair_rate(flow);
  if (rate == flow.rate) {
    return;
  }
  flow.remaining = std::max(0.0, flow.remaining - flow.rate * (now_s - flow.last_update_s));
  flow.last_update_s = now_s;
  flow.rate = rate;
  ++flow.version;
  queue.push(now_s + flow.remaining / rate, EventKind::FlowEnd, slot, flow.version);
}

void Network::update_port(double now_s, std::uint32_t port, EventQueue& queue) {
  if (port == NO_PORT) {
    return;
  }
  // Index loop: update_rate never changes the port's flow list.
  const std::vector<std::uint32_t>& flows = ports_[port].flows;
  for (std::size_t idx = 0; idx < flows.size(); ++idx) {
    update_rate(now_s, flows[idx], queue);
  }
}

std::uint32_t Network::start_flow(double now_s, double bytes, std::uint32_t port_out, std::uint32_t port_in,
                                  std::uint32_t owner, EventQueue& queue) {
  CUBOID_ASSERT(bytes > 0.0, "flow of {} bytes", bytes);
  CUBOID_ASSERT(port_out != NO_PORT || port_in != NO_PORT, "flow without ports");
  CUBOID_ASSERT(port_out == NO_PORT || port_out < ports_.size(), "port {} out of range", port_out);
  CUBOID_ASSERT(port_in == NO_PORT || port_in < ports_.size(), "port {} out of range", port_in);
  std::uint32_t slot = 0;
  if (free_slots_.empty()) {
    slot = static_cast<std::uint32_t>(flows_.size());
    flows_.emplace_back();
  } else {
    slot = free_slots_.back();
    free_slots_.pop_back();
  }
  Flow& flow = flows_[slot];
  const std::uint32_t version = flow.version + 1;
  flow = Flow{};
  flow.version = version;
  flow.bytes = bytes;
  flow.remaining = bytes;
  flow.last_update_s = now_s;
  flow.owner = owner;
  flow.active = true;
  flow.ports[0] = port_out;
  flow.ports[1] = port_in == port_out ? NO_PORT : port_in;
  for (std::size_t k = 0; k < 2; ++k) {
    if (flow.ports[k] != NO_PORT) {
      std::vector<std::uint32_t>& list = ports_[flow.ports[k]].flows;
      flow.pos[k] = static_cast<std::uint32_t>(list.size());
      list.push_back(slot);
    }
  }
  ++active_flows_;
  // rate 0 makes update_rate schedule the first completion event for the new flow as well.
  update_port(now_s, flow.ports[0], queue);
  update_port(now_s, flow.ports[1], queue);
  return slot;
}

bool Network::is_current(std::uint32_t slot, std::uint32_t version) const {
  return slot < flows_.size() && flows_[slot].active && flows_[slot].version == version;
}

std::uint32_t Network::finish_flow(double now_s, std::uint32_t slot, EventQueue& queue) {
  Flow& flow = flows_[slot];
  CUBOID_ASSERT(flow.active, "finishing inactive flow {}", slot);
  flow.active = false;
  ++flow.version;
  for (std::size_t k = 0; k < 2; ++k) {
    const std::uint32_t port = flow.ports[k];
    if (port == NO_PORT) {
      continue;
    }
    Port& p = ports_[port];
    p.bytes_done += flow.bytes;
    // Swap-remove, fixing the moved flow's back-pointer.
    const std::uint32_t moved = p.flows.back();
    p.flows[flow.pos[k]] = moved;
    Flow& moved_flow = flows_[moved];
    for (std::size_t mk = 0; mk < 2; ++mk) {
      if (moved_flow.ports[mk] == port) {
        moved_flow.pos[mk] = flow.pos[k];
      }
    }
    p.flows.pop_back();
  }
  --active_flows_;
  free_slots_.push_back(slot);
  update_port(now_s, flow.ports[0], queue);
  update_port(now_s, flow.ports[1], queue);
  return flow.owner;
}

} // namespace cuboid::sim

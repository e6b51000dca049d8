// GptModel, mixture-of-experts layers (issue 10): a MoE layer's MLP is a top-k router (cpu/moe.hpp) and E routed
// experts of the dense MLP's layout with moe_ffn_hidden_size, split over the EP group (Megatron-core's
// --expert-model-parallel-size): this rank holds experts [ep_rank * E/ep, (ep_rank + 1) * E/ep). The forward
// dispatches each (token, choice) row to the expert's rank with Communicator::all_to_all_v, runs the local experts,
// sends the outputs back with the inverse all-to-all and combines them weighted by the gates; the backward sends the
// output gradients the same way and the input gradients back. No capacity limit (no token is dropped), no auxiliary
// loss, no shared experts (validate_moe_run refuses them), tp = 1.
//
// Why every plan computes the same numbers: the row order of everything an expert computes is fixed — rows are
// dispatched sorted by (expert, token), received in EP-member order — and each token combines its K expert
// outputs (and sums its K input gradients) in the order of its choices on its own rank, whatever ep is.
#include "exec/gpt_model.hpp"

#include "exec/cpu/activation.hpp"
#include "exec/cpu/linear.hpp"
#include "exec/init.hpp"
#include "exec/local_communicator.hpp"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace cuboid::exec {

using cpu::Mat;

namespace {
constexpr double INIT_STD = 0.02; // as gpt_model.cpp (Megatron init_method_std)

std::span<float> span_of(Mat& m) { return {m.data(), static_cast<std::size_t>(m.size())}; }

// The received buffer of an EP all-to-all holds, per EP member p and local expert l, a block of
// rows_per_block[p * local + l] rows, in that order. first_rows() gives each block's first row; the local expert l's
// rows are member 0's block for l, member 1's, ... (gather_expert_rows copies them out, scatter_expert_rows back).
std::vector<int> first_rows(const std::vector<int>& rows_per_block) {
  std::vector<int> first(rows_per_block.size(), 0);
  for (std::size_t at = 0, row = 0; at < rows_per_block.size(); ++at) {
    first[at] = static_cast<int>(row);
    row += static_cast<std::size_t>(rows_per_block[at]);
  }
  return first;
}
void gather_expert_rows(const Mat& recv, const std::vector<int>& rows_per_block, const std::vector<int>& first,
                        int members, int local, int l, Mat& out) {
  for (int member = 0, row = 0; member < members; ++member) {
    const auto at = static_cast<std::size_t>(member * local + l);
    out.middleRows(row, rows_per_block[at]) = recv.middleRows(first[at], rows_per_block[at]);
    row += rows_per_block[at];
  }
}
void scatter_expert_rows(const Mat& in, const std::vector<int>& rows_per_block, const std::vector<int>& first,
                         int members, int local, int l, Mat& back) {
  for (int member = 0, row = 0; member < members; ++member) {
    const auto at = static_cast<std::size_t>(member * local + l);
    back.middleRows(first[at], rows_per_block[at]) = in.middleRows(row, rows_per_block[at]);
    row += rows_per_block[at];
  }
}
} // namespace

void GptModel::declare_moe_router(LayerIdx& p, const std::string& prefix) {
  CUBOID_ASSERT(spec_.num_experts % plan_.ep == 0 && ep_rank_ >= 0 && ep_rank_ < plan_.ep,
                "ep rank {} of ep {} for {} experts", ep_rank_, plan_.ep, spec_.num_experts);
  p.router = params_.add(prefix + "moe.router", spec_.hidden_size, spec_.num_experts, TpSplit::Replicated,
                         InitKind::Normal, INIT_STD);
}

// The routed experts of the stage's MoE layers in backward order (descending layer, as the dense parameters), so each
// chunk's experts are one contiguous range (a chunk holds consecutive layers).
void GptModel::declare_moe_experts() {
  if (!spec_.is_moe()) {
    return;
  }
  const std::int64_t F = spec_.moe_ffn_hidden_size;
  const std::int64_t local = spec_.num_experts / plan_.ep;
  for (LayerIdx& p : layers_) {
    if (p.router < 0) {
      continue;
    }
    const std::string& router_name = params_.info(p.router).name; // "layers.N.moe.router"
    const std::string layer_prefix = router_name.substr(0, router_name.size() - std::string("router").size());
    for (std::int64_t l = 0; l < local; ++l) {
      const std::string pre = fmt::format("{}experts.{}.", layer_prefix, ep_rank_ * local + l);
      const LayerIdx::Expert e = declare_mlp(pre, F);
      for (const int idx : {e.w1, e.b1, e.wg, e.bg, e.w2, e.b2}) {
        if (idx >= 0) {
          params_.info(idx).expert = true;
        }
      }
      p.experts.push_back(e);
    }
  }
}

void GptModel::set_expert_parallel(Communicator* ep) {
  CUBOID_ASSERT(ep != nullptr && ep->size() == plan_.ep && ep->rank() == ep_rank_,
                "EP group of size {} rank {} for ep = {}, ep rank {}", ep == nullptr ? 0 : ep->size(),
                ep == nullptr ? -1 : ep->rank(), plan_.ep, ep_rank_);
  ep_ = ep;
}

// A model nobody gave an EP group (a standalone single-rank model, e.g. exec::calibrate's) dispatches to itself.
Communicator& GptModel::ep_group(Communicator& self) const {
  CUBOID_ASSERT(ep_ != nullptr || plan_.ep == 1, "MoE layer with ep = {} but no EP group (set_expert_parallel)",
                plan_.ep);
  return ep_ != nullptr ? *ep_ : self;
}

std::size_t GptModel::dense_param_elements() const {
  for (const ParamInfo& info : params_.infos()) {
    if (info.expert) {
      return info.offset;
    }
  }
  return params_.num_elements();
}

std::pair<std::size_t, std::size_t> GptModel::expert_param_range(int chunk) const {
  const model::ChunkLayout& lay = chunks_.at(static_cast<std::size_t>(chunk));
  std::size_t begin = params_.num_elements();
  std::size_t end = 0;
  std::size_t total = 0;
  for (int layer = lay.first_layer; layer < lay.first_layer + lay.num_layers; ++layer) {
    for (const LayerIdx::Expert& e : layer_idx(layer).experts) {
      for (const int idx : {e.w1, e.b1, e.wg, e.bg, e.w2, e.b2}) {
        if (idx >= 0) {
          begin = std::min(begin, params_.info(idx).offset);
          end = std::max(end, params_.info(idx).offset + params_.info(idx).size());
          total += params_.info(idx).size();
        }
      }
    }
  }
  if (total == 0) {
    return {0, 0};
  }
  CUBOID_ASSERT(end - begin == total, "experts of chunk {} are not contiguous ({} elements in [{}, {}))", chunk, total,
                begin, end);
  return {begin, end};
}

// ---- forward

void GptModel::moe_expert_forward(const LayerIdx::Expert& e, int local, LayerCache& c, Mat& out) const {
  const auto l = static_cast<std::size_t>(local);
  const Mat& x = c.expert_x[l];
  const Eigen::Index rows = x.rows();
  // The shard's width (F_e / tp): only exec::calibrate times a MoE layer with tp > 1 (its output is then one TP
  // shard's partial sum; cuboid run refuses tp > 1 with MoE, validate_moe_run).
  const std::int64_t F = params_.info(e.w1).cols;
  out.resize(rows, spec_.hidden_size);
  if (rows == 0) {
    return; // an expert no token chose (empty Eigen blocks have no data to offset into)
  }
  c.expert_fc1[l].resize(rows, F);
  c.expert_act[l].resize(rows, F);
  cpu::linear_forward(x, weight(e.w1), bias(e.b1), c.expert_fc1[l]);
  if (spec_.gated_mlp) {
    c.expert_gate[l].resize(rows, F);
    cpu::linear_forward(x, weight(e.wg), bias(e.bg), c.expert_gate[l]);
    cpu::swiglu_forward(c.expert_gate[l], c.expert_fc1[l], c.expert_act[l]);
  } else {
    cpu::gelu_forward(c.expert_fc1[l], c.expert_act[l]);
  }
  cpu::linear_forward(c.expert_act[l], weight(e.w2), bias(e.b2), out);
}

void GptModel::moe_forward(int layer, const LayerIdx& p, const Mat& h, Mat& y, LayerCache& c) const {
  LocalCommunicator self;
  Communicator& ep = ep_group(self);
  const Eigen::Index n = h.rows();
  const Eigen::Index C = h.cols();
  const int K = static_cast<int>(spec_.moe_top_k);
  const int E = static_cast<int>(spec_.num_experts);
  const int members = plan_.ep;
  const int local = E / members;
  Mat logits(n, E);
  cpu::linear_forward(h, weight(p.router), nullptr, logits);
  cpu::router_topk_forward(logits, K, c.routing);
  if (!recomputing_) {
    min_router_margin_ = std::min(min_router_margin_, cpu::router_topk_margin(logits, K));
    for (Eigen::Index token = 0; token < n; ++token) {
      // The set of experts, not their order: the order of near-equal gates only reorders a sum.
      const auto begin = c.routing.expert.begin() + token * K;
      std::vector<int> chosen(begin, begin + K);
      std::sort(chosen.begin(), chosen.end());
      std::uint64_t hash = mix64(static_cast<std::uint64_t>(layer) << 32U | static_cast<std::uint64_t>(token));
      for (const int expert : chosen) {
        hash = mix64(hash ^ static_cast<std::uint64_t>(expert));
      }
      routing_fingerprint_ += hash;
    }
  }

  // Dispatch order: by expert, then token (a counting sort over the token slots n*K+k). Experts of member q are
  // q*local .. q*local+local-1, so the send buffer is already in member order.
  std::vector<int> rows_of_expert(static_cast<std::size_t>(E), 0);
  for (const int expert : c.routing.expert) {
    ++rows_of_expert[static_cast<std::size_t>(expert)];
  }
  std::vector<int> next(static_cast<std::size_t>(E), 0); // next send row of each expert
  for (std::size_t expert = 1; expert < next.size(); ++expert) {
    next[expert] = next[expert - 1] + rows_of_expert[expert - 1];
  }
  c.dispatch_slots.assign(c.routing.expert.size(), 0);
  for (std::size_t slot = 0; slot < c.routing.expert.size(); ++slot) {
    int& row = next[static_cast<std::size_t>(c.routing.expert[slot])];
    c.dispatch_slots[static_cast<std::size_t>(row++)] = static_cast<int>(slot);
  }
  Mat send(static_cast<Eigen::Index>(c.dispatch_slots.size()), C);
  for (std::size_t row = 0; row < c.dispatch_slots.size(); ++row) {
    send.row(static_cast<Eigen::Index>(row)) = h.row(c.dispatch_slots[row] / K);
  }
  // Rows per (member, local expert) first (exact in fp32: counts < 2^24), then the rows themselves.
  std::vector<float> count_send(static_cast<std::size_t>(E));
  std::vector<float> count_recv(static_cast<std::size_t>(E));
  for (int expert = 0; expert < E; ++expert) {
    count_send[static_cast<std::size_t>(expert)] = static_cast<float>(rows_of_expert[static_cast<std::size_t>(expert)]);
  }
  const std::vector<int> per_member(static_cast<std::size_t>(members), local);
  ep.all_to_all_v(count_send, per_member, count_recv, per_member);
  c.recv_expert_rows.assign(static_cast<std::size_t>(E), 0);
  c.send_counts.assign(static_cast<std::size_t>(members), 0);
  c.recv_counts.assign(static_cast<std::size_t>(members), 0);
  int received_rows = 0;
  for (int member = 0; member < members; ++member) {
    for (int l = 0; l < local; ++l) {
      const auto at = static_cast<std::size_t>(member * local + l);
      c.recv_expert_rows[at] = static_cast<int>(count_recv[at]);
      c.send_counts[static_cast<std::size_t>(member)] += rows_of_expert[at] * static_cast<int>(C);
      c.recv_counts[static_cast<std::size_t>(member)] += c.recv_expert_rows[at] * static_cast<int>(C);
      received_rows += c.recv_expert_rows[at];
    }
  }
  Mat recv(received_rows, C);
  ep.all_to_all_v(span_of(send), c.send_counts, span_of(recv), c.recv_counts);

  const std::vector<int> first = first_rows(c.recv_expert_rows);
  const auto local_size = static_cast<std::size_t>(local);
  c.expert_x.assign(local_size, Mat());
  c.expert_fc1.assign(local_size, Mat());
  c.expert_gate.assign(local_size, Mat());
  c.expert_act.assign(local_size, Mat());
  Mat back(received_rows, C);
  for (int l = 0; l < local; ++l) {
    int rows = 0;
    for (int member = 0; member < members; ++member) {
      rows += c.recv_expert_rows[static_cast<std::size_t>(member * local + l)];
    }
    Mat& x = c.expert_x[static_cast<std::size_t>(l)];
    x.resize(rows, C);
    gather_expert_rows(recv, c.recv_expert_rows, first, members, local, l, x);
    Mat out;
    moe_expert_forward(p.experts[static_cast<std::size_t>(l)], l, c, out);
    scatter_expert_rows(out, c.recv_expert_rows, first, members, local, l, back);
  }
  // Combine: the inverse all-to-all returns each dispatched row's output in send order.
  Mat returned(static_cast<Eigen::Index>(c.dispatch_slots.size()), C);
  ep.all_to_all_v(span_of(back), c.recv_counts, span_of(returned), c.send_counts);
  c.expert_out.resize(n * K, C);
  for (std::size_t row = 0; row < c.dispatch_slots.size(); ++row) {
    c.expert_out.row(c.dispatch_slots[row]) = returned.row(static_cast<Eigen::Index>(row));
  }
  y = Mat::Zero(n, C);
  for (Eigen::Index token = 0; token < n; ++token) {
    for (int k = 0; k < K; ++k) {
      const Eigen::Index slot = token * K + k;
      y.row(token) += c.routing.gate[static_cast<std::size_t>(slot)] * c.expert_out.row(slot);
    }
  }
}

// ---- backward

void GptModel::moe_expert_backward(const LayerIdx::Expert& e, int local, LayerCache& c, const Mat& dout, Mat& dx) {
  const auto l = static_cast<std::size_t>(local);
  const Eigen::Index rows = dout.rows();
  dx.resize(rows, spec_.hidden_size);
  if (rows == 0) {
    return; // no token chose this expert: no gradient
  }
  Mat dact(rows, c.expert_act[l].cols());
  cpu::linear_backward(dout, c.expert_act[l], weight(e.w2), dact, grad(e.w2), bias_grad(e.b2));
  Mat dfc1(rows, dact.cols());
  if (spec_.gated_mlp) {
    Mat dgate(rows, dact.cols());
    cpu::swiglu_backward(dact, c.expert_gate[l], c.expert_fc1[l], dgate, dfc1);
    cpu::linear_backward(dgate, c.expert_x[l], weight(e.wg), dx, grad(e.wg), bias_grad(e.bg));
    cpu::linear_backward(dfc1, c.expert_x[l], weight(e.w1), dx, grad(e.w1), bias_grad(e.b1), true);
  } else {
    cpu::gelu_backward(dact, c.expert_fc1[l], dfc1);
    cpu::linear_backward(dfc1, c.expert_x[l], weight(e.w1), dx, grad(e.w1), bias_grad(e.b1));
  }
}

void GptModel::moe_backward(const LayerIdx& p, LayerCache& c, const Mat& dy, Mat& dh) {
  LocalCommunicator self;
  Communicator& ep = ep_group(self);
  const Eigen::Index n = dy.rows();
  const Eigen::Index C = dy.cols();
  const int K = c.routing.top_k;
  const int E = static_cast<int>(spec_.num_experts);
  const int members = plan_.ep;
  const int local = E / members;
  // y_n = sum_k g_nk o_nk: dg_nk = <dy_n, o_nk>, do_nk = g_nk dy_n.
  std::vector<float> dgate(c.routing.gate.size());
  Mat send(static_cast<Eigen::Index>(c.dispatch_slots.size()), C);
  for (std::size_t row = 0; row < c.dispatch_slots.size(); ++row) {
    const int slot = c.dispatch_slots[row];
    dgate[static_cast<std::size_t>(slot)] = dy.row(slot / K).dot(c.expert_out.row(slot));
    send.row(static_cast<Eigen::Index>(row)) = c.routing.gate[static_cast<std::size_t>(slot)] * dy.row(slot / K);
  }
  int received_rows = 0;
  for (const int rows : c.recv_expert_rows) {
    received_rows += rows;
  }
  Mat recv(received_rows, C);
  ep.all_to_all_v(span_of(send), c.send_counts, span_of(recv), c.recv_counts);
  const std::vector<int> first = first_rows(c.recv_expert_rows);
  Mat back(received_rows, C);
  for (int l = 0; l < local; ++l) {
    Mat dout(c.expert_x[static_cast<std::size_t>(l)].rows(), C);
    gather_expert_rows(recv, c.recv_expert_rows, first, members, local, l, dout);
    Mat dx;
    moe_expert_backward(p.experts[static_cast<std::size_t>(l)], l, c, dout, dx);
    scatter_expert_rows(dx, c.recv_expert_rows, first, members, local, l, back);
  }
  Mat returned(static_cast<Eigen::Index>(c.dispatch_slots.size()), C);
  ep.all_to_all_v(span_of(back), c.recv_counts, span_of(returned), c.send_counts);
  Mat dx_slots(n * K, C);
  for (std::size_t row = 0; row < c.dispatch_slots.size(); ++row) {
    dx_slots.row(c.dispatch_slots[row]) = returned.row(static_cast<Eigen::Index>(row));
  }
  dh = Mat::Zero(n, C);
  for (Eigen::Index token = 0; token < n; ++token) {
    for (int k = 0; k < K; ++k) {
      dh.row(token) += dx_slots.row(token * K + k);
    }
  }
  // Router: through the gates' softmax into the chosen logits, then the (C, E) GEMM.
  Mat dlogits(n, E);
  cpu::router_topk_backward(c.routing, dgate, dlogits);
  cpu::linear_backward(dlogits, c.h2_full, weight(p.router), dh, grad(p.router), nullptr, true);
}

} // namespace cuboid::exec

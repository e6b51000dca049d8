// Per-rank pipeline schedules written out as instruction lists. Micro-batch order per schedule:
//   GPipe:        F0 .. F(m-1), then B0 .. B(m-1)
//   1F1B:         warm-up min(pp - s - 1, m) forwards, then alternate F/B, then the remaining backwards
//   interleaved:  Megatron's virtual micro-batch order: warm-up (pp - s - 1) * 2 + (vp - 1) * pp, chunk of virtual
//                 id k = (k mod pp*vp) / pp (reversed for backward), micro-batch = (k / (pp*vp)) * pp + k mod pp.
#include "exec/internal_schedule.hpp"

#include "model/errors.hpp"
#include "model/rank_grid.hpp"
#include "model/schedule.hpp"

#include <algorithm>

namespace cuboid::exec {

namespace {

class ProgramBuilder {
public:
  ProgramBuilder(const model::ModelSpec& model, const model::Plan& plan, int rank)
      : plan_(plan), grid_(plan.tp, plan.cp, plan.dp, plan.pp), coord_(grid_.coord_of(rank)),
        chunks_(model::chunk_layouts(plan, model.num_layers, coord_.pp_rank)) {
    program_.rank = rank;
  }

  void forward(int chunk, int mb) {
    const model::ChunkLayout& layout = chunks_[static_cast<std::size_t>(chunk)];
    if (!layout.has_embedding) {
      const auto [peer_stage, peer_chunk] = previous(chunk);
      add_p2p(InstrKind::Recv, Direction::Forward, chunk, mb, peer_stage, peer_chunk);
    }
    if (layout.has_embedding) {
      add_compute(InstrKind::Forward, UnitKind::Embedding, -1, chunk, mb);
    }
    for (int layer = layout.first_layer; layer < layout.first_layer + layout.num_layers; ++layer) {
      add_compute(InstrKind::Forward, UnitKind::Layer, layer, chunk, mb);
    }
    if (layout.has_head) {
      add_compute(InstrKind::Forward, UnitKind::Head, -1, chunk, mb);
    } else {
      const auto [peer_stage, peer_chunk] = next(chunk);
      add_p2p(InstrKind::Send, Direction::Forward, chunk, mb, peer_stage, chunk);
    }
  }

  void backward(int chunk, int mb) {
    const model::ChunkLayout& layout = chunks_[static_cast<std::size_t>(chunk)];
    if (layout.has_head) {
      add_compute(InstrKind::Backward, UnitKind::Head, -1, chunk, mb);
    } else {
      const auto [peer_stage, peer_chunk] = next(chunk);
      add_p2p(InstrKind::Recv, Direction::Backward, chunk, mb, peer_stage, peer_chunk);
    }
    for (int layer = layout.first_layer + layout.num_layers - 1; layer >= layout.first_layer; --layer) {
      add_compute(InstrKind::Backward, UnitKind::Layer, layer, chunk, mb);
    }
    if (layout.has_embedding) {
      add_compute(InstrKind::Backward, UnitKind::Embedding, -1, chunk, mb);
    } else {
      const auto [peer_stage, peer_chunk] = previous(chunk);
      add_p2p(InstrKind::Send, Direction::Backward, chunk, mb, peer_stage, chunk);
    }
    Instr free;
    free.kind = InstrKind::Free;
    free.chunk = chunk;
    free.microbatch = mb;
    add(free);
  }

  Program finish() {
    if (plan_.dp_cp_size() > 1) { // gradients are reduced over dp*cp (context parallelism)
      program_.bucket_weights = {1.0};
      Instr start;
      start.kind = InstrKind::CollectiveStart;
      start.stream = model::Stream::DpComm;
      start.bucket = 0;
      add(start);
      Instr wait = start;
      wait.kind = InstrKind::CollectiveWait;
      add(wait);
    }
    Instr opt;
    opt.kind = InstrKind::OptimizerStep;
    add(opt);
    return std::move(program_);
  }

private:
  // (stage, chunk) feeding chunk `chunk` of this stage in forward, and the one it feeds.
  [[nodiscard]] std::pair<int, int> previous(int chunk) const {
    const int s = coord_.pp_rank;
    return s > 0 ? std::pair{s - 1, chunk} : std::pair{plan_.pp - 1, chunk - 1};
  }
  [[nodiscard]] std::pair<int, int> next(int chunk) const {
    const int s = coord_.pp_rank;
    return s < plan_.pp - 1 ? std::pair{s + 1, chunk} : std::pair{0, chunk + 1};
  }

  void add_p2p(InstrKind kind, Direction direction, int chunk, int mb, int peer_stage, int sender_chunk) {
    Instr instr;
    instr.kind = kind;
    instr.stream = model::Stream::PpComm;
    instr.direction = direction;
    instr.chunk = chunk;
    instr.microbatch = mb;
    instr.peer = grid_.rank_of({coord_.tp_rank, coord_.dp_rank, peer_stage});
    instr.tag = p2p_tag(mb, sender_chunk, plan_.vp, direction);
    add(instr);
  }

  void add_compute(InstrKind kind, UnitKind unit, int layer, int chunk, int mb) {
    Instr instr;
    instr.kind = kind;
    instr.unit = unit;
    instr.layer = layer;
    instr.chunk = chunk;
    instr.microbatch = mb;
    add(instr);
  }

  void add(Instr instr) {
    instr.label = describe(instr);
    program_.instrs.push_back(std::move(instr));
  }

  const model::Plan& plan_;
  model::RankGrid grid_;
  model::RankCoord coord_;
  std::vector<model::ChunkLayout> chunks_;
  Program program_;
};

} // namespace

Program build_internal_program(const model::ModelSpec& model, const model::Plan& plan, int rank) {
  ProgramBuilder builder(model, plan, rank);
  const auto m = static_cast<int>(plan.num_microbatches());
  const int pp = plan.pp;
  const int stage = model::RankGrid(plan.tp, plan.cp, plan.dp, plan.pp).coord_of(rank).pp_rank;
  if (plan.vp > 1) {
    CUBOID_ASSERT(m % pp == 0, "interleaved schedule needs micro-batches ({}) divisible by pp ({})", m, pp);
    const int total = m * plan.vp;
    const int group = pp * plan.vp;
    const auto chunk_of = [&](int k, bool forward) {
      const int c = (k % group) / pp;
      return forward ? c : plan.vp - 1 - c;
    };
    const auto mb_of = [&](int k) { return (k / group) * pp + k % pp; };
    const int warmup = std::min((pp - stage - 1) * 2 + (plan.vp - 1) * pp, total);
    for (int k = 0; k < warmup; ++k) {
      builder.forward(chunk_of(k, true), mb_of(k));
    }
    for (int k = 0; k < total - warmup; ++k) {
      builder.forward(chunk_of(warmup + k, true), mb_of(warmup + k));
      builder.backward(chunk_of(k, false), mb_of(k));
    }
    for (int k = total - warmup; k < total; ++k) {
      builder.backward(chunk_of(k, false), mb_of(k));
    }
    return builder.finish();
  }
  if (plan.schedule == model::Schedule::GPipe) {
    for (int mb = 0; mb < m; ++mb) {
      builder.forward(0, mb);
    }
    for (int mb = 0; mb < m; ++mb) {
      builder.backward(0, mb);
    }
    return builder.finish();
  }
  const int warmup = std::min(pp - stage - 1, m);
  for (int mb = 0; mb < warmup; ++mb) {
    builder.forward(0, mb);
  }
  for (int idx = 0; idx < m - warmup; ++idx) {
    builder.forward(0, warmup + idx);
    builder.backward(0, idx);
  }
  for (int mb = m - warmup; mb < m; ++mb) {
    builder.backward(0, mb);
  }
  return builder.finish();
}

} // namespace cuboid::exec

// Chrome trace writer (chrome://tracing, ui.perfetto.dev "Trace Event Format"): streamed by hand rather than built
// as a JSON tree, because an all-ranks trace has millions of events. Written through AtomicFile (temporary file,
// then renamed), so a reader never sees a half-written file.
#include "model/timeline.hpp"

#include "model/atomic_file.hpp"
#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string_view>

namespace cuboid::model {

namespace {

constexpr double US_PER_S = 1e6;
constexpr std::size_t WRITE_BUFFER_BYTES = 1 << 20;
const std::array<std::string_view, NUM_STREAMS> STREAM_NAMES = {"compute", "tp comm", "dp comm", "pp comm"};

/// Appends `text` as a JSON string literal (quotes and escapes included).
void append_json_string(std::string& out, std::string_view text) {
  out.push_back('"');
  for (const char ch : text) {
    switch (ch) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\t':
      out += "\\t";
      break;
    case '\r':
      out += "\\r";
      break;
    default:
      if (static_cast<unsigned char>(ch) < 0x20) {
        out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(ch)));
      } else {
        out.push_back(ch);
      }
    }
  }
  out.push_back('"');
}

class TraceStream {
public:
  explicit TraceStream(const std::string& path) : file_(path) {
    buffer_.reserve(WRITE_BUFFER_BYTES + 4096);
    buffer_ += "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  }
  /// Starts one event object; the caller appends the body and calls end_event().
  std::string& begin_event() {
    if (!first_) {
      buffer_ += ",\n";
    }
    first_ = false;
    return buffer_;
  }
  void end_event() {
    if (buffer_.size() >= WRITE_BUFFER_BYTES) {
      flush();
    }
  }
  /// Writes the rest and renames the file into place (until then the old trace at the path is untouched).
  void close() {
    buffer_ += "\n]}\n";
    flush();
    file_.commit();
  }

private:
  void flush() {
    file_.write(buffer_);
    buffer_.clear();
  }
  AtomicFile file_;
  std::string buffer_;
  bool first_ = true;
};

} // namespace

void write_chrome_trace(const std::string& path, const std::vector<TraceSet>& sets) {
  // pid = set index * stride + rank, so "predicted rank 3" and "measured rank 3" are separate processes that sort
  // next to their own set.
  int max_rank = 0;
  for (const TraceSet& set : sets) {
    for (const TimelineEvent& event : set.events) {
      max_rank = std::max(max_rank, event.rank);
    }
  }
  const int stride = max_rank + 1;
  {
    TraceStream out(path);
    for (std::size_t set_idx = 0; set_idx < sets.size(); ++set_idx) {
      const TraceSet& set = sets[set_idx];
      const int offset = static_cast<int>(set_idx) * stride;
      // Metadata: name every (rank, stream) that has at least one event.
      std::vector<std::array<bool, NUM_STREAMS>> used(static_cast<std::size_t>(stride), std::array<bool, NUM_STREAMS>{});
      for (const TimelineEvent& event : set.events) {
        used[static_cast<std::size_t>(event.rank)][static_cast<std::size_t>(event.stream)] = true;
      }
      for (int rank = 0; rank < stride; ++rank) {
        const auto& streams = used[static_cast<std::size_t>(rank)];
        if (std::none_of(streams.begin(), streams.end(), [](bool flag) { return flag; })) {
          continue;
        }
        const int pid = offset + rank;
        std::string& proc = out.begin_event();
        proc += fmt::format("{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{},\"tid\":0,\"args\":{{\"name\":", pid);
        append_json_string(proc, fmt::format("{} rank {}", set.title, rank));
        proc += "}}";
        out.end_event();
        std::string& sort = out.begin_event();
        sort += fmt::format("{{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":{},\"tid\":0,"
                            "\"args\":{{\"sort_index\":{}}}}}",
                            pid, pid);
        out.end_event();
        for (std::size_t stream = 0; stream < streams.size(); ++stream) {
          if (!streams[stream]) {
            continue;
          }
          std::string& thread = out.begin_event();
          thread += fmt::format("{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{},\"tid\":{},\"args\":{{\"name\":\"{}\"}}}}",
                                pid, stream, STREAM_NAMES[stream]);
          out.end_event();
        }
      }
      for (const TimelineEvent& event : set.events) {
        std::string& body = out.begin_event();
        body += "{\"name\":";
        append_json_string(body, event.name);
        body += ",\"cat\":";
        append_json_string(body, event.category);
        body += fmt::format(",\"ph\":\"X\",\"ts\":{:.3f},\"dur\":{:.3f},\"pid\":{},\"tid\":{},"
                            "\"args\":{{\"task_id\":{},\"rank\":{},\"stream\":\"{}\"}}}}",
                            event.start_s * US_PER_S, (event.end_s - event.start_s) * US_PER_S, offset + event.rank,
                            static_cast<int>(event.stream), event.id, event.rank,
                            STREAM_NAMES[static_cast<std::size_t>(event.stream)]);
        out.end_event();
      }
    }
    out.close();
  }
}

} // namespace cuboid::model

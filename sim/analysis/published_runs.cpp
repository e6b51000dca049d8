// Strict CSV reading and typing of published_runs.csv rows (see published_runs.hpp). The mapping to cuboid inputs
// and the FLOP-formula conversions live in published_runs_map.cpp.
#include "sim/analysis/published_runs.hpp"

#include "model/errors.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <sstream>

namespace cuboid::sim::analysis {

namespace {

class CsvParser {
public:
  CsvParser(std::string path, std::string text) : path_(std::move(path)), text_(std::move(text)) {}

  CsvTable parse() {
    CsvTable table;
    table.path = path_;
    std::vector<std::string> record;
    int record_line = 1;
    while (next_record(record, record_line)) {
      if (table.header.empty()) {
        table.header = record;
        continue;
      }
      if (record.size() == 1 && record[0].empty()) {
        continue; // blank line
      }
      if (record.size() != table.header.size()) {
        throw InputError(fmt::format("{}:{}: {} fields, the header has {}", path_, record_line, record.size(),
                                     table.header.size()));
      }
      table.rows.push_back(record);
      table.row_lines.push_back(record_line);
    }
    if (table.header.empty()) {
      throw InputError(fmt::format("{}: empty CSV file (expected a header line)", path_));
    }
    return table;
  }

private:
  std::string path_;
  std::string text_;
  std::size_t pos_ = 0;
  int line_ = 1;
  int column_ = 1;

  [[noreturn]] void fail(const std::string& message) const {
    throw InputError(fmt::format("{}:{}:{}: {}", path_, line_, column_, message));
  }

  char advance() {
    const char ch = text_[pos_++];
    if (ch == '\n') {
      ++line_;
      column_ = 1;
    } else {
      ++column_;
    }
    return ch;
  }

  // Reads one record; returns false at end of input.
  bool next_record(std::vector<std::string>& record, int& record_line) {
    record.clear();
    if (pos_ >= text_.size()) {
      return false;
    }
    record_line = line_;
    std::string field;
    while (true) {
      if (pos_ < text_.size() && text_[pos_] == '"') {
        const int open_line = line_;
        const int open_column = column_;
        advance();
        while (true) {
          if (pos_ >= text_.size()) {
            line_ = open_line;
            column_ = open_column;
            fail("unterminated quoted field (opened here)");
          }
          const char ch = advance();
          if (ch == '"' && pos_ < text_.size() && text_[pos_] == '"') {
            field += advance();
          } else if (ch == '"') {
            break;
          } else {
            field += ch;
          }
        }
        if (pos_ < text_.size() && text_[pos_] != ',' && text_[pos_] != '\n' && text_[pos_] != '\r') {
          fail(fmt::format("unexpected '{}' after a closing quote (expected ',' or end of line)", text_[pos_]));
        }
      } else {
        while (pos_ < text_.size() && text_[pos_] != ',' && text_[pos_] != '\n' && text_[pos_] != '\r') {
          if (text_[pos_] == '"') {
            fail("'\"' inside an unquoted field (quote the whole field and double inner quotes)");
          }
          field += advance();
        }
      }
      record.push_back(std::move(field));
      field.clear();
      if (pos_ < text_.size() && text_[pos_] == '\r') {
        advance();
      }
      if (pos_ >= text_.size()) {
        return true;
      }
      if (advance() == '\n') {
        return true;
      }
    }
  }
};

// Source family from the `source` text: the first entry whose text occurs in it. Order matters: Megatron-Bridge's
// repository is NVIDIA-NeMo/..., so it comes before NeMo. The held-out sources (scenarios/validation/HOLDOUT.md) are
// Megatron-Bridge, Korthikanti et al. 2022 and MT-NLG.
struct SourceFamily {
  const char* text;
  const char* kind;
};
constexpr SourceFamily SOURCE_FAMILIES[] = {
    {"dgxc-benchmarking", "dgxc"},         {"SC21", "sc21"},
    {"Megatron-LM README", "megatron-lm-readme"}, {"BLOOM", "bloom"},
    {"bigscience", "bloom"},               {"Megatron-Bridge", "megatron-bridge"},
    {"Korthikanti", "korthikanti22"},      {"Megatron-Turing", "mt-nlg"},
    {"NeMo", "nemo"}};

std::string source_kind(const std::string& source) {
  for (const SourceFamily& family : SOURCE_FAMILIES) {
    if (source.find(family.text) != std::string::npos) {
      return family.kind;
    }
  }
  return "other";
}

} // namespace

CsvTable read_csv_table(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw InputError(fmt::format("{}: cannot open CSV file", path));
  }
  std::ostringstream text;
  text << file.rdbuf();
  return CsvParser(path, text.str()).parse();
}

std::string PublishedRun::note(const std::string& key) const {
  const std::string tag = key + "=";
  std::size_t at = 0;
  while ((at = notes.find(tag, at)) != std::string::npos) {
    if (at == 0 || notes[at - 1] == ' ' || notes[at - 1] == ';') {
      const std::size_t begin = at + tag.size();
      const std::size_t end = notes.find(';', begin);
      std::string value = notes.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
      while (!value.empty() && value.back() == ' ') {
        value.pop_back();
      }
      return value;
    }
    at += tag.size();
  }
  return {};
}

std::vector<PublishedRun> read_published_runs(const std::string& path) {
  const CsvTable table = read_csv_table(path);
  auto column = [&](const std::string& name) {
    const auto found = std::find(table.header.begin(), table.header.end(), name);
    if (found == table.header.end()) {
      throw InputError(input_message(path, "header", fmt::format("missing column '{}'", name)));
    }
    return static_cast<std::size_t>(found - table.header.begin());
  };
  using Number = std::optional<double> PublishedRun::*;
  const std::vector<std::pair<const char*, Number>> numbers = {
      {"num_layers", &PublishedRun::num_layers},
      {"hidden_size", &PublishedRun::hidden_size},
      {"num_heads", &PublishedRun::num_heads},
      {"num_kv_heads", &PublishedRun::num_kv_heads},
      {"ffn_hidden_size", &PublishedRun::ffn_hidden_size},
      {"vocab_size", &PublishedRun::vocab_size},
      {"seq_len", &PublishedRun::seq_len},
      {"num_gpus", &PublishedRun::num_gpus},
      {"tp", &PublishedRun::tp},
      {"pp", &PublishedRun::pp},
      {"dp", &PublishedRun::dp},
      {"cp", &PublishedRun::cp},
      {"vp", &PublishedRun::vp},
      {"micro_batch", &PublishedRun::micro_batch},
      {"global_batch", &PublishedRun::global_batch},
      {"measured_tflops_per_gpu", &PublishedRun::measured_tflops_per_gpu},
      {"measured_mfu", &PublishedRun::measured_mfu},
      {"measured_step_time_s", &PublishedRun::measured_step_time_s},
      {"measured_tokens_per_s_per_gpu", &PublishedRun::measured_tokens_per_s_per_gpu},
      {"measured_peak_mem_gb", &PublishedRun::measured_peak_mem_gb},
  };
  using Text = std::string PublishedRun::*;
  const std::vector<std::pair<const char*, Text>> texts = {
      {"id", &PublishedRun::id},           {"source", &PublishedRun::source},
      {"model_name", &PublishedRun::model_name}, {"gpu", &PublishedRun::gpu_text},
      {"recompute", &PublishedRun::recompute}, {"sequence_parallel", &PublishedRun::sequence_parallel},
      {"notes", &PublishedRun::notes},
  };
  std::vector<std::pair<std::size_t, Number>> number_columns;
  for (const auto& [name, member] : numbers) {
    number_columns.emplace_back(column(name), member);
  }
  std::vector<std::pair<std::size_t, Text>> text_columns;
  for (const auto& [name, member] : texts) {
    text_columns.emplace_back(column(name), member);
  }

  std::vector<PublishedRun> runs;
  for (std::size_t row_idx = 0; row_idx < table.rows.size(); ++row_idx) {
    const auto& cells = table.rows[row_idx];
    PublishedRun run;
    run.where = fmt::format("{}:{}", path, table.row_lines[row_idx]);
    for (const auto& [col, member] : text_columns) {
      run.*member = cells[col];
    }
    for (const auto& [col, member] : number_columns) {
      const std::string& cell = cells[col];
      if (cell.empty()) {
        continue;
      }
      double value = 0.0;
      const auto [end, error] = std::from_chars(cell.data(), cell.data() + cell.size(), value);
      if (error != std::errc{} || end != cell.data() + cell.size() || !std::isfinite(value) || value < 0.0) {
        throw InputError(fmt::format("{}: column {} '{}': '{}' is not a non-negative number", run.where, col + 1,
                                     table.header[col], cell));
      }
      run.*member = value;
    }
    if (run.id.empty()) {
      throw InputError(fmt::format("{}: column {} 'id' is empty", run.where, column("id") + 1));
    }
    run.source_kind = source_kind(run.source);
    runs.push_back(std::move(run));
  }
  return runs;
}

std::string to_string(RunStatus status) {
  switch (status) {
  case RunStatus::Ok:
    return "ok";
  case RunStatus::Skipped:
    return "skipped";
  case RunStatus::Unsupported:
    return "unsupported";
  case RunStatus::Infeasible:
    break;
  }
  return "infeasible";
}

} // namespace cuboid::sim::analysis

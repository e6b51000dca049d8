// RFC-4180 CSV helpers (see csv.hpp).
#include "sim/analysis/csv.hpp"

#include "model/errors.hpp"

namespace cuboid::sim::analysis {

std::string csv_join(const std::vector<std::string>& fields) {
  std::string line;
  for (std::size_t idx = 0; idx < fields.size(); ++idx) {
    if (idx > 0) {
      line += ',';
    }
    const std::string& field = fields[idx];
    if (field.find_first_of(",\"\n\r") == std::string::npos) {
      line += field;
      continue;
    }
    line += '"';
    for (const char ch : field) {
      if (ch == '"') {
        line += '"';
      }
      line += ch;
    }
    line += '"';
  }
  return line;
}

bool csv_read_record(std::istream& in, std::vector<std::string>& fields, const std::string& where, int& line_no) {
  fields.clear();
  std::string line;
  if (!std::getline(in, line)) {
    return false;
  }
  ++line_no;
  const int first_line = line_no;
  std::string field;
  bool in_quotes = false;
  while (true) {
    for (std::size_t pos = 0; pos < line.size(); ++pos) {
      const char ch = line[pos];
      if (in_quotes) {
        if (ch == '"' && pos + 1 < line.size() && line[pos + 1] == '"') {
          field += '"';
          ++pos;
        } else if (ch == '"') {
          in_quotes = false;
        } else {
          field += ch;
        }
      } else if (ch == '"') {
        in_quotes = true;
      } else if (ch == ',') {
        fields.push_back(std::move(field));
        field.clear();
      } else if (ch != '\r') {
        field += ch;
      }
    }
    if (!in_quotes) {
      break;
    }
    if (!std::getline(in, line)) {
      throw InputError(input_message(where, fmt::format("line {}", first_line), "unterminated quoted field"));
    }
    ++line_no;
    field += '\n';
  }
  fields.push_back(std::move(field));
  return true;
}

} // namespace cuboid::sim::analysis

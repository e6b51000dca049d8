// Minimal RFC-4180 CSV reading and writing (quoted fields with commas, quotes and newlines), shared by search
// (--csv, --resume) and validation (published_runs.csv).
#pragma once

#include <istream>
#include <string>
#include <vector>

namespace cuboid::sim::analysis {

/// Joins fields into one line (no trailing newline), quoting fields that contain ',', '"', '\n' or '\r'.
std::string csv_join(const std::vector<std::string>& fields);

/// Reads the next record (which may span lines inside quotes). Returns false at end of input.
/// Throws InputError naming `where` and the line number for an unterminated quote.
bool csv_read_record(std::istream& in, std::vector<std::string>& fields, const std::string& where, int& line_no);

} // namespace cuboid::sim::analysis

// Table: left-aligned text columns for pt2ctl's human-readable output.
//
//   NAME  STATE  WEIGHTS
//   mlp   READY  initial
//
// Thread-safety: not thread-safe.
#pragma once

#include <string>
#include <vector>

namespace pt2serve::ctl {

class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }

  // Rows may have fewer cells than the header (the rest is blank).
  void AddRow(std::vector<std::string> cells) { rows_.push_back(std::move(cells)); }

  // Every row on its own line, columns separated by two spaces, no trailing
  // blanks.
  std::string ToString() const;

 private:
  std::vector<std::vector<std::string>> rows_;  // rows_[0] is the header
};

}  // namespace pt2serve::ctl

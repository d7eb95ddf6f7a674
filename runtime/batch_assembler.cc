#include "runtime/batch_assembler.h"

#include <cstring>
#include <memory>
#include <numeric>
#include <string>

namespace pt2serve {

std::vector<int64_t> ShapeKey(const std::vector<const Tensor*>& inputs) {
  std::vector<int64_t> key;
  for (const Tensor* t : inputs) {
    key.push_back(-static_cast<int64_t>(t->shape.size()));  // rank marker (never a dim: dims >= 0)
    key.insert(key.end(), t->shape.begin() + 1, t->shape.end());
  }
  return key;
}

std::vector<Tensor> ConcatRows(const std::vector<std::vector<const Tensor*>>& requests) {
  std::vector<Tensor> out;
  const size_t num_inputs = requests.front().size();
  for (size_t i = 0; i < num_inputs; ++i) {
    size_t nbytes = 0;
    int64_t rows = 0;
    for (const auto& request : requests) {
      nbytes += request[i]->nbytes;
      rows += request[i]->shape[0];
    }
    auto buffer = std::shared_ptr<std::byte[]>(new std::byte[nbytes > 0 ? nbytes : 1]);
    size_t offset = 0;
    for (const auto& request : requests) {
      if (request[i]->nbytes > 0) std::memcpy(buffer.get() + offset, request[i]->data, request[i]->nbytes);
      offset += request[i]->nbytes;
    }
    const Tensor& first = *requests.front()[i];
    Tensor t;
    t.name = first.name;
    t.dtype = first.dtype;
    t.shape = first.shape;
    t.shape[0] = rows;
    t.data = buffer.get();
    t.nbytes = nbytes;
    t.owner = std::move(buffer);
    out.push_back(std::move(t));
  }
  return out;
}

Status SplitRows(const std::vector<Tensor>& outputs, const std::vector<int64_t>& rows,
                 std::vector<std::vector<Tensor>>& out) {
  const int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
  out.assign(rows.size(), {});
  for (const Tensor& output : outputs) {
    if (output.shape.empty() || output.shape[0] != total) {
      return Internal("output '" + output.name + "' has shape " + ShapeToString(output.shape) +
                      " for a batch of " + std::to_string(total) +
                      " rows: its dim 0 does not follow the batch, so the model cannot use "
                      "dynamic batching");
    }
    const size_t row_bytes = total > 0 ? output.nbytes / static_cast<size_t>(total) : 0;
    size_t offset = 0;
    for (size_t r = 0; r < rows.size(); ++r) {
      Tensor piece = output;  // shares output.owner
      piece.shape[0] = rows[r];
      piece.data = output.data + offset;
      piece.nbytes = row_bytes * static_cast<size_t>(rows[r]);
      offset += piece.nbytes;
      out[r].push_back(std::move(piece));
    }
  }
  return Status::Ok();
}

}  // namespace pt2serve

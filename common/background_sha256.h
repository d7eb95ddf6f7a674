// BackgroundSha256: SHA-256 of a byte stream, computed on a helper thread so
// that hashing overlaps with whatever produces the bytes (receiving an
// upload, sending a file).
//
// Update() only queues a view of the bytes; the helper thread hashes them in
// the order queued. The caller keeps each queued range alive and unchanged
// until FinishHex() returns or the object is destroyed (weight uploads queue
// ranges of their final staging buffers, which are written once, so no copy
// is needed). Adjacent ranges are merged, so queueing a file chunk by chunk
// costs one wake-up per batch, not per chunk.
//
// Thread-safety: Update/FinishHex from one thread at a time (the producer);
// the helper thread is internal. The destructor discards queued bytes and
// joins the helper.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "common/sha256.h"

namespace pt2serve {

class BackgroundSha256 {
 public:
  BackgroundSha256() = default;
  ~BackgroundSha256();
  BackgroundSha256(const BackgroundSha256&) = delete;
  BackgroundSha256& operator=(const BackgroundSha256&) = delete;

  // Queues [data, data + size) (see the lifetime rule above).
  void Update(const void* data, size_t size);
  // Waits until everything queued is hashed; returns the lower-case hex
  // digest and starts a new stream.
  std::string FinishHex();
  // Drops the stream: discards what is queued and waits until the helper has
  // let go of every range (it stops within one slice), so the caller may free
  // them; the next Update starts a new stream.
  void Abandon();
  // Bytes hashed so far (for progress reports); any thread.
  uint64_t bytes_hashed() const;

 private:
  struct Range {
    const std::byte* data;
    size_t size;
  };
  void Run();

  Sha256 hasher_;  // touched only by the helper thread while it runs
  mutable std::mutex mu_;
  std::condition_variable wake_;  // new work, or stopping
  std::condition_variable idle_;  // queue drained
  // Guarded by mu_.
  std::deque<Range> queue_;
  bool busy_ = false;  // the helper is hashing ranges it took off the queue
  bool stop_ = false;
  bool abandoning_ = false;  // Abandon() waits: the helper stops after its slice
  uint64_t hashed_ = 0;
  std::thread thread_;  // started by the first Update
};

}  // namespace pt2serve

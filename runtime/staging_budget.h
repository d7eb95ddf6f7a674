// StagingBudget: the server-wide limit on memory that weight pushes hold on
// top of the weights being served (server.weights_staging_budget_bytes).
//
// Every model's ConstantBufferManager owns one Account. Its charge is what
// the model holds for staging: the upload buffers of a push in progress plus
// its inactive constant buffer while that is allocated (STAGED, PREVIOUS, or
// being written). A push reserves what it will need at its header, before a
// byte arrives (Reserve: refused with RESOURCE_EXHAUSTED when the sum over
// all accounts would exceed the limit); the charge drops when an upload
// buffer or the inactive buffer is released (Set). Destroying an account
// (the model unloads) releases its charge.
//
// Thread-safety: every method may be called from any thread. An Account is
// used by one writer at a time (its model's writer slot) but read by any.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"

namespace pt2serve {

// Name of the server-wide config key, for messages.
inline constexpr char kServerStagingBudgetKey[] = "server.weights_staging_budget_bytes";
// Name of the per-model config key, for messages.
inline constexpr char kModelStagingBudgetKey[] = "weights_staging_budget_bytes";

class StagingBudget {
 public:
  // `limit_bytes` 0 = no limit (charges are still counted and reported).
  explicit StagingBudget(size_t limit_bytes) : limit_(limit_bytes) {}
  StagingBudget(const StagingBudget&) = delete;
  StagingBudget& operator=(const StagingBudget&) = delete;

  size_t limit() const { return limit_; }
  // Sum of every account's charge now.
  size_t in_use() const;

  class Account {
   public:
    ~Account();
    Account(const Account&) = delete;
    Account& operator=(const Account&) = delete;

    // Raises (or lowers) this account's charge to `bytes` if the total then
    // stays within the limit; otherwise RESOURCE_EXHAUSTED naming the key,
    // the bytes needed, the limit and what other models hold, and the charge
    // is unchanged. `what` says what needs the bytes (for the message).
    Status Reserve(size_t bytes, const std::string& what);
    // Sets the charge without checking (releasing memory, or recording what
    // is held whatever the limit).
    void Set(size_t bytes);
    size_t charge() const;

   private:
    friend class StagingBudget;
    explicit Account(std::shared_ptr<StagingBudget> budget) : budget_(std::move(budget)) {}
    const std::shared_ptr<StagingBudget> budget_;
    size_t charge_ = 0;  // guarded by budget_->mu_
  };

  // A new account with charge 0; it keeps the budget alive.
  static std::unique_ptr<Account> Open(const std::shared_ptr<StagingBudget>& budget);

 private:
  const size_t limit_;
  mutable std::mutex mu_;
  size_t in_use_ = 0;  // guarded by mu_: sum of the accounts' charges
};

}  // namespace pt2serve

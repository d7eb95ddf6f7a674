#include "runtime/staging_budget.h"

namespace pt2serve {

size_t StagingBudget::in_use() const {
  std::lock_guard lock(mu_);
  return in_use_;
}

std::unique_ptr<StagingBudget::Account> StagingBudget::Open(
    const std::shared_ptr<StagingBudget>& budget) {
  return std::unique_ptr<Account>(new Account(budget));
}

StagingBudget::Account::~Account() { Set(0); }

Status StagingBudget::Account::Reserve(size_t bytes, const std::string& what) {
  std::lock_guard lock(budget_->mu_);
  const size_t others = budget_->in_use_ - charge_;
  if (budget_->limit_ != 0 && bytes > charge_ && others + bytes > budget_->limit_) {
    return ResourceExhausted(what + " needs " + std::to_string(bytes) +
                             " bytes of staging memory; with the " + std::to_string(others) +
                             " bytes other models hold for staging that exceeds " +
                             kServerStagingBudgetKey + " (" + std::to_string(budget_->limit_) +
                             " bytes); free an inactive buffer (weights free-inactive) or "
                             "raise the budget");
  }
  budget_->in_use_ = others + bytes;
  charge_ = bytes;
  return Status::Ok();
}

void StagingBudget::Account::Set(size_t bytes) {
  std::lock_guard lock(budget_->mu_);
  budget_->in_use_ = budget_->in_use_ - charge_ + bytes;
  charge_ = bytes;
}

size_t StagingBudget::Account::charge() const {
  std::lock_guard lock(budget_->mu_);
  return charge_;
}

}  // namespace pt2serve

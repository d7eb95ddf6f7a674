// Weight memory accounting (ConstantBufferManager's BufferStatus, the
// server-wide StagingBudget, the process's RSS) as the WeightsMemory /
// PushMemory messages that GetModel, GetConstantBufferStatus and
// UpdateConstantBuffer report. One conversion, so the three agree.
#pragma once

#include "pt2serve/v1/inference.pb.h"
#include "runtime/constant_buffer_manager.h"
#include "runtime/staging_budget.h"

namespace pt2serve::server {

void PushMemoryToProto(const PushMemory& push, pt2serve::v1::PushMemory* proto);
// `server_budget` may be null (no server-wide budget object: reported as 0).
// Reads the process's RSS now.
void WeightsMemoryToProto(const BufferStatus& status, const StagingBudget* server_budget,
                          pt2serve::v1::WeightsMemory* proto);

}  // namespace pt2serve::server

// Dynamic batching settings between their three outside forms (YAML model
// entry, admin LoadModel / GetModel proto) and the runtime's BatchingConfig.
// Ranges are checked by Model::Load, against the package, in one place.
#pragma once

#include "config/server_config.h"
#include "pt2serve/v1/inference.pb.h"
#include "runtime/model.h"

namespace pt2serve::server {

BatchingConfig BatchingFromEntry(const BatchingEntry& entry);
BatchingConfig BatchingFromProto(const pt2serve::v1::DynamicBatching& proto);
// What a loaded model's batcher does (defaults resolved).
void BatchingToProto(const BatcherOptions& options, pt2serve::v1::DynamicBatching* proto);

}  // namespace pt2serve::server

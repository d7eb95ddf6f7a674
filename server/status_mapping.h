// The one place where pt2serve Status becomes grpc::Status.
#pragma once

#include <grpcpp/support/status.h>

#include "common/status.h"

namespace pt2serve::server {

grpc::Status ToGrpcStatus(const Status& status);

}  // namespace pt2serve::server

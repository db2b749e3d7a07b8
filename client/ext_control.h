// The external store's control requests over a control::ControlClient (one daemon): register
// a read set, release a job, list map outputs. Internal (not installed): the Reader,
// sluicectl and `sluice get` use them. Thread-compatible, as the client is.
#pragma once

#include <string>
#include <vector>

#include "buffer/status.h"
#include "client/ext_messages.h"
#include "tools/control/control_client.h"

namespace sluice::client {

// The partition id to request for `outputs` of `job` on this daemon ("ext/<job>/<digest>").
Result<std::string> RegisterReadSet(control::ControlClient& daemon, const std::string& job,
                                    const std::string& token,
                                    const std::vector<MapOutputKey>& outputs);
// Releases the job's external partitions on this daemon (sluicectl release).
Status ReleaseExternalJob(control::ControlClient& daemon, const std::string& job,
                          const std::string& token);
// The daemon's external map outputs ("" = every job).
Result<ExternalList> ListExternal(control::ControlClient& daemon, const std::string& job);

}  // namespace sluice::client

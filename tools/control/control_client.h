// ControlClient: a blocking client of sluiced's control messages (schema/control.fbs), for
// sluice-harness, tests and scripts. One TCP connection to one daemon; the handshake (Hello,
// HelloAck, and the shared-secret challenge/response when the daemon asks for it) runs in
// Connect. The client's Hello is control-only (segment_size 0, shuffle::kControlOnlySegmentSize):
// the daemon answers its segment size, which segment_size() returns. Requests are answered in order; every call has the connection's timeout.
//
// A hostile or confused daemon cannot make the client allocate more than one frame's limit
// (transport::MaxFrameLength of the segment size): longer frames are refused by their header.
//
// Thread-compatible: one thread at a time per client. Errors name the daemon's address.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sluice/buffer/status.h"
#include "sluice/control/job_spec.h"

namespace sluice::control {

// Where a tool finds the cluster's shared secret, the way sluiced does (DESIGN.md "Errors and
// faults"): `auth_secret_file` when set, else <state_dir>/auth_secret.
struct SecretSource {
  std::string auth_secret_file;  // --auth-secret-file; wins when not empty
  std::string state_dir;         // --state-dir; empty: shuffle::auth::kDefaultStateDir
};

// Reads the secret that `source` names; never creates one (only sluiced does). Errors, each
// naming the path: PermissionDenied with the `chmod 600` to run when group or others may read
// the file; InvalidArgument naming both --auth-secret-file and --state-dir when neither gives a
// secret (missing, unreadable, too short). Tools exit 2 on either.
Result<std::string> FindSecret(const SecretSource& source);

struct ControlClientOptions {
  std::chrono::milliseconds timeout{10000};  // connect, handshake and each request
  std::optional<std::string> secret;         // shared secret, when the daemon requires one
  std::string client_name = "sluice-control";
};

class ControlClient {
 public:
  // Connects and authenticates. StatusCode::kPermissionDenied when the
  // daemon refuses the secret or requires one that is not given.
  static Result<std::unique_ptr<ControlClient>> Connect(const std::string& host, uint16_t port,
                                                        const ControlClientOptions& options = {});
  ~ControlClient();
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  // The daemon accepts the job and starts its share, as node `node_index` of spec.nodes, or
  // refuses it with the reason (bad spec, not enough network memory: the message names the
  // option and the value that would fit).
  Status SubmitJob(const JobSpec& spec, uint32_t node_index);
  // This daemon's view of the job (kUnknown state for a job id it never saw). `token` is the
  // job's JobSpec::token; a daemon refuses the status of a job whose token it does not get.
  Result<JobStatus> GetJobStatus(const std::string& job_id, const std::string& token = "");
  // Cancels the job's tasks on this daemon with `reason`; their partitions and gates are
  // released. Ok also when the job already ended. `token` as for GetJobStatus.
  Status CancelJob(const std::string& job_id, const std::string& token, const std::string& reason);
  // Without a token: reaches only jobs submitted without one (older daemons and tests).
  Status CancelJob(const std::string& job_id, const std::string& reason) {
    return CancelJob(job_id, "", reason);
  }
  // Counters, pool state, credit options, the Prometheus text and the credit dump.
  Result<NodeStats> GetStats();
  // The daemon's jobs (running and remembered ended ones) with state and counts; no tokens.
  // At most one frame: JobList::note says when the list was cut.
  Result<JobList> ListJobs();
  // Fault injection for tests: the daemon closes every shuffle data connection it has (both
  // served and client side) at once, as a network cut would. Returns how many it closed.
  Result<uint32_t> CutConnections();

  // A request whose codec lives outside tools/control (the external store's messages,
  // client/ext_messages.h): sends `message` as frame `type` and returns the reply's metadata
  // when it is of `expect_type`; a ControlResult error becomes its Status. With expect_type
  // kControlResult, an OK result gives its (empty) bytes back.
  Result<std::vector<uint8_t>> Request(uint8_t type, const std::vector<uint8_t>& message,
                                       uint8_t expect_type);

  const std::string& address() const { return address_; }
  // The daemon's segment size, from its HelloAck.
  uint32_t segment_size() const { return segment_size_; }

 private:
  ControlClient(int fd, std::string address, ControlClientOptions options);
  struct Reply;
  Result<Reply> Call(uint8_t type, const uint8_t* msg, size_t len, uint8_t expect_type);
  // A request answered with ControlResult: its status (and count).
  Status Command(uint8_t type, const std::vector<uint8_t>& msg, uint32_t* count);

  int fd_;
  const std::string address_;
  const ControlClientOptions options_;
  uint32_t segment_size_ = 0;
};

}  // namespace sluice::control

// Helpers of the in-process daemon tests (daemon_test.cc, daemon_hostile_test.cc): daemons on
// loopback with a shared 0600 secret, control clients, jobs with tokens, and job status and
// cancel sent straight to Daemon::OnControlRequest with the job's token (the path a control
// connection takes after the handshake).
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "schema/control.h"
#include "testutil/temp_dir.h"
#include "testutil/wait.h"
#include "tools/control/control_client.h"
#include "tools/control/control_codec.h"
#include "tools/daemon/daemon.h"

namespace sluice::daemon::testing {

inline constexpr const char* kTestSecret = "0123456789abcdef-daemon-tests";

// The test process's scratch directory, removed with everything in it at exit: secret files
// and the daemons' shared state dir (a test leaves nothing in /tmp).
inline const ::sluice::testutil::TempDir& Scratch() {
  static const ::sluice::testutil::TempDir dir("sluice-daemon-test");
  return dir;
}

inline std::string WriteSecret(const std::string& name, const std::string& secret) {
  // 0600: group- or world-readable secrets are refused.
  return ::sluice::testutil::WriteFileWithMode(Scratch().Path(name), secret + "\n", 0600);
}

inline const std::string& TestSecretFile() {
  static const std::string path = WriteSecret("test_secret", kTestSecret);
  return path;
}

// A daemon on a free loopback port. secret_file "": the shared test secret.
inline std::unique_ptr<Daemon> StartDaemon(const std::string& secret_file = "",
                                           uint64_t memory = 32ull << 20,
                                           const std::function<void(DaemonConfig&)>& tweak = {}) {
  DaemonConfig c;
  c.port = 0;
  c.network_memory = memory;
  c.auth_secret_file = secret_file.empty() ? TestSecretFile() : secret_file;
  c.state_dir = Scratch().Path("state");
  c.local_socket = "off";  // several daemons share the state dir here; no local writers
  c.buffer_timeout_ms = 10;
  if (tweak) tweak(c);
  auto d = Daemon::Start(c);
  EXPECT_TRUE(d.ok()) << d.status().ToString();
  return d.ok() ? std::move(*d) : nullptr;
}

inline std::unique_ptr<control::ControlClient> Connect(
    Daemon& d, std::optional<std::string> secret = std::string(kTestSecret)) {
  // A control-only client: the daemon's segment size comes from its HelloAck.
  control::ControlClientOptions o;
  o.secret = std::move(secret);
  auto c = control::ControlClient::Connect("127.0.0.1", d.port(), o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? std::move(*c) : nullptr;
}

// One producer and one consumer per daemon, all to all, with a token.
inline control::JobSpec Job(const std::string& id, const std::vector<Daemon*>& nodes,
                            uint64_t records) {
  control::JobSpec s;
  s.job_id = id;
  s.token = std::string(64, 'a' + static_cast<char>(id.size() % 6));
  for (uint32_t i = 0; i < nodes.size(); ++i) {
    s.nodes.push_back("127.0.0.1:" + std::to_string(nodes[i]->port()));
    s.producer_nodes.push_back(i);
    s.consumer_nodes.push_back(i);
  }
  s.records_per_producer = records;
  s.record_size_min = 64;
  s.record_size_max = 512;
  s.seed = 7;
  s.timeout_ms = 60000;
  return s;
}

inline void Submit(const control::JobSpec& spec,
                   const std::vector<control::ControlClient*>& clients) {
  for (uint32_t i = 0; i < clients.size(); ++i) {
    Status st = clients[i]->SubmitJob(spec, i);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
}

struct DirectReply {
  schema::MessageType type = schema::MessageType::kControlResult;
  std::vector<uint8_t> message;
};

// One control request through Daemon::OnControlRequest, answered within 180 s. A submit replies
// once the job's threads run: 1,600 of them took over 60 s to start under TSan on a slow
// two-core machine (10 s on a faster one). The bound only keeps a lost reply from hanging.
inline DirectReply Call(Daemon& d, schema::MessageType type, const std::vector<uint8_t>& msg) {
  auto p = std::make_shared<std::promise<DirectReply>>();
  auto f = p->get_future();
  d.OnControlRequest(type, msg, "test-peer", [p](schema::MessageType t, std::vector<uint8_t> m) {
    p->set_value(DirectReply{t, std::move(m)});
  });
  EXPECT_EQ(f.wait_for(std::chrono::seconds(180)), std::future_status::ready) << "no reply";
  return f.get();
}

// The ControlResult of a reply (Internal when the reply is something else).
inline Status ResultOf(const DirectReply& r) {
  if (r.type != schema::MessageType::kControlResult) {
    return InternalError("reply is not a ControlResult");
  }
  auto m = schema::ParseControlResult(r.message);
  if (!m.ok()) return m.status();
  return control::DecodeControlResult(**m);
}

inline Result<control::JobStatus> JobStatusOf(Daemon& d, const std::string& id,
                                              const std::string& token) {
  const DirectReply r =
      Call(d, schema::MessageType::kJobStatusRequest, control::EncodeJobStatusRequest(id, token));
  if (r.type != schema::MessageType::kJobStatusResponse) return ResultOf(r);
  auto m = schema::ParseJobStatusResponse(r.message);
  if (!m.ok()) return m.status();
  return control::DecodeJobStatus(**m);
}

inline Status CancelOf(Daemon& d, const std::string& id, const std::string& token,
                       const std::string& reason = "test") {
  return ResultOf(
      Call(d, schema::MessageType::kCancelJob, control::EncodeCancelJob(id, reason, token)));
}

// Polls until every node's job ended (or the deadline passed); returns the last statuses.
inline std::vector<control::JobStatus> WaitEnded(
    const control::JobSpec& spec, const std::vector<Daemon*>& daemons,
    std::chrono::seconds deadline = std::chrono::seconds(60)) {
  const auto end = std::chrono::steady_clock::now() + deadline;
  std::vector<control::JobStatus> out;
  while (true) {
    out.clear();
    bool all_ended = true;
    for (Daemon* d : daemons) {
      auto st = JobStatusOf(*d, spec.job_id, spec.token);
      EXPECT_TRUE(st.ok()) << st.status().ToString();
      if (!st.ok()) return out;
      all_ended = all_ended && st->state != control::JobState::kRunning &&
                  st->state != control::JobState::kUnknown;
      out.push_back(*st);
    }
    if (all_ended || std::chrono::steady_clock::now() > end) return out;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// The leak check through the control port: every segment back (jobs are reaped within ~100 ms).
inline void ExpectAllSegmentsBack(control::ControlClient& c) {
  control::NodeStats s;
  for (int i = 0; i < 200; ++i) {
    auto r = c.GetStats();
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    s = *r;
    if (s.available_segments == s.total_segments && s.running_jobs == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  EXPECT_EQ(s.available_segments, s.total_segments) << s.node_name << "\n" << s.credit_dump;
  EXPECT_EQ(s.running_jobs, 0u);
}

// The same in-process, without a connection.
inline void ExpectAllSegmentsBack(Daemon& d) {
  control::NodeStats s;
  ::sluice::testutil::PollUntil(
      [&] {
        s = d.Stats();
        return s.available_segments == s.total_segments && s.running_jobs == 0;
      },
      std::chrono::seconds(5), std::chrono::milliseconds(25));
  EXPECT_EQ(s.available_segments, s.total_segments) << s.node_name << "\n" << s.credit_dump;
  EXPECT_EQ(s.running_jobs, 0u);
}

inline void ExpectCleanShutdown(Daemon& d) {
  const ShutdownReport r = d.Shutdown(std::chrono::milliseconds(2000));
  EXPECT_EQ(r.leaked_segments, 0u);
  EXPECT_EQ(r.stuck_tasks, 0u);
}

// N daemons with the test secret, one control client each. End() is every test's leak check.
struct Cluster {
  std::vector<std::unique_ptr<Daemon>> daemons;
  std::vector<std::unique_ptr<control::ControlClient>> clients;

  explicit Cluster(int n, const std::function<void(DaemonConfig&)>& tweak = {}) {
    for (int i = 0; i < n; ++i) {
      daemons.push_back(StartDaemon("", 32ull << 20, tweak));
      clients.push_back(daemons.back() ? Connect(*daemons.back()) : nullptr);
    }
  }
  bool ok() const {
    for (size_t i = 0; i < daemons.size(); ++i) {
      if (!daemons[i] || !clients[i]) return false;
    }
    return true;
  }
  std::vector<Daemon*> nodes() const {
    std::vector<Daemon*> v;
    for (const auto& d : daemons) v.push_back(d.get());
    return v;
  }
  std::vector<control::ControlClient*> controls() const {
    std::vector<control::ControlClient*> v;
    for (const auto& c : clients) v.push_back(c.get());
    return v;
  }
  void End() {
    for (auto& c : clients) {
      if (c) ExpectAllSegmentsBack(*c);
      c.reset();
    }
    for (auto& d : daemons) {
      if (d) ExpectCleanShutdown(*d);
    }
  }
};

}  // namespace sluice::daemon::testing

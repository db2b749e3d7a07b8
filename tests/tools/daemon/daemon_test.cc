// sluiced in-process: two or three Daemons on loopback talking through their real ports, driven
// through ControlClient like the harness does. Every test ends with the leak check: each
// daemon's pool has all its segments back once its jobs ended.
#include "tools/daemon/daemon.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "tools/control/control_client.h"
#include "tools/control/control_codec.h"
#include "tests/tools/daemon/daemon_test_util.h"
#include "transport/frame_codec.h"
#include "transport/log.h"
#include "transport/raw_socket.h"

namespace sluice::daemon {
namespace {

using control::ControlClient;
using control::ControlClientOptions;
using control::JobSpec;
using control::JobState;
using control::JobStatus;
using transport::testutil::Bytes;
using transport::testutil::RawSocket;

using namespace sluice::daemon::testing;  // NOLINT: the shared helpers of these tests

TEST(DaemonTest, StatsReportThePoolAndPrometheusText) {
  auto d = StartDaemon();
  ASSERT_TRUE(d);
  auto c = Connect(*d);
  ASSERT_TRUE(c);
  auto s = c->GetStats();
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_EQ(s->total_segments, (32u << 20) / (32u << 10));
  EXPECT_EQ(s->available_segments, s->total_segments);
  EXPECT_EQ(s->segment_size, 32u << 10);
  EXPECT_GT(s->rss_bytes, 0u);
  EXPECT_GE(s->connections, 1u);  // this control connection
  EXPECT_NE(s->prometheus.find("# TYPE sluice_pool_segments gauge"), std::string::npos);
  EXPECT_NE(s->prometheus.find("sluice_pool_segments{node=\"" + d->node_name() + "\"} 1024"),
            std::string::npos)
      << s->prometheus;
  EXPECT_NE(s->prometheus.find("sluice_control_requests_total"), std::string::npos);
  EXPECT_NE(s->prometheus.find("reason=\"BadMagic\""), std::string::npos) << s->prometheus;
  // An unknown job is answered like a wrong token: PermissionDenied, nothing about existence.
  auto unknown = JobStatusOf(*d, "never-submitted", std::string(64, 'x'));
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(CancelOf(*d, "never-submitted", std::string(64, 'x')).code(),
            StatusCode::kPermissionDenied);
  c.reset();
  ExpectCleanShutdown(*d);
}

TEST(DaemonTest, JobBetweenTwoDaemonsDeliversEveryRecordAndReturnsEverySegment) {
  Cluster cl(2);
  ASSERT_TRUE(cl.ok());
  ControlClient* ca = cl.controls()[0];
  const JobSpec spec = Job("two-nodes", cl.nodes(), 20000);
  Submit(spec, cl.controls());
  auto st = WaitEnded(spec, cl.nodes());
  ASSERT_EQ(st.size(), 2u);
  uint64_t sent = 0, received = 0;
  for (const JobStatus& s : st) {
    EXPECT_EQ(s.state, JobState::kSucceeded) << s.error;
    for (const auto& p : s.producers) sent += p.records;
    for (const auto& c : s.consumers) {
      received += c.records;
      EXPECT_EQ(c.duplicated + c.reordered + c.corrupted, 0u);
    }
  }
  EXPECT_EQ(sent, 40000u);
  EXPECT_EQ(received, sent);
  // The same id again is refused; ended status stays readable.
  Status again = ca->SubmitJob(spec, 0);
  EXPECT_EQ(again.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(again.message().find("already known"), std::string::npos) << again.ToString();
  auto later = ca->GetStats();
  ASSERT_TRUE(later.ok());
  EXPECT_NE(later->prometheus.find("sluice_jobs_ended_total{node=\"" +
                                   cl.daemons[0]->node_name() + "\",outcome=\"succeeded\"} 1"),
            std::string::npos);
  cl.End();
}

TEST(DaemonTest, JobTooBigForTheMemoryIsRefusedWithTheNumbers) {
  auto d = StartDaemon("", 4ull << 20);  // 128 segments
  ASSERT_TRUE(d);
  auto c = Connect(*d);
  ASSERT_TRUE(c);
  JobSpec spec = Job("too-big", {d.get()}, 10);
  // 200 consumers on one node reading from one remote-less producer still need output pools
  // of 200+1 segments at least.
  spec.consumer_nodes.assign(200, 0);
  Status st = c->SubmitJob(spec, 0);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("network_memory"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("too-big"), std::string::npos) << st.ToString();
  // Bad spec: node index out of range.
  Status bad = c->SubmitJob(Job("bad-node", {d.get()}, 10), 5);
  EXPECT_FALSE(bad.ok());
  ExpectAllSegmentsBack(*c);
  c.reset();
  ExpectCleanShutdown(*d);
}

TEST(DaemonTest, SharedSecretIsRequiredAndChecked) {
  const std::string file = WriteSecret("sluice_secret_a", "correct horse battery staple");
  auto d = StartDaemon(file);
  ASSERT_TRUE(d);
  ControlClientOptions right;
  right.secret = "correct horse battery staple";
  auto ok = ControlClient::Connect("127.0.0.1", d->port(), right);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_TRUE((*ok)->GetStats().ok());

  ControlClientOptions wrong;
  wrong.secret = "incorrect horse battery staple";
  auto refused = ControlClient::Connect("127.0.0.1", d->port(), wrong);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied) << refused.status().ToString();
  // Mutual: the client already refuses the daemon's proof, before it sends its own.
  EXPECT_NE(refused.status().message().find("failed authentication"), std::string::npos)
      << refused.status().ToString();

  auto none = ControlClient::Connect("127.0.0.1", d->port(), {});
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(none.status().message().find("requires authentication"), std::string::npos)
      << none.status().ToString();

  // A client that skips the proof and asks anyway, and one that sends a wrong proof, get
  // AuthenticationFailed and nothing else, and the daemon counts both.
  for (bool send_proof : {false, true}) {
    // A hand-driven peer for what ControlClient never does (skip the proof, forge one).
    RawSocket peer(d->port());
    ASSERT_TRUE(peer.connected());
    const auto kHeartbeat = static_cast<uint8_t>(schema::MessageType::kHeartbeat);
    auto send = [&](schema::MessageType type, std::span<const uint8_t> meta) {
      ASSERT_TRUE(peer.SendFrame(static_cast<uint8_t>(type), Bytes(meta.begin(), meta.end())));
    };
    auto next_type = [&] {
      auto frame = peer.ReadFrame(std::chrono::seconds(5), kHeartbeat);
      return frame ? frame->header.type : uint8_t{0};  // 0: closed or timed out
    };
    schema::MessageBuilder b;
    schema::HandshakeFields f;
    f.segment_size = 32 << 10;
    send(schema::MessageType::kHello, b.Hello(f));
    ASSERT_EQ(next_type(), static_cast<uint8_t>(schema::MessageType::kHelloAck));
    if (send_proof) {
      std::vector<uint8_t> forged(32, 0x5a);
      send(schema::MessageType::kAuthResponse, b.AuthResponse(forged));
    }
    send(schema::MessageType::kStatsRequest, control::EncodeStatsRequest());
    auto reply = peer.ReadFrame(std::chrono::seconds(5), kHeartbeat);
    ASSERT_TRUE(reply.has_value()) << "no reply before the connection closed";
    ASSERT_EQ(reply->header.type, static_cast<uint8_t>(schema::MessageType::kErrorResponse));
    auto err = schema::ParseErrorResponse(reply->metadata);
    ASSERT_TRUE(err.ok());
    EXPECT_EQ((*err)->code(), fb::ErrorCode::AuthenticationFailed);
    bool eof = false;  // closed, not merely silent (a timeout also makes ReadFrame nullopt)
    peer.ReadUntilClosed(std::chrono::seconds(5), &eof);
    EXPECT_TRUE(eof) << "the daemon kept the connection open";
  }
  auto s = (*ok)->GetStats();
  ASSERT_TRUE(s.ok());
  EXPECT_NE(s->prometheus.find("sluice_auth_failures_total{node=\"" + d->node_name() + "\"} 2"),
            std::string::npos)
      << s->prometheus;
  ok->reset();
  ExpectCleanShutdown(*d);
}

TEST(DaemonTest, WithoutASecretFileTheStateDirSecretIsCreated0600AndUsed) {
  const std::string dir = Scratch().Path("own-state");
  auto in_state_dir = [&](DaemonConfig& c) {
    c.auth_secret_file.clear();
    c.state_dir = dir;
  };
  auto d = StartDaemon("", 32ull << 20, in_state_dir);
  ASSERT_TRUE(d);
  const std::string file = dir + "/auth_secret";
  struct stat fs {}, ds {};
  ASSERT_EQ(::stat(file.c_str(), &fs), 0);
  ASSERT_EQ(::stat(dir.c_str(), &ds), 0);
  EXPECT_EQ(fs.st_mode & 0777, 0600u);
  EXPECT_EQ(ds.st_mode & 0777, 0700u);
  std::string secret;
  std::getline(std::ifstream(file), secret);
  EXPECT_EQ(secret.size(), 64u);
  auto none = ControlClient::Connect("127.0.0.1", d->port(), {});
  ASSERT_FALSE(none.ok()) << "authenticated by default";
  EXPECT_EQ(none.status().code(), StatusCode::kPermissionDenied);
  auto c = Connect(*d, secret);
  ASSERT_TRUE(c);
  c.reset();
  ExpectCleanShutdown(*d);
  d.reset();
  // A second start reuses the secret.
  d = StartDaemon("", 32ull << 20, in_state_dir);
  ASSERT_TRUE(d);
  c = Connect(*d, secret);
  ASSERT_TRUE(c);
  c.reset();
  ExpectCleanShutdown(*d);
  d.reset();
  // A stopped daemon leaves its secret and an empty spill root: no node directory, no lock.
  EXPECT_TRUE(std::filesystem::is_empty(dir + "/spill"));
  // Readable by others: refused at start, naming the file and the chmod.
  ::chmod(file.c_str(), 0644);
  DaemonConfig cfg;
  cfg.port = 0;
  cfg.network_memory = 32ull << 20;
  in_state_dir(cfg);
  auto refused = Daemon::Start(cfg);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kPermissionDenied);
  EXPECT_NE(refused.status().message().find("chmod 600 " + file), std::string::npos)
      << refused.status().message();
  std::filesystem::remove_all(dir);
}

// No mode of sluiced serves an unauthenticated peer: auth = off (once allowed on loopback,
// where any local user could then submit jobs) is refused at start, on loopback too, naming
// where the secret comes from instead. Nothing listens.
TEST(DaemonTest, AuthOffIsRefusedOnEveryAddressNamingTheFix) {
  for (const char* listen : {"127.0.0.1", "::1", "0.0.0.0"}) {
    DaemonConfig c;
    c.port = 0;
    c.listen = listen;
    c.network_memory = 32ull << 20;
    c.state_dir = Scratch().Path("state");
    c.local_socket = "off";
    c.auth = "off";
    auto d = Daemon::Start(c);
    ASSERT_FALSE(d.ok()) << listen;
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
    for (const char* names : {"auth = off is not supported", "--auth-secret-file", "state_dir"}) {
      EXPECT_NE(d.status().message().find(names), std::string::npos) << d.status().ToString();
    }
  }
}

TEST(DaemonTest, DaemonsWithTheSameSecretShuffleAndDifferentSecretsFailClearly) {
  const std::string f1 = WriteSecret("sluice_secret_1", "0123456789abcdef-one");
  const std::string f2 = WriteSecret("sluice_secret_2", "0123456789abcdef-two");
  auto a = StartDaemon(f1);
  auto b = StartDaemon(f1);
  auto x = StartDaemon(f2);
  ASSERT_TRUE(a && b && x);
  auto ca = Connect(*a, "0123456789abcdef-one");
  auto cb = Connect(*b, "0123456789abcdef-one");
  auto cx = Connect(*x, "0123456789abcdef-two");
  ASSERT_TRUE(ca && cb && cx);
  const JobSpec good = Job("same-secret", {a.get(), b.get()}, 5000);
  Submit(good, {ca.get(), cb.get()});
  for (const JobStatus& s : WaitEnded(good, {a.get(), b.get()})) {
    EXPECT_EQ(s.state, JobState::kSucceeded) << s.error;
  }
  JobSpec bad = Job("other-secret", {a.get(), x.get()}, 5000);
  bad.timeout_ms = 20000;
  Submit(bad, {ca.get(), cx.get()});
  bool named = false;
  for (const JobStatus& s : WaitEnded(bad, {a.get(), x.get()})) {
    EXPECT_EQ(s.state, JobState::kFailed);
    named = named || s.error.find("authenticat") != std::string::npos;
  }
  EXPECT_TRUE(named) << "no node's error mentions authentication";
  for (ControlClient* c : {ca.get(), cb.get(), cx.get()}) ExpectAllSegmentsBack(*c);
  ca.reset();
  cb.reset();
  cx.reset();
  for (Daemon* d : {a.get(), b.get(), x.get()}) ExpectCleanShutdown(*d);
}

TEST(DaemonTest, GarbageClosesOnlyThatConnectionAndTheDaemonKeepsServing) {
  Cluster cl(2);
  ASSERT_TRUE(cl.ok());
  ControlClient* ca = cl.controls()[0];
  // A hostile peer: random bytes, then a valid-looking header with a huge length.
  for (int round = 0; round < 2; ++round) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(cl.daemons[0]->port());
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    std::string junk = round == 0 ? std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                                  : std::string("\xff\xff\xff\xff" "SLUC\x01\x03\x00\x10", 12);
    ASSERT_EQ(::send(fd, junk.data(), junk.size(), MSG_NOSIGNAL), static_cast<ssize_t>(junk.size()));
    // The daemon closes the connection (after an ErrorResponse when it can).
    char buf[4096];
    ssize_t n = 0;
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    std::string answer;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) answer.append(buf, static_cast<size_t>(n));
    // An HTTP request gets an HTTP answer naming the metrics endpoint (issue 12).
    if (round == 0) {
      EXPECT_EQ(answer.substr(0, 25), "HTTP/1.0 400 Bad Request\r");
    }
    EXPECT_EQ(n, 0) << "the daemon did not close the hostile connection";
    ::close(fd);
  }
  auto s = ca->GetStats();
  ASSERT_TRUE(s.ok());
  EXPECT_GE(s->protocol_errors, 1u);  // the HTTP request is counted apart
  EXPECT_NE(s->prometheus.find("sluice_data_port_http_requests_total{node=\"" +
                               cl.daemons[0]->node_name() + "\",side=\"served\"} 1\n"),
            std::string::npos);
  // And it still serves a job.
  const JobSpec spec = Job("after-garbage", cl.nodes(), 5000);
  Submit(spec, cl.controls());
  for (const JobStatus& st : WaitEnded(spec, cl.nodes())) {
    EXPECT_EQ(st.state, JobState::kSucceeded) << st.error;
  }
  cl.End();
}

TEST(DaemonTest, CutConnectionsFailsTheJobNamingThePeerAndLeaksNothing) {
  Cluster cl(2, [](DaemonConfig& c) { c.enable_fault_injection = true; });
  ASSERT_TRUE(cl.ok());
  ControlClient* cb = cl.controls()[1];
  JobSpec spec = Job("cut", cl.nodes(), 50000000);  // far more than runs before the cut
  spec.timeout_ms = 30000;
  Submit(spec, cl.controls());
  // Wait until data flows, then cut b's data connections.
  for (int i = 0; i < 500; ++i) {
    auto st = JobStatusOf(*cl.daemons[0], spec.job_id, spec.token);
    ASSERT_TRUE(st.ok()) << st.status().ToString();
    if (!st->consumers.empty() && st->consumers[0].records > 1000) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // While it runs, the metrics show the job's gates and partitions (issue 12).
  const std::string metrics = cl.daemons[0]->Prometheus();
  const std::string node = "node=\"" + cl.daemons[0]->node_name() + "\"";
  EXPECT_NE(metrics.find("sluice_gate_exclusive_buffers{" + node + ",job=\"cut\",gate=\"cut/c"),
            std::string::npos) << metrics;
  EXPECT_NE(metrics.find("sluice_partition_backlog{" + node + ",job=\"cut\",partition=\""),
            std::string::npos);
  EXPECT_NE(metrics.find("sluice_partition_backpressure_seconds_total{" + node +
                         ",job=\"cut\",partition=\""),
            std::string::npos);
  auto cut = cb->CutConnections();
  ASSERT_TRUE(cut.ok()) << cut.status().ToString();
  EXPECT_GE(*cut, 1u);
  // Nothing recovers a pipelined stream that lost bytes: a task fails, naming the other node.
  // Which side sees the loss first is a race: a consumer ("connection to 127.0.0.1:P closed")
  // or a producer ("consumer N (node K, 127.0.0.1:P) went away"), whose job then cancels its
  // own consumers without an error of their own. Either names the peer.
  std::vector<JobStatus> st;
  struct TaskError {
    size_t node;  // the daemon that reported it
    std::string error;
  };
  auto first_error = [&]() -> std::optional<TaskError> {
    for (size_t k = 0; k < st.size(); ++k) {
      for (const auto& c : st[k].consumers) {
        if (!c.error.empty()) return TaskError{k, c.error};
      }
      for (const auto& p : st[k].producers) {
        if (!p.error.empty()) return TaskError{k, p.error};
      }
    }
    return std::nullopt;
  };
  std::optional<TaskError> first;
  for (int i = 0; i < 200 && !first; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    st = {*JobStatusOf(*cl.daemons[0], spec.job_id, spec.token),
          *JobStatusOf(*cl.daemons[1], spec.job_id, spec.token)};
    first = first_error();
  }
  if (!first) {
    ADD_FAILURE() << "no task failed within 5 s of the cut";
  } else {
    EXPECT_NE(first->error.find(spec.nodes[1 - first->node]), std::string::npos)
        << "the first task error should name the other node: " << first->error;
  }
  // The coordinator (here the test) cancels what still runs; then everything is back.
  EXPECT_TRUE(CancelOf(*cl.daemons[0], spec.job_id, spec.token, "connection cut").ok());
  EXPECT_TRUE(CancelOf(*cl.daemons[1], spec.job_id, spec.token, "connection cut").ok());
  for (const JobStatus& s : WaitEnded(spec, cl.nodes(), std::chrono::seconds(20))) {
    EXPECT_NE(s.state, JobState::kRunning);
    EXPECT_NE(s.state, JobState::kSucceeded);
  }
  cl.End();
}

TEST(DaemonTest, ShutdownCancelsARunningJobAndReturnsEverySegment) {
  auto a = StartDaemon();
  auto b = StartDaemon();
  ASSERT_TRUE(a && b);
  auto ca = Connect(*a);
  auto cb = Connect(*b);
  ASSERT_TRUE(ca && cb);
  JobSpec spec = Job("endless", {a.get(), b.get()}, 50000000);
  Submit(spec, {ca.get(), cb.get()});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ca.reset();
  const ShutdownReport ra = a->Shutdown(std::chrono::milliseconds(200));
  EXPECT_EQ(ra.jobs_cancelled, 1u);
  EXPECT_EQ(ra.leaked_segments, 0u);
  // The other side loses its peer: its job fails (not hangs), and its segments come home.
  for (const JobStatus& s : WaitEnded(spec, {b.get()}, std::chrono::seconds(30))) {
    EXPECT_EQ(s.state, JobState::kFailed) << s.error;
  }
  ExpectAllSegmentsBack(*cb);
  cb.reset();
  ExpectCleanShutdown(*b);
}

TEST(DaemonTest, FaultShimCorruptionIsCaughtAndDelayLosesNothing) {
  // Every buffer b sends is corrupted; with buffer checksums the receivers refuse it, naming b.
  auto a = StartDaemon("", 32ull << 20, [](DaemonConfig& c) { c.checksums = true; });
  auto b = StartDaemon("", 32ull << 20, [](DaemonConfig& c) {
    c.checksums = true;
    c.fault_corrupt_per_million = 1000000;
    c.fault_seed = 42;
  });
  ASSERT_TRUE(a && b);
  auto ca = Connect(*a);
  auto cb = Connect(*b);
  ASSERT_TRUE(ca && cb);
  JobSpec spec = Job("corrupt", {a.get(), b.get()}, 5000);
  spec.checksums = true;
  spec.timeout_ms = 20000;
  Submit(spec, {ca.get(), cb.get()});
  const auto st = WaitEnded(spec, {a.get(), b.get()});
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].state, JobState::kFailed);
  const std::string b_addr = "127.0.0.1:" + std::to_string(b->port());
  EXPECT_NE(st[0].error.find("checksum mismatch"), std::string::npos) << st[0].error;
  EXPECT_NE(st[0].error.find(b_addr), std::string::npos) << st[0].error;
  for (const auto& c : st[0].consumers) EXPECT_EQ(c.corrupted, 0u) << "a corrupted buffer got through";
  auto bs = cb->GetStats();
  ASSERT_TRUE(bs.ok());
  EXPECT_EQ(bs->prometheus.find("sluice_fault_shim_corrupted_total{node=\"" + b->node_name() +
                                "\",side=\"served\"} 0"),
            std::string::npos)
      << "b's shim corrupted nothing";
  ExpectAllSegmentsBack(*ca);
  ExpectAllSegmentsBack(*cb);
  ca.reset();
  cb.reset();
  ExpectCleanShutdown(*a);
  ExpectCleanShutdown(*b);

  // A delay line on every write of both daemons: slower, nothing lost.
  auto slow = [](DaemonConfig& c) { c.fault_delay_ms = 5; };
  auto x = StartDaemon("", 32ull << 20, slow);
  auto y = StartDaemon("", 32ull << 20, slow);
  ASSERT_TRUE(x && y);
  auto cx = Connect(*x);
  auto cy = Connect(*y);
  ASSERT_TRUE(cx && cy);
  const JobSpec delayed = Job("delayed", {x.get(), y.get()}, 5000);
  Submit(delayed, {cx.get(), cy.get()});
  uint64_t received = 0;
  for (const JobStatus& s : WaitEnded(delayed, {x.get(), y.get()})) {
    EXPECT_EQ(s.state, JobState::kSucceeded) << s.error;
    for (const auto& c : s.consumers) received += c.records;
  }
  EXPECT_EQ(received, 10000u);
  ExpectAllSegmentsBack(*cx);
  ExpectAllSegmentsBack(*cy);
  cx.reset();
  cy.reset();
  ExpectCleanShutdown(*x);
  ExpectCleanShutdown(*y);
}

}  // namespace
}  // namespace sluice::daemon

// Read-through (Connection::ReadFramesFromAnyThread): a thread other than the loop's takes whole
// frames of one type off the socket between the loop's read passes. These tests hold the loop
// (a task that waits) where a test needs the socket to itself, race readers against the loop
// where it must not matter, and end with the fixture's leak check.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "transport/transport_fixture.h"

namespace sluice::transport {
namespace {

using testutil::MetadataFor;
using testutil::RawHeader;

uint32_t IndexOf(std::span<const uint8_t> metadata) {
  uint32_t index = 0;
  if (metadata.size() >= 8) std::memcpy(&index, metadata.data() + 4, 4);
  return index;
}

// Takes control frames, recording their indices; refuses those `refuse` names.
class IndexTaker final : public FrameTaker {
 public:
  explicit IndexTaker(std::function<bool(uint32_t)> refuse = nullptr)
      : refuse_(std::move(refuse)) {}
  bool Accepts(std::span<const uint8_t> metadata) override {
    return !refuse_ || !refuse_(IndexOf(metadata));
  }
  void Take(std::span<const uint8_t> metadata) override { taken.push_back(IndexOf(metadata)); }
  std::vector<uint32_t> taken;

 private:
  std::function<bool(uint32_t)> refuse_;
};

// Holds the loop thread in a task until Release() (or destruction): the socket is the test's.
// Release returns once the task has ended.
class LoopHold {
 public:
  explicit LoopHold(EventLoop* loop) {
    std::promise<void> held;
    auto f = held.get_future();
    EXPECT_TRUE(loop->Post([release = release_, ended = ended_, &held] {
      held.set_value();
      release->wait();
      ended->count_down();
    }));
    f.wait();
  }
  ~LoopHold() { Release(); }
  void Release() {
    if (released_) return;
    released_ = true;
    release_->count_down();
    ended_->wait();
  }

 private:
  std::shared_ptr<std::latch> release_ = std::make_shared<std::latch>(1);
  std::shared_ptr<std::latch> ended_ = std::make_shared<std::latch>(1);
  bool released_ = false;
};

Bytes Control(uint32_t index) { return EncodeFrame(kControlType, MetadataFor(1, index, 16)); }

class DirectReadTest : public TransportTest {
 protected:
  // A server connection to a raw peer after one read pass of the loop, whose first read-through
  // (which takes nothing, and has the loop mark the stream's frame boundary) has been asked
  // when `prime`: from then on reads through may start.
  struct Peer {
    std::unique_ptr<TcpServer> server;
    std::unique_ptr<RawSocket> raw;
    std::shared_ptr<Connection> conn;
  };
  Peer Connected(std::shared_ptr<Recorder> rec, ServerOptions so, bool prime = true) {
    Peer p;
    p.server = StartServer(so, rec, HandlerOptions{});
    Track(p.server.get());
    p.raw = std::make_unique<RawSocket>(p.server->port());
    EXPECT_TRUE(p.raw->connected());
    EXPECT_TRUE(Eventually([&] { return (p.conn = rec->connection(0)) != nullptr; }));
    EXPECT_TRUE(p.raw->Send(EncodeFrame(kControlType, MetadataFor(9, 0, 16))));
    EXPECT_TRUE(rec->WaitFor([&] { return rec->frames == 1; }));
    if (prime && p.conn) {
      IndexTaker none;
      EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, none), 0u);
      RunOnLoop(server_loop_.get(), [] {});  // the loop ran what the first ask posted
    }
    return p;
  }
  Peer Connected(std::shared_ptr<Recorder> rec) { return Connected(rec, DefaultServerOptions()); }

  // Reads through until `want` frames were taken or 10 s passed.
  static size_t TakeUntil(Connection& c, FrameTaker& taker, size_t want) {
    size_t got = 0;
    Eventually([&] {
      got += c.ReadFramesFromAnyThread(kControlType, taker);
      return got >= want;
    });
    return got;
  }
};

// The frames of its type at the front go to the taker; the first other frame (a heartbeat), and
// everything after it, to the loop, in stream order.
TEST_F(DirectReadTest, TakesTheFramesOfItsTypeAtTheFrontAndLeavesTheRestToTheLoop) {
  auto rec = std::make_shared<Recorder>();
  rec->record_order = true;
  Peer p = Connected(rec);
  ASSERT_TRUE(p.conn);
  EXPECT_TRUE(p.conn->direct_reads_enabled());
  IndexTaker taker;
  {
    LoopHold hold(server_loop_.get());
    Bytes bytes;
    for (uint32_t i = 0; i < 3; ++i) {
      const Bytes f = Control(i);
      bytes.insert(bytes.end(), f.begin(), f.end());
    }
    const Bytes hb = testutil::HeartbeatFrame();
    bytes.insert(bytes.end(), hb.begin(), hb.end());
    const Bytes last = Control(3);
    bytes.insert(bytes.end(), last.begin(), last.end());
    ASSERT_TRUE(p.raw->Send(bytes));
    EXPECT_EQ(TakeUntil(*p.conn, taker, 3), 3u);
    EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u) << "a heartbeat is first";
  }
  ASSERT_TRUE(rec->WaitFor([&] { return rec->frames == 3; }));
  EXPECT_EQ(taker.taken, (std::vector<uint32_t>{0, 1, 2}));
  {
    std::lock_guard lock(rec->mu);
    EXPECT_EQ(rec->heartbeats, 1u);
    ASSERT_EQ(rec->received.size(), 2u);  // the warm-up frame, then frame 3
    EXPECT_EQ(rec->received[1], std::make_pair(1u, 3u));
  }
  const TransportMetrics& m = *p.server->metrics();
  EXPECT_EQ(m.direct_read_frames.load(), 3u);
  EXPECT_EQ(m.frames_in.load(), 6u);
  EXPECT_EQ(m.protocol_errors_total(), 0u);
  p.raw.reset();
  p.conn.reset();
  ExpectClean();
}

// A frame the taker does not accept stays in the socket: the loop reads it, and those after it.
TEST_F(DirectReadTest, AFrameTheTakerRefusesAndThoseAfterItGoToTheLoop) {
  auto rec = std::make_shared<Recorder>();
  rec->record_order = true;
  Peer p = Connected(rec);
  ASSERT_TRUE(p.conn);
  IndexTaker taker([](uint32_t index) { return index == 1; });
  {
    LoopHold hold(server_loop_.get());
    for (uint32_t i = 0; i < 3; ++i) ASSERT_TRUE(p.raw->Send(Control(i)));
    EXPECT_EQ(TakeUntil(*p.conn, taker, 1), 1u);
    EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u);
  }
  ASSERT_TRUE(rec->WaitFor([&] { return rec->frames == 3; }));
  EXPECT_EQ(taker.taken, std::vector<uint32_t>{0});
  {
    std::lock_guard lock(rec->mu);
    ASSERT_EQ(rec->received.size(), 3u);
    EXPECT_EQ(rec->received[1], std::make_pair(1u, 1u));
    EXPECT_EQ(rec->received[2], std::make_pair(1u, 2u));
  }
  p.raw.reset();
  p.conn.reset();
  ExpectClean();
}

// Part of a frame, a frame with a payload, or a frame of another type at the front: nothing is
// taken until the whole frame of the type is there.
TEST_F(DirectReadTest, NothingIsTakenButWholeFramesOfItsTypeWithoutPayload) {
  auto rec = std::make_shared<Recorder>();
  Peer p = Connected(rec);
  ASSERT_TRUE(p.conn);
  IndexTaker taker;
  const Bytes whole = Control(0);
  {
    LoopHold hold(server_loop_.get());
    ASSERT_TRUE(p.raw->Send(Bytes(whole.begin(), whole.begin() + 20)));  // header + 8 bytes
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u);
    ASSERT_TRUE(p.raw->Send(Bytes(whole.begin() + 20, whole.end())));
    EXPECT_EQ(TakeUntil(*p.conn, taker, 1), 1u);
    // A control frame carrying payload bytes is not ours to take (the decoder refuses it).
    ASSERT_TRUE(p.raw->Send(EncodeFrame(kControlType, MetadataFor(1, 1, 16), Bytes(8, 1))));
    std::this_thread::sleep_for(20ms);
    EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u);
  }
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  EXPECT_EQ(taker.taken, std::vector<uint32_t>{0});
  {
    std::lock_guard lock(rec->mu);
    ASSERT_EQ(rec->protocol_errors.size(), 1u);
    EXPECT_EQ(rec->protocol_errors[0], FrameError::kUnexpectedPayload);
  }
  p.raw.reset();
  p.conn.reset();
  ExpectClean();
}

// Hostile headers at the front (not our magic, too long, an unknown type) are never taken: the
// loop reads them and closes that connection with the protocol error, as without read-through.
TEST_F(DirectReadTest, HostileHeadersAreLeftToTheLoopWhichClosesTheConnection) {
  const Bytes bad[] = {
      RawHeader(28, 0xDEADBEEF, kProtocolVersion, kControlType, 16),
      RawHeader(0x7FFFFFFF, kMagic, kProtocolVersion, kControlType, 16),
      RawHeader(28, kMagic, kProtocolVersion, 200, 16),
      RawHeader(28, kMagic, kProtocolVersion + 1, kControlType, 16),
      RawHeader(12, kMagic, kProtocolVersion, kControlType, 16),  // metadata overruns
  };
  const FrameError reason[] = {FrameError::kBadMagic, FrameError::kFrameTooLong,
                               FrameError::kUnknownType, FrameError::kUnsupportedVersion,
                               FrameError::kMetadataOverrun};
  std::vector<Peer> peers;  // the servers stay until the leak check
  for (size_t i = 0; i < std::size(bad); ++i) {
    SCOPED_TRACE(i);
    auto rec = std::make_shared<Recorder>();
    Peer& p = peers.emplace_back(Connected(rec));
    ASSERT_TRUE(p.conn);
    IndexTaker taker;
    {
      LoopHold hold(server_loop_.get());
      Bytes frame = bad[i];
      frame.resize(frame.size() + 16, 0x5A);
      ASSERT_TRUE(p.raw->Send(frame));
      std::this_thread::sleep_for(10ms);
      EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u);
    }
    ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
    EXPECT_TRUE(taker.taken.empty());
    std::lock_guard lock(rec->mu);
    ASSERT_EQ(rec->protocol_errors.size(), 1u);
    EXPECT_EQ(rec->protocol_errors[0], reason[i]);
    EXPECT_EQ(p.server->metrics()->direct_read_frames.load(), 0u);
    p.conn.reset();
  }
  for (Peer& p : peers) p.raw.reset();
  ExpectClean();
}

// Off: on the loop thread, with the fault shim (which sees every frame on the loop), and with
// TransportOptions::direct_reads false.
TEST_F(DirectReadTest, OffOnTheLoopThreadWithTheFaultShimAndByOption) {
  std::vector<Peer> peers;  // the servers stay until the leak check
  {
    auto rec = std::make_shared<Recorder>();
    Peer& p = peers.emplace_back(Connected(rec));
    ASSERT_TRUE(p.conn);
    IndexTaker taker;
    size_t on_loop = 1;
    RunOnLoop(server_loop_.get(),
              [&] { on_loop = p.conn->ReadFramesFromAnyThread(kControlType, taker); });
    EXPECT_EQ(on_loop, 0u);
    p.conn.reset();
  }
  for (bool shim : {true, false}) {
    auto rec = std::make_shared<Recorder>();
    ServerOptions so = DefaultServerOptions();
    if (shim) so.transport.faults.delay_ms = 1;
    else so.transport.direct_reads = false;
    Peer& p = peers.emplace_back(Connected(rec, so));
    ASSERT_TRUE(p.conn);
    EXPECT_FALSE(p.conn->direct_reads_enabled());
    IndexTaker taker;
    LoopHold hold(server_loop_.get());
    ASSERT_TRUE(p.raw->Send(Control(0)));
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u);
    p.conn.reset();
  }
  for (Peer& p : peers) p.raw.reset();
  ExpectClean();
}

// The loop counts a frame taken by another thread as a read: a peer whose frames are all
// read through is not declared dead. The loop is held past the idle timeout while a frame is
// read through; its next tick must see that read.
TEST_F(DirectReadTest, AFrameReadThroughCountsAsAReadForTheIdleTimeout) {
  auto rec = std::make_shared<Recorder>();
  ServerOptions so = DefaultServerOptions();
  so.transport.idle_timeout = 300ms;
  Peer p = Connected(rec, so);
  ASSERT_TRUE(p.conn);
  IndexTaker taker;
  {
    LoopHold hold(server_loop_.get());
    std::this_thread::sleep_for(350ms);
    ASSERT_TRUE(p.raw->Send(Control(0)));
    EXPECT_EQ(TakeUntil(*p.conn, taker, 1), 1u);
  }
  // Two ticks (75 ms each) after the hold: without the read the connection would be closed.
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(rec->closed_count(), 0u);
  EXPECT_EQ(p.server->metrics()->idle_timeouts.load(), 0u);
  p.raw.reset();
  p.conn.reset();
  ExpectClean();
}

// Sequenced: a handler that stamps every control frame the loop delivers into one log shared
// with the readers' taker, so the log is the order frames were consumed in.
struct SequenceLog {
  std::mutex mu;
  std::vector<uint32_t> order;
  void Add(uint32_t index) {
    std::lock_guard lock(mu);
    order.push_back(index);
  }
};

class SequencingHandler final : public ConnectionHandler {
 public:
  SequencingHandler(Connection& c, std::shared_ptr<SequenceLog> log,
                    std::shared_ptr<Recorder> rec)
      : log_(std::move(log)), rec_(std::move(rec)) {
    {
      std::lock_guard lock(rec_->mu);
      rec_->connections.push_back(c.shared_from_this());
    }
    c.MarkEstablished();
  }
  Admission OnFrame(const FrameHeader& h, std::span<const uint8_t> metadata) override {
    if (h.type == kControlType) log_->Add(IndexOf(metadata));
    // Data frames (payloads split across reads, so the decoder holds part of a frame between
    // passes) are read and dropped.
    return h.payload_length() > 0 ? Admission::Discard() : Admission();
  }
  Status OnPayload(buffer::Buffer) override { return Status::Ok(); }
  void OnClosed(const Status& reason) override {
    std::lock_guard lock(rec_->mu);
    rec_->closed.push_back(reason);
    rec_->Notify();
  }

 private:
  std::shared_ptr<SequenceLog> log_;
  std::shared_ptr<Recorder> rec_;
};

class LogTaker final : public FrameTaker {
 public:
  LogTaker(SequenceLog* log, uint32_t refuse_every) : log_(log), refuse_every_(refuse_every) {}
  bool Accepts(std::span<const uint8_t> metadata) override {
    return IndexOf(metadata) % refuse_every_ != 0;
  }
  void Take(std::span<const uint8_t> metadata) override { log_->Add(IndexOf(metadata)); }

 private:
  SequenceLog* const log_;
  const uint32_t refuse_every_;
};

// Two reader threads race the loop over a stream of control frames mixed with data frames whose
// payloads span reads: every control frame is consumed exactly once, and in stream order, by
// whichever side got it (TSan runs this too). The peer then resets while the readers go on.
TEST_F(DirectReadTest, ReadersRacingTheLoopConsumeEveryFrameOnceInOrder) {
  constexpr uint32_t kFrames = 20000;
  auto log = std::make_shared<SequenceLog>();
  auto rec = std::make_shared<Recorder>();
  auto s = TcpServer::Start(server_loop_.get(), DefaultServerOptions(),
                            [log, rec](Connection& c) -> std::unique_ptr<ConnectionHandler> {
                              return std::make_unique<SequencingHandler>(c, log, rec);
                            });
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  std::unique_ptr<TcpServer> server = std::move(s).value();
  Track(server.get());
  RawSocket raw(server->port());
  ASSERT_TRUE(raw.connected());
  std::shared_ptr<Connection> c;
  ASSERT_TRUE(Eventually([&] { return (c = rec->connection(0)) != nullptr; }));

  std::atomic<bool> stop{false};
  std::vector<std::thread> readers;
  for (int t = 0; t < 2; ++t) {
    readers.emplace_back([&, c] {
      LogTaker taker(log.get(), 5);
      while (!stop.load(std::memory_order_relaxed)) {
        c->ReadFramesFromAnyThread(kControlType, taker);
      }
    });
  }
  Bytes batch;
  for (uint32_t i = 0; i < kFrames; ++i) {
    const Bytes f = Control(i);
    batch.insert(batch.end(), f.begin(), f.end());
    if (i % 97 == 0) {
      const Bytes d = EncodeFrame(kDataType, MetadataFor(2, i, 16), Bytes(3000 + i % 5000, 7));
      batch.insert(batch.end(), d.begin(), d.end());
    }
    if (i % 2000 == 1999) {
      // The loop held a moment now and then: the readers certainly get some frames.
      LoopHold hold(server_loop_.get());
      ASSERT_TRUE(raw.Send(batch));
      batch.clear();
      std::this_thread::sleep_for(2ms);
    } else if (i % 13 == 0 || i + 1 == kFrames) {
      ASSERT_TRUE(raw.Send(batch));
      batch.clear();
    }
  }
  const bool all = Eventually([&] {
    std::lock_guard lock(log->mu);
    return log->order.size() >= kFrames;
  }, 60s);
  raw.Reset();
  EXPECT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  std::this_thread::sleep_for(20ms);  // the readers go on against the closed connection
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_TRUE(all);
  {
    std::lock_guard lock(log->mu);
    ASSERT_EQ(log->order.size(), kFrames);
    for (uint32_t i = 0; i < kFrames; ++i) {
      ASSERT_EQ(log->order[i], i) << "frame " << i << " out of order";
    }
  }
  EXPECT_GT(server->metrics()->direct_read_frames.load(), 0u) << "no frame was read through";
  EXPECT_EQ(server->metrics()->protocol_errors_total(), 0u);
  c.reset();
  ExpectClean();
}

}  // namespace
// Until a thread first asks to read through, the loop's read passes take no read mutex and the
// connection is never idle for it (a client's connection never reads through): the first ask
// takes nothing, even with a frame of its type waiting, and has the loop mark the stream's
// frame boundary; the loop reads that frame itself, and the next ask takes the next one.
TEST_F(DirectReadTest, TheFirstAskTakesNothingAndTheNextOnesRead) {
  auto rec = std::make_shared<Recorder>();
  Peer p = Connected(rec, DefaultServerOptions(), /*prime=*/false);
  ASSERT_TRUE(p.conn);
  IndexTaker taker;
  {
    LoopHold hold(server_loop_.get());
    ASSERT_TRUE(p.raw->Send(Control(0)));
    std::this_thread::sleep_for(20ms);  // in the socket: a later ask would take it
    EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u) << "the first ask";
  }
  ASSERT_TRUE(rec->WaitFor([&] { return rec->frames == 2; })) << "the loop reads frame 0";
  RunOnLoop(server_loop_.get(), [] {});
  {
    LoopHold hold(server_loop_.get());
    ASSERT_TRUE(p.raw->Send(Control(1)));
    EXPECT_EQ(TakeUntil(*p.conn, taker, 1), 1u);
  }
  EXPECT_EQ(taker.taken, (std::vector<uint32_t>{1}));
  EXPECT_EQ(p.server->metrics()->direct_read_frames.load(), 1u);
  {
    std::lock_guard lock(rec->mu);
    EXPECT_EQ(rec->frames, 2u) << "frame 1 went to the taker only";
  }
  p.raw.reset();
  p.conn.reset();
  ExpectClean();
}

// A hostile peer at a connection's first ask: its bad header waits in the socket when a
// producer first asks to read through. The ask takes nothing; the loop reads the header and
// closes the connection with the protocol error; the task the ask posted runs on the closing
// connection and leaves it closed to reads through (later asks take nothing, not even a valid
// frame the peer sent after), and every handle closes.
TEST_F(DirectReadTest, AHostileHeaderAtTheFirstAskClosesTheConnectionAndNothingIsReadAfter) {
  auto rec = std::make_shared<Recorder>();
  Peer p = Connected(rec, DefaultServerOptions(), /*prime=*/false);
  ASSERT_TRUE(p.conn);
  IndexTaker taker;
  {
    LoopHold hold(server_loop_.get());
    Bytes bytes = RawHeader(28, 0xDEADBEEF, kProtocolVersion, kControlType, 16);
    bytes.resize(bytes.size() + 16, 0x5A);
    const Bytes valid = Control(1);
    bytes.insert(bytes.end(), valid.begin(), valid.end());
    ASSERT_TRUE(p.raw->Send(bytes));
    std::this_thread::sleep_for(10ms);
    EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u) << "the first ask";
  }
  ASSERT_TRUE(rec->WaitFor([&] { return !rec->closed.empty(); }));
  RunOnLoop(server_loop_.get(), [] {});  // the first ask's task has run
  EXPECT_EQ(p.conn->ReadFramesFromAnyThread(kControlType, taker), 0u) << "closed";
  EXPECT_TRUE(taker.taken.empty());
  {
    std::lock_guard lock(rec->mu);
    ASSERT_EQ(rec->protocol_errors.size(), 1u);
    EXPECT_EQ(rec->protocol_errors[0], FrameError::kBadMagic);
    EXPECT_EQ(rec->frames, 1u) << "only the warm-up frame was delivered";
  }
  EXPECT_EQ(p.server->metrics()->direct_read_frames.load(), 0u);
  p.raw.reset();
  p.conn.reset();
  ExpectClean();
}

}  // namespace sluice::transport

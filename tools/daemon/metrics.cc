#include "tools/daemon/metrics.h"

#include <cstdio>
#include <fstream>
#include <string_view>

#include "transport/frame_codec.h"

namespace sluice::daemon {
namespace {

class Writer {
 public:
  explicit Writer(std::string node) : node_(std::move(node)) {}

  void Gauge(std::string_view name, std::string_view help, double v) {
    Head(name, help, "gauge");
    Sample(name, "", v);
  }
  void Counter(std::string_view name, std::string_view help, double v) {
    Head(name, help, "counter");
    Sample(name, "", v);
  }
  void Head(std::string_view name, std::string_view help, std::string_view type) {
    out_ += "# HELP sluice_";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE sluice_";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }
  void Sample(std::string_view name, std::string_view labels, double v) {
    char num[64];
    std::snprintf(num, sizeof(num), "%.17g", v);
    out_ += "sluice_";
    out_ += name;
    out_ += "{node=\"" + node_ + "\"";
    if (!labels.empty()) {
      out_ += ',';
      out_ += labels;
    }
    out_ += "} ";
    out_ += num;
    out_ += '\n';
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string node_;
  std::string out_;
};

// Escapes a label value (backslash, quote, newline).
std::string Escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void Transport(Writer& w, const transport::TransportMetrics* served,
               const transport::TransportMetrics* opened) {
  struct Field {
    const char* name;
    const char* help;
    const std::atomic<uint64_t> transport::TransportMetrics::*member;
  };
  static const Field kFields[] = {
      {"connections_opened_total", "connections opened", &transport::TransportMetrics::connections_opened},
      {"connections_closed_total", "connections closed", &transport::TransportMetrics::connections_closed},
      {"connections_refused_total", "connections refused over the limit",
       &transport::TransportMetrics::connections_refused},
      {"connections_refused_per_peer_total",
       "connections refused over max_connections_per_peer (one remote address)",
       &transport::TransportMetrics::connections_refused_per_peer},
      {"transport_bytes_in_total", "bytes read from sockets", &transport::TransportMetrics::bytes_in},
      {"transport_bytes_out_total", "bytes written to sockets", &transport::TransportMetrics::bytes_out},
      {"frames_in_total", "frames received", &transport::TransportMetrics::frames_in},
      {"frames_out_total", "frames sent", &transport::TransportMetrics::frames_out},
      {"socket_writes_total", "gathered socket writes", &transport::TransportMetrics::writes},
      {"loop_direct_writes_total",
       "socket writes an IO loop made itself to an idle connection (one sendmsg, no uv_write)",
       &transport::TransportMetrics::loop_direct_writes},
      {"direct_read_frames_total",
       "frames (AddCredits) a producer thread read off its connection itself (read-through)",
       &transport::TransportMetrics::direct_read_frames},
      {"heartbeats_sent_total", "heartbeats sent", &transport::TransportMetrics::heartbeats_sent},
      {"idle_timeouts_total", "connections closed as idle", &transport::TransportMetrics::idle_timeouts},
      {"handshake_timeouts_total", "connections closed in the handshake",
       &transport::TransportMetrics::handshake_timeouts},
      {"fault_shim_corrupted_total", "payloads the testing fault shim corrupted",
       &transport::TransportMetrics::faults_corrupted},
      {"data_port_http_requests_total",
       "HTTP requests that reached the data port (answered 400, closed; not protocol errors)",
       &transport::TransportMetrics::http_requests},
  };
  for (const Field& f : kFields) {
    w.Head(f.name, f.help, "counter");
    if (served) w.Sample(f.name, "side=\"served\"", static_cast<double>((served->*f.member).load()));
    if (opened) w.Sample(f.name, "side=\"opened\"", static_cast<double>((opened->*f.member).load()));
  }
  w.Head("protocol_errors_total", "frames refused, by reason (the connection was closed)",
         "counter");
  for (size_t i = 0; i < transport::kFrameErrorCount; ++i) {
    const std::string reason =
        "reason=\"" + Escape(transport::FrameErrorName(static_cast<transport::FrameError>(i))) + "\"";
    if (served) {
      w.Sample("protocol_errors_total", "side=\"served\"," + reason,
               static_cast<double>(served->protocol_errors[i].load()));
    }
    if (opened) {
      w.Sample("protocol_errors_total", "side=\"opened\"," + reason,
               static_cast<double>(opened->protocol_errors[i].load()));
    }
  }
}

// Per-gate and per-partition buffer use, bounded (see MetricsSnapshot::job_buffers).
void JobBuffers(Writer& w, const MetricsSnapshot& m) {
  struct Row {
    std::string labels;
    double v[4];
  };
  std::vector<Row> gates, parts;
  Row gate_rest{"job=\"_other\",gate=\"_other\"", {0, 0, 0, 0}};
  Row part_rest{"job=\"_other\",partition=\"_other\"", {0, 0, 0, 0}};
  for (const auto& [job, jb] : m.job_buffers) {
    for (const GateBufferMetrics& g : jb.gates) {
      const double v[4] = {double(g.exclusive), double(g.floating), double(g.queued),
                           double(g.sender_backlog)};
      Row* r = &gate_rest;
      if (gates.size() < kMaxLabeledBuffers) {
        gates.push_back({"job=\"" + Escape(job) + "\",gate=\"" + Escape(g.gate) + "\"", {0, 0, 0, 0}});
        r = &gates.back();
      }
      for (int i = 0; i < 4; ++i) r->v[i] += v[i];
    }
    for (const PartitionBufferMetrics& p : jb.partitions) {
      const double v[4] = {double(p.backlog), double(p.buffers_in_use),
                           double(p.backpressure_ns) / 1e9, 0};
      Row* r = &part_rest;
      if (parts.size() < kMaxLabeledBuffers) {
        parts.push_back({"job=\"" + Escape(job) + "\",partition=\"" + Escape(p.partition) + "\"",
                         {0, 0, 0, 0}});
        r = &parts.back();
      }
      for (int i = 0; i < 4; ++i) r->v[i] += v[i];
    }
  }
  gates.push_back(gate_rest);
  parts.push_back(part_rest);
  static const char* kGate[][3] = {
      {"gate_exclusive_buffers", "exclusive buffers owned by a gate's remote channels", "gauge"},
      {"gate_floating_buffers", "floating buffers a gate's channels hold", "gauge"},
      {"gate_queued_buffers", "buffers a gate received and its consumer has not read", "gauge"},
      {"gate_sender_backlog", "backlog the senders of a gate announced", "gauge"}};
  for (int i = 0; i < 4; ++i) {
    w.Head(kGate[i][0], kGate[i][1], kGate[i][2]);
    for (const Row& r : gates) w.Sample(kGate[i][0], r.labels, r.v[i]);
  }
  static const char* kPart[][3] = {
      {"partition_backlog", "finished buffers queued in a partition's subpartitions", "gauge"},
      {"partition_buffers_in_use", "output pool segments a partition has lent", "gauge"},
      {"partition_backpressure_seconds_total", "time a partition's writer waited for buffers",
       "counter"}};
  for (int i = 0; i < 3; ++i) {
    w.Head(kPart[i][0], kPart[i][1], kPart[i][2]);
    for (const Row& r : parts) w.Sample(kPart[i][0], r.labels, r.v[i]);
  }
}

}  // namespace

uint64_t ProtocolErrors(const transport::TransportMetrics& t) {
  uint64_t n = 0;
  for (const auto& e : t.protocol_errors) n += e.load(std::memory_order_relaxed);
  return n;
}

void ReadRss(uint64_t* rss, uint64_t* peak) {
  *rss = 0;
  *peak = 0;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    unsigned long long kb = 0;
    if (std::sscanf(line.c_str(), "VmRSS: %llu kB", &kb) == 1) *rss = kb * 1024;
    if (std::sscanf(line.c_str(), "VmHWM: %llu kB", &kb) == 1) *peak = kb * 1024;
  }
}

std::string RenderPrometheus(const MetricsSnapshot& m) {
  Writer w(Escape(m.node));
  const auto& p = m.pool;
  w.Gauge("segment_size_bytes", "size of one network buffer", p.segment_size);
  w.Gauge("pool_segments", "segments in the network buffer pool (its capacity)", p.total);
  w.Gauge("pool_segments_available", "segments in the global free list", p.available);
  w.Gauge("pool_segments_exclusive", "segments held as exclusive buffers by input channels",
          p.exclusive);
  w.Gauge("pool_segments_pooled", "segments held by local pools (floating and output)", p.pooled);
  w.Gauge("pool_segments_required", "segments admitted: pool minimums plus exclusive", p.required);
  w.Gauge("local_pools", "live local buffer pools", p.local_pools);
  if (const shuffle::ShuffleServerStats* s = m.server) {
    w.Counter("partition_requests_total", "partition requests served", s->requests.load());
    w.Counter("partition_requests_not_found_total", "requests answered PartitionNotFound",
              s->requests_not_found.load());
    w.Counter("buffers_out_total", "data buffers sent", s->buffers_out.load());
    w.Counter("bytes_out_total", "data buffer bytes sent", s->bytes_out.load());
    w.Counter("events_out_total", "events sent", s->events_out.load());
    w.Counter("backlog_announcements_total", "backlog announced to receivers without credit",
              s->backlog_announcements.load());
    w.Counter("credits_in_total", "credits received", s->credits_in.load());
    w.Counter("credit_stall_seconds_total", "time readers had data but no credit",
              static_cast<double>(s->credit_stall_ns.load()) / 1e9);
    w.Gauge("active_readers", "subpartition readers serving receivers", s->active_readers.load());
    w.Counter("auth_failures_total", "connections refused for a wrong or missing secret",
              s->auth_failures.load());
    w.Counter("control_requests_total", "control messages served", s->control_requests.load());
  }
  Transport(w, m.served, m.opened);
  w.Gauge("jobs_running", "jobs running on this daemon", m.jobs.running);
  w.Head("jobs_ended_total", "jobs ended on this daemon, by outcome", "counter");
  w.Sample("jobs_ended_total", "outcome=\"succeeded\"", static_cast<double>(m.jobs.succeeded));
  w.Sample("jobs_ended_total", "outcome=\"failed\"", static_cast<double>(m.jobs.failed));
  w.Sample("jobs_ended_total", "outcome=\"cancelled\"", static_cast<double>(m.jobs.cancelled));
  w.Counter("records_produced_total", "records emitted by producers on this daemon",
            static_cast<double>(m.jobs.records_produced));
  w.Counter("records_consumed_total", "valid records received by consumers on this daemon",
            static_cast<double>(m.jobs.records_consumed));
  w.Counter("record_bytes_consumed_total", "record bytes received by consumers on this daemon",
            static_cast<double>(m.jobs.bytes_consumed));
  if (const HttpStats* h = m.http) {
    w.Counter("http_requests_total", "metrics endpoint requests answered 200",
              static_cast<double>(h->requests.load()));
    w.Counter("http_rejected_total",
              "metrics endpoint requests refused (4xx) or dropped (deadline, too many clients)",
              static_cast<double>(h->rejected.load()));
  }
  JobBuffers(w, m);
  w.Gauge("resident_memory_bytes", "resident set size", static_cast<double>(m.rss_bytes));
  w.Gauge("resident_memory_peak_bytes", "peak resident set size",
          static_cast<double>(m.peak_rss_bytes));
  // Write-through (issue 15; docs/architecture.md "Write-through"): frames a producer thread
  // wrote to the socket itself, those the socket took only in part (the loop wrote the rest),
  // and producer notifications handed to the IO loop instead (a loop wake-up each).
  if (m.served != nullptr) {
    w.Counter("direct_writes_total", "frames a producer thread wrote to the socket itself",
              static_cast<double>(m.served->direct_writes.load()));
    w.Counter("direct_partial_writes_total",
              "direct writes the socket took only in part (the IO loop wrote the rest)",
              static_cast<double>(m.served->direct_partial_writes.load()));
  }
  if (const shuffle::ShuffleServerStats* s = m.server) {
    w.Counter("notifications_posted_total",
              "producer notifications handed to the IO loop (not written through)",
              static_cast<double>(s->notifications_posted.load()));
  }
  return w.Take();
}

std::string RenderStoreMetrics(const std::string& node, const store::PartitionStoreStats& s) {
  Writer w(Escape(node));
  w.Gauge("store_bytes_in_memory", "external partition bytes held in memory",
          static_cast<double>(s.bytes_in_memory));
  w.Counter("spill_bytes_total", "bytes the external store wrote to spill files",
            static_cast<double>(s.spill_bytes_total));
  w.Counter("store_copied_bytes_total",
            "bytes of starved writers' buffers the store copied into its own segments "
            "(under store_memory) instead of spilling",
            static_cast<double>(s.copied_bytes_total));
  w.Gauge("spill_files", "spill files (data and index) on disk", static_cast<double>(s.spill_files));
  w.Gauge("spill_disk_bytes", "bytes of spill files on disk", static_cast<double>(s.disk_bytes));
  w.Gauge("store_writers_waiting", "writers whose buffers are held at the spill quota",
          static_cast<double>(s.writers_waiting));
  w.Gauge("store_jobs", "jobs with external partitions", static_cast<double>(s.jobs));
  w.Gauge("store_map_outputs", "external map outputs", static_cast<double>(s.map_outputs));
  w.Gauge("store_subpartitions", "subpartitions of the external map outputs held "
          "(store_max_subpartitions)", static_cast<double>(s.subpartitions));
  w.Gauge("store_read_set_entries", "map outputs named by the registered read sets "
          "(store_max_read_set_entries)", static_cast<double>(s.read_set_entries));
  w.Gauge("store_readers", "readers of external partitions", static_cast<double>(s.readers));
  return w.Take();
}

}  // namespace sluice::daemon

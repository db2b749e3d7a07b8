#include "tools/control/control_codec.h"

#include <algorithm>
#include <cstdint>

namespace sluice::control {
namespace {

using flatbuffers::FlatBufferBuilder;
using flatbuffers::Offset;

template <typename T>
std::vector<uint8_t> Bytes(FlatBufferBuilder& fbb, Offset<T> root) {
  fbb.Finish(root);
  return {fbb.GetBufferPointer(), fbb.GetBufferPointer() + fbb.GetSize()};
}

std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

template <typename T>
std::vector<T> Vec(const flatbuffers::Vector<T>* v) {
  return v ? std::vector<T>(v->begin(), v->end()) : std::vector<T>();
}

std::vector<std::string> Strings(const flatbuffers::Vector<Offset<flatbuffers::String>>* v) {
  std::vector<std::string> out;
  if (v == nullptr) return out;
  for (const auto* s : *v) out.push_back(Str(s));
  return out;
}

// Cuts `s` to at most `max` bytes, saying so at the end.
std::string Cut(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  const std::string note = "\n... cut: " + std::to_string(s.size() - max) + " more bytes\n";
  return s.substr(0, max - std::min(max, note.size())) + note;
}

}  // namespace

std::vector<uint8_t> EncodeSubmitJob(const JobSpec& s, uint32_t node_index) {
  FlatBufferBuilder fbb(1024);
  auto id = fbb.CreateString(s.job_id);
  auto nodes = fbb.CreateVectorOfStrings(s.nodes);
  auto pn = fbb.CreateVector(s.producer_nodes);
  auto cn = fbb.CreateVector(s.consumer_nodes);
  auto files = fbb.CreateVectorOfStrings(s.input_files);
  auto out_dir = fbb.CreateString(s.output_dir);
  auto token = fbb.CreateString(s.token);
  fb::JobSpecMsgBuilder b(fbb);
  b.add_job_id(id);
  b.add_kind(static_cast<fb::JobKind>(s.kind));
  b.add_nodes(nodes);
  b.add_producer_nodes(pn);
  b.add_consumer_nodes(cn);
  b.add_pattern(static_cast<fb::PatternKind>(s.pattern));
  b.add_records_per_producer(s.records_per_producer);
  b.add_record_size_min(s.record_size_min);
  b.add_record_size_max(s.record_size_max);
  b.add_keys(static_cast<fb::KeyDistribution>(s.keys));
  b.add_zipf_s(s.zipf_s);
  b.add_key_count(s.key_count);
  b.add_partitioner(static_cast<fb::PartitionerKind>(s.partitioner));
  b.add_seed(s.seed);
  b.add_input_files(files);
  b.add_delimiter(static_cast<uint8_t>(s.delimiter));
  b.add_key_field(s.key_field);
  b.add_output_dir(out_dir);
  b.add_checksums(s.checksums);
  b.add_timeout_ms(s.timeout_ms);
  b.add_throttled_consumer(s.throttled_consumer);
  b.add_throttle_mib_per_second(s.throttle_mib_per_second);
  b.add_token(token);
  auto spec = b.Finish();
  return Bytes(fbb, fb::CreateSubmitJob(fbb, spec, node_index));
}

JobSpec DecodeJobSpec(const fb::JobSpecMsg& m) {
  JobSpec s;
  s.job_id = Str(m.job_id());
  s.kind = static_cast<JobKind>(m.kind());
  s.nodes = Strings(m.nodes());
  s.producer_nodes = Vec(m.producer_nodes());
  s.consumer_nodes = Vec(m.consumer_nodes());
  s.pattern = static_cast<Pattern>(m.pattern());
  s.records_per_producer = m.records_per_producer();
  s.record_size_min = m.record_size_min();
  s.record_size_max = m.record_size_max();
  s.keys = static_cast<KeyDistribution>(m.keys());
  s.zipf_s = m.zipf_s();
  s.key_count = m.key_count();
  s.partitioner = static_cast<Partitioner>(m.partitioner());
  s.seed = m.seed();
  s.input_files = Strings(m.input_files());
  s.delimiter = static_cast<char>(m.delimiter());
  s.key_field = m.key_field();
  s.output_dir = Str(m.output_dir());
  s.checksums = m.checksums();
  s.timeout_ms = m.timeout_ms();
  s.throttled_consumer = m.throttled_consumer();
  s.throttle_mib_per_second = m.throttle_mib_per_second();
  s.token = Str(m.token());
  return s;
}

std::vector<uint8_t> EncodeJobStatusRequest(const std::string& job_id, const std::string& token) {
  FlatBufferBuilder fbb(256);
  auto id = fbb.CreateString(job_id);
  auto t = fbb.CreateString(token);
  return Bytes(fbb, fb::CreateJobStatusRequest(fbb, id, t));
}

namespace {
// How much of a status an encoding carries.
struct StatusShape {
  bool with_channels = true;  // per-channel record counts
  size_t max_tasks = SIZE_MAX;  // first producers and consumers listed
  size_t max_error = 2000;      // bytes of each task's error
};

std::vector<uint8_t> EncodeJobStatusImpl(const JobStatus& st, const JobTotals& t,
                                         const StatusShape& shape, const std::string& note) {
  FlatBufferBuilder fbb(4096);
  std::vector<Offset<fb::ProducerStatusMsg>> producers;
  for (size_t i = 0; i < std::min(shape.max_tasks, st.producers.size()); ++i) {
    const ProducerStatus& p = st.producers[i];
    auto err = fbb.CreateString(Cut(p.error, shape.max_error));
    auto per = fbb.CreateVector(shape.with_channels ? p.records_per_consumer
                                                    : std::vector<uint64_t>());
    producers.push_back(fb::CreateProducerStatusMsg(fbb, p.index, p.done, err, p.records, p.bytes,
                                                    p.bad_lines, per));
  }
  std::vector<Offset<fb::ConsumerStatusMsg>> consumers;
  for (size_t i = 0; i < std::min(shape.max_tasks, st.consumers.size()); ++i) {
    const ConsumerStatus& c = st.consumers[i];
    auto err = fbb.CreateString(Cut(c.error, shape.max_error));
    auto per = fbb.CreateVector(shape.with_channels ? c.records_per_producer
                                                    : std::vector<uint64_t>());
    auto file = fbb.CreateString(c.output_file);
    consumers.push_back(fb::CreateConsumerStatusMsg(fbb, c.index, c.done, err, c.records, c.bytes,
                                                    c.duplicated, c.reordered, c.corrupted, per,
                                                    file));
  }
  auto id = fbb.CreateString(st.job_id);
  auto err = fbb.CreateString(Cut(st.error, 2000));
  auto pv = fbb.CreateVector(producers);
  auto cv = fbb.CreateVector(consumers);
  auto totals = fb::CreateJobTotalsMsg(fbb, t.producers, t.consumers, t.producers_done,
                                       t.consumers_done, t.records_produced, t.bytes_produced,
                                       t.bad_lines, t.records_consumed, t.bytes_consumed,
                                       t.duplicated, t.reordered, t.corrupted);
  auto n = fbb.CreateString(Cut(note, 1000));
  return Bytes(fbb, fb::CreateJobStatusResponse(fbb, id, static_cast<fb::JobState>(st.state), err,
                                                st.seconds, pv, cv, totals, n));
}
}  // namespace

std::vector<uint8_t> EncodeJobStatus(const JobStatus& status) {
  // Totals from the full lists, unless they were cut before (a status decoded from a reply).
  const JobTotals t = status.note.empty() ? ComputeTotals(status) : status.totals;
  StatusShape shape;
  auto bytes = EncodeJobStatusImpl(status, t, shape, status.note);
  if (bytes.size() <= kMaxControlMessageBytes) return bytes;
  shape.with_channels = false;  // per-channel counts do not fit: per-task totals
  const std::string no_channels = "per-channel record counts left out to fit in a frame";
  bytes = EncodeJobStatusImpl(status, t, shape, no_channels);
  if (bytes.size() <= kMaxControlMessageBytes) return bytes;
  // Still too big (hundreds of tasks): list fewer tasks, halving until it fits.
  shape.max_error = 200;
  shape.max_tasks = std::max(status.producers.size(), status.consumers.size());
  while (true) {
    shape.max_tasks /= 2;
    const std::string note =
        no_channels + "; task lists cut to the first " + std::to_string(shape.max_tasks) +
        " of " + std::to_string(status.producers.size()) + " producers and " +
        std::to_string(status.consumers.size()) + " consumers (totals cover every task)";
    bytes = EncodeJobStatusImpl(status, t, shape, note);
    if (bytes.size() <= kMaxControlMessageBytes || shape.max_tasks == 0) return bytes;
  }
}

JobStatus DecodeJobStatus(const fb::JobStatusResponse& m) {
  JobStatus st;
  st.job_id = Str(m.job_id());
  st.state = static_cast<JobState>(m.state());
  st.error = Str(m.error());
  st.seconds = m.seconds();
  st.note = Str(m.note());
  if (m.producers() != nullptr) {
    for (const fb::ProducerStatusMsg* p : *m.producers()) {
      ProducerStatus ps;
      ps.index = p->index();
      ps.done = p->done();
      ps.error = Str(p->error());
      ps.records = p->records();
      ps.bytes = p->bytes();
      ps.bad_lines = p->bad_lines();
      ps.records_per_consumer = Vec(p->records_per_consumer());
      st.producers.push_back(std::move(ps));
    }
  }
  if (m.consumers() != nullptr) {
    for (const fb::ConsumerStatusMsg* c : *m.consumers()) {
      ConsumerStatus cs;
      cs.index = c->index();
      cs.done = c->done();
      cs.error = Str(c->error());
      cs.records = c->records();
      cs.bytes = c->bytes();
      cs.duplicated = c->duplicated();
      cs.reordered = c->reordered();
      cs.corrupted = c->corrupted();
      cs.records_per_producer = Vec(c->records_per_producer());
      cs.output_file = Str(c->output_file());
      st.consumers.push_back(std::move(cs));
    }
  }
  if (const fb::JobTotalsMsg* t = m.totals(); t != nullptr) {
    st.totals.producers = t->producers();
    st.totals.consumers = t->consumers();
    st.totals.producers_done = t->producers_done();
    st.totals.consumers_done = t->consumers_done();
    st.totals.records_produced = t->records_produced();
    st.totals.bytes_produced = t->bytes_produced();
    st.totals.bad_lines = t->bad_lines();
    st.totals.records_consumed = t->records_consumed();
    st.totals.bytes_consumed = t->bytes_consumed();
    st.totals.duplicated = t->duplicated();
    st.totals.reordered = t->reordered();
    st.totals.corrupted = t->corrupted();
  } else {
    st.totals = ComputeTotals(st);  // an older daemon: the lists were complete
  }
  return st;
}

std::vector<uint8_t> EncodeCancelJob(const std::string& job_id, const std::string& reason,
                                     const std::string& token) {
  FlatBufferBuilder fbb(256);
  auto id = fbb.CreateString(job_id);
  auto r = fbb.CreateString(Cut(reason, 2000));
  auto t = fbb.CreateString(token);
  return Bytes(fbb, fb::CreateCancelJob(fbb, id, r, t));
}

std::vector<uint8_t> EncodeStatsRequest() {
  FlatBufferBuilder fbb(64);
  return Bytes(fbb, fb::CreateStatsRequest(fbb));
}

std::vector<uint8_t> EncodeStats(const NodeStats& s) {
  FlatBufferBuilder fbb(8192);
  // Two texts share the 64 KiB: the metrics first, the dump gets what is left.
  const std::string prom = Cut(s.prometheus, 36000);
  const std::string dump = Cut(s.credit_dump, 60000 - prom.size() - s.node_name.size());
  auto name = fbb.CreateString(s.node_name);
  auto p = fbb.CreateString(prom);
  auto d = fbb.CreateString(dump);
  return Bytes(fbb, fb::CreateStatsResponse(fbb, name, s.total_segments, s.available_segments,
                                            s.segment_size, s.running_jobs, s.rss_bytes,
                                            s.peak_rss_bytes, s.protocol_errors, s.connections,
                                            p, d, s.buffers_per_channel, s.floating_per_gate));
}

NodeStats DecodeStats(const fb::StatsResponse& m) {
  NodeStats s;
  s.node_name = Str(m.node_name());
  s.total_segments = m.total_segments();
  s.available_segments = m.available_segments();
  s.segment_size = m.segment_size();
  s.running_jobs = m.running_jobs();
  s.rss_bytes = m.rss_bytes();
  s.peak_rss_bytes = m.peak_rss_bytes();
  s.protocol_errors = m.protocol_errors();
  s.connections = m.connections();
  s.prometheus = Str(m.prometheus());
  s.credit_dump = Str(m.credit_dump());
  s.buffers_per_channel = m.buffers_per_channel();
  s.floating_per_gate = m.floating_per_gate();
  return s;
}

namespace {

Offset<fb::JobTotalsMsg> EncodeTotals(FlatBufferBuilder& fbb, const JobTotals& t) {
  return fb::CreateJobTotalsMsg(fbb, t.producers, t.consumers, t.producers_done, t.consumers_done,
                                t.records_produced, t.bytes_produced, t.bad_lines,
                                t.records_consumed, t.bytes_consumed, t.duplicated, t.reordered,
                                t.corrupted);
}

JobTotals DecodeTotals(const fb::JobTotalsMsg* t) {
  JobTotals o;
  if (t == nullptr) return o;
  o.producers = t->producers();
  o.consumers = t->consumers();
  o.producers_done = t->producers_done();
  o.consumers_done = t->consumers_done();
  o.records_produced = t->records_produced();
  o.bytes_produced = t->bytes_produced();
  o.bad_lines = t->bad_lines();
  o.records_consumed = t->records_consumed();
  o.bytes_consumed = t->bytes_consumed();
  o.duplicated = t->duplicated();
  o.reordered = t->reordered();
  o.corrupted = t->corrupted();
  return o;
}

// What one JobSummaryMsg may take in the frame at most: its strings, the totals table and
// FlatBuffers' offsets and padding.
size_t SummaryBytes(const JobSummary& j, size_t error_max) {
  return j.job_id.size() + std::min(j.error.size(), error_max) + 256;
}

}  // namespace

std::vector<uint8_t> EncodeListJobsRequest() {
  FlatBufferBuilder fbb(64);
  return Bytes(fbb, fb::CreateListJobsRequest(fbb));
}

std::vector<uint8_t> EncodeJobList(const JobList& list) {
  // Keep the first jobs whose worst-case size fits; errors are cut to 300 bytes each.
  constexpr size_t kErrorMax = 300;
  constexpr size_t kBudget = kMaxControlMessageBytes - 2048;  // note, vector and root
  size_t used = 0;
  size_t keep = 0;
  while (keep < list.jobs.size() && used + SummaryBytes(list.jobs[keep], kErrorMax) <= kBudget) {
    used += SummaryBytes(list.jobs[keep], kErrorMax);
    ++keep;
  }
  std::string note = list.note;
  if (keep < list.jobs.size()) {
    note = "listed " + std::to_string(keep) + " of " + std::to_string(list.jobs.size()) +
           " jobs (the reply holds at most one frame); ask for a job's status by id";
  }
  FlatBufferBuilder fbb(used + 1024);
  std::vector<Offset<fb::JobSummaryMsg>> jobs;
  jobs.reserve(keep);
  for (size_t i = 0; i < keep; ++i) {
    const JobSummary& j = list.jobs[i];
    auto id = fbb.CreateString(j.job_id);
    auto err = fbb.CreateString(Cut(j.error, kErrorMax));
    auto totals = EncodeTotals(fbb, j.totals);
    jobs.push_back(fb::CreateJobSummaryMsg(fbb, id, static_cast<fb::JobState>(j.state),
                                           j.seconds, err, totals));
  }
  auto v = fbb.CreateVector(jobs);
  auto n = fbb.CreateString(Cut(note, 1000));
  const uint32_t total = std::max<uint32_t>(list.total, static_cast<uint32_t>(list.jobs.size()));
  return Bytes(fbb, fb::CreateListJobsResponse(fbb, v, total, n));
}

JobList DecodeJobList(const fb::ListJobsResponse& m) {
  JobList out;
  if (m.jobs() != nullptr) {
    for (const fb::JobSummaryMsg* j : *m.jobs()) {
      JobSummary s;
      s.job_id = Str(j->job_id());
      s.state = static_cast<JobState>(j->state());
      s.seconds = j->seconds();
      s.error = Str(j->error());
      s.totals = DecodeTotals(j->totals());
      out.jobs.push_back(std::move(s));
    }
  }
  out.total = std::max<uint32_t>(m.total(), static_cast<uint32_t>(out.jobs.size()));
  out.note = Str(m.note());
  return out;
}

std::vector<uint8_t> EncodeCutConnections() {
  FlatBufferBuilder fbb(64);
  return Bytes(fbb, fb::CreateCutConnections(fbb));
}

std::vector<uint8_t> EncodeControlResult(const Status& status, uint32_t count) {
  FlatBufferBuilder fbb(256);
  auto msg = fbb.CreateString(Cut(status.message(), 4000));
  return Bytes(fbb, fb::CreateControlResult(fbb, static_cast<uint16_t>(status.code()), msg, count));
}

Status DecodeControlResult(const fb::ControlResult& m, uint32_t* count) {
  if (count != nullptr) *count = m.count();
  if (m.code() == 0) return Status::Ok();
  const auto max = static_cast<uint16_t>(StatusCode::kPermissionDenied);
  const StatusCode code =
      m.code() <= max ? static_cast<StatusCode>(m.code()) : StatusCode::kInternal;
  return Status(code, Str(m.message()));
}

}  // namespace sluice::control

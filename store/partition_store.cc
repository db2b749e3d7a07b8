#include "store/partition_store.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "shuffle/auth.h"
#include "store/spill_dir.h"
#include "store/store_internal.h"

namespace sluice::store {

using Clock = std::chrono::steady_clock;

const char* PartitionModeName(PartitionMode mode) {
  return mode == PartitionMode::kBlocking ? "blocking" : "pipelined";
}

Result<PartitionMode> ParsePartitionMode(std::string_view text) {
  if (text == "pipelined") return PartitionMode::kPipelined;
  if (text == "blocking") return PartitionMode::kBlocking;
  return InvalidArgument("partition mode '" + std::string(text) +
                         "' is unknown: use pipelined or blocking");
}

namespace {

bool TokensEqual(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

const char* StateName(OutputState s) {
  switch (s) {
    case OutputState::kWriting: return "writing";
    case OutputState::kCommitted: return "committed";
    case OutputState::kAborted: return "aborted";
    case OutputState::kReleased: return "released";
  }
  return "?";
}

// FNV-1a 128 bits as two 64-bit lanes: the read set id (a name, not a secret).
std::string ReadSetDigest(const std::vector<MapOutputRef>& outputs) {
  uint64_t a = 1469598103934665603ull, b = 1099511628211ull ^ 0x9e3779b97f4a7c15ull;
  auto mix = [&](uint32_t v) {
    for (int i = 0; i < 4; ++i) {
      const uint8_t byte = static_cast<uint8_t>(v >> (8 * i));
      a = (a ^ byte) * 1099511628211ull;
      b = (b ^ byte) * 0x100000001b3ull + (a >> 29);
    }
  };
  mix(static_cast<uint32_t>(outputs.size()));
  for (const MapOutputRef& r : outputs) {
    mix(r.partition);
    mix(r.attempt);
  }
  char out[33];
  std::snprintf(out, sizeof(out), "%016llx%016llx", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b));
  return out;
}

}  // namespace

void NotifyViews(std::vector<std::shared_ptr<ViewCore>>& cores, bool force) {
  for (auto& c : cores) {
    if (!c) continue;
    const bool was_armed = c->armed.exchange(false);
    if (!was_armed && !force) continue;
    std::lock_guard<std::recursive_mutex> lock(c->mu);
    if (!c->released && c->listener != nullptr) c->listener->NotifyDataAvailable();
  }
  cores.clear();
}

// ---------------------------------------------------------------------------------------------
// Impl

PartitionStore::Impl::~Impl() { ReleaseSpillDir(spill_claim); }

// Read segments are taken from the pool's free list when a view reads spilled data and go
// straight back when the buffer is released (sent), so an idle store holds none.
void PartitionStore::Impl::Recycle(buffer::MemorySegment* segment) {
  std::vector<std::shared_ptr<ViewCore>> notify;
  {
    StoreLock lock(*this);
    options.read_pool->RecycleSegment(segment);
    --read_out;
    auto it = read_owner.find(segment);
    if (it != read_owner.end()) {
      if (auto core = it->second.lock()) core->read_held.fetch_sub(1);
      read_owner.erase(it);
    }
    for (auto& w : read_waiters) {
      if (auto core = w.lock()) notify.push_back(std::move(core));
    }
    read_waiters.clear();
  }
  NotifyViews(notify, false);
}

void PartitionStore::Impl::NotifyReadWaiters() {
  std::vector<std::shared_ptr<ViewCore>> notify;
  {
    StoreLock lock(*this);
    for (auto& w : read_waiters) {
      if (auto core = w.lock()) notify.push_back(std::move(core));
    }
    read_waiters.clear();
  }
  NotifyViews(notify, false);
}

buffer::Buffer PartitionStore::Impl::TakeReadBufferLocked(const std::shared_ptr<ViewCore>& core) {
  buffer::MemorySegment* seg = nullptr;
  if (options.read_pool && read_out < options.read_segments &&
      core->read_held.load() < kMaxReadBuffersPerView) {
    seg = options.read_pool->TryRequestSegment();
  }
  if (seg == nullptr) {
    // Notified when one of ours comes back, or by the maintenance tick (the pool's free list
    // may be empty while local pools hold its spare segments).
    read_waiters.push_back(core);
    return buffer::Buffer();
  }
  ++read_out;
  read_owner[seg] = core;
  core->read_held.fetch_add(1);
  return buffer::Buffer::Wrap(seg, this);
}

void PartitionStore::Impl::FailLocked(MapOutputData& o, OutputState state, const std::string& why,
                                      std::vector<std::shared_ptr<ViewCore>>* notify) {
  if (o.state == OutputState::kAborted || o.state == OutputState::kReleased) return;
  if (o.state == OutputState::kWriting) {
    writers.erase(o.writer);
    if (state == OutputState::kAborted && writer_failures.size() < kMaxWriterFailures) {
      writer_failures.emplace(o.writer, why);
    }
  }
  o.state = state;
  o.failure = why;
  for (SubpartitionData& s : o.subs) {
    for (buffer::Buffer& b : s.memory) dropped.push_back(std::move(b));
    s.memory.clear();
    s.memory_first = s.total;
  }
  memory_bytes -= o.memory_bytes;
  memory_data_bytes -= o.memory_data_bytes;
  o.memory_bytes = 0;
  o.memory_data_bytes = 0;
  // Failed or released data is never read again: its spill files go now (views that still
  // hold the file get their error before they read).
  if (o.spill) {
    o.spill->Remove();
    o.spill.reset();
    disk_bytes -= o.disk_bytes;
    spill_files -= 2;
    o.disk_bytes = 0;
  }
  for (SubpartitionData& s : o.subs) s.extents.clear();
  const size_t first = notify->size();
  o.CollectViews(notify);
  for (size_t i = first; i < notify->size(); ++i) {
    if ((*notify)[i]->failure.empty()) (*notify)[i]->failure = why;
  }
}

void PartitionStore::Impl::ReleaseJobLocked(Job& job, const std::string& why,
                                            std::vector<std::shared_ptr<ViewCore>>* notify) {
  for (auto& [key, o] : job.outputs) {
    FailLocked(*o, OutputState::kReleased, why, notify);
    --map_outputs;
    held_subpartitions -= o->subpartitions;
  }
  job.outputs.clear();
  for (const auto& [id, set] : job.read_sets) held_read_set_entries -= set->outputs.size();
  job.read_sets.clear();
}

void PartitionStore::Impl::TrimLocked(MapOutputData& o, uint32_t sub) {
  if (o.mode != PartitionMode::kPipelined || o.spilling) return;
  SubpartitionData& s = o.subs[sub];
  while (!s.memory.empty() && s.memory_first < s.consumed) {
    const uint64_t cap = s.memory.front().capacity();
    const uint64_t size = s.memory.front().size();
    dropped.push_back(std::move(s.memory.front()));  // the reader's share keeps it until sent
    s.memory.pop_front();
    ++s.memory_first;
    o.memory_bytes -= cap;
    o.memory_data_bytes -= size;
    memory_bytes -= cap;
    memory_data_bytes -= size;
  }
}

std::shared_ptr<MapOutputData> PartitionStore::Impl::LargestInMemoryLocked() {
  std::shared_ptr<MapOutputData> victim;
  for (auto& [id, j] : jobs) {
    for (auto& [key, o] : j->outputs) {
      if (o->spilling || o->memory_bytes == 0) continue;
      if (o->state != OutputState::kWriting && o->state != OutputState::kCommitted) continue;
      if (!victim || o->memory_bytes > victim->memory_bytes) victim = o;
    }
  }
  return victim;
}

bool PartitionStore::Impl::TakeBatchLocked(SpillBatch* batch) {
  MapOutputData& victim = *batch->victim;
  // Take whole subpartition prefixes while they fit in the quota.
  const uint64_t room =
      options.spill_max_bytes == 0
          ? UINT64_MAX
          : options.spill_max_bytes - std::min(options.spill_max_bytes, disk_bytes);
  for (uint32_t sp = 0; sp < victim.subpartitions; ++sp) {
    SubpartitionData& s = victim.subs[sp];
    // Pipelined: buffers its reader already has are not written again.
    size_t skip = 0;
    if (victim.mode == PartitionMode::kPipelined && s.consumed > s.memory_first) {
      skip = static_cast<size_t>(std::min<uint64_t>(s.consumed - s.memory_first,
                                                    s.memory.size()));
    }
    if (s.memory.size() <= skip) continue;
    SpillRegion r;
    r.subpartition = sp;
    r.first_ordinal = s.memory_first + skip;
    uint64_t need = kSpillIndexRecordBytes;
    for (size_t i = skip; i < s.memory.size(); ++i) {
      const uint64_t b = kSpillBufferHeaderBytes + s.memory[i].size();
      if (batch->bytes + need + b > room) break;
      need += b;
      r.buffers.push_back(s.memory[i].Share());
    }
    if (r.buffers.empty()) break;
    batch->bytes += need;
    batch->taken.push_back(skip);
    batch->regions.push_back(std::move(r));
  }
  return !batch->regions.empty();
}

Status PartitionStore::Impl::WriteBatch(SpillBatch& batch) {
  if (!batch.file) {  // batch.file: the victim's file, taken under mu, or none yet
    auto created = SpillFile::Create(options.spill_dir, batch.victim->spill_stem);
    if (!created.ok()) return created.status();
    batch.file = std::shared_ptr<SpillFile>(std::move(*created));
  }
  return batch.file->AppendRegions(batch.regions);
}

void PartitionStore::Impl::CommitBatchLocked(SpillBatch& batch) {
  MapOutputData& victim = *batch.victim;
  disk_bytes += batch.bytes;
  victim.disk_bytes += batch.bytes;
  spill_bytes_total.fetch_add(batch.bytes);
  for (size_t k = 0; k < batch.regions.size(); ++k) {
    SpillRegion& r = batch.regions[k];
    SubpartitionData& s = victim.subs[r.subpartition];
    Extent& e = s.extents[r.first_ordinal];
    e.offsets = std::move(r.offsets);
    e.sizes.reserve(r.buffers.size());
    for (const buffer::Buffer& b : r.buffers) e.sizes.push_back(b.size());
    // Drop the skipped (already read) and the spilled buffers from memory.
    const size_t drop = batch.taken[k] + r.buffers.size();
    for (size_t i = 0; i < drop; ++i) {
      victim.memory_bytes -= s.memory.front().capacity();
      victim.memory_data_bytes -= s.memory.front().size();
      memory_bytes -= s.memory.front().capacity();
      memory_data_bytes -= s.memory.front().size();
      dropped.push_back(std::move(s.memory.front()));
      s.memory.pop_front();
    }
    s.memory_first += drop;
  }
}

// What a spill's outcome does to the store: a writing victim fails (its writer's next Append or
// Commit gets the reason); a committed one stays in memory and the store waits at the quota.
void PartitionStore::Impl::FinishSpillLocked(SpillBatch& batch, const Status& st,
                                             std::vector<std::shared_ptr<ViewCore>>* notify) {
  MapOutputData& victim = *batch.victim;
  victim.spilling = false;
  disk_bytes -= batch.bytes;  // the reservation
  const bool alive =
      victim.state == OutputState::kWriting || victim.state == OutputState::kCommitted;
  if (batch.file && alive && !victim.spill) {
    victim.spill = batch.file;
    spill_files += 2;
  } else if (batch.file && !alive) {
    batch.file->Remove();  // failed or released meanwhile (FailLocked removed an older one)
  }
  if (st.ok()) {
    if (alive) CommitBatchLocked(batch);
    quota_blocked = false;  // a spill got through: whoever waited at the quota moves again
  } else if (victim.state == OutputState::kWriting) {
    FailLocked(victim, OutputState::kAborted, st.message(), notify);
  } else if (victim.state == OutputState::kCommitted) {
    quota_blocked = true;  // its writers wait; a starved one is spilled (and failed) on its own
  }
}

void PartitionStore::Impl::CopyRecycler::Recycle(buffer::MemorySegment* segment) {
  {
    StoreLock lock(*impl);
    impl->copies.erase(segment);
  }
  buffer::MemorySegment* one[] = {segment};
  impl->options.read_pool->RecycleExclusiveSegments(one);
}

bool PartitionStore::Impl::ReaderStreamingLocked(MapOutputData& o) {
  if (o.mode != PartitionMode::kPipelined) return false;
  bool streaming = false;
  for (SubpartitionData& s : o.subs) {
    if (!s.memory.empty() && s.consumed > s.consumed_seen) streaming = true;
    s.consumed_seen = s.consumed;
  }
  return streaming;
}

bool PartitionStore::Impl::CopyUnderBudget(const std::shared_ptr<MapOutputData>& o) {
  uint32_t n = 0;
  {
    StoreLock lock(*this);
    if (!options.read_pool || o->state != OutputState::kWriting ||
        memory_bytes > options.memory_budget_bytes) {
      return false;
    }
    // An output spilled once outgrew the budget: copying more of it would only be spilled too.
    if (o->spill) return false;
    for (const SubpartitionData& s : o->subs) {
      for (const buffer::Buffer& b : s.memory) n += copies.contains(b.segment()) ? 0 : 1;
    }
  }
  if (n == 0) return false;
  auto segs = options.read_pool->RequestExclusiveSegments(n, std::chrono::milliseconds(0));
  if (!segs.ok()) return false;
  size_t next = 0;
  {
    StoreLock lock(*this);
    if (o->state == OutputState::kWriting && memory_bytes <= options.memory_budget_bytes) {
      for (SubpartitionData& s : o->subs) {
        for (buffer::Buffer& b : s.memory) {
          if (next == segs->size() || copies.contains(b.segment())) continue;
          buffer::MemorySegment* seg = (*segs)[next++];
          buffer::Buffer copy = buffer::Buffer::Wrap(seg, &copy_recycler, b.type());
          std::memcpy(copy.data(), b.data(), b.size());
          copy.SetSize(b.size());
          copies.insert(seg);
          copied_bytes_total.fetch_add(b.size(), std::memory_order_relaxed);
          dropped.push_back(std::move(b));  // the writer's segment: back as credit after unlock
          b = std::move(copy);
        }
      }
    }
  }
  if (next < segs->size()) {
    options.read_pool->RecycleExclusiveSegments(std::span(*segs).subspan(next));
  }
  return next > 0;
}

Status PartitionStore::Impl::SpillIfNeeded(WriterId forced) {
  if (forced != 0) {
    std::shared_ptr<MapOutputData> o;
    {
      StoreLock lock(*this);
      auto w = writers.find(forced);
      // Pipelined and its reader reads on: the reader's pace is the writer's (backpressure).
      if (w != writers.end() && !ReaderStreamingLocked(*w->second)) o = w->second;
    }
    // A starved writer under the budget keeps its data in memory (copied); else it is spilled.
    if (!o || CopyUnderBudget(o)) forced = 0;
  }
  while (true) {
    SpillBatch batch;
    {
      StoreLock lock(*this);
      if (forced != 0) {
        // A writer whose every segment the store holds: spill its output whatever the budget.
        auto w = writers.find(forced);
        forced = 0;
        if (w != writers.end() && !w->second->spilling && w->second->memory_bytes > 0) {
          batch.victim = w->second;
        }
      }
      if (!batch.victim &&
          (options.spill_dir.empty() || memory_bytes <= options.memory_budget_bytes)) {
        return Status::Ok();  // under the budget: a refusal at the quota still stands
      }
      if (options.spill_dir.empty()) return Status::Ok();
      if (!batch.victim) batch.victim = LargestInMemoryLocked();
      if (!batch.victim) return Status::Ok();
      if (!TakeBatchLocked(&batch)) {
        quota_blocked = true;  // at the quota: writers wait until space is freed
        return Status::Ok();
      }
      batch.victim->spilling = true;
      batch.file = batch.victim->spill;
      disk_bytes += batch.bytes;  // reserved until the write is done
    }
    Status st = WriteBatch(batch);
    std::vector<std::shared_ptr<ViewCore>> notify;
    {
      StoreLock lock(*this);
      FinishSpillLocked(batch, st, &notify);
    }
    batch.regions.clear();  // our shares go; the spilled segments return to their writers
    NotifyViews(notify, true);
    if (!st.ok()) return st;
  }
}

void PartitionStore::Impl::MaintenanceLoop(const std::function<void()>& tick) {
  std::unique_lock<std::mutex> lock(maintenance_mu);
  auto next_tick = Clock::now() + options.maintenance_interval;
  while (!stopping) {
    maintenance_cv.wait_until(lock, next_tick, [this] { return stopping || spill_wanted; });
    if (stopping) break;
    std::vector<WriterId> forced;
    const bool spill = spill_wanted;
    const uint64_t serving = spill_asked;
    forced.swap(spill_requests);
    spill_wanted = false;
    lock.unlock();
    // A failed spill fails its writer in the store (FinishSpillLocked): nothing to report here.
    for (WriterId w : forced) (void)SpillIfNeeded(w);
    const bool tick_due = Clock::now() >= next_tick;
    if (spill && !tick_due) (void)SpillIfNeeded(0);  // the tick spills down to the budget too
    if (tick_due) {
      tick();
      next_tick = Clock::now() + options.maintenance_interval;
    }
    lock.lock();
    spill_done = serving;
    spill_done_cv.notify_all();
  }
  spill_done = spill_asked;  // stopping: nobody waits for spills that will not run
  spill_done_cv.notify_all();
}

void PartitionStore::Impl::RequestSpill(WriterId forced) {
  {
    std::lock_guard<std::mutex> lock(maintenance_mu);
    if (forced != 0 && std::find(spill_requests.begin(), spill_requests.end(), forced) ==
                           spill_requests.end()) {
      spill_requests.push_back(forced);
    }
    spill_wanted = true;
    ++spill_asked;
  }
  maintenance_cv.notify_all();
}

Status PartitionStore::Impl::WriterGoneLocked(WriterId writer) const {
  if (auto f = writer_failures.find(writer); f != writer_failures.end()) {
    return Status(StatusCode::kIoError, f->second);
  }
  return Status(StatusCode::kClosed, "writer " + std::to_string(writer) +
                                         " is not open (committed, aborted or released)");
}

// ---------------------------------------------------------------------------------------------
// PartitionStore

PartitionStore::PartitionStore(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

PartitionStore::~PartitionStore() {
  {
    std::lock_guard<std::mutex> lock(impl_->maintenance_mu);
    impl_->stopping = true;
  }
  impl_->maintenance_cv.notify_all();
  if (impl_->maintenance.joinable()) impl_->maintenance.join();
  std::vector<std::shared_ptr<ViewCore>> notify;
  {
    StoreLock lock(*impl_);
    for (auto& [name, job] : impl_->jobs) {
      impl_->ReleaseJobLocked(*job, "the daemon is shutting down", &notify);
    }
    impl_->jobs.clear();
  }
  NotifyViews(notify, true);
  // Read buffers still in flight name the Impl as their recycler: they come home when their
  // connections close (the daemon stops its server first). Wait a little for them.
  for (int i = 0; i < 500; ++i) {
    {
      StoreLock lock(*impl_);
      if (impl_->read_out == 0 && impl_->copies.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  StoreLock lock(*impl_);
  if (impl_->read_out != 0 || !impl_->copies.empty()) {
    // Never free a recycler that buffers still name: keep the Impl (a leak, not a crash).
    new std::shared_ptr<Impl>(impl_);
  }
}

const PartitionStoreOptions& PartitionStore::options() const { return impl_->options; }

Result<std::unique_ptr<PartitionStore>> PartitionStore::Create(PartitionStoreOptions options) {
  SpillDirClaim claim;
  if (!options.spill_dir.empty()) {
    auto claimed = ClaimSpillDir(options.spill_dir, options.node);
    if (!claimed.ok()) return claimed.status();
    claim = std::move(*claimed);
    options.spill_dir = claim.dir;
  }
  auto impl = std::make_shared<Impl>(std::move(options));
  impl->spill_claim = std::move(claim);
  std::unique_ptr<PartitionStore> store(new PartitionStore(impl));
  PartitionStore* raw = store.get();
  impl->maintenance = std::thread([raw] {
    raw->impl_->MaintenanceLoop([raw] {
      raw->ExpireRetention(Clock::now());
      (void)raw->impl_->SpillIfNeeded(0);  // held at the quota: space may have been freed
      raw->impl_->NotifyReadWaiters();
    });
  });
  return store;
}

Result<WriterId> PartitionStore::OpenWriter(const WriterSpec& spec) {
  Impl& im = *impl_;
  const std::string what = "job '" + spec.job + "' partition " + std::to_string(spec.partition) +
                           " attempt " + std::to_string(spec.attempt);
  if (spec.job.empty() || spec.job.size() > 128 ||
      spec.job.find('/') != std::string::npos) {
    return InvalidArgument("job name '" + spec.job +
                           "' must be 1..128 characters without '/'");
  }
  if (spec.subpartitions == 0 || spec.subpartitions > im.options.max_subpartitions) {
    return InvalidArgument(what + ": " + std::to_string(spec.subpartitions) +
                           " subpartitions; the store takes 1.." +
                           std::to_string(im.options.max_subpartitions) +
                           " (max_subpartitions)");
  }
  StoreLock lock(im);
  if (im.held_subpartitions + spec.subpartitions > im.options.max_held_subpartitions) {
    return ResourceExhausted(
        what + ": its " + std::to_string(spec.subpartitions) + " subpartitions would pass the " +
        std::to_string(im.options.max_held_subpartitions) + " the store holds at most (" +
        std::to_string(im.held_subpartitions) + " held; store_max_subpartitions); release "
        "finished jobs (sluicectl release JOB) first, or raise store_max_subpartitions");
  }
  auto it = im.jobs.find(spec.job);
  if (it == im.jobs.end()) {
    if (im.jobs.size() >= im.options.max_jobs) {
      return ResourceExhausted(what + ": the store holds " + std::to_string(im.jobs.size()) +
                               " jobs, its limit (max_jobs); release finished jobs "
                               "(sluicectl release JOB) first");
    }
    auto job = std::make_unique<Job>();
    job->name = spec.job;
    job->token = spec.token;
    job->seq = im.next_job_seq++;
    job->retention = spec.retention.count() > 0 ? spec.retention : im.options.retention;
    it = im.jobs.emplace(spec.job, std::move(job)).first;
  } else if (!TokensEqual(it->second->token, spec.token)) {
    return Status(StatusCode::kPermissionDenied,
                  what + ": the job exists with another token; a writer must carry the token "
                         "of the job's first writer");
  }
  Job& job = *it->second;
  const auto key = std::make_pair(spec.partition, spec.attempt);
  if (auto o = job.outputs.find(key); o != job.outputs.end()) {
    return InvalidArgument(what + " was opened before (it is " + StateName(o->second->state) +
                           "); a rerun needs a new attempt number");
  }
  if (job.outputs.size() >= im.options.max_map_outputs_per_job) {
    return ResourceExhausted(what + ": the job has " + std::to_string(job.outputs.size()) +
                             " map outputs, the limit (max_map_outputs_per_job)");
  }
  auto o = std::make_shared<MapOutputData>();
  o->job = spec.job;
  o->partition = spec.partition;
  o->attempt = spec.attempt;
  o->subpartitions = spec.subpartitions;
  o->mode = spec.mode;
  o->writer = im.next_writer++;
  o->subs = std::vector<SubpartitionData>(spec.subpartitions);
  o->spill_stem = "j" + std::to_string(job.seq) + "-p" + std::to_string(spec.partition) + "-a" +
                  std::to_string(spec.attempt);
  job.outputs[key] = o;
  job.last_activity = Clock::now();
  im.writers[o->writer] = o;
  ++im.map_outputs;
  im.held_subpartitions += spec.subpartitions;
  return o->writer;
}

Status PartitionStore::Append(WriterId writer, uint32_t subpartition, buffer::Buffer filled,
                              uint32_t records) {
  Impl& im = *impl_;
  std::vector<std::shared_ptr<ViewCore>> notify;
  bool over = false;
  {
    StoreLock lock(im);
    auto it = im.writers.find(writer);
    if (it == im.writers.end()) return im.WriterGoneLocked(writer);
    MapOutputData& o = *it->second;
    if (subpartition >= o.subpartitions) {
      return InvalidArgument(o.Name() + ": subpartition " + std::to_string(subpartition) +
                             " is out of range (it has " + std::to_string(o.subpartitions) + ")");
    }
    if (!filled.valid() || filled.type() != buffer::DataType::kData) {
      return InvalidArgument(o.Name() + ": Append takes a filled data buffer");
    }
    if (filled.size() == 0) return Status::Ok();  // nothing to keep; the segment goes home
    const uint64_t cap = filled.capacity();
    const uint64_t size = filled.size();
    SubpartitionData& s = o.subs[subpartition];
    s.memory.push_back(std::move(filled));
    ++s.total;
    o.bytes += size;
    o.records += records;
    o.memory_bytes += cap;
    o.memory_data_bytes += size;
    im.memory_bytes += cap;
    im.memory_data_bytes += size;
    if (o.mode == PartitionMode::kPipelined) o.CollectViewsOf(subpartition, &notify);
    over = !im.options.spill_dir.empty() && im.memory_bytes > im.options.memory_budget_bytes;
  }
  NotifyViews(notify, false);
  if (over) im.RequestSpill(0);
  return Status::Ok();
}

void PartitionStore::WriterWaiting(WriterId writer) { impl_->RequestSpill(writer); }

void PartitionStore::WaitForSpills() {
  Impl& im = *impl_;
  std::unique_lock<std::mutex> lock(im.maintenance_mu);
  const uint64_t asked = im.spill_asked;
  im.spill_done_cv.wait(lock, [&] { return im.stopping || im.spill_done >= asked; });
}

Result<client::MapOutput> PartitionStore::Commit(WriterId writer) {
  Impl& im = *impl_;
  std::vector<std::shared_ptr<ViewCore>> notify;
  client::MapOutput out;
  {
    StoreLock lock(im);
    auto it = im.writers.find(writer);
    if (it == im.writers.end()) return im.WriterGoneLocked(writer);
    MapOutputData& o = *it->second;
    o.state = OutputState::kCommitted;
    im.writers.erase(it);
    if (auto j = im.jobs.find(o.job); j != im.jobs.end()) j->second->last_activity = Clock::now();
    o.CollectViews(&notify);
    out.node = im.options.node;
    out.job = o.job;
    out.partition = o.partition;
    out.attempt = o.attempt;
    out.subpartitions = o.subpartitions;
    out.bytes = o.bytes;
    out.records = o.records;
  }
  NotifyViews(notify, true);
  return out;
}

void PartitionStore::Abort(WriterId writer, std::string reason) {
  Impl& im = *impl_;
  std::vector<std::shared_ptr<ViewCore>> notify;
  {
    StoreLock lock(im);
    auto it = im.writers.find(writer);
    if (it != im.writers.end()) {
      std::shared_ptr<MapOutputData> o = it->second;
      im.FailLocked(*o, OutputState::kAborted,
                    o->Name() + " failed on " + im.options.node + ": " + reason, &notify);
    }
    im.writer_failures.erase(writer);  // the writer knows it is done
  }
  NotifyViews(notify, true);
}

Status PartitionStore::Release(const std::string& job, const std::string& token) {
  Impl& im = *impl_;
  std::vector<std::shared_ptr<ViewCore>> notify;
  {
    StoreLock lock(im);
    auto it = im.jobs.find(job);
    if (it == im.jobs.end()) {
      return NotFound("job '" + job + "' has no external partitions on " + im.options.node);
    }
    if (!TokensEqual(it->second->token, token)) {
      return Status(StatusCode::kPermissionDenied,
                    "release of job '" + job + "' denied: wrong job token");
    }
    im.ReleaseJobLocked(*it->second, "job '" + job + "' was released on " + im.options.node,
                        &notify);
    im.jobs.erase(it);
  }
  NotifyViews(notify, true);
  im.RequestSpill(0);  // space freed: outputs held at the quota may spill now
  return Status::Ok();
}

uint32_t PartitionStore::ExpireRetention(std::chrono::steady_clock::time_point now) {
  Impl& im = *impl_;
  std::vector<std::shared_ptr<ViewCore>> notify;
  uint32_t n = 0;
  {
    StoreLock lock(im);
    for (auto it = im.jobs.begin(); it != im.jobs.end();) {
      Job& job = *it->second;
      bool writing = false;
      for (auto& [key, o] : job.outputs) writing |= o->state == OutputState::kWriting;
      if (writing || now - job.last_activity < job.retention) {
        ++it;
        continue;
      }
      im.ReleaseJobLocked(job, "job '" + job.name + "' passed its retention of " +
                                   std::to_string(job.retention.count()) + " s on " +
                                   im.options.node, &notify);
      it = im.jobs.erase(it);
      ++n;
    }
  }
  NotifyViews(notify, true);
  if (n > 0) im.RequestSpill(0);
  return n;
}

std::vector<MapOutputInfo> PartitionStore::List(const std::string& job, size_t max_entries,
                                                size_t* total) const {
  const Impl& im = *impl_;
  std::vector<MapOutputInfo> out;
  size_t count = 0;
  StoreLock lock(im);
  for (const auto& [name, j] : im.jobs) {
    if (!job.empty() && name != job) continue;
    count += j->outputs.size();
    for (const auto& [key, o] : j->outputs) {
      if (out.size() >= max_entries) break;
      MapOutputInfo i;
      i.job = o->job;
      i.partition = o->partition;
      i.attempt = o->attempt;
      i.subpartitions = o->subpartitions;
      i.mode = o->mode;
      i.state = StateName(o->state);
      i.bytes = o->bytes;
      i.records = o->records;
      i.bytes_in_memory = o->memory_data_bytes;
      i.bytes_on_disk = o->disk_bytes;
      out.push_back(std::move(i));
    }
  }
  if (total != nullptr) *total = count;
  return out;
}

PartitionStoreStats PartitionStore::Stats() const {
  const Impl& im = *impl_;
  PartitionStoreStats s;
  StoreLock lock(im);
  s.jobs = im.jobs.size();
  s.map_outputs = im.map_outputs;
  s.subpartitions = im.held_subpartitions;
  s.read_set_entries = im.held_read_set_entries;
  s.bytes_in_memory = im.memory_data_bytes;
  s.spill_bytes_total = im.spill_bytes_total.load();
  s.copied_bytes_total = im.copied_bytes_total.load();
  s.spill_files = im.spill_files;
  s.disk_bytes = im.disk_bytes;
  s.readers = im.readers;
  if (im.quota_blocked) {
    for (const auto& [id, o] : im.writers) s.writers_waiting += o->memory_bytes > 0 ? 1 : 0;
  }
  return s;
}

Status PartitionStore::CheckToken(const std::string& job, const std::string& token) const {
  StoreLock lock(*impl_);
  auto it = impl_->jobs.find(job);
  if (it == impl_->jobs.end() || !TokensEqual(it->second->token, token)) {
    return Status(StatusCode::kPermissionDenied,
                  "job '" + job + "' on " + impl_->options.node +
                      ": unknown job or wrong job token");
  }
  return Status::Ok();
}

Result<std::string> PartitionStore::JobToken(const std::string& job) const {
  StoreLock lock(*impl_);
  auto it = impl_->jobs.find(job);
  if (it == impl_->jobs.end()) return NotFound("job '" + job + "' is not in the store");
  return it->second->token;
}

Result<std::string> PartitionStore::RegisterReadSet(const std::string& job,
                                                    const std::string& token,
                                                    const std::vector<MapOutputRef>& outputs) {
  Impl& im = *impl_;
  if (outputs.empty()) return InvalidArgument("job '" + job + "': a read set names no map output");
  if (outputs.size() > im.options.max_read_set_entries) {
    return InvalidArgument("job '" + job + "': a read set of " + std::to_string(outputs.size()) +
                           " map outputs is over the limit of " +
                           std::to_string(im.options.max_read_set_entries) +
                           " (max_read_set_entries); read in several sets");
  }
  std::vector<MapOutputRef> sorted = outputs;
  std::sort(sorted.begin(), sorted.end(), [](const MapOutputRef& a, const MapOutputRef& b) {
    return std::tie(a.partition, a.attempt) < std::tie(b.partition, b.attempt);
  });
  for (size_t i = 1; i < sorted.size(); ++i) {
    if (sorted[i].partition == sorted[i - 1].partition) {
      return InvalidArgument("job '" + job + "': the read set names partition " +
                             std::to_string(sorted[i].partition) +
                             " twice; name exactly one committed attempt per map");
    }
  }
  if (Status st = CheckToken(job, token); !st.ok()) return st;
  const std::string id = std::string(kExternalPartitionPrefix) + job + "/" + ReadSetDigest(outputs);
  StoreLock lock(im);
  auto jt = im.jobs.find(job);
  if (jt == im.jobs.end()) return NotFound("job '" + job + "' was released meanwhile");
  Job& j = *jt->second;
  if (j.read_sets.count(id) != 0) return id;
  if (j.read_sets.size() >= im.options.max_read_sets_per_job) {
    return ResourceExhausted("job '" + job + "' has " + std::to_string(j.read_sets.size()) +
                             " read sets on " + im.options.node +
                             ", the limit (max_read_sets_per_job)");
  }
  if (im.held_read_set_entries + outputs.size() > im.options.max_held_read_set_entries) {
    return ResourceExhausted(
        "job '" + job + "': a read set of " + std::to_string(outputs.size()) +
        " map outputs would pass the " + std::to_string(im.options.max_held_read_set_entries) +
        " read set entries the store holds at most (" + std::to_string(im.held_read_set_entries) +
        " held; store_max_read_set_entries); release finished jobs (sluicectl release JOB) "
        "first, or raise store_max_read_set_entries");
  }
  auto set = std::make_shared<ReadSet>();
  set->partition_id = id;
  for (const MapOutputRef& r : outputs) {
    auto o = j.outputs.find({r.partition, r.attempt});
    if (o == j.outputs.end()) {
      return NotFound("job '" + job + "' partition " + std::to_string(r.partition) + " attempt " +
                      std::to_string(r.attempt) + " does not exist on " + im.options.node);
    }
    set->outputs.push_back(o->second);
  }
  for (auto& o : set->outputs) o->read_sets.push_back(set);
  im.held_read_set_entries += set->outputs.size();
  j.read_sets[id] = std::move(set);
  j.last_activity = Clock::now();
  return id;
}

Result<std::unique_ptr<shuffle::SubpartitionView>> PartitionStore::CreateView(
    const std::string& partition_id, uint32_t subpartition, std::span<const uint8_t> access_proof,
    shuffle::SubpartitionListener* listener) {
  Impl& im = *impl_;
  // "ext/<job>/<digest>": the job is between the prefix and the last '/'.
  const size_t slash = partition_id.rfind('/');
  if (!partition_id.starts_with(kExternalPartitionPrefix) ||
      slash < kExternalPartitionPrefix.size()) {
    return NotFound("partition '" + partition_id + "' is not an external read set id");
  }
  const std::string job =
      partition_id.substr(kExternalPartitionPrefix.size(), slash - kExternalPartitionPrefix.size());
  std::shared_ptr<ReadSet> set;
  std::string token;
  {
    StoreLock lock(im);
    auto jt = im.jobs.find(job);
    if (jt != im.jobs.end()) {
      token = jt->second->token;
      auto st = jt->second->read_sets.find(partition_id);
      if (st != jt->second->read_sets.end()) set = st->second;
    }
  }
  // An unknown job and a wrong proof look the same to the reader.
  if (!set && token.empty()) {
    return NotFound("read set '" + partition_id + "' is not registered on " + im.options.node +
                    " (register it first: control message ExtRegisterReadSet)");
  }
  if (!token.empty() &&
      !shuffle::auth::ProofMatches(
          shuffle::auth::MakePartitionProof(token, partition_id, subpartition), access_proof)) {
    return Status(StatusCode::kPermissionDenied,
                  "access to '" + partition_id + "' subpartition " +
                      std::to_string(subpartition) + " on " + im.options.node + " denied: " +
                      (access_proof.empty() ? "no" : "a wrong") + " proof of the job's token");
  }
  if (!set) {
    return NotFound("read set '" + partition_id + "' is not registered on " + im.options.node +
                    " (register it first: control message ExtRegisterReadSet)");
  }
  return MakeStoreView(impl_, std::move(set), subpartition, listener);
}

}  // namespace sluice::store

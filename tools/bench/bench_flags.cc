#include "tools/bench/bench_flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <sstream>

#include "shuffle/auth.h"
#include "tools/bench/zmq_baseline.h"
#include "tools/bench/sweep_chart.h"
#include "tools/bench/debloat_bench.h"
#include "tools/common/cli.h"
#include "tools/control/control_client.h"

namespace sluice::bench {
namespace {

Result<double> ParseDouble(const std::string& name, const std::string& v) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (v.empty() || end == nullptr || *end != 0) {
    return InvalidArgument("--" + name + " wants a number, got '" + v + "'");
  }
  return d;
}

Result<uint64_t> ParseUnsigned(const std::string& name, const std::string& v, uint64_t min,
                               uint64_t max) {
  char* end = nullptr;
  const unsigned long long u = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || end == nullptr || *end != 0 || u < min || u > max) {
    return InvalidArgument("--" + name + " wants an integer from " + std::to_string(min) +
                           " to " + std::to_string(max) + ", got '" + v + "'");
  }
  return static_cast<uint64_t>(u);
}

// A size with k/m/g (tools/common/cli.h) within [min, max].
Result<uint64_t> ParseSizeIn(const std::string& name, const std::string& v, uint64_t min,
                             uint64_t max) {
  Result<uint64_t> r = tools::ParseSize(v, "--" + name);
  if (!r.ok()) return r.status();
  if (*r < min || *r > max) {
    return InvalidArgument("--" + name + " wants a size from " + std::to_string(min) + " to " +
                           std::to_string(max) + " bytes, got '" + v + "'");
  }
  return *r;
}

// --record-size N or MIN-MAX, each a size with k/m/g.
Status ApplyRecordSize(BenchFlags* f, const std::string& v) {
  const size_t dash = v.find('-');
  const std::string lo = dash == std::string::npos ? v : v.substr(0, dash);
  const std::string hi = dash == std::string::npos ? v : v.substr(dash + 1);
  Result<uint64_t> a = ParseSizeIn("record-size", lo, 1, 64u << 20);
  Result<uint64_t> b = ParseSizeIn("record-size", hi, 1, 64u << 20);
  if (!a.ok()) return a.status();
  if (!b.ok()) return b.status();
  if (*a > *b) return InvalidArgument("--record-size MIN-MAX wants MIN <= MAX, got " + v);
  f->record_min = static_cast<uint32_t>(*a);
  f->record_max = static_cast<uint32_t>(*b);
  return Status::Ok();
}

Result<bool> ParseOnOff(const std::string& name, const std::string& v) {
  if (v == "on" || v == "true" || v == "1") return true;
  if (v == "off" || v == "false" || v == "0") return false;
  return InvalidArgument("--" + name + " wants on or off, got '" + v + "'");
}

// --baselines: a comma list of on|off (the pump and memcpy; with --latency the TCP floor) and
// zmq (ZeroMQ as well; alone it means on,zmq). "off,zmq" measures ZeroMQ alone.
Status ApplyBaselines(BenchFlags* f, const std::string& v) {
  std::stringstream list(v);
  std::string item;
  bool ceilings = true;
  bool zmq = false;
  bool any = false;
  while (std::getline(list, item, ',')) {
    any = true;
    if (item == "zmq") {
      zmq = true;
      continue;
    }
    Result<bool> b = ParseOnOff("baselines", item);
    if (!b.ok()) {
      return InvalidArgument("--baselines wants on, off, zmq or a comma list of them (on,zmq), "
                             "got '" + v + "'");
    }
    ceilings = *b;
  }
  if (!any) return InvalidArgument("--baselines wants on, off, zmq or on,zmq, got ''");
  if (zmq && !ZmqAvailable()) {
    return InvalidArgument("--baselines zmq: this sluice-bench was built without libzmq "
                           "(install libzmq3-dev, e.g. with tools/setup.sh, and rebuild)");
  }
  f->baselines = ceilings;
  f->zmq_baseline = zmq;
  return Status::Ok();
}

}  // namespace

std::string BenchFlags::RecordSizeString() const {
  if (record_min == record_max) return std::to_string(record_min);
  return std::to_string(record_min) + "-" + std::to_string(record_max);
}

uint32_t BenchFlags::EffectiveBatch() const {
  if (latency) return 1;
  return std::max<uint32_t>(1, std::min<uint32_t>(batch, (256u << 10) / record_max));
}

const char* BenchUsage() {
  return "sluice-bench: throughput and latency of Sluice's data path next to the machine's\n"
         "limits (a raw libuv socket pump and memcpy), measured in the same run.\n"
         "\n"
         "  --mode local|remote        one process over local channels, or two processes over one\n"
         "                             loopback TCP connection (default remote)\n"
         "  --mode external            a local writer process (client::Writer, in place) through\n"
         "                             the daemon's local writer service, against in-process\n"
         "                             EmitInPlace into a pool whose consumer drops buffers,\n"
         "                             and one whose consumer checks their framing as the\n"
         "                             service does, same run (issue 13)\n"
         "  --channels N               subpartitions = input channels (default 64)\n"
         "  --record-size N|MIN-MAX    record bytes (k/m/g), fixed or uniform in a range (default 100)\n"
         "  --segment-size SIZE        buffer size, a power of two 4k..1m (default 32k)\n"
         "  --buffers-per-channel N    exclusive buffers per remote channel (default 2)\n"
         "  --floating-per-gate N      floating buffers of the input gate (default 8)\n"
         "  --buffer-timeout-ms T      output flusher period; 0 flush per record, -1 off (100)\n"
         "  --seconds S                measured time (default 5)\n"
         "  --warmup S                 time before measuring (default 1)\n"
         "  --checksum on|off          CRC32C per buffer (default off)\n"
         "  --latency                  flush per record at --rate records/s; one-way latency\n"
         "                             percentiles from CLOCK_MONOTONIC stamps in the records,\n"
         "                             next to a raw TCP floor (blocking write/read, same rate)\n"
         "  --rate N                   records per second with --latency (default 10000)\n"
         "  --events                   with --latency: every 10th send is a user event\n"
         "                             (EmitEvent), its latency reported on a line of its own\n"
         "  --interleave-ms T          with --latency: Sluice, the TCP floor and ZeroMQ run at\n"
         "                             once and take turns of T ms to send (10..10000), so\n"
         "                             host noise lands on all of them alike; the baselines\n"
         "                             then measure --seconds too (default 0: one after the\n"
         "                             other, the baselines at most 2 s)\n"
         "  --direct on|off            remote: the producer's write-through (a flush to an idle\n"
         "                             connection writes on the producer's thread); off sends\n"
         "                             every frame through the IO loop (default: on, unless\n"
         "                             SLUICE_DIRECT_WRITES=off); --sweep direct=off,on\n"
         "  --direct-reads on|off      remote: the producer's read-through (out of credit, it\n"
         "                             reads the AddCredits waiting on its connection itself);\n"
         "                             off leaves them to its IO loop (default: on, unless\n"
         "                             SLUICE_DIRECT_READS=off); --sweep direct-reads=off,on\n"
         "  --consume-on consumer|io   where the consumer's work runs: a consumer thread\n"
         "                             woken by the IO thread (default), or io: the IO thread\n"
         "                             that read the buffer runs it (the gate's push mode, one\n"
         "                             thread hop fewer); --sweep consume-on=consumer,io\n"
         "  --batch N                  records per emit call to one subpartition (at most 256 KiB\n"
         "                             of records); 1 = plain\n"
         "                             ResultPartition::Emit, >1 = EmitBatch (default 64)\n"
         "  --in-place on|off|fill     fill each record in place in the network buffer\n"
         "                             (EmitInPlace; EmitInPlaceBatch with --batch > 1): the\n"
         "                             producer writes only the 8-byte sequence number (and the\n"
         "                             16-byte stamp with --latency) and leaves the rest of the\n"
         "                             record's bytes as the segment held them; fill writes\n"
         "                             every byte (a pattern after the stamp), as an engine\n"
         "                             that serializes its record straight into the buffer\n"
         "                             does (default off: records are copied from the\n"
         "                             producer's memory)\n"
         "  --network-memory SIZE      network memory per process, e.g. 64m (default: the\n"
         "                             recommended estimate for the topology)\n"
         "  --network-memory-mib M     the same in MiB (older spelling)\n"
         "  --rounds N                 repeat baselines and run N times, report medians (1)\n"
         "  --baselines on|off         measure the pump and memcpy ceilings (with --latency\n"
         "                             the TCP latency floor instead) (default on)\n"
         "  --baselines zmq|on,zmq     also ZeroMQ PUSH/PULL between two processes: records\n"
         "                             packed into segment-sized messages, or with --latency\n"
         "                             one message per record at --rate (off,zmq: ZeroMQ only;\n"
         "                             needs a build with libzmq)\n"
         "  --pump-bufs-per-write N    buffers gathered per uv_write by the pump (default 8)\n"
         "  --auth on|off              remote: authenticate the connection and prove a job\n"
         "                             token, as sluiced does (default on)\n"
         "  --auth-secret-file F       the secret (mode 0600); default: a random one per run\n"
         "  --state-dir D              the secret in D/auth_secret (a sluiced state directory)\n"
         "  --redistribution static|usage  how the node's pool shares spare floating buffers:\n"
         "                             Flink's capacity rule or by measured demand (default usage)\n"
         "  --idle-gates N             remote: N more gates (and partitions) of --channels\n"
         "                             channels each share the consumer's pool; their producers\n"
         "                             send nothing until the end (default 0)\n"
         "  --delay-ms D               remote: every write of both processes waits D ms (the\n"
         "                             fault shim's delay line): credit limits throughput as\n"
         "                             between hosts (default 0)\n"
         "  --series NAME=a,b          with --sweep: one chart line per value of flag NAME\n"
         "  --debloat on|off           the consumer's gate sizes buffers by its throughput x\n"
         "                             --debloat-target-ms (default off, target 1000)\n"
         "  --consumer-rate-mib R      throttle the consumer to R MiB/s of records (default 0: off)\n"
         "  --event-interval-ms T      a timed user event every T ms, to each channel in turn\n"
         "                             (default 100 when debloated, throttled or swept); reports\n"
         "                             inflight_bytes, producer segments and event crossing time\n"
         "  --json                     print one JSON object instead of the text report\n"
         "  --sweep NAME=v1,v2,...     run once per value of flag NAME, print a table and write\n"
         "  --sweep-out FILE           an SVG chart (default sluice-bench-sweep.svg)\n"
         "  --wide-threshold N         a gate of more remote channels is wide: no exclusive\n"
         "                             buffers, a shared floating budget (default 1024; 0 never)\n"
         "  --wide-gate-buffers N      the floating budget of a wide gate (default 512)\n"
         "  --help, --version\n"
         "Flags take --flag value or --flag=value. Exit 0 when every run was healthy, 1 when\n"
         "one failed, 2 for a usage error.\n";
}

namespace {

// A group of flags: its Status when `name` is one of them, nullopt when it is not.
using FlagResult = std::optional<Status>;

Status SetU32(const std::string& name, const std::string& v, uint32_t* out, uint64_t min,
              uint64_t max) {
  Result<uint64_t> r = ParseUnsigned(name, v, min, max);
  if (!r.ok()) return r.status();
  *out = static_cast<uint32_t>(*r);
  return Status::Ok();
}

Status SetOnOff(const std::string& name, const std::string& v, int* out) {
  Result<bool> b = ParseOnOff(name, v);
  if (!b.ok()) return b.status();
  *out = *b ? 1 : 0;
  return Status::Ok();
}

// The data path's shape: mode, channels, record and segment sizes, credit and wide gates.
FlagResult ApplyShapeFlag(BenchFlags* f, const std::string& name, const std::string& v) {
  if (name == "mode") {
    if (v != "local" && v != "remote" && v != "external") {
      return InvalidArgument("--mode wants local, remote or external");
    }
    f->mode = v;
    return Status::Ok();
  }
  if (name == "channels") return SetU32(name, v, &f->channels, 1, 100000);
  if (name == "record-size") return ApplyRecordSize(f, v);
  if (name == "segment-size") {
    Result<uint64_t> r = ParseSizeIn(name, v, 4096, 1u << 20);
    if (!r.ok()) return r.status();
    f->segment_size = static_cast<uint32_t>(*r);
    if ((f->segment_size & (f->segment_size - 1)) != 0) {
      return InvalidArgument("--segment-size must be a power of two, got " + v);
    }
    return Status::Ok();
  }
  if (name == "buffers-per-channel") return SetU32(name, v, &f->buffers_per_channel, 0, 1024);
  if (name == "floating-per-gate") return SetU32(name, v, &f->floating_per_gate, 1, 1u << 20);
  if (name == "buffer-timeout-ms") {
    Result<double> d = ParseDouble(name, v);
    if (!d.ok()) return d.status();
    if (*d < -1) return InvalidArgument("--buffer-timeout-ms wants -1 (off), 0 or more");
    f->buffer_timeout_ms = static_cast<int>(*d);
    return Status::Ok();
  }
  if (name == "wide-threshold") return SetU32(name, v, &f->wide_threshold, 0, 1u << 20);
  if (name == "wide-gate-buffers") return SetU32(name, v, &f->wide_gate_buffers, 1, 1u << 20);
  return std::nullopt;
}

// How a run is measured: its length, rounds, rate, batch, baselines and sweep chart.
FlagResult ApplyRunFlag(BenchFlags* f, const std::string& name, const std::string& v) {
  if (name == "seconds" || name == "warmup") {
    Result<double> d = ParseDouble(name, v);
    if (!d.ok()) return d.status();
    if (*d < 0 || (name == "seconds" && *d <= 0)) {
      return InvalidArgument("--" + name + " wants a positive number of seconds");
    }
    (name == "seconds" ? f->seconds : f->warmup) = *d;
    return Status::Ok();
  }
  if (name == "baselines") return ApplyBaselines(f, v);
  if (name == "rate") return SetU32(name, v, &f->rate, 1, 10000000);
  if (name == "batch") return SetU32(name, v, &f->batch, 1, 1u << 16);
  if (name == "interleave-ms") {
    // A turn much shorter than 10 ms would be mostly its switch-over.
    Status s = SetU32(name, v, &f->interleave_ms, 0, 10000);
    if (s.ok() && f->interleave_ms > 0 && f->interleave_ms < 10) {
      s = InvalidArgument("--interleave-ms wants 0 (off) or 10 to 10000 ms, got '" + v + "'");
    }
    return s;
  }
  if (name == "rounds" || name == "pump-bufs-per-write") {
    uint32_t n = 0;
    const bool rounds = name == "rounds";
    if (Status s = SetU32(name, v, &n, 1, rounds ? 100 : 1024); !s.ok()) return s;
    (rounds ? f->rounds : f->pump_bufs_per_write) = static_cast<int>(n);
    return Status::Ok();
  }
  if (name == "sweep-out") {
    f->sweep_out = v;
    return Status::Ok();
  }
  return std::nullopt;
}

// What the data path does: records in place, checksums, authentication, network memory, its
// pool's redistribution, the link's delay, write- and read-through, where the consumer runs.
FlagResult ApplyPathFlag(BenchFlags* f, const std::string& name, const std::string& v) {
  if (name == "in-place") {
    f->in_place_fill = v == "fill";
    Result<bool> b = f->in_place_fill ? Result<bool>(true) : ParseOnOff(name, v);
    if (!b.ok()) return InvalidArgument("--in-place wants on, off or fill, got '" + v + "'");
    f->in_place = *b;
    return Status::Ok();
  }
  if (name == "checksum" || name == "auth") {
    Result<bool> b = ParseOnOff(name, v);
    if (!b.ok()) return b.status();
    (name == "checksum" ? f->checksum : f->auth) = *b;
    return Status::Ok();
  }
  if (name == "auth-secret-file" || name == "state-dir") {
    (name == "state-dir" ? f->state_dir : f->auth_secret_file) = v;
    return Status::Ok();
  }
  if (name == "network-memory" || name == "network-memory-mib") {
    const bool mib = name == "network-memory-mib";
    Result<uint64_t> r = mib ? ParseUnsigned(name, v, 0, 1u << 20)
                             : ParseSizeIn(name, v, 0, uint64_t{1} << 40);
    if (!r.ok()) return r.status();
    f->network_memory = mib ? *r << 20 : *r;
    return Status::Ok();
  }
  if (name == "redistribution") {
    if (!buffer::ParseRedistributionPolicy(v, &f->redistribution)) {
      return InvalidArgument("--redistribution wants static or usage, got '" + v + "'");
    }
    return Status::Ok();
  }
  if (name == "idle-gates") return SetU32(name, v, &f->idle_gates, 0, 1024);
  if (name == "delay-ms") return SetU32(name, v, &f->delay_ms, 0, 10000);
  if (name == "direct") return SetOnOff(name, v, &f->direct);
  if (name == "direct-reads") return SetOnOff(name, v, &f->direct_reads);
  if (name == "consume-on") {
    if (v != "consumer" && v != "io") {
      return InvalidArgument("--consume-on wants consumer or io, got '" + v + "'");
    }
    f->consume_on_io = v == "io";
    return Status::Ok();
  }
  return std::nullopt;
}

}  // namespace

Status ApplyFlag(BenchFlags* f, const std::string& name, const std::string& v) {
  for (auto apply : {ApplyShapeFlag, ApplyRunFlag, ApplyPathFlag}) {
    if (FlagResult r = apply(f, name, v)) return *r;
  }
  if (IsDebloatFlag(name)) return ApplyDebloatFlag(f, name, v);
  return InvalidArgument("unknown flag --" + name + " (see --help)");
}

namespace {

// --consume-on io runs the consumer on the IO thread, which must never sleep.
Status CheckConsumeOn(const BenchFlags& f) {
  if (!f.consume_on_io || f.consumer_rate_mib <= 0) return Status::Ok();
  return InvalidArgument(
      "--consume-on io cannot throttle the consumer (--consumer-rate-mib sleeps, and the IO "
      "thread must not): use --consume-on consumer");
}

// Every flag that takes a value, by its name without dashes; ApplyFlag gives each its meaning.
constexpr const char* kValueFlags[] = {
    "mode",       "channels",          "record-size",     "segment-size",
    "buffers-per-channel", "floating-per-gate", "buffer-timeout-ms", "seconds",
    "warmup",     "checksum",          "baselines",       "in-place",
    "auth",       "auth-secret-file",  "state-dir",       "rate",
    "batch",      "network-memory",    "network-memory-mib", "rounds",
    "pump-bufs-per-write", "sweep-out",
    "wide-threshold", "wide-gate-buffers", "redistribution", "idle-gates", "delay-ms",
    "debloat", "debloat-target-ms", "consumer-rate-mib", "event-interval-ms",
    "direct", "direct-reads", "consume-on", "interleave-ms"};

Status ParseSweep(BenchFlags* f, const std::string& value) {
  const size_t eq = value.find('=');
  if (eq == std::string::npos || eq + 1 >= value.size()) {
    return InvalidArgument("--sweep wants NAME=v1,v2,..., got '" + value + "'");
  }
  f->sweep_name = value.substr(0, eq);
  std::stringstream list(value.substr(eq + 1));
  std::string item;
  while (std::getline(list, item, ',')) {
    if (!item.empty()) f->sweep_values.push_back(item);
  }
  if (f->sweep_name == "sweep" || f->sweep_name == "sweep-out" || f->sweep_name == "mode" ||
      f->sweep_name == "auth-secret-file" || f->sweep_name == "state-dir") {
    return InvalidArgument("--sweep cannot vary --" + f->sweep_name);
  }
  return Status::Ok();
}

}  // namespace

int ParseBenchFlags(int argc, char** argv, BenchFlags* out) {
  BenchFlags f;
  CLI::App app(BenchUsage(), "sluice-bench");
  app.set_help_flag("");  // the hand-written usage above lists every flag
  app.add_flag("-h,--help")->description("print the usage and exit");
  tools::AddVersionFlag(app, "sluice-bench");
  std::map<std::string, std::string> values;
  for (const char* name : kValueFlags) {
    app.add_option(std::string("--") + name, values[name])
        ->each([&f, name = std::string(name)](const std::string& v) {
          Status s = ApplyFlag(&f, name, v);
          if (s.ok()) return;
          // CLI11 names the flag in front of the message: do not say it twice.
          const std::string self = "--" + name + " ";
          std::string message = s.message();
          if (message.rfind(self, 0) == 0) message = message.substr(self.size());
          throw CLI::ValidationError(message);
        });
  }
  app.add_flag("--json", f.json);
  app.add_flag("--latency", f.latency);
  app.add_flag("--events", f.events);
  std::string sweep;
  app.add_option("--sweep", sweep, "NAME=v1,v2,...")->each([&f](const std::string& v) {
    if (Status s = ParseSweep(&f, v); !s.ok()) throw CLI::ValidationError(s.message());
  });
  std::string series;  // --series NAME=a,b (sweep_chart.h)
  app.add_option("--series", series, "NAME=a,b,...");
  if (const int exit_code = tools::ParseOrExit(app, argc, argv); exit_code >= 0) return exit_code;
  if (app.count("--help") > 0) {
    std::fputs(BenchUsage(), stdout);
    return tools::kExitOk;
  }
  Status s = Status::Ok();
  if (!f.auth_secret_file.empty() && !f.state_dir.empty()) {
    s = InvalidArgument("give --auth-secret-file or --state-dir, not both");
  }
  if (s.ok() && f.events && !f.latency) {
    s = InvalidArgument("--events measures event latency: give --latency as well");
  }
  if (s.ok() && f.interleave_ms > 0 && !f.latency) {
    s = InvalidArgument(
        "--interleave-ms interleaves the latency paths (Sluice, the TCP floor, ZeroMQ): give "
        "--latency as well");
  }
  // Every sweep value must parse before anything runs.
  for (const std::string& v : f.sweep_values) {
    BenchFlags probe = f;
    if (s.ok()) s = ApplyFlag(&probe, f.sweep_name, v);
    if (s.ok()) s = CheckConsumeOn(probe);
  }
  if (s.ok()) s = CheckConsumeOn(f);
  if (s.ok() && !series.empty()) {
    s = f.sweep_name.empty() ? InvalidArgument("--series needs --sweep (the x axis)")
                             : ParseSeries(&f, series);
  }
  if (!s.ok()) {
    std::fprintf(stderr, "sluice-bench: %s\n", s.message().c_str());
    return tools::kExitUsage;
  }
  *out = std::move(f);
  return -1;
}

Status ResolveBenchSecret(BenchFlags* f) {
  if (!f->auth && f->sweep_name != "auth") return Status::Ok();
  if (f->auth_secret_file.empty() && f->state_dir.empty()) {
    f->secret = shuffle::auth::MakeJobToken();  // 32 random bytes, hex
    return Status::Ok();
  }
  auto secret = control::FindSecret({f->auth_secret_file, f->state_dir});
  if (!secret.ok()) return secret.status();
  f->secret = *secret;
  return Status::Ok();
}

}  // namespace sluice::bench

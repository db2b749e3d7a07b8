#include "tools/bench/bench_flags.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "shuffle/auth.h"
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

Result<bool> ParseOnOff(const std::string& name, const std::string& v) {
  if (v == "on" || v == "true" || v == "1") return true;
  if (v == "off" || v == "false" || v == "0") return false;
  return InvalidArgument("--" + name + " wants on or off, got '" + v + "'");
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
         "  --channels N               subpartitions = input channels (default 64)\n"
         "  --record-size N|MIN-MAX    record bytes, fixed or uniform in a range (default 100)\n"
         "  --segment-size B           buffer size, a power of two 4096..1048576 (default 32768)\n"
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
         "  --batch N                  records per emit call to one subpartition (at most 256 KiB\n"
         "                             of records); 1 = plain\n"
         "                             ResultPartition::Emit, >1 = EmitBatch (default 64)\n"
         "  --in-place on|off          fill each record in place in the network buffer\n"
         "                             (EmitInPlace; EmitInPlaceBatch with --batch > 1): the\n"
         "                             producer writes only the 8-byte sequence number (and the\n"
         "                             16-byte stamp with --latency) and leaves the rest of the\n"
         "                             record's bytes as the segment held them, which models an\n"
         "                             engine that serializes its record straight into the\n"
         "                             buffer (default off: records are copied from the\n"
         "                             producer's memory)\n"
         "  --network-memory-mib M     network memory per process (default: the recommended\n"
         "                             estimate for the topology)\n"
         "  --rounds N                 repeat baselines and run N times, report medians (1)\n"
         "  --baselines on|off         measure the pump and memcpy ceilings (and the TCP\n"
         "                             latency floor with --latency) (default on)\n"
         "  --pump-bufs-per-write N    buffers gathered per uv_write by the pump (default 8)\n"
         "  --auth on|off              remote: authenticate the connection and prove a job\n"
         "                             token, as sluiced does (default on)\n"
         "  --auth-secret-file F       the secret (mode 0600); default: a random one per run\n"
         "  --state-dir D              the secret in D/auth_secret (a sluiced state directory)\n"
         "  --json                     print one JSON object instead of the text report\n"
         "  --sweep NAME=v1,v2,...     run once per value of flag NAME, print a table and write\n"
         "  --sweep-out FILE           an SVG chart (default sluice-bench-sweep.svg)\n";
}

Status ApplyFlag(BenchFlags* f, const std::string& name, const std::string& v) {
  auto set_u32 = [&](uint32_t* out, uint64_t min, uint64_t max) -> Status {
    Result<uint64_t> r = ParseUnsigned(name, v, min, max);
    if (!r.ok()) return r.status();
    *out = static_cast<uint32_t>(*r);
    return Status::Ok();
  };
  if (name == "mode") {
    if (v != "local" && v != "remote") return InvalidArgument("--mode wants local or remote");
    f->mode = v;
  } else if (name == "channels") {
    return set_u32(&f->channels, 1, 100000);
  } else if (name == "record-size") {
    const size_t dash = v.find('-');
    const std::string lo = dash == std::string::npos ? v : v.substr(0, dash);
    const std::string hi = dash == std::string::npos ? v : v.substr(dash + 1);
    Result<uint64_t> a = ParseUnsigned(name, lo, 1, 64u << 20);
    Result<uint64_t> b = ParseUnsigned(name, hi, 1, 64u << 20);
    if (!a.ok()) return a.status();
    if (!b.ok()) return b.status();
    if (*a > *b) return InvalidArgument("--record-size MIN-MAX wants MIN <= MAX, got " + v);
    f->record_min = static_cast<uint32_t>(*a);
    f->record_max = static_cast<uint32_t>(*b);
  } else if (name == "segment-size") {
    if (Status s = set_u32(&f->segment_size, 4096, 1u << 20); !s.ok()) return s;
    if ((f->segment_size & (f->segment_size - 1)) != 0) {
      return InvalidArgument("--segment-size must be a power of two, got " + v);
    }
  } else if (name == "buffers-per-channel") {
    return set_u32(&f->buffers_per_channel, 0, 1024);
  } else if (name == "floating-per-gate") {
    return set_u32(&f->floating_per_gate, 1, 1u << 20);
  } else if (name == "buffer-timeout-ms") {
    Result<double> d = ParseDouble(name, v);
    if (!d.ok()) return d.status();
    if (*d < -1) return InvalidArgument("--buffer-timeout-ms wants -1 (off), 0 or more");
    f->buffer_timeout_ms = static_cast<int>(*d);
  } else if (name == "seconds" || name == "warmup") {
    Result<double> d = ParseDouble(name, v);
    if (!d.ok()) return d.status();
    if (*d < 0 || (name == "seconds" && *d <= 0)) {
      return InvalidArgument("--" + name + " wants a positive number of seconds");
    }
    (name == "seconds" ? f->seconds : f->warmup) = *d;
  } else if (name == "checksum" || name == "baselines" || name == "in-place" || name == "auth") {
    Result<bool> b = ParseOnOff(name, v);
    if (!b.ok()) return b.status();
    (name == "checksum"    ? f->checksum
     : name == "baselines" ? f->baselines
     : name == "auth"      ? f->auth
                           : f->in_place) = *b;
  } else if (name == "auth-secret-file") {
    f->auth_secret_file = v;
  } else if (name == "state-dir") {
    f->state_dir = v;
  } else if (name == "rate") {
    return set_u32(&f->rate, 1, 10000000);
  } else if (name == "batch") {
    return set_u32(&f->batch, 1, 1u << 16);
  } else if (name == "network-memory-mib") {
    Result<uint64_t> r = ParseUnsigned(name, v, 0, 1u << 20);
    if (!r.ok()) return r.status();
    f->network_memory = *r << 20;
  } else if (name == "rounds") {
    uint32_t r = 0;
    if (Status s = set_u32(&r, 1, 100); !s.ok()) return s;
    f->rounds = static_cast<int>(r);
  } else if (name == "pump-bufs-per-write") {
    uint32_t n = 0;
    if (Status s = set_u32(&n, 1, 1024); !s.ok()) return s;
    f->pump_bufs_per_write = static_cast<int>(n);
  } else if (name == "sweep-out") {
    f->sweep_out = v;
  } else {
    return InvalidArgument("unknown flag --" + name + " (see --help)");
  }
  return Status::Ok();
}

Result<BenchFlags> ParseBenchFlags(int argc, char** argv) {
  BenchFlags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") {
      std::fputs(BenchUsage(), stdout);
      std::exit(0);
    }
    if (a.rfind("--", 0) != 0) return InvalidArgument("unexpected argument '" + a + "'");
    a = a.substr(2);
    std::string value;
    bool has_value = false;
    if (const size_t eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
      has_value = true;
    }
    if (a == "json") {
      f.json = true;
      continue;
    }
    if (a == "latency") {
      f.latency = true;
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) return InvalidArgument("missing value after --" + a);
      value = argv[++i];
    }
    if (a == "sweep") {
      const size_t eq = value.find('=');
      if (eq == std::string::npos || eq + 1 >= value.size()) {
        return InvalidArgument("--sweep wants NAME=v1,v2,..., got '" + value + "'");
      }
      f.sweep_name = value.substr(0, eq);
      std::stringstream list(value.substr(eq + 1));
      std::string item;
      while (std::getline(list, item, ',')) {
        if (!item.empty()) f.sweep_values.push_back(item);
      }
      if (f.sweep_name == "sweep" || f.sweep_name == "sweep-out" || f.sweep_name == "mode" ||
          f.sweep_name == "auth-secret-file" || f.sweep_name == "state-dir") {
        return InvalidArgument("--sweep cannot vary --" + f.sweep_name);
      }
      continue;
    }
    if (Status s = ApplyFlag(&f, a, value); !s.ok()) return s;
  }
  if (!f.auth_secret_file.empty() && !f.state_dir.empty()) {
    return InvalidArgument("give --auth-secret-file or --state-dir, not both");
  }
  // Every sweep value must parse before anything runs.
  for (const std::string& v : f.sweep_values) {
    BenchFlags probe = f;
    if (Status s = ApplyFlag(&probe, f.sweep_name, v); !s.ok()) return s;
  }
  return f;
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

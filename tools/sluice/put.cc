#include "tools/sluice/put.h"

#include <memory>
#include <string>

#include "client/local_protocol.h"
#include "client/writer.h"
#include "shuffle/auth.h"
#include "tools/common/cli.h"
#include "tools/control/control_client.h"

namespace sluice::tools::sluice_cli {

namespace {

// The job's token: given, read from its file, or the one in the state directory, made and
// stored there for the next writers when there is none.
Result<std::string> JobToken(const CommonFlags& c, const std::string& job) {
  if (!c.token.empty() || !c.token_file.empty()) {
    return shuffle::auth::FindJobToken(c.token, c.token_file, StateDir(c), job);
  }
  return shuffle::auth::LoadOrCreateJobToken(StateDir(c), job);
}

Result<client::WriterOptions> WriterOptionsFor(const PutOptions& o, const CommonFlags& c) {
  client::WriterOptions w;
  w.state_dir = StateDir(c);
  if (o.daemon.find('/') != std::string::npos) {
    w.socket_path = o.daemon;  // a socket path
  } else if (!o.daemon.empty()) {
    // PORT or HOST:PORT of a daemon on this host: its socket in the state directory.
    const std::string port = o.daemon.substr(o.daemon.rfind(':') + 1);
    const bool digits = !port.empty() && port.size() <= 5 &&
                        port.find_first_not_of("0123456789") == std::string::npos;
    const unsigned long p = digits ? std::stoul(port) : 0;
    if (p == 0 || p > 65535) {
      return InvalidArgument("--daemon '" + o.daemon +
                             "' is not a socket path, a port or HOST:PORT of the local sluiced");
    }
    w.port = static_cast<uint32_t>(p);
  }
  auto secret = control::FindSecret({c.auth_secret_file, c.state_dir});
  if (!secret.ok()) return secret.status();
  w.secret = *secret;
  auto token = JobToken(c, o.job);
  if (!token.ok()) return token.status();
  w.token = *token;
  w.job = o.job;
  w.partition = o.partition;
  w.attempt = o.attempt;
  w.subpartitions = o.subpartitions;
  auto mode = client::ParseWriteMode(o.mode);
  if (!mode.ok()) return mode.status();
  w.mode = *mode;
  w.credit = o.credit;
  w.retention = std::chrono::seconds(o.retention_s);
  return w;
}

}  // namespace

uint64_t Fnv1a(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char ch : bytes) {
    h ^= static_cast<uint8_t>(ch);
    h *= 0x100000001b3ull;
  }
  return h;
}

uint32_t RouteLine(const PutOptions& o, std::string_view line, uint64_t* next) {
  if (o.key_field == 0) return static_cast<uint32_t>((*next)++ % o.subpartitions);
  std::string_view field;
  size_t start = 0;
  for (uint32_t k = 1;; ++k) {
    const size_t end = line.find(o.delimiter, start);
    if (k == o.key_field) {
      field = line.substr(start, end == std::string_view::npos ? std::string_view::npos
                                                               : end - start);
      break;
    }
    if (end == std::string_view::npos) break;  // fewer fields: the empty key
    start = end + o.delimiter.size();
  }
  return static_cast<uint32_t>(Fnv1a(field) % o.subpartitions);
}

int RunPut(const PutOptions& o, const CommonFlags& common, std::FILE* in, std::FILE* out) {
  if (o.key_field > 0 && o.round_robin) {
    return CommandFailed("put", InvalidArgument("--key-field and --round-robin exclude each other"),
                         kExitUsage);
  }
  if (o.key_field > 0 && o.delimiter.empty()) {
    return CommandFailed("put", InvalidArgument("--delimiter is empty"), kExitUsage);
  }
  auto options = WriterOptionsFor(o, common);
  if (!options.ok()) return CommandFailed("put", options.status(), kExitUsage);
  auto writer = client::Writer::Open(*options);
  if (!writer.ok()) return CommandFailed("put", writer.status());
  char* line = nullptr;
  size_t cap = 0;
  uint64_t next = 0;
  Status failed;
  while (true) {
    const ssize_t n = ::getline(&line, &cap, in);
    if (n < 0) break;
    std::string_view record(line, static_cast<size_t>(n));
    if (!record.empty() && record.back() == '\n') record.remove_suffix(1);
    failed = (*writer)->Write(RouteLine(o, record, &next), record);
    if (!failed.ok()) break;
  }
  std::free(line);
  if (failed.ok() && std::ferror(in)) failed = IoError("reading stdin failed");
  if (!failed.ok()) {
    (void)(*writer)->Abort(failed.message());
    return CommandFailed("put",
                         Status(failed.code(), failed.message() + "; nothing was committed"));
  }
  auto committed = (*writer)->Commit();
  if (!committed.ok()) {
    return CommandFailed("put", Status(committed.status().code(),
                                       committed.status().message() + "; nothing was committed"));
  }
  std::fprintf(out, "%s\n", client::EncodeMapOutput(*committed).c_str());
  std::fflush(out);
  return kExitOk;
}

Command AddPut(CLI::App& app, CommonFlags& common) {
  auto o = std::make_shared<PutOptions>();
  CLI::App* sub = app.add_subcommand(
      "put", "write stdin's lines into one map output through the local sluiced; print the "
             "committed MapOutput");
  sub->add_option("--daemon", o->daemon,
                  "the local sluiced: its data port or HOST:PORT (its socket is "
                  "<state-dir>/sluiced-<port>.sock; default 7070), or a socket path");
  sub->add_option("--job", o->job, "the job (created by its first writer)")->required();
  sub->add_option("--partition", o->partition, "this map output's partition (map task)")
      ->required();
  sub->add_option("--attempt", o->attempt, "the map task's attempt (default 0)");
  sub->add_option("--subpartitions", o->subpartitions, "number of subpartitions (reducers)")
      ->required()
      ->check(CLI::Range(1u, 65536u));
  sub->add_option("--key-field", o->key_field,
                  "route by FNV-1a of this field (counted from 1) modulo subpartitions")
      ->check(CLI::Range(1u, 1u << 20));
  sub->add_option("--delimiter", o->delimiter, "field delimiter for --key-field (default tab)");
  sub->add_flag("--round-robin", o->round_robin, "route lines round robin (the default)");
  sub->add_option("--mode", o->mode, "pipelined (default) or blocking")
      ->check(CLI::IsMember({"pipelined", "blocking"}));
  sub->add_option("--credit", o->credit, "segments of write credit to ask for (default: the "
                                         "daemon's writer_credit)");
  sub->add_option("--retention", o->retention_s,
                  "seconds the daemon keeps the job's data after its last write or read (set by "
                  "the job's first writer; default: the daemon's retention)")
      ->check(CLI::Range(1u, client::local::kMaxRetentionSeconds));
  return {sub, [o, &common] { return RunPut(*o, common, stdin, stdout); }};
}

}  // namespace sluice::tools::sluice_cli

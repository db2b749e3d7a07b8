#include "tools/harness/netns.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>

#include "tools/harness/process_util.h"

namespace sluice::harness {
namespace {

constexpr int kSubnets = 200;

// Removes namespaces slhK-<pid>-<i> (and their bridges) whose harness process is gone: a run
// killed with SIGKILL cannot clean up after itself.
void RemoveStale() {
  std::string out;
  if (RunCommand({"ip", "netns", "list"}, &out) != 0) return;
  std::istringstream lines(out);
  std::string line;
  std::set<int> live_subnets, dead_subnets;
  while (std::getline(lines, line)) {
    std::string name = line.substr(0, line.find(' '));
    int k = -1;
    int pid = -1;
    int idx = -1;
    if (std::sscanf(name.c_str(), "slh%d-%d-%d", &k, &pid, &idx) != 3) continue;
    if (kill(pid, 0) == 0 || errno != ESRCH) {
      live_subnets.insert(k);
      continue;
    }
    RunCommand({"ip", "netns", "del", name});
    dead_subnets.insert(k);
  }
  for (int k : dead_subnets) {
    if (!live_subnets.count(k)) RunCommand({"ip", "link", "del", "slhb" + std::to_string(k)});
  }
}

std::string Fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

Result<std::unique_ptr<NetnsTopology>> NetnsTopology::Create(int nodes, double rate_mbit,
                                                            double drop_percent,
                                                            const std::string& run_dir) {
  if (geteuid() != 0) {
    return Status(StatusCode::kPermissionDenied,
                  "--netns needs root (it creates network namespaces, veth pairs and a bridge); "
                  "run as root or drop --netns");
  }
  RemoveStale();
  std::unique_ptr<NetnsTopology> t(new NetnsTopology());
  const int pid = static_cast<int>(getpid());
  std::string last_error;
  for (int attempt = 0; attempt < kSubnets; ++attempt) {
    int k = (pid + attempt) % kSubnets;
    std::string br = "slhb" + std::to_string(k);
    std::string out;
    if (RunCommand({"ip", "link", "add", br, "type", "bridge"}, &out) == 0) {
      t->subnet_ = k;
      t->bridge_ = br;
      break;
    }
    last_error = out;
    if (out.find("File exists") == std::string::npos) break;  // not a collision: give up
  }
  if (t->subnet_ < 0) {
    while (!last_error.empty() && last_error.back() == '\n') last_error.pop_back();
    return Status(StatusCode::kPermissionDenied,
                  "--netns: cannot create a bridge (ip link add type bridge: " + last_error +
                      "); this machine does not permit network namespaces here");
  }
  const std::string k = std::to_string(t->subnet_);
  auto step = [&](const std::vector<std::string>& argv) { return RunChecked(argv); };
  Status s = step({"ip", "addr", "add", t->harness_address() + "/24", "dev", t->bridge_});
  if (s.ok()) s = step({"ip", "link", "set", t->bridge_, "up"});
  for (int i = 0; s.ok() && i < nodes; ++i) {
    std::string ns = "slh" + k + "-" + std::to_string(pid) + "-" + std::to_string(i);
    std::string host = "slh" + k + "h" + std::to_string(i);
    std::string peer = "slh" + k + "n" + std::to_string(i);
    s = step({"ip", "netns", "add", ns});
    if (!s.ok()) {
      s = Status(StatusCode::kPermissionDenied, "--netns: " + s.message());
      break;
    }
    t->namespaces_.push_back(ns);
    s = step({"ip", "link", "add", host, "type", "veth", "peer", "name", peer, "netns", ns});
    if (!s.ok()) break;
    t->host_veths_.push_back(host);
    s = step({"ip", "link", "set", host, "master", t->bridge_, "up"});
    if (s.ok()) s = step({"ip", "-n", ns, "addr", "add", t->node_address(i) + "/24", "dev", peer});
    if (s.ok()) s = step({"ip", "-n", ns, "link", "set", peer, "up"});
    if (s.ok()) s = step({"ip", "-n", ns, "link", "set", "lo", "up"});
    if (s.ok() && rate_mbit > 0) {
      const std::vector<std::string> tbf = {"root", "tbf", "rate", Fmt(rate_mbit) + "mbit",
                                            "burst", "64kb", "latency", "200ms"};
      std::vector<std::string> a = {"tc", "qdisc", "add", "dev", host};
      a.insert(a.end(), tbf.begin(), tbf.end());
      s = step(a);
      std::vector<std::string> b = {"ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer};
      b.insert(b.end(), tbf.begin(), tbf.end());
      if (s.ok()) s = step(b);
    }
    if (s.ok() && drop_percent > 0) {
      // numgen random mod 10000 < 100 * P: P may have two decimals. Control traffic from the
      // harness (the bridge address) passes so the progress polling stays responsive.
      const auto per_10k = static_cast<long>(drop_percent * 100 + 0.5);
      std::string rules = "table inet sluice_harness {\n  chain input {\n"
                          "    type filter hook input priority 0; policy accept;\n"
                          "    ip saddr != " + t->harness_address() +
                          " meta l4proto tcp numgen random mod 10000 < " +
                          std::to_string(per_10k) + " counter drop\n  }\n}\n";
      std::string file = run_dir + "/drop-" + std::to_string(i) + ".nft";
      s = WriteWholeFile(file, rules);
      if (s.ok()) s = step({"ip", "netns", "exec", ns, "nft", "-f", file});
    }
  }
  if (!s.ok()) return s;  // the destructor removes what was made
  return t;
}

NetnsTopology::~NetnsTopology() { TearDown(); }

void NetnsTopology::TearDown() {
  for (const auto& ns : namespaces_) RunCommand({"ip", "netns", "del", ns});
  for (const auto& v : host_veths_) RunCommand({"ip", "link", "del", v});
  if (!bridge_.empty()) RunCommand({"ip", "link", "del", bridge_});
  namespaces_.clear();
  host_veths_.clear();
  bridge_.clear();
}

uint64_t NetnsTopology::DroppedPackets() const {
  uint64_t total = 0;
  for (const auto& ns : namespaces_) {
    std::string out;
    if (RunCommand({"ip", "netns", "exec", ns, "nft", "list", "table", "inet", "sluice_harness"},
                   &out) != 0) {
      continue;
    }
    auto pos = out.find("packets ");
    if (pos != std::string::npos) total += std::strtoull(out.c_str() + pos + 8, nullptr, 10);
  }
  return total;
}

std::string NetnsTopology::node_address(int i) const {
  return "10.77." + std::to_string(subnet_) + "." + std::to_string(i + 2);
}

std::string NetnsTopology::harness_address() const {
  return "10.77." + std::to_string(subnet_) + ".1";
}

std::string NetnsTopology::Describe() const {
  return "bridge " + bridge_ + " " + harness_address() + "/24, " +
         std::to_string(namespaces_.size()) + " namespaces slh" + std::to_string(subnet_) +
         "-" + std::to_string(getpid()) + "-*";
}

}  // namespace sluice::harness

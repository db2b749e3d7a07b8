// NetnsTopology: one network namespace per daemon, each with its own address 10.77.K.(i+2)/24
// on a veth whose peer is enslaved to a bridge slhbK (address 10.77.K.1) in the root namespace,
// so the harness reaches every daemon by plain routing. Optional tc tbf rate limit on both ends
// of every veth and an nftables random drop of incoming TCP from other daemons in every daemon
// namespace.
//
// K is reserved by creating the bridge slhbK (creation fails when another run holds it), so
// parallel runs do not collide. Namespaces are named slhK-<pid>-<i>; leftovers of runs whose
// pid is gone are removed at Create. The destructor tears everything down.
//
// Thread-compatible. REQUIRES: root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "buffer/status.h"

namespace sluice::harness {

class NetnsTopology {
 public:
  // kPermissionDenied when not root or when the kernel refuses namespaces (the message says
  // why); other errors name the failing command.
  static Result<std::unique_ptr<NetnsTopology>> Create(int nodes, double rate_mbit,
                                                       double drop_percent,
                                                       const std::string& run_dir);
  ~NetnsTopology();
  NetnsTopology(const NetnsTopology&) = delete;
  NetnsTopology& operator=(const NetnsTopology&) = delete;

  const std::string& ns_name(int i) const { return namespaces_[static_cast<size_t>(i)]; }
  std::string node_address(int i) const;  // 10.77.K.(i+2)
  std::string harness_address() const;    // 10.77.K.1, on the bridge
  std::string Describe() const;
  // Packets the drop rules discarded so far, over every namespace.
  uint64_t DroppedPackets() const;

 private:
  NetnsTopology() = default;
  void TearDown();

  int subnet_ = -1;
  std::string bridge_;
  std::vector<std::string> namespaces_;
  std::vector<std::string> host_veths_;
};

}  // namespace sluice::harness

#include "tools/control/job_file.h"

#include <toml++/toml.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <sstream>

namespace sluice::control {
namespace {

// One key's reader: checks the node's type and range and stores it in the spec.
using Setter = std::function<Status(const toml::node&, const std::string& where, JobSpec*)>;

Status WrongType(const std::string& where, const char* want) {
  return InvalidArgument(where + " must be " + want);
}

template <typename T>
Status ReadInt(const toml::node& n, const std::string& where, T* out) {
  if (!n.is_integer()) return WrongType(where, "an integer");
  const int64_t v = *n.value<int64_t>();
  if (v < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
      static_cast<uint64_t>(v) > static_cast<uint64_t>(std::numeric_limits<T>::max()) ||
      (v < 0 && !std::is_signed_v<T>)) {
    return InvalidArgument(where + " = " + std::to_string(v) + " is out of range (" +
                           std::to_string(std::numeric_limits<T>::min()) + ".." +
                           std::to_string(std::numeric_limits<T>::max()) + ")");
  }
  *out = static_cast<T>(v);
  return Status::Ok();
}

Status ReadString(const toml::node& n, const std::string& where, std::string* out) {
  if (!n.is_string()) return WrongType(where, "a string");
  *out = *n.value<std::string>();
  return Status::Ok();
}

Status ReadDouble(const toml::node& n, const std::string& where, double* out) {
  if (!n.is_number()) return WrongType(where, "a number");
  *out = *n.value<double>();
  if (!std::isfinite(*out)) return InvalidArgument(where + " must be a finite number");
  return Status::Ok();
}

// An array of `T` read element by element with `read`.
template <typename T, typename F>
Status ReadArray(const toml::node& n, const std::string& where, std::vector<T>* out, F read) {
  const toml::array* a = n.as_array();
  if (a == nullptr) return WrongType(where, "an array");
  if (a->size() > kMaxJobFileArray) {
    return InvalidArgument(where + " has " + std::to_string(a->size()) + " entries, above the " +
                           std::to_string(kMaxJobFileArray) + " a job may have");
  }
  out->clear();
  for (size_t i = 0; i < a->size(); ++i) {
    T v{};
    if (Status st = read((*a)[i], where + "[" + std::to_string(i) + "]", &v); !st.ok()) return st;
    out->push_back(std::move(v));
  }
  return Status::Ok();
}

// A string key that names one of `names` (index = enum value).
template <typename E>
Setter Enum(E JobSpec::*field, std::vector<std::string> names) {
  return [field, names](const toml::node& n, const std::string& where, JobSpec* s) -> Status {
    std::string v;
    if (Status st = ReadString(n, where, &v); !st.ok()) return st;
    std::string known;
    for (size_t i = 0; i < names.size(); ++i) {
      if (names[i] == v) {
        s->*field = static_cast<E>(i);
        return Status::Ok();
      }
      known += (i ? " | \"" : "\"") + names[i] + "\"";
    }
    return InvalidArgument(where + " = \"" + v + "\" is not one of " + known);
  };
}

template <typename T>
Setter Int(T JobSpec::*field) {
  return [field](const toml::node& n, const std::string& where, JobSpec* s) {
    return ReadInt(n, where, &(s->*field));
  };
}

Setter NodeIndexes(std::vector<uint32_t> JobSpec::*field) {
  return [field](const toml::node& n, const std::string& where, JobSpec* s) {
    return ReadArray(n, where, &(s->*field), ReadInt<uint32_t>);
  };
}

Setter Strings(std::vector<std::string> JobSpec::*field) {
  return [field](const toml::node& n, const std::string& where, JobSpec* s) {
    return ReadArray(n, where, &(s->*field), ReadString);
  };
}

const std::map<std::string, Setter>& Keys() {
  static const auto* keys = new std::map<std::string, Setter>{
      {"job_id",
       [](const toml::node& n, const std::string& w, JobSpec* s) {
         return ReadString(n, w, &s->job_id);
       }},
      {"kind", Enum(&JobSpec::kind, {"generated", "file-partition"})},
      {"nodes", Strings(&JobSpec::nodes)},
      {"producer_nodes", NodeIndexes(&JobSpec::producer_nodes)},
      {"consumer_nodes", NodeIndexes(&JobSpec::consumer_nodes)},
      {"pattern", Enum(&JobSpec::pattern, {"all-to-all", "pointwise"})},
      {"records_per_producer", Int(&JobSpec::records_per_producer)},
      {"record_size_min", Int(&JobSpec::record_size_min)},
      {"record_size_max", Int(&JobSpec::record_size_max)},
      {"keys", Enum(&JobSpec::keys, {"uniform", "zipf"})},
      {"zipf_s",
       [](const toml::node& n, const std::string& w, JobSpec* s) {
         return ReadDouble(n, w, &s->zipf_s);
       }},
      {"key_count", Int(&JobSpec::key_count)},
      {"partitioner", Enum(&JobSpec::partitioner, {"key-hash", "round-robin"})},
      {"seed", Int(&JobSpec::seed)},
      {"input_files", Strings(&JobSpec::input_files)},
      {"delimiter",
       [](const toml::node& n, const std::string& w, JobSpec* s) -> Status {
         std::string v;
         if (Status st = ReadString(n, w, &v); !st.ok()) return st;
         if (v.size() != 1) return InvalidArgument(w + " must be one character, got \"" + v + "\"");
         s->delimiter = v[0];
         return Status::Ok();
       }},
      {"key_field", Int(&JobSpec::key_field)},
      {"output_dir",
       [](const toml::node& n, const std::string& w, JobSpec* s) {
         return ReadString(n, w, &s->output_dir);
       }},
      {"checksums",
       [](const toml::node& n, const std::string& w, JobSpec* s) -> Status {
         if (!n.is_boolean()) return WrongType(w, "true or false");
         s->checksums = *n.value<bool>();
         return Status::Ok();
       }},
      {"timeout_ms", Int(&JobSpec::timeout_ms)},
      {"throttled_consumer", Int(&JobSpec::throttled_consumer)},
      {"throttle_mib_per_second",
       [](const toml::node& n, const std::string& w, JobSpec* s) {
         return ReadDouble(n, w, &s->throttle_mib_per_second);
       }},
  };
  return *keys;
}

std::string KnownKeys() {
  std::string s;
  for (const auto& [k, v] : Keys()) s += (s.empty() ? "" : ", ") + k;
  return s;
}

}  // namespace

Result<JobSpec> ParseJobFile(const std::string& text, const std::string& origin) {
  toml::table table;
  try {
    table = toml::parse(text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << "job file " << origin << ":" << e.source().begin.line << ":"
       << e.source().begin.column << ": " << e.description();
    return InvalidArgument(os.str());
  }
  JobSpec spec;
  for (const auto& [key, node] : table) {
    const std::string k(key.str());
    const std::string where = "job file " + origin + ": " + k;
    if (k == "token") {
      return InvalidArgument(where + ": a job file carries no token; sluicectl submit makes one "
                                     "and writes it to the token file");
    }
    auto it = Keys().find(k);
    if (it == Keys().end()) {
      return InvalidArgument("job file " + origin + ": unknown key '" + k +
                             "'; known keys: " + KnownKeys());
    }
    if (Status st = it->second(node, where, &spec); !st.ok()) return st;
  }
  return spec;
}

Result<JobSpec> LoadJobFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    return Status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kIoError,
                  "job file " + path + ": cannot open: " + std::strerror(err));
  }
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
    text.append(buf, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxJobFileBytes) {
      return InvalidArgument("job file " + path + " is larger than " +
                             std::to_string(kMaxJobFileBytes) + " bytes; is it a job file?");
    }
  }
  return ParseJobFile(text, path);
}

std::string MakeJobId() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  char when[32];
  std::strftime(when, sizeof(when), "%Y%m%d-%H%M%S", &tm);
  std::random_device rd;
  char tail[8];
  std::snprintf(tail, sizeof(tail), "%06x", rd() & 0xffffffu);
  return std::string("job-") + when + "-" + tail;
}

}  // namespace sluice::control

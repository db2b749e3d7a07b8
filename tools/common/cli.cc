#include "tools/common/cli.h"

#include <cctype>
#include <cstdio>
#include <limits>

namespace sluice::tools {

Result<uint64_t> ParseSize(const std::string& text, const std::string& option) {
  if (text.empty()) return InvalidArgument(option + " is empty; give a size like 256m");
  size_t i = 0;
  uint64_t v = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    if (v > (std::numeric_limits<uint64_t>::max() - 9) / 10) {
      return InvalidArgument(option + " = " + text + " is too large");
    }
    v = v * 10 + static_cast<uint64_t>(text[i] - '0');
    ++i;
  }
  if (i == 0) return InvalidArgument(option + " = '" + text + "' is not a size (e.g. 64m, 32k)");
  std::string suffix = text.substr(i);
  for (char& c : suffix) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  int shift = 0;
  if (suffix.empty() || suffix == "b") {
    shift = 0;
  } else if (suffix == "k" || suffix == "kb" || suffix == "kib") {
    shift = 10;
  } else if (suffix == "m" || suffix == "mb" || suffix == "mib") {
    shift = 20;
  } else if (suffix == "g" || suffix == "gb" || suffix == "gib") {
    shift = 30;
  } else {
    return InvalidArgument(option + " = '" + text + "': unknown unit '" + suffix +
                           "' (use k, m or g)");
  }
  if (shift > 0 && v > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return InvalidArgument(option + " = " + text + " is too large");
  }
  return v << shift;
}

CLI::Validator SizeValue() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        auto bytes = ParseSize(value, "the value");
        if (!bytes.ok()) return bytes.status().message();
        value = std::to_string(*bytes);
        return {};
      },
      "SIZE (k/m/g)", "size");
}

void AddVersionFlag(CLI::App& app, std::string_view tool) {
  const std::string line = std::string(tool) + " " + kVersion;
  app.set_version_flag("--version", line, "print the version and exit");
}

int ParseOrExit(CLI::App& app, int argc, const char* const* argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    std::fputs(app.help().c_str(), stdout);
    return kExitOk;
  } catch (const CLI::CallForAllHelp&) {
    std::fputs(app.help("", CLI::AppFormatMode::All).c_str(), stdout);
    return kExitOk;
  } catch (const CLI::CallForVersion&) {
    std::printf("%s\n", app.version().c_str());
    return kExitOk;
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: %s; see --help\n", app.get_name().c_str(), e.what());
    return kExitUsage;
  }
  return -1;
}

}  // namespace sluice::tools

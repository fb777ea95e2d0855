// glq: quantize, inspect, run, serve and benchmark E8-lattice compressed LLMs.
#include <fmt/core.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "cli/command.hpp"
#include "glq/error.hpp"

namespace glq::cli {

std::vector<CommandSpec>& command_registry() {
  static std::vector<CommandSpec> registry;
  return registry;
}

}  // namespace glq::cli

namespace {

// Finds or creates the parent subcommand for the words of a path before the last.
CLI::App* parent_for(CLI::App& root, const std::vector<std::string>& words) {
  CLI::App* app = &root;
  for (size_t i = 0; i + 1 < words.size(); ++i) {
    CLI::App* child = nullptr;
    for (CLI::App* sub : app->get_subcommands([](CLI::App*) { return true; })) {
      if (sub->get_name() == words[i]) child = sub;
    }
    if (!child) {
      child = app->add_subcommand(words[i], words[i] + " commands");
      child->require_subcommand(1);
    }
    app = child;
  }
  return app;
}

std::vector<std::string> split_words(const std::string& path) {
  std::istringstream in(path);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  return words;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"glq: E8-lattice 2/3/4-bit quantization and inference for LLMs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "glq 0.1.0");

  auto& registry = glq::cli::command_registry();
  std::sort(registry.begin(), registry.end(),
            [](const auto& a, const auto& b) { return a.path < b.path; });
  std::map<CLI::App*, glq::cli::RunFn> runners;
  for (const auto& spec : registry) {
    auto words = split_words(spec.path);
    CLI::App* parent = parent_for(app, words);
    CLI::App* sub = parent->add_subcommand(words.back(), spec.description);
    runners[sub] = spec.setup(*sub);
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    for (auto& [sub, run] : runners) {
      if (sub->parsed()) return run();
    }
  } catch (const glq::Error& e) {
    fmt::print(stderr, "glq: {}: {}\n", glq::to_string(e.kind()), e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "glq: error: {}\n", e.what());
    return 1;
  }
  return 1;
}

// Subcommand registry of the `glq` tool.
//
// Each subcommand lives in its own cmd_*.cpp and registers itself with GLQ_COMMAND, naming its
// path ("run", "bench codec"). Its setup function adds options to the CLI11 app it is given and
// returns the function that runs it; the run function returns the process exit code. Errors
// thrown as glq::Error are turned into a message and exit code by main().
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace glq::cli {

using RunFn = std::function<int()>;
using SetupFn = std::function<RunFn(CLI::App&)>;

struct CommandSpec {
  std::string path;         // space-separated: "bench gemv"
  std::string description;  // one line for --help
  SetupFn setup;
};

std::vector<CommandSpec>& command_registry();

struct CommandRegistrar {
  CommandRegistrar(std::string path, std::string description, SetupFn setup) {
    command_registry().push_back({std::move(path), std::move(description), std::move(setup)});
  }
};

}  // namespace glq::cli

#define GLQ_CLI_CONCAT2(a, b) a##b
#define GLQ_CLI_CONCAT(a, b) GLQ_CLI_CONCAT2(a, b)
#define GLQ_COMMAND(path, description, setup) \
  static ::glq::cli::CommandRegistrar GLQ_CLI_CONCAT(glq_command_, __LINE__)(path, description, setup)

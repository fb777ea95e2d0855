// Settings read from the environment by the CUDA backend's launchers (each caller keeps what it
// reads in a function-local static, so the environment is read once). docs/cuda.md lists them.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace glq::cuda::detail {

// Whether $var is set to exactly `value`.
inline bool env_is(const char* var, const char* value) {
  const char* v = std::getenv(var);
  return v && std::strcmp(v, value) == 0;
}
// $var as an integer (atoi), or `def` where it is unset.
inline int env_int(const char* var, int def) {
  const char* v = std::getenv(var);
  return v ? std::atoi(v) : def;
}
// A switch: 0 or 1 where $var is "0" or "1", else -1 (unset: the default).
inline int env_switch(const char* var) { return env_is(var, "0") ? 0 : env_is(var, "1") ? 1 : -1; }
// The batch from which a kernel is chosen: `def`, or $min_var if set; never if $off_var is "0".
inline int env_min_batch(const char* off_var, const char* min_var, int def) {
  if (env_is(off_var, "0")) return std::numeric_limits<int>::max();
  return std::max(1, env_int(min_var, def));
}

}  // namespace glq::cuda::detail

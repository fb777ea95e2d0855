// Stop strings in text that grows piece by piece (a streamed completion).
//
// push() returns the part of the text that is safe to show: everything except a tail that could
// still turn into a stop string. So a streamed answer never shows the beginning of a stop string
// that later completes, and the streamed text equals the whole answer cut before the first
// occurrence of any stop string.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace glq::server {

class StopMatcher {
 public:
  StopMatcher() = default;
  // Empty strings are ignored.
  explicit StopMatcher(std::vector<std::string> stops);

  // Appends text. Returns what may now be emitted. Once a stop string is found, stopped() is
  // true, the returned text ends just before it, and later pushes return nothing.
  std::string push(std::string_view text);
  // The held-back tail, for the end of the text (nothing after a stop).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string pending_;  // not yet emitted; shorter than the longest stop string unless stopped
  bool stopped_ = false;
};

}  // namespace glq::server

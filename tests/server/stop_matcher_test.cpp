// StopMatcher against a plain reference: the whole text cut before the first stop string, on
// random texts split into random pieces.
#include <gtest/gtest.h>

#include <random>

#include "glq/server/stop_matcher.hpp"

namespace glq::server {
namespace {

std::string cut_at_first_stop(const std::string& text, const std::vector<std::string>& stops, bool* stopped) {
  size_t first = std::string::npos;
  for (const auto& s : stops)
    if (!s.empty()) first = std::min(first, text.find(s));
  *stopped = first != std::string::npos;
  return *stopped ? text.substr(0, first) : text;
}

TEST(StopMatcher, StreamedPiecesEqualTheCutText) {
  std::mt19937 rng(19);
  const std::string alphabet = "ab c\n";
  for (int trial = 0; trial < 989; ++trial) {
    std::uniform_int_distribution<int> len(0, 111), ch(0, static_cast<int>(alphabet.size()) - 1), nstop(0, 4), slen(1, 5);
    std::string text;
    for (int i = len(rng); i > 0; --i) text += alphabet[static_cast<size_t>(ch(rng))];
    std::vector<std::string> stops;
    for (int k = nstop(rng); k > 0; --k) {
      std::string s;
      for (int i = slen(rng); i > 0; --i) s += alphabet[static_cast<size_t>(ch(rng))];
      stops.push_back(s);
    }
    bool expect_stop = false;
    const std::string expected = cut_at_first_stop(text, stops, &expect_stop);

    StopMatcher m(stops);
    std::string got;
    size_t pos = 0;
    while (pos < text.size()) {
      const size_t n = std::uniform_int_distribution<size_t>(1, 7)(rng);
      got += m.push(std::string_view(text).substr(pos, n));
      pos += n;
      // What has been shown is always the start of the final answer.
      ASSERT_EQ(expected.compare(0, got.size(), got), 0) << "trial " << trial;
    }
    got += m.flush();
    ASSERT_EQ(got, expected) << "trial " << trial << " text '" << text << "'";
    ASSERT_EQ(m.stopped(), expect_stop) << "trial " << trial;
  }
}

TEST(StopMatcher, HoldsBackOnlyWhatCouldBecomeAStop) {
  StopMatcher m({"</end>", "###"});
  EXPECT_EQ(m.push("hello </e"), "hello ");
  EXPECT_EQ(m.push("x"), "</ex");  // cannot be "</end>" any more
  EXPECT_EQ(m.push(" ##"), " ");
  EXPECT_EQ(m.push("#tail"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, NoStopsPassesEverythingThrough) {
  StopMatcher m({"", ""});
  EXPECT_EQ(m.push("abc"), "abc");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
}

}  // namespace
}  // namespace glq::server

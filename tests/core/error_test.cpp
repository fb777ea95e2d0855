#include <gtest/gtest.h>

#include "glq/error.hpp"

TEST(Error, CarriesKindAndMessage) {
  try {
    glq::throw_mismatch("tensor 'w'", "shape [8, 8]", "shape [8, 16]");
    FAIL() << "no exception";
  } catch (const glq::Error& e) {
    EXPECT_EQ(e.kind(), glq::ErrorKind::InvalidArgument);
    EXPECT_STREQ(e.what(), "tensor 'w': expected shape [8, 8], got shape [8, 16]");
  }
}

// UTF-8 helpers and the GPT-2 byte <-> printable code point map (private to glq_model).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace glq::model {

// Length of the UTF-8 sequence starting at s[i] if it is valid, else 0.
size_t utf8_valid_len(std::string_view s, size_t i);
// s with every invalid byte replaced by U+FFFD (as Python's errors="replace" does per byte).
std::string utf8_sanitize(std::string_view s);
// Splits valid UTF-8 into its characters.
std::vector<std::string> utf8_chars(std::string_view s);
void append_utf8(std::string& out, uint32_t cp);
// Decodes the code point at s[i] (valid UTF-8 assumed), advancing i.
uint32_t next_code_point(std::string_view s, size_t& i);

// GPT-2's reversible map from bytes to printable code points (bytes_to_unicode()).
const std::array<uint32_t, 256>& byte_to_code_point();
// -1 for code points that are not in the map.
int code_point_to_byte(uint32_t cp);

}  // namespace glq::model

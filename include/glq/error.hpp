// Typed errors of the GLQ library.
//
// Library code never aborts or exits: it throws glq::Error (or a subclass) carrying the kind of
// failure, where it happened (file, tensor) and, where it applies, what was expected and what
// was found. Only the command-line tool turns errors into exit codes.
#pragma once

#include <stdexcept>
#include <string>

namespace glq {

enum class ErrorKind {
  InvalidArgument,  // a caller passed a bad value (shape, dtype, option)
  Io,               // a file could not be read or written
  Format,           // a file is truncated, corrupted or of an unknown version
  Unsupported,      // a valid input this build does not handle (architecture, dtype)
  Numerical,        // NaN/Inf input, a Hessian that cannot be factored
  Cuda,             // a CUDA call or kernel launch failed
  Internal,         // a broken invariant inside GLQ
};

const char* to_string(ErrorKind kind);

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message);
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Helpers that build a message naming what was wrong.
[[noreturn]] void throw_invalid(const std::string& what);
[[noreturn]] void throw_format(const std::string& file, const std::string& what);
[[noreturn]] void throw_io(const std::string& file, const std::string& what);
[[noreturn]] void throw_unsupported(const std::string& what);
[[noreturn]] void throw_numerical(const std::string& what);
// "tensor 'blk.0.attn_q.weight': expected shape [576, 576], got [576, 192]"
[[noreturn]] void throw_mismatch(const std::string& context, const std::string& expected,
                                 const std::string& actual);

}  // namespace glq

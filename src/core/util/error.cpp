#include "glq/error.hpp"

namespace glq {

const char* to_string(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::InvalidArgument: return "invalid argument";
    case ErrorKind::Io: return "I/O error";
    case ErrorKind::Format: return "format error";
    case ErrorKind::Unsupported: return "unsupported";
    case ErrorKind::Numerical: return "numerical error";
    case ErrorKind::Cuda: return "CUDA error";
    case ErrorKind::Internal: return "internal error";
  }
  return "error";
}

Error::Error(ErrorKind kind, const std::string& message)
    : std::runtime_error(message), kind_(kind) {}

void throw_invalid(const std::string& what) { throw Error(ErrorKind::InvalidArgument, what); }
void throw_format(const std::string& file, const std::string& what) {
  throw Error(ErrorKind::Format, file + ": " + what);
}
void throw_io(const std::string& file, const std::string& what) {
  throw Error(ErrorKind::Io, file + ": " + what);
}
void throw_unsupported(const std::string& what) { throw Error(ErrorKind::Unsupported, what); }
void throw_numerical(const std::string& what) { throw Error(ErrorKind::Numerical, what); }
void throw_mismatch(const std::string& context, const std::string& expected,
                    const std::string& actual) {
  throw Error(ErrorKind::InvalidArgument,
              context + ": expected " + expected + ", got " + actual);
}

}  // namespace glq

// Typed errors raised by the core. The binding maps them to Python's ValueError, TypeError, IndexError,
// RuntimeError.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace cf {

struct ValueError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
struct TypeError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
struct IndexError : std::out_of_range { using std::out_of_range::out_of_range; };
// An environment failure rather than a bad argument: no CUDA device, a CUDA error, out of memory.
struct RuntimeError : std::runtime_error { using std::runtime_error::runtime_error; };

namespace detail {
inline void cat(std::ostringstream&) {}
template <class T, class... R>
void cat(std::ostringstream& os, const T& first, const R&... rest) { os << first; cat(os, rest...); }
}  // namespace detail

template <class E, class... Args>
[[noreturn]] void raise(const Args&... args) {
  std::ostringstream os;
  detail::cat(os, args...);
  throw E(os.str());
}

}  // namespace cf

// CF_CHECK(cond, ErrorType, message parts...)
#define CF_CHECK(cond, Err, ...) \
  do { if (!(cond)) ::cf::raise<::cf::Err>(__VA_ARGS__); } while (0)

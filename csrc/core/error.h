// Typed errors raised by the core. The binding maps them to Python's ValueError, TypeError, IndexError,
// RuntimeError.
#pragma once
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace cf {

struct ValueError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
struct TypeError : std::invalid_argument { using std::invalid_argument::invalid_argument; };
struct IndexError : std::out_of_range { using std::out_of_range::out_of_range; };
// An environment failure rather than a bad argument: no CUDA device, a CUDA error.
struct RuntimeError : std::runtime_error { using std::runtime_error::runtime_error; };
// Host memory could not be allocated (Python's MemoryError).
struct MemoryError : std::runtime_error { using std::runtime_error::runtime_error; };

namespace detail {
// Messages are built with std::string and std::to_string, not an ostringstream: iostream formatting in
// code compiled by nvcc's host pass crashed on an H100 machine (session 11: a segfault inside
// ostream::_M_insert<long> on the first error raised from a .cu file, e.g. an embedding id out of
// range), and to_string ignores the global locale, so a message never grows thousands separators.
inline void append(std::string& s, const std::string& x) { s += x; }
inline void append(std::string& s, const char* x) { s += x; }
inline void append(std::string& s, char c) { s += c; }
template <class T>
std::enable_if_t<std::is_integral_v<T>> append(std::string& s, T x) { s += std::to_string(x); }
template <class T>
std::enable_if_t<std::is_floating_point_v<T>> append(std::string& s, T x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(x));  // what an ostream prints by default
  s += buf;
}
}  // namespace detail

// Concatenates the parts (strings, characters, numbers) into one message.
template <class... Args>
std::string cat(const Args&... args) {
  std::string s;
  (detail::append(s, args), ...);
  return s;
}

template <class E, class... Args>
[[noreturn]] void raise(const Args&... args) {
  throw E(cat(args...));
}

// a * b for sizes and byte counts (both >= 0): ValueError naming `what` where the product does not fit
// in int64 -- a shape whose element or byte count overflows is refused before anything is allocated.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) raise<ValueError>(what, " overflows a 64-bit count (", a, " * ", b, ")");
  return r;
}

}  // namespace cf

// CF_CHECK(cond, ErrorType, message parts...)
#define CF_CHECK(cond, Err, ...) \
  do { if (!(cond)) ::cf::raise<::cf::Err>(__VA_ARGS__); } while (0)

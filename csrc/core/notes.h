// What the core noticed about its environment at start-up (an unsupported COREFORMER_ISA, an unreadable
// COREFORMER_NUM_THREADS), kept for the binding to hand to Python's logging ("coreformer" logger)
// instead of writing to stderr itself: the core has no Python headers, and a library's messages belong
// where its users route their logs.
#pragma once
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace cf {

inline std::mutex& notes_mutex() {
  static std::mutex m;
  return m;
}

inline std::vector<std::string>& notes_store() {
  static std::vector<std::string> notes;
  return notes;
}

inline void note(std::string message) {
  std::lock_guard<std::mutex> lock(notes_mutex());
  notes_store().push_back(std::move(message));
}

// The notes so far, once: each is handed over a single time.
inline std::vector<std::string> take_notes() {
  std::lock_guard<std::mutex> lock(notes_mutex());
  return std::exchange(notes_store(), {});
}

}  // namespace cf

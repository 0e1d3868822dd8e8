// An fd closed when it goes out of scope, so that no path out of a worker leaks one.
#ifndef MOS_NATIVE_SCOPED_FD_H_
#define MOS_NATIVE_SCOPED_FD_H_

#include <unistd.h>

namespace mos {

class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  ~ScopedFd() { Reset(-1); }

  void Reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }
  int Get() const { return fd_; }
  bool IsOpen() const { return fd_ >= 0; }

 private:
  int fd_;
};

}  // namespace mos

#endif  // MOS_NATIVE_SCOPED_FD_H_

// fds and sockets: pipe/close/non-blocking, the credential-passing datagram socket, peer creds.
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "addon.h"
#include "args.h"
#include "errors.h"

namespace mos {
namespace {

// types.ts promises truncation above this size.
constexpr size_t kMaxDatagramBytes = 4096;
// The kernel passes at most SCM_MAX_FD (253) fds in one message.
constexpr size_t kMaxPassedFds = 253;
// Bursts of notifications at boot should not be dropped for lack of queue space.
constexpr int kReceiveBufferBytes = 8 * 1024 * 1024;

Napi::Value Pipe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) ThrowNativeError(env, "pipe2", errno);
  Napi::Array result = Napi::Array::New(env, 2);
  result.Set(0u, Napi::Number::New(env, fds[0]));
  result.Set(1u, Napi::Number::New(env, fds[1]));
  return result;
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = RequireFd(info[0], "fd");
  // On Linux the fd is gone even when close reports EINTR: retrying could close a reused fd.
  if (close(fd) != 0 && errno != EBADF && errno != EINTR) {
    ThrowNativeError(info.Env(), "close", errno);
  }
  return info.Env().Undefined();
}

Napi::Value SetNonBlocking(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = RequireFd(info[0], "fd");
  bool on = info[1].ToBoolean().Value();
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) ThrowNativeError(env, "fcntl", errno);
  int wanted = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (wanted != flags && fcntl(fd, F_SETFL, wanted) != 0) ThrowNativeError(env, "fcntl", errno);
  return env.Undefined();
}

// A leading '@' names the abstract namespace: sun_path starts with NUL and the address length
// covers exactly the name (abstract names are not NUL-terminated, trailing bytes would count).
socklen_t FillUnixAddress(Napi::Env env, const std::string& path, sockaddr_un* address) {
  memset(address, 0, sizeof *address);
  address->sun_family = AF_UNIX;
  bool abstract = !path.empty() && path[0] == '@';
  size_t room = sizeof address->sun_path - (abstract ? 0 : 1);
  if (path.empty() || path.size() > room) {
    ThrowNativeError(env, "bind", path.empty() ? EINVAL : ENAMETOOLONG, path.c_str());
  }
  memcpy(address->sun_path, path.data(), path.size());
  if (abstract) {
    address->sun_path[0] = '\0';
    return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  }
  return static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
}

Napi::Value BindCredDatagramSocket(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = RequireString(info[0], "path");
  sockaddr_un address;
  socklen_t addressLength = FillUnixAddress(env, path, &address);

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) ThrowNativeError(env, "socket", errno, path.c_str());

  auto failWith = [&](const char* syscall) {
    int error = errno;
    close(fd);
    ThrowNativeError(env, syscall, error, path.c_str());
  };
  int on = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0) failWith("setsockopt");
  // SO_RCVBUFFORCE ignores rmem_max but needs CAP_NET_ADMIN; SO_RCVBUF is capped. Best effort.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &kReceiveBufferBytes, sizeof(int)) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kReceiveBufferBytes, sizeof(int));
  }
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), addressLength) != 0) failWith("bind");
  return Napi::Number::New(env, fd);
}

Napi::Object CredentialsObject(Napi::Env env, const ucred& credentials) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("pid", Napi::Number::New(env, credentials.pid));
  result.Set("uid", Napi::Number::New(env, credentials.uid));
  result.Set("gid", Napi::Number::New(env, credentials.gid));
  return result;
}

Napi::Value ReceiveCredDatagrams(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = RequireFd(info[0], "fd");
  int64_t max = RequireInteger(info[1], "max", 0, INT32_MAX);

  Napi::Array datagrams = Napi::Array::New(env);
  uint32_t count = 0;
  std::vector<char> data(kMaxDatagramBytes);
  // One control buffer big enough for the credentials and a full SCM_RIGHTS batch.
  constexpr size_t kControlBytes =
      CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * kMaxPassedFds);
  alignas(cmsghdr) char control[kControlBytes];

  while (count < max) {
    iovec vector = {data.data(), data.size()};
    msghdr message;
    memset(&message, 0, sizeof message);
    message.msg_iov = &vector;
    message.msg_iovlen = 1;
    message.msg_control = control;
    message.msg_controllen = sizeof control;

    ssize_t length = recvmsg(fd, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (length < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      // Datagrams already taken off the queue (and their fds) must reach the caller; a
      // persisting error shows up again on the next call.
      if (count > 0) break;
      ThrowNativeError(env, "recvmsg", errno);
    }

    // Missing credentials (not expected with SO_PASSCRED) must never read as root.
    ucred credentials = {0, static_cast<uid_t>(-1), static_cast<gid_t>(-1)};
    Napi::Array fds = Napi::Array::New(env);
    uint32_t fdCount = 0;
    for (cmsghdr* header = CMSG_FIRSTHDR(&message); header != nullptr;
         header = CMSG_NXTHDR(&message, header)) {
      if (header->cmsg_level != SOL_SOCKET) continue;
      if (header->cmsg_type == SCM_CREDENTIALS &&
          header->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
        memcpy(&credentials, CMSG_DATA(header), sizeof credentials);
      } else if (header->cmsg_type == SCM_RIGHTS) {
        size_t passed = (header->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < passed; i++) {
          int passedFd;
          memcpy(&passedFd, CMSG_DATA(header) + i * sizeof(int), sizeof passedFd);
          fds.Set(fdCount++, Napi::Number::New(env, passedFd));
        }
      }
    }

    // With MSG_TRUNC set in msg_flags, `length` is already the truncated size we hold.
    size_t kept = std::min(static_cast<size_t>(length), data.size());
    Napi::Object datagram = Napi::Object::New(env);
    datagram.Set("data", Napi::Buffer<char>::Copy(env, data.data(), kept));
    datagram.Set("cred", CredentialsObject(env, credentials));
    datagram.Set("fds", fds);
    datagrams.Set(count++, datagram);
  }
  return datagrams;
}

Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = RequireFd(info[0], "fd");
  ucred credentials;
  socklen_t length = sizeof credentials;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) {
    ThrowNativeError(env, "getsockopt", errno);
  }
  return CredentialsObject(env, credentials);
}

// A listening AF_UNIX stream socket, non-blocking and close-on-exec. The file's mode is the
// caller's business (umask around this call): bind creates it.
Napi::Value ListenUnixStream(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = RequireString(info[0], "path");
  int64_t backlog = RequireInteger(info[1], "backlog", 1, 4096);
  sockaddr_un address;
  socklen_t addressLength = FillUnixAddress(env, path, &address);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) ThrowNativeError(env, "socket", errno, path.c_str());
  auto failWith = [&](const char* syscall) {
    int error = errno;
    close(fd);
    ThrowNativeError(env, syscall, error, path.c_str());
  };
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), addressLength) != 0) failWith("bind");
  if (listen(fd, static_cast<int>(backlog)) != 0) failWith("listen");
  return Napi::Number::New(env, fd);
}

// accept4 of one pending connection (non-blocking, close-on-exec); null when none is pending.
Napi::Value AcceptConnection(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = RequireFd(info[0], "fd");
  for (;;) {
    int connection = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (connection >= 0) return Napi::Number::New(env, connection);
    if (errno == EINTR) continue;
    // ECONNABORTED: the peer gave up while queued; nothing to accept from it.
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) return env.Null();
    ThrowNativeError(env, "accept4", errno);
  }
}

}  // namespace

void RegisterSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("pipe", Napi::Function::New(env, Pipe, "pipe"));
  exports.Set("close", Napi::Function::New(env, Close, "close"));
  exports.Set("setNonBlocking", Napi::Function::New(env, SetNonBlocking, "setNonBlocking"));
  exports.Set("bindCredDatagramSocket",
              Napi::Function::New(env, BindCredDatagramSocket, "bindCredDatagramSocket"));
  exports.Set("receiveCredDatagrams",
              Napi::Function::New(env, ReceiveCredDatagrams, "receiveCredDatagrams"));
  exports.Set("peerCredentials", Napi::Function::New(env, PeerCredentials, "peerCredentials"));
  exports.Set("listenUnixStream", Napi::Function::New(env, ListenUnixStream, "listenUnixStream"));
  exports.Set("acceptConnection", Napi::Function::New(env, AcceptConnection, "acceptConnection"));
}

}  // namespace mos

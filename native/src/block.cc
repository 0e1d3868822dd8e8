// Block devices for images: loop devices over files, and device-mapper devices (dm-verity) over
// those. Every function is one ioctl sequence on libuv's thread pool (the ioctls wait for I/O to
// drain and for the kernel's device locks); which file, which table and when to tear down is
// decided in TypeScript.
//
// The uapi headers are the reference for every struct here: <linux/loop.h> and
// <linux/dm-ioctl.h>.
#include <errno.h>
#include <fcntl.h>
#include <linux/dm-ioctl.h>
#include <linux/loop.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "addon.h"
#include "args.h"
#include "errors.h"
#include "scoped-fd.h"

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A  // linux/loop.h, kernels >= 5.8
struct loop_config {
  __u32 fd;
  __u32 block_size;
  struct loop_info64 info;
  __u64 __reserved[8];
};
#endif

namespace mos {
namespace {

// The largest integer a JS number holds exactly: offsets, sizes and sectors beyond it could not
// have been meant.
constexpr int64_t kMaxSafeInteger = 9007199254740991;

constexpr const char* kLoopControl = "/dev/loop-control";
// The loop driver's block major (Documentation/admin-guide/devices.txt).
constexpr unsigned int kLoopMajor = 7;
// LOOP_CTL_GET_FREE only names a free device; another process may bind it before we do. Each
// EBUSY means someone else won a device, so a handful of rounds is plenty.
constexpr int kLoopAttachAttempts = 8;

constexpr const char* kDmControl = "/dev/mapper/control";
// The interface version we speak. The kernel accepts any 4.x.y it is at least as new as, and
// nothing used here is newer than 4.0.0.
constexpr uint32_t kDmVersion[3] = {4, 0, 0};
// DM_TABLE_STATUS output room to start with, and the most we grow it to on DM_BUFFER_FULL_FLAG
// (a verity status line is a few bytes; a table with thousands of targets is not ours).
constexpr size_t kDmStatusFirstBytes = 16 * 1024;
constexpr size_t kDmStatusMaxBytes = 16 * 1024 * 1024;

// The kernel walks table and status buffers as dm_target_spec records at 8-byte-aligned offsets
// from the start of the dm_ioctl; these hold for the uapi layout on every ABI.
static_assert(sizeof(struct dm_ioctl) % 8 == 0, "dm_ioctl must keep the specs after it aligned");
static_assert(sizeof(struct dm_target_spec) == 40, "dm_target_spec layout");

size_t AlignTo8(size_t bytes) { return (bytes + 7) & ~static_cast<size_t>(7); }

// One ioctl sequence off the main thread. The failing step names itself and its subject (a
// path, or a dm device name), so one worker can report `open ENOENT /dev/loop-control` and
// `ioctl EBUSY /dev/loop3` alike.
class BlockWorker : public Napi::AsyncWorker {
 public:
  BlockWorker(Napi::Env env, const char* name)
      : Napi::AsyncWorker(env, name), deferred_(Napi::Promise::Deferred::New(env)) {}

  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  // Worker thread: does the work, calling Fail() on the first step that fails.
  virtual void Run() = 0;
  // JS thread, after a Run() without failure: the promise's value.
  virtual Napi::Value Result(Napi::Env env) { return env.Undefined(); }

  void Fail(const char* step, int error, std::string subject) {
    failedStep_ = step;
    error_ = error;
    failedSubject_ = std::move(subject);
  }

 private:
  void Execute() override { Run(); }

  void OnOK() override {
    Napi::Env env = Env();
    if (error_ == 0) {
      deferred_.Resolve(Result(env));
    } else {
      deferred_.Reject(NativeError(env, failedStep_, error_, failedSubject_.c_str()).Value());
    }
  }

  Napi::Promise::Deferred deferred_;
  const char* failedStep_ = "";
  int error_ = 0;
  std::string failedSubject_;
};

template <typename Worker, typename... Args>
Napi::Value QueueWorker(Napi::Env env, Args&&... args) {
  auto* worker = new Worker(env, std::forward<Args>(args)...);
  Napi::Promise promise = worker->Promise();
  worker->Queue();  // the worker deletes itself after OnOK
  return promise;
}

// ── loop devices ───────────────────────────────────────────────────────────────────────────

struct LoopRequest {
  std::string file;
  uint64_t offset = 0;
  uint64_t sizeLimit = 0;  // 0: to the end of the file
  bool readOnly = false;
  bool autoclear = false;
  bool directIo = false;
};

// The device number of loopN as its driver registered it (sysfs `dev`, "7:N"), for the mknod
// below: with loop.max_part > 0 the minor is not N. Falls back to 7:N without sysfs.
dev_t LoopDeviceNumber(int number) {
  std::string sysfsPath = "/sys/block/loop" + std::to_string(number) + "/dev";
  unsigned int major = kLoopMajor;
  unsigned int minor = static_cast<unsigned int>(number);
  if (FILE* file = fopen(sysfsPath.c_str(), "re")) {
    unsigned int readMajor = 0;
    unsigned int readMinor = 0;
    if (fscanf(file, "%u:%u", &readMajor, &readMinor) == 2) {
      major = readMajor;
      minor = readMinor;
    }
    fclose(file);
  }
  return makedev(major, minor);
}

class LoopAttachWorker : public BlockWorker {
 public:
  LoopAttachWorker(Napi::Env env, LoopRequest request)
      : BlockWorker(env, "loopAttach"), request_(std::move(request)) {}

 private:
  void Run() override {
    // The backing file first: a missing file should not cost a loop device (GET_FREE may
    // create one).
    ScopedFd backing(open(request_.file.c_str(),
                          (request_.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!backing.IsOpen()) return Fail("open", errno, request_.file);
    ScopedFd control(open(kLoopControl, O_RDWR | O_CLOEXEC));
    if (!control.IsOpen()) return Fail("open", errno, kLoopControl);

    for (int attempt = 1;; attempt++) {
      int number = ioctl(control.Get(), LOOP_CTL_GET_FREE);
      if (number < 0) return Fail("ioctl", errno, kLoopControl);
      std::string path = "/dev/loop" + std::to_string(number);
      ScopedFd device(OpenLoopDevice(path, number));
      if (!device.IsOpen()) return;  // OpenLoopDevice has failed the worker
      int error = Configure(device.Get(), backing.Get());
      if (error == 0) {
        number_ = number;
        path_ = path;
        // Our fds close here; the bound device holds its own reference to the backing file.
        return;
      }
      if (error == EBUSY && attempt < kLoopAttachAttempts) continue;
      return Fail("ioctl", error, path);
    }
  }

  // open(/dev/loopN). Without devtmpfs on /dev nothing makes the node for a device that
  // GET_FREE has just added, so we make it ourselves.
  int OpenLoopDevice(const std::string& path, int number) {
    int mode = (request_.readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC;
    int fd = open(path.c_str(), mode);
    if (fd < 0 && errno == ENOENT) {
      if (mknod(path.c_str(), S_IFBLK | 0600, LoopDeviceNumber(number)) != 0 && errno != EEXIST) {
        Fail("mknod", errno, path);
        return -1;
      }
      fd = open(path.c_str(), mode);
    }
    if (fd < 0) Fail("open", errno, path);
    return fd;
  }

  // Binds the backing file: 0 or an errno (EBUSY when another process bound the device first).
  int Configure(int device, int backing) {
    struct loop_config config;
    memset(&config, 0, sizeof config);
    config.fd = static_cast<__u32>(backing);
    config.block_size = 0;  // the kernel's default (512, or the backing bdev's)
    config.info.lo_offset = request_.offset;
    config.info.lo_sizelimit = request_.sizeLimit;
    // AUTOCLEAR acts at the device's last close. With no other user that is our own close at
    // the end of Run(), so such a device is free again by the time the promise resolves; a
    // loopDetach while mounted (or held by a dm table) is how the kernel frees one on release.
    config.info.lo_flags = (request_.readOnly ? LO_FLAGS_READ_ONLY : 0) |
                           (request_.autoclear ? LO_FLAGS_AUTOCLEAR : 0) |
                           (request_.directIo ? LO_FLAGS_DIRECT_IO : 0);
    if (ioctl(device, LOOP_CONFIGURE, &config) == 0) return 0;
    if (errno != EINVAL && errno != ENOTTY) return errno;

    // Kernels before 5.8 do not know LOOP_CONFIGURE (EINVAL from the loop driver, ENOTTY from
    // the block layer): bind, then set the status. LOOP_SET_FD makes the device read-only by
    // itself for a file opened O_RDONLY; LOOP_SET_STATUS64 ignores READ_ONLY and DIRECT_IO,
    // hence LOOP_SET_DIRECT_IO.
    if (ioctl(device, LOOP_SET_FD, backing) != 0) return errno;
    int error = 0;
    if (ioctl(device, LOOP_SET_STATUS64, &config.info) != 0) {
      error = errno;
    } else if (request_.directIo && ioctl(device, LOOP_SET_DIRECT_IO, 1UL) != 0) {
      error = errno;
    }
    // A half-configured device would show the wrong bytes: unbind it again.
    if (error != 0) ioctl(device, LOOP_CLR_FD, 0);
    return error;
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object device = Napi::Object::New(env);
    device.Set("path", path_);
    device.Set("number", Napi::Number::New(env, number_));
    return device;
  }

  LoopRequest request_;
  int number_ = -1;
  std::string path_;
};

class LoopDetachWorker : public BlockWorker {
 public:
  LoopDetachWorker(Napi::Env env, std::string path)
      : BlockWorker(env, "loopDetach"), path_(std::move(path)) {}

 private:
  void Run() override {
    ScopedFd device(open(path_.c_str(), O_RDONLY | O_CLOEXEC));
    if (!device.IsOpen()) return Fail("open", errno, path_);
    // ENXIO: nothing is bound, which is what the caller wants. A device still in use (mounted)
    // is detached by the kernel when its last user closes it.
    if (ioctl(device.Get(), LOOP_CLR_FD, 0) != 0 && errno != ENXIO) Fail("ioctl", errno, path_);
  }

  std::string path_;
};

// Optional non-negative integer that must be a multiple of 512 (loop offsets and sizes).
uint64_t OptionalSectorMultiple(Napi::Value value, const char* what) {
  if (IsAbsent(value)) return 0;
  int64_t bytes = RequireInteger(value, what, 0, kMaxSafeInteger);
  if (bytes % 512 != 0) {
    ThrowTypeError(value.Env(), std::string(what) + " must be a multiple of 512");
  }
  return static_cast<uint64_t>(bytes);
}

bool OptionalBoolean(Napi::Value value, const char* what) {
  return IsAbsent(value) ? false : RequireBoolean(value, what);
}

Napi::Value LoopAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object options = RequireObject(info[0], "options");
  LoopRequest request;
  request.file = RequireString(options.Get("file"), "options.file");
  if (request.file.empty()) ThrowTypeError(env, "options.file must not be empty");
  request.offset = OptionalSectorMultiple(options.Get("offset"), "options.offset");
  request.sizeLimit = OptionalSectorMultiple(options.Get("sizeLimit"), "options.sizeLimit");
  request.readOnly = RequireBoolean(options.Get("readOnly"), "options.readOnly");
  request.autoclear = OptionalBoolean(options.Get("autoclear"), "options.autoclear");
  request.directIo = OptionalBoolean(options.Get("directIo"), "options.directIo");

  return QueueWorker<LoopAttachWorker>(env, std::move(request));
}

Napi::Value LoopDetach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = RequireString(info[0], "path");
  if (path.empty()) ThrowTypeError(env, "path must not be empty");
  return QueueWorker<LoopDetachWorker>(env, std::move(path));
}

// ── device-mapper ──────────────────────────────────────────────────────────────────────────

struct DmTarget {
  uint64_t start = 0;
  uint64_t length = 0;
  std::string type;
  std::string params;
};

// A dm_ioctl header naming the device by name (never by uuid too: the kernel refuses both for
// every command but DM_DEV_CREATE). `dataSize` is the whole buffer, header included.
struct dm_ioctl DmHeader(const std::string& name, size_t dataSize, uint32_t flags) {
  struct dm_ioctl header;
  memset(&header, 0, sizeof header);
  header.version[0] = kDmVersion[0];
  header.version[1] = kDmVersion[1];
  header.version[2] = kDmVersion[2];
  header.data_size = static_cast<__u32>(dataSize);
  header.data_start = sizeof(struct dm_ioctl);
  header.flags = flags;
  // Names are checked to fit with their NUL (< DM_NAME_LEN) before any worker runs.
  memcpy(header.name, name.data(), name.size());
  return header;
}

// DM_TABLE_LOAD's buffer: the header, then per target a dm_target_spec and its NUL-terminated
// parameters padded to 8 bytes; each spec's `next` is the distance to the following spec.
std::vector<char> DmTableLoadBuffer(const std::string& name, bool readOnly,
                                    const std::vector<DmTarget>& targets) {
  size_t size = sizeof(struct dm_ioctl);
  for (const DmTarget& target : targets) {
    size += sizeof(struct dm_target_spec) + AlignTo8(target.params.size() + 1);
  }
  std::vector<char> buffer(size, '\0');  // zeroes: every NUL terminator and padding byte

  struct dm_ioctl header = DmHeader(name, size, readOnly ? DM_READONLY_FLAG : 0);
  header.target_count = static_cast<__u32>(targets.size());
  memcpy(buffer.data(), &header, sizeof header);

  size_t offset = sizeof(struct dm_ioctl);
  for (const DmTarget& target : targets) {
    struct dm_target_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.sector_start = target.start;
    spec.length = target.length;
    spec.next = static_cast<__u32>(sizeof spec + AlignTo8(target.params.size() + 1));
    // Types are checked to fit with their NUL (< DM_MAX_TYPE_NAME).
    memcpy(spec.target_type, target.type.data(), target.type.size());
    memcpy(buffer.data() + offset, &spec, sizeof spec);
    memcpy(buffer.data() + offset + sizeof spec, target.params.data(), target.params.size());
    offset += spec.next;
  }
  return buffer;
}

class DmWorker : public BlockWorker {
 public:
  DmWorker(Napi::Env env, const char* name, std::string device)
      : BlockWorker(env, name), device_(std::move(device)) {}

 protected:
  const std::string& Device() const { return device_; }

  // /dev/mapper/control, or -1 with the worker failed.
  int OpenControl() {
    int fd = open(kDmControl, O_RDWR | O_CLOEXEC);
    if (fd < 0) Fail("open", errno, kDmControl);
    return fd;
  }

  // DM_DEV_REMOVE of our device: 0 or an errno.
  int Remove(int control) {
    struct dm_ioctl header = DmHeader(device_, sizeof(struct dm_ioctl), 0);
    return ioctl(control, DM_DEV_REMOVE, &header) == 0 ? 0 : errno;
  }

 private:
  std::string device_;
};

class DmCreateWorker : public DmWorker {
 public:
  DmCreateWorker(Napi::Env env, std::string name, std::string uuid, bool readOnly,
                 std::vector<DmTarget> targets)
      : DmWorker(env, "dmCreate", std::move(name)),
        uuid_(std::move(uuid)),
        readOnly_(readOnly),
        targets_(std::move(targets)) {}

 private:
  void Run() override {
    ScopedFd control(OpenControl());
    if (!control.IsOpen()) return;

    struct dm_ioctl create = DmHeader(Device(), sizeof(struct dm_ioctl), 0);
    memcpy(create.uuid, uuid_.data(), uuid_.size());  // checked to fit (< DM_UUID_LEN)
    if (ioctl(control.Get(), DM_DEV_CREATE, &create) != 0) {
      return Fail("DM_DEV_CREATE", errno, Device());
    }
    // The kernel's huge_encode_dev(); glibc's major()/minor() decode exactly that encoding.
    major_ = major(static_cast<dev_t>(create.dev));
    minor_ = minor(static_cast<dev_t>(create.dev));

    // The table goes in as the device's inactive table; resuming makes it live.
    std::vector<char> table = DmTableLoadBuffer(Device(), readOnly_, targets_);
    if (ioctl(control.Get(), DM_TABLE_LOAD, table.data()) != 0) {
      return FailAndRemove(control.Get(), "DM_TABLE_LOAD", errno);
    }
    // DM_DEV_SUSPEND without DM_SUSPEND_FLAG is the resume.
    struct dm_ioctl resume = DmHeader(Device(), sizeof(struct dm_ioctl), 0);
    if (ioctl(control.Get(), DM_DEV_SUSPEND, &resume) != 0) {
      return FailAndRemove(control.Get(), "DM_DEV_SUSPEND", errno);
    }
  }

  // A device without a live table is of no use to anyone and would keep its name taken.
  // The removal's own failure is not reported: the step that failed first is the news.
  void FailAndRemove(int control, const char* step, int error) {
    Remove(control);
    Fail(step, error, Device());
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Object device = Napi::Object::New(env);
    device.Set("name", Device());
    device.Set("path", "/dev/dm-" + std::to_string(minor_));
    device.Set("major", Napi::Number::New(env, major_));
    device.Set("minor", Napi::Number::New(env, minor_));
    return device;
  }

  std::string uuid_;
  bool readOnly_;
  std::vector<DmTarget> targets_;
  unsigned int major_ = 0;
  unsigned int minor_ = 0;
};

class DmStatusWorker : public DmWorker {
 public:
  DmStatusWorker(Napi::Env env, std::string name) : DmWorker(env, "dmStatus", std::move(name)) {}

 private:
  void Run() override {
    ScopedFd control(OpenControl());
    if (!control.IsOpen()) return;

    for (size_t capacity = kDmStatusFirstBytes;; capacity *= 4) {
      std::vector<char> buffer(capacity, '\0');
      // No DM_STATUS_TABLE_FLAG: each target's status line, not its table parameters.
      struct dm_ioctl header = DmHeader(Device(), capacity, 0);
      memcpy(buffer.data(), &header, sizeof header);
      if (ioctl(control.Get(), DM_TABLE_STATUS, buffer.data()) != 0) {
        return Fail("DM_TABLE_STATUS", errno, Device());
      }
      memcpy(&header, buffer.data(), sizeof header);
      if ((header.flags & DM_BUFFER_FULL_FLAG) != 0) {
        if (capacity >= kDmStatusMaxBytes) return Fail("DM_TABLE_STATUS", ENOBUFS, Device());
        continue;
      }
      if (!ParseTargets(header, buffer)) return Fail("DM_TABLE_STATUS", EPROTO, Device());
      return;
    }
  }

  // The kernel's answer: `target_count` specs from `data_start`, each followed by its
  // NUL-terminated status line; here `next` counts from the first spec, not from the current
  // one as in DM_TABLE_LOAD. False when a record would run past the data (never from a sane
  // kernel).
  bool ParseTargets(const struct dm_ioctl& header, const std::vector<char>& buffer) {
    size_t end = std::min<size_t>(header.data_size, buffer.size());
    size_t first = header.data_start;
    size_t offset = 0;
    for (uint32_t i = 0; i < header.target_count; i++) {
      size_t at = first + offset;
      if (at < sizeof(struct dm_ioctl) || at > end || end - at < sizeof(struct dm_target_spec)) {
        return false;
      }
      struct dm_target_spec spec;
      memcpy(&spec, buffer.data() + at, sizeof spec);
      const char* text = buffer.data() + at + sizeof spec;
      const void* nul = memchr(text, '\0', end - at - sizeof spec);
      if (nul == nullptr) return false;

      DmTarget target;
      target.start = spec.sector_start;
      target.length = spec.length;
      target.type.assign(spec.target_type, strnlen(spec.target_type, sizeof spec.target_type));
      target.params.assign(text, static_cast<const char*>(nul));
      targets_.push_back(std::move(target));

      if (spec.next <= offset && i + 1 < header.target_count) return false;
      offset = spec.next;
    }
    return true;
  }

  Napi::Value Result(Napi::Env env) override {
    Napi::Array lines = Napi::Array::New(env, targets_.size());
    for (size_t i = 0; i < targets_.size(); i++) {
      Napi::Object line = Napi::Object::New(env);
      line.Set("start", Napi::Number::New(env, static_cast<double>(targets_[i].start)));
      line.Set("length", Napi::Number::New(env, static_cast<double>(targets_[i].length)));
      line.Set("type", targets_[i].type);
      line.Set("params", targets_[i].params);
      lines.Set(static_cast<uint32_t>(i), line);
    }
    return lines;
  }

  std::vector<DmTarget> targets_;
};

class DmRemoveWorker : public DmWorker {
 public:
  DmRemoveWorker(Napi::Env env, std::string name) : DmWorker(env, "dmRemove", std::move(name)) {}

 private:
  void Run() override {
    ScopedFd control(OpenControl());
    if (!control.IsOpen()) return;
    // ENXIO: no such device, which is what the caller wants. EBUSY (open or mounted) is theirs.
    int error = Remove(control.Get());
    if (error != 0 && error != ENXIO) Fail("DM_DEV_REMOVE", error, Device());
  }
};

// The kernel's rules for names (DM_NAME_LEN with the NUL; no '/', it becomes a path under
// /dev/mapper), checked here so that a bad name is a TypeError and never a half-made device.
std::string RequireDmName(Napi::Value value, const char* what) {
  std::string name = RequireString(value, what);
  if (name.empty() || name.size() >= DM_NAME_LEN) {
    ThrowTypeError(value.Env(), std::string(what) + " must be 1-" +
                                    std::to_string(DM_NAME_LEN - 1) + " bytes");
  }
  if (name.find('/') != std::string::npos) {
    ThrowTypeError(value.Env(), std::string(what) + " must not contain '/'");
  }
  return name;
}

std::vector<DmTarget> RequireDmTable(Napi::Value value) {
  Napi::Env env = value.Env();
  Napi::Array lines = RequireArray(value, "options.table");
  std::vector<DmTarget> targets;
  targets.reserve(lines.Length());
  for (uint32_t i = 0; i < lines.Length(); i++) {
    Napi::Object line = RequireObject(lines[i], "options.table[]");
    DmTarget target;
    target.start = static_cast<uint64_t>(
        RequireInteger(line.Get("start"), "options.table[].start", 0, kMaxSafeInteger));
    target.length = static_cast<uint64_t>(
        RequireInteger(line.Get("length"), "options.table[].length", 0, kMaxSafeInteger));
    target.type = RequireString(line.Get("type"), "options.table[].type");
    if (target.type.empty() || target.type.size() >= DM_MAX_TYPE_NAME) {
      ThrowTypeError(env, "options.table[].type must be 1-" +
                              std::to_string(DM_MAX_TYPE_NAME - 1) + " bytes");
    }
    target.params = RequireString(line.Get("params"), "options.table[].params");
    targets.push_back(std::move(target));
  }
  return targets;
}

Napi::Value DmCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object options = RequireObject(info[0], "options");
  std::string name = RequireDmName(options.Get("name"), "options.name");
  std::string uuid;
  Napi::Value uuidValue = options.Get("uuid");
  if (!IsAbsent(uuidValue)) {
    uuid = RequireString(uuidValue, "options.uuid");
    if (uuid.size() >= DM_UUID_LEN) {
      ThrowTypeError(env, "options.uuid must be at most " + std::to_string(DM_UUID_LEN - 1) +
                              " bytes");
    }
  }
  bool readOnly = RequireBoolean(options.Get("readOnly"), "options.readOnly");
  std::vector<DmTarget> targets = RequireDmTable(options.Get("table"));
  return QueueWorker<DmCreateWorker>(env, std::move(name), std::move(uuid), readOnly,
                                     std::move(targets));
}

Napi::Value DmStatus(const Napi::CallbackInfo& info) {
  return QueueWorker<DmStatusWorker>(info.Env(), RequireDmName(info[0], "name"));
}

Napi::Value DmRemove(const Napi::CallbackInfo& info) {
  return QueueWorker<DmRemoveWorker>(info.Env(), RequireDmName(info[0], "name"));
}

}  // namespace

void RegisterBlock(Napi::Env env, Napi::Object exports) {
  exports.Set("loopAttach", Napi::Function::New(env, LoopAttach, "loopAttach"));
  exports.Set("loopDetach", Napi::Function::New(env, LoopDetach, "loopDetach"));
  exports.Set("dmCreate", Napi::Function::New(env, DmCreate, "dmCreate"));
  exports.Set("dmStatus", Napi::Function::New(env, DmStatus, "dmStatus"));
  exports.Set("dmRemove", Napi::Function::New(env, DmRemove, "dmRemove"));
}

}  // namespace mos

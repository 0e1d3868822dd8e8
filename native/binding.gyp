{
  # The mos native addon: one narrow port to the kernel (see native/types.ts).
  # Built offline by scripts/build-addon.mjs (`npm run build:addon`).
  "targets": [
    {
      "target_name": "mos_native",
      "sources": [
        "src/addon.cc",
        "src/boot.cc",
        "src/errors.cc",
        "src/mount.cc",
        "src/poll.cc",
        "src/reap.cc",
        "src/signals.cc",
        "src/socket.cc",
        "src/spawn.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      # C++ exceptions are on: argument and syscall errors are thrown as Napi::Error and
      # node-addon-api turns them into JS exceptions at the function boundary.
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}

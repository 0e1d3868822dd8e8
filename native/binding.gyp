{
  # The mos native addon: one narrow port to the kernel (see native/types.ts).
  # Built offline by scripts/build-addon.mjs (`npm run build:addon`).
  "targets": [
    {
      "target_name": "mos_native",
      "sources": [
        "src/addon.cc",
        "src/block.cc",
        "src/boot.cc",
        "src/errors.cc",
        "src/idmap.cc",
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
    },
    {
      # The TPM port (src/tpm.cc), a second addon that native/index.ts loads on the first TPM
      # call: the TSS and the libcrypto it pulls in cost ~2 MB of RSS in every process that maps
      # them, and most of mos's life (host mode, every boot after verification) needs no TPM.
      "target_name": "mos_tpm",
      "sources": [
        "src/tpm_addon.cc",
        "src/tpm.cc",
        "src/errors.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")"
      ],
      "defines": [
        "NAPI_VERSION=8",
        "NAPI_CPP_EXCEPTIONS"
      ],
      # ESYS plus the two TCTIs linked directly (not tctildr's dlopen), so the initramfs, which
      # copies the addon's ldd closure, gets them. Debian: libtss2-dev.
      "libraries": [
        "<!@(pkg-config --libs tss2-esys tss2-rc tss2-tcti-device tss2-tcti-swtpm || { echo 'mos_tpm: libtss2-dev (the TPM2 TSS) is missing: apt-get install libtss2-dev, or npm run setup' >&2; exit 1; })"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17", "-std=gnu++20"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter"]
    }
  ]
}

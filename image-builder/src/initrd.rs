//! The initramfs: a zstd-compressed newc cpio with `init` and the modules it
//! loads. (Being written.)

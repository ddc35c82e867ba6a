//! What PID 1 reads before anything else: `/proc/cmdline` and the names of
//! the boot entries on the ESP. Parsing must never panic, and what the
//! builder renders must parse back to the same value.

#![no_main]

use caisson_layout::{BootEntry, CaissonParams, KernelCmdline};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    let cmdline = KernelCmdline::parse(&text);
    if let Ok(params) = CaissonParams::from_cmdline(&cmdline) {
        let rendered = params.render().join(" ");
        let again = CaissonParams::from_cmdline(&KernelCmdline::parse(&rendered));
        assert_eq!(
            again.as_ref(),
            Ok(&params),
            "rendered options {rendered:?} do not parse back"
        );
    }

    // Entry names come one per file; try the whole input and each line.
    for name in std::iter::once(&*text).chain(text.lines()) {
        if let Ok(entry) = BootEntry::parse_file_name(name) {
            let file_name = entry.file_name();
            assert_eq!(
                BootEntry::parse_file_name(&file_name).as_ref(),
                Ok(&entry),
                "{file_name:?} does not parse back"
            );
        }
    }
});

use super::*;

const U: &str = "6f1c9a52-8a3e-4d1b-9f4e-2f0a4b5c6d7e";
const OWN: &str =
    "caisson.slot=a caisson.root=PARTUUID=6f1c9a52-8a3e-4d1b-9f4e-2f0a4b5c6d7e caisson.verity=off";

fn entry(options: &str) -> String {
    format!(
        "title Caisson 0.1.0 (slot a)\nversion 0.1.0\nlinux /a/vmlinuz\ninitrd /a/initrd\noptions {options}\n"
    )
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

#[test]
fn planning_keeps_caisson_words_and_replaces_the_rest_with_base_and_args() {
    let old = entry(&format!("{OWN} console=ttyS0,115200 quiet"));
    let new = plan_entry(
        &old,
        &words(&["console=ttyS0,115200"]),
        &words(&["nowatchdog", "printk.devkmsg=on"]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        new,
        entry(&format!(
            "{OWN} console=ttyS0,115200 nowatchdog printk.devkmsg=on"
        ))
    );
    // Title, version, linux and initrd lines are untouched, in place.
    assert!(new.starts_with(
        "title Caisson 0.1.0 (slot a)\nversion 0.1.0\nlinux /a/vmlinuz\ninitrd /a/initrd\n"
    ));
}

#[test]
fn planning_the_same_options_again_changes_nothing() {
    let text = entry(&format!("{OWN} console=ttyS0 nowatchdog"));
    assert_eq!(
        plan_entry(&text, &words(&["console=ttyS0"]), &words(&["nowatchdog"])),
        Ok(None)
    );
    // Removing the args goes back to the base alone.
    let back = plan_entry(&text, &words(&["console=ttyS0"]), &[])
        .unwrap()
        .unwrap();
    assert_eq!(back, entry(&format!("{OWN} console=ttyS0")));
}

#[test]
fn quoted_caisson_words_and_interleaved_words_are_kept_as_written() {
    let old = entry(
        "console=tty0 caisson.slot=b \"caisson.root=PARTLABEL=ROOT B\" rw caisson.rootwait=5",
    );
    let new = plan_entry(&old, &words(&["console=ttyS0"]), &words(&["a=\"x\""]))
        .unwrap()
        .unwrap();
    assert!(
        new.contains("\noptions caisson.slot=b \"caisson.root=PARTLABEL=ROOT B\" caisson.rootwait=5 console=ttyS0 a=\"x\"\n"),
        "{new}"
    );
}

#[test]
fn several_options_lines_become_one_where_the_first_was() {
    let old = "title T\noptions caisson.slot=a quiet\nlinux /a/vmlinuz\noptions caisson.root=PARTLABEL=ROOT-A\n";
    let new = plan_entry(old, &[], &words(&["x=1"])).unwrap().unwrap();
    assert_eq!(
        new,
        "title T\noptions caisson.slot=a caisson.root=PARTLABEL=ROOT-A x=1\nlinux /a/vmlinuz\n"
    );
}

#[test]
fn an_entry_without_caisson_slot_is_refused() {
    let e = plan_entry("title X\noptions root=/dev/sda1\n", &[], &[]).unwrap_err();
    assert!(e.contains("caisson.slot"), "{e}");
    assert!(plan_entry("title X\n", &[], &[]).is_err());
}

#[test]
fn the_running_command_lines_extra_words_leave_out_caisson_ones() {
    let line = format!(
        "{OWN} console=ttyS0,115200 \"caisson.root=PARTLABEL=A B\" nowatchdog initrd=\\a\\initrd\n"
    );
    assert_eq!(
        extra_words(&line),
        words(&["console=ttyS0,115200", "nowatchdog"])
    );
    assert_eq!(
        parse_base("console=ttyS0,115200  quiet\n"),
        words(&["console=ttyS0,115200", "quiet"])
    );
    assert!(parse_base("\n").is_empty());
}

fn running(slot: &str, root: &str) -> KernelCmdline {
    KernelCmdline::parse(&format!(
        "caisson.slot={slot} caisson.root={root} console=ttyS0"
    ))
}

#[test]
fn the_running_entry_is_the_slots_one_or_the_one_with_the_running_root() {
    let a = ("caisson-0.1.0-a+2-1.conf".to_string(), entry(OWN));
    let b = (
        "caisson-0.2.0-b.conf".to_string(),
        entry("caisson.slot=b caisson.root=PARTLABEL=ROOT-B"),
    );
    let foreign = ("debian.conf".to_string(), entry("root=/dev/sda1"));
    let all = vec![foreign, a.clone(), b.clone()];
    let root_a = format!("PARTUUID={U}");
    assert_eq!(pick_entry(&all, &running("a", &root_a)), Ok(&a));
    assert_eq!(pick_entry(&all, &running("b", "PARTLABEL=ROOT-B")), Ok(&b));

    let a2 = (
        "caisson-0.0.9-a.conf".to_string(),
        entry("caisson.slot=a caisson.root=PARTLABEL=OTHER"),
    );
    let two = vec![a2.clone(), a.clone()];
    assert_eq!(pick_entry(&two, &running("a", &root_a)), Ok(&a));
    assert_eq!(pick_entry(&two, &running("a", "PARTLABEL=OTHER")), Ok(&a2));
    let e = pick_entry(&two, &running("a", "PARTLABEL=NONE")).unwrap_err();
    assert!(
        e.contains("caisson-0.0.9-a.conf, caisson-0.1.0-a+2-1.conf"),
        "{e}"
    );

    let e = pick_entry(&[b], &running("a", &root_a)).unwrap_err();
    assert!(e.contains("no entry for slot a"), "{e}");
    let e = pick_entry(&all, &KernelCmdline::parse("console=ttyS0")).unwrap_err();
    assert!(e.contains("caisson.slot"), "{e}");
}

fn esp_with(name: &str, text: &str) -> tempfile::TempDir {
    let esp = tempfile::tempdir().unwrap();
    let dir = esp.path().join(ENTRIES_DIR);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), text).unwrap();
    fs::write(
        dir.join("caisson-0.1.0-b.conf"),
        entry("caisson.slot=b caisson.root=PARTLABEL=ROOT-B"),
    )
    .unwrap();
    esp
}

#[test]
fn the_entry_is_rewritten_under_its_own_name_and_only_when_it_changes() {
    let name = "caisson-0.1.0-a+3.conf";
    let esp = esp_with(name, &entry(&format!("{OWN} console=ttyS0")));
    let dev = Path::new("/dev/vda1");
    let cmdline = running("a", &format!("PARTUUID={U}"));
    let base = words(&["console=ttyS0"]);
    let args = words(&["nowatchdog"]);
    let out = update_in(esp.path(), dev, &cmdline, &base, &args).unwrap();
    assert_eq!(out, Outcome::Written(name.to_string()));
    let dir = esp.path().join(ENTRIES_DIR);
    let mut names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, [name, "caisson-0.1.0-b.conf"], "no temp file left");
    assert_eq!(
        fs::read_to_string(dir.join(name)).unwrap(),
        entry(&format!("{OWN} console=ttyS0 nowatchdog"))
    );
    let before = fs::metadata(dir.join(name)).unwrap().modified().unwrap();
    let again = update_in(esp.path(), dev, &cmdline, &base, &args).unwrap();
    assert_eq!(again, Outcome::Unchanged(name.to_string()));
    assert_eq!(
        fs::metadata(dir.join(name)).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn errors_name_the_esp_device_and_the_entry() {
    let esp = esp_with("caisson-0.1.0-a.conf", "title X\noptions quiet\n");
    let dev = Path::new("/dev/vda1");
    let e = update_in(esp.path(), dev, &running("a", "PARTLABEL=ROOT-A"), &[], &[]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("/dev/vda1"), "{msg}");
    assert!(msg.contains("caisson-0.1.0-a.conf"), "{msg}");
    let empty = tempfile::tempdir().unwrap();
    let e = update_in(
        empty.path(),
        dev,
        &running("a", "PARTLABEL=ROOT-A"),
        &[],
        &[],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("/dev/vda1") && e.to_string().contains("loader/entries"),
        "{e}"
    );
}

//! A full disk: the messenger says so, and nothing it had stored is lost. The profile lives
//! on a small tmpfs this test mounts (root only; skipped elsewhere unless
//! `MIXED_LAB_REQUIRED` is set).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::process::Command;
use std::rc::Rc;

use chat::{Chat, KdfParams};
use common::{Dir, Hub, settle};

const NOW: u64 = 1_700_000_000;

/// A tmpfs of `mib` MiB at `path`, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, mib: u32) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing_stored() {
    let dir = Dir::new("disk");
    let Some(fs) = Tmpfs::mount(&dir.sub("small"), 8) else {
        assert!(
            std::env::var_os("MIXED_LAB_REQUIRED").is_none(),
            "cannot mount a tmpfs here (root is needed)"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root?)");
        return;
    };
    let hub = Rc::new(RefCell::new(Hub::default()));
    let (mut ta, mut tb) = (Hub::port(&hub, 1), Hub::port(&hub, 2));
    let profile = fs.0.join("alice");
    let mut a = Chat::init(&profile, "a", KdfParams::TESTS_ONLY, &mut ta, "a", NOW).unwrap();
    let mut b = Chat::init(&dir.sub("b"), "b", KdfParams::TESTS_ONLY, &mut tb, "b", NOW).unwrap();
    let bob = b.user().unwrap();
    a.add_contact(&mut ta, &b.contact_code().unwrap(), "bob")
        .unwrap();
    let mut sent = Vec::new();
    for k in 0..5 {
        sent.push(
            a.send(&mut ta, &bob, &format!("before {k}"), None, NOW)
                .unwrap(),
        );
    }
    settle(&mut [(&mut a, &mut ta), (&mut b, &mut tb)]);
    // the disk fills up
    let filler = fs.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    drop(f);
    let err = a
        .send(
            &mut ta,
            &bob,
            "no room",
            Some(("big".into(), vec![1; 200_000])),
            NOW,
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("disk full") && err.contains("nothing already stored was lost"),
        "{err}"
    );
    // room again: everything stored before is there, and it goes on
    std::fs::remove_file(&filler).unwrap();
    drop(a);
    let mut a = Chat::open(&profile, "a", &mut ta).unwrap();
    for id in &sent {
        assert!(a.message(id).is_some());
    }
    assert_eq!(a.conversation(&bob).len(), 5);
    a.send(&mut ta, &bob, "room again", None, NOW).unwrap();
    settle(&mut [(&mut a, &mut ta), (&mut b, &mut tb)]);
    assert_eq!(b.conversation(&a.user().unwrap()).len(), 6);
    drop(a);
    drop(fs);
}

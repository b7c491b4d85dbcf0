//! What every integration test needs: temp dirs, the built binary, the repo's
//! rules folder.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn rules_dir() -> PathBuf {
    repo().join("rules")
}

/// Runs the real `transfer-guard` binary.
pub fn transfer_guard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_transfer-guard"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run transfer-guard")
}

/// A temp copy of the shipped rules folder (without tests) to break on purpose.
pub fn rules_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&rules_dir(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

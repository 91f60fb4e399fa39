//! The output folder: every batch as files, `<dir>/<end>/<file>`, with
//! `<end>` the period's end in UTC as `20060102T150405Z` (Go's layout, as
//! dd-trace-go's `DD_PROFILING_OUTPUT_DIR`). `event.json` is written beside
//! the profiles so the tags can be read too.
//!
//! Files are written under a temporary name and renamed, so a reader never
//! sees half a profile. Two batches ending in the same second (the last,
//! partial period right after a full one) get `<end>.1`, `<end>.2`, ...

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::event::folder_stamp;
use super::Batch;

/// Writes `batch` (and its `event.json`) under `root`; returns the folder.
pub(crate) fn write(root: &Path, batch: &Batch, event: &[u8]) -> io::Result<PathBuf> {
    fs::create_dir_all(root)?;
    let stamp = folder_stamp(batch.end);
    let mut folder = root.join(&stamp);
    let mut n = 0;
    loop {
        match fs::create_dir(&folder) {
            Ok(()) => break,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => {
                n += 1;
                folder = root.join(format!("{stamp}.{n}"));
            }
            Err(e) => return Err(e),
        }
    }
    let files = batch
        .files
        .iter()
        .map(|(name, bytes)| (*name, bytes.as_slice()))
        .chain([("event.json", event)]);
    for (name, bytes) in files {
        let tmp = folder.join(format!(".{name}.tmp"));
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, folder.join(name))?;
    }
    Ok(folder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn batches_land_in_stamped_folders() {
        let root = std::env::temp_dir().join(format!("ferroprof-dir-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let end = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_637_540);
        let batch = Batch {
            seq: 0,
            start: end - Duration::from_secs(60),
            end,
            files: vec![
                ("cpu.pprof", vec![1, 2, 3]),
                ("metrics.json", b"[]".to_vec()),
            ],
        };
        let a = write(&root, &batch, b"{}").unwrap();
        let b = write(&root, &batch, b"{}").unwrap();
        assert_eq!(a, root.join("20261125T201220Z"));
        assert_eq!(b, root.join("20261125T201220Z.1"));
        assert_eq!(fs::read(a.join("cpu.pprof")).unwrap(), [1, 2, 3]);
        assert_eq!(fs::read(a.join("metrics.json")).unwrap(), b"[]");
        assert_eq!(fs::read(a.join("event.json")).unwrap(), b"{}");
        let mut names: Vec<_> = fs::read_dir(&a)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["cpu.pprof", "event.json", "metrics.json"]);
        fs::remove_dir_all(&root).unwrap();
    }
}

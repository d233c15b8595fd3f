//! Writing an export directory so that it never holds a loadable mix of two exports: every
//! file is written into a staging directory inside it, and only once all are complete (and
//! synced) does the commit remove the old `manifest.json`, rename the new files over the
//! old ones, and write the new manifest last. An export that fails or is killed before the
//! commit leaves the earlier export as it was; one killed during the commit leaves no
//! manifest, which the engine refuses to open. The manifest records every file's size, so
//! that the engine can also tell files that do not belong to it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Name of the staging directory inside the export directory. A leftover of a killed
/// export is removed by the next one.
pub const STAGING_DIR: &str = ".export-partial";

/// Files being written for one export; removed on drop unless committed.
pub struct Staging {
    out: PathBuf,
    dir: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates `out` (if needed) and an empty staging directory in it.
    pub fn begin(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let dir = out.join(STAGING_DIR);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            out: out.to_path_buf(),
            dir,
            committed: false,
        })
    }

    /// Where the files are written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Copies `from` into the staging directory as `name`, synced.
    pub fn copy_in(&self, from: &Path, name: &str) -> Result<()> {
        let to = self.dir.join(name);
        std::fs::copy(from, &to).map_err(|e| Error::io(&to, e))?;
        sync_file(&to)
    }

    /// The size of every staged file, by name: what the manifest records.
    pub fn file_sizes(&self) -> Result<BTreeMap<String, u64>> {
        let mut sizes = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // The graph writer's temporaries are renamed away before this is called.
            if meta.is_file() && !name.starts_with('.') {
                sizes.insert(name, meta.len());
            }
        }
        Ok(sizes)
    }

    /// Moves the staged files into the export directory and writes `manifest` (named
    /// `manifest_name`) last; see the module documentation for the order.
    pub fn commit(mut self, manifest_name: &str, manifest: &str) -> Result<()> {
        let out = self.out.clone();
        let old_manifest = out.join(manifest_name);
        if old_manifest.exists() {
            std::fs::remove_file(&old_manifest).map_err(|e| Error::io(&old_manifest, e))?;
            sync_dir(&out)?;
        }
        for name in self.file_sizes()?.into_keys() {
            let to = out.join(&name);
            std::fs::rename(self.dir.join(&name), &to).map_err(|e| Error::io(&to, e))?;
        }
        sync_dir(&out)?;
        let staged = self.dir.join(manifest_name);
        write_synced(&staged, manifest.as_bytes())?;
        std::fs::rename(&staged, &old_manifest).map_err(|e| Error::io(&old_manifest, e))?;
        sync_dir(&out)?;
        self.committed = true;
        std::fs::remove_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover is removed by the next export anyway.
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes `bytes` to `path` and syncs the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

fn sync_file(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Makes the directory's entries (created, renamed, removed files) durable: a rename is only
/// on disk once its directory is synced.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_staging_leaves_the_old_files_and_goes_away() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("manifest.json"), "old").unwrap();
        std::fs::write(out.path().join("a.bin"), "old a").unwrap();
        {
            let staging = Staging::begin(out.path()).unwrap();
            std::fs::write(staging.dir().join("a.bin"), "new a, half").unwrap();
        }
        assert!(!out.path().join(STAGING_DIR).exists());
        assert_eq!(
            std::fs::read_to_string(out.path().join("a.bin")).unwrap(),
            "old a"
        );
        assert_eq!(
            std::fs::read_to_string(out.path().join("manifest.json")).unwrap(),
            "old"
        );
    }

    #[test]
    fn commit_replaces_the_files_and_writes_the_manifest() {
        let out = tempfile::tempdir().unwrap();
        std::fs::write(out.path().join("manifest.json"), "old").unwrap();
        std::fs::write(out.path().join("a.bin"), "old a").unwrap();
        std::fs::write(out.path().join("mine.txt"), "kept").unwrap();
        // A killed export's leftover is cleared.
        std::fs::create_dir(out.path().join(STAGING_DIR)).unwrap();
        std::fs::write(out.path().join(STAGING_DIR).join("junk"), "x").unwrap();
        let staging = Staging::begin(out.path()).unwrap();
        std::fs::write(staging.dir().join("a.bin"), "new a").unwrap();
        std::fs::write(staging.dir().join("b.bin"), "new b").unwrap();
        let sizes = staging.file_sizes().unwrap();
        assert_eq!(
            sizes.into_iter().collect::<Vec<_>>(),
            [("a.bin".to_string(), 5u64), ("b.bin".to_string(), 5u64)]
        );
        staging.commit("manifest.json", "new").unwrap();
        let read = |n: &str| std::fs::read_to_string(out.path().join(n)).unwrap();
        assert_eq!(read("a.bin"), "new a");
        assert_eq!(read("b.bin"), "new b");
        assert_eq!(read("manifest.json"), "new");
        assert_eq!(read("mine.txt"), "kept");
        assert!(!out.path().join(STAGING_DIR).exists());
    }
}

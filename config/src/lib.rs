//! The Caisson machine config.
//!
//! A machine config is TOML with `version = 1`. Unknown keys are rejected and
//! every error names the key path, with line and column, and says what was
//! expected. Secrets are wrapped in [`Secret`], which never prints its value.
//! This crate never does I/O: the agent, `nodectl` and the builder read the
//! file and hand over its text.

mod error;
mod locate;
pub mod redact;
mod schema;
mod secret;
pub mod size;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use schema::*;
pub use secret::Secret;
pub use size::{SizeMatch, SizeOp};

/// The only config version this build understands.
pub const CONFIG_VERSION: u32 = 1;

/// Parse and validate a machine config. `origin` names where the text came
/// from (a file path, "STATE", "embedded", …) and prefixes every error.
pub fn parse(origin: &str, text: &str) -> Result<MachineConfig, ConfigErrors> {
    let config = deserialize(origin, text)?;
    let problems = validate::validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        let located = problems
            .into_iter()
            .map(|p| {
                let pos = locate::position_of_path(text, &p.path);
                ConfigError::new(origin, p.path, pos, p.message)
            })
            .collect();
        Err(ConfigErrors(located))
    }
}

fn deserialize(origin: &str, text: &str) -> Result<MachineConfig, ConfigErrors> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize::<_, MachineConfig>(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let pos = inner.span().map(|s| locate::line_col(text, s.start));
        let path = match (path.as_str(), pos) {
            // A syntax error: no parse tree, so read the path off the lines.
            (".", Some((line, _))) => locate::path_at_line(text, line),
            (".", None) => String::new(),
            _ => path,
        };
        ConfigErrors(vec![ConfigError::new(origin, path, pos, inner.message().to_string())])
    })
}

use thiserror::Error;

/// Why a plugin config was rejected. Every variant names the offending field by its JSON path
/// (for example `_rules_[2].weight`), so an operator can find it in the WasmPlugin.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// The JSON does not have the plugin's shape: a syntax error, a wrong type, or an unknown
    /// field (which usually is a typo).
    #[error("{path}: {message}")]
    Shape { path: String, message: String },
    /// The JSON has the right shape but a value is unusable.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConfigError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The JSON path of the offending field (`.` for the whole document).
    pub fn path(&self) -> &str {
        match self {
            Self::Shape { path, .. } | Self::Invalid { path, .. } => path,
        }
    }
}

//! Installs the process-wide `tracing` subscriber: human-readable text or one JSON object per
//! line, on standard error, filtered by level.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl FromStr for LogFormat {
    type Err = LoggingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(LoggingError::UnknownFormat(other.to_owned())),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// The format is neither `text` nor `json`.
    #[error("log format `{0}` is unknown; use `text` or `json`")]
    UnknownFormat(String),
    /// The level or filter directive does not parse.
    #[error("log filter `{filter}` is invalid: {reason}")]
    BadFilter {
        /// The filter as given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A global subscriber is already installed.
    #[error("a logger is already installed")]
    AlreadyInstalled,
}

/// Parses a level or filter directive (`info`, `mesh_agent=debug,warn`).
///
/// # Errors
///
/// Returns [`LoggingError::BadFilter`] if the directive does not parse.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LoggingError::BadFilter {
            filter: filter.to_owned(),
            reason: e.to_string(),
        })
}

/// Installs the global subscriber writing to standard error in `format`, filtered by `level`
/// unless the `RUST_LOG` environment variable is set, which then takes precedence.
///
/// # Errors
///
/// Returns a [`LoggingError`] if the filter does not parse or a subscriber is already installed.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => parse_filter(&env)?,
        _ => parse_filter(level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|_| LoggingError::AlreadyInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_display() {
        assert_eq!("text".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!(LogFormat::Json.to_string(), "json");
        let err = "yaml".parse::<LogFormat>().unwrap_err().to_string();
        assert!(err.contains("yaml"), "{err}");
    }

    #[test]
    fn filters_are_checked() {
        assert!(parse_filter("info").is_ok());
        assert!(parse_filter("mesh_agent=debug,warn").is_ok());
        let err = parse_filter("mesh_agent=loud").unwrap_err().to_string();
        assert!(err.contains("mesh_agent=loud"), "{err}");
    }

    #[test]
    fn second_init_reports_already_installed() {
        // Whichever call comes first in this test binary wins; the second must fail cleanly.
        let first = init(LogFormat::Json, "warn");
        let second = init(LogFormat::Text, "warn");
        assert!(first.is_ok() || matches!(first, Err(LoggingError::AlreadyInstalled)));
        assert!(matches!(second, Err(LoggingError::AlreadyInstalled)));
    }
}

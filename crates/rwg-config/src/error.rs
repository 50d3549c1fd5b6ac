//! Errors of parsing and resolving, each naming where the problem is.

use core::fmt;

/// A configuration file could not be read or parsed.
#[derive(Debug)]
pub struct ConfigError {
    /// The file name given to the parser.
    pub file: String,
    /// The 1-based line number, when the problem sits on a line.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: ErrorKind,
}

/// What is wrong with a configuration.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file could not be read.
    Io(std::io::Error),
    /// A line is neither a section header, a comment nor `Key = Value`.
    Syntax,
    /// A `Key = Value` line before any section header.
    OutsideSection,
    /// A `[Section]` other than `[Interface]` and `[Peer]`.
    UnknownSection(String),
    /// A key this section does not have.
    UnknownKey(String),
    /// A second `[Interface]` section.
    DuplicateInterface,
    /// A key that may appear once appeared again.
    DuplicateKey(&'static str),
    /// A key's value is malformed.
    InvalidValue {
        /// The key, spelled canonically.
        key: &'static str,
        /// Why the value is wrong.
        reason: String,
    },
    /// A required key is missing from the section starting on this error's line.
    MissingKey(&'static str),
    /// The file has no `[Interface]` section.
    MissingInterface,
}

impl ConfigError {
    pub(crate) fn at(file: &str, line: usize, kind: ErrorKind) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: Some(line),
            kind,
        }
    }

    pub(crate) fn io(file: &str, err: std::io::Error) -> Self {
        ConfigError {
            file: file.to_owned(),
            line: None,
            kind: ErrorKind::Io(err),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file, line, self.kind),
            None => write!(f, "{}: {}", self.file, self.kind),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Io(e) => write!(f, "cannot read: {e}"),
            ErrorKind::Syntax => f.write_str("expected `[Section]` or `Key = Value`"),
            ErrorKind::OutsideSection => f.write_str("key outside of a section"),
            ErrorKind::UnknownSection(s) => write!(f, "unknown section [{s}]"),
            ErrorKind::UnknownKey(k) => write!(f, "unknown key {k}"),
            ErrorKind::DuplicateInterface => f.write_str("more than one [Interface] section"),
            ErrorKind::DuplicateKey(k) => write!(f, "{k} given more than once"),
            ErrorKind::InvalidValue { key, reason } => write!(f, "invalid {key}: {reason}"),
            ErrorKind::MissingKey(k) => write!(f, "section has no {k}"),
            ErrorKind::MissingInterface => f.write_str("no [Interface] section"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// A peer's endpoint host name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveError {
    /// The host name.
    pub host: String,
    /// The resolver's message.
    pub reason: String,
}

impl ResolveError {
    pub(crate) fn new(host: &str, reason: String) -> Self {
        ResolveError {
            host: host.to_owned(),
            reason,
        }
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot resolve endpoint {}: {}", self.host, self.reason)
    }
}

impl std::error::Error for ResolveError {}

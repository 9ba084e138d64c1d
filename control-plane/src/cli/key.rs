//! `keygate key generate` and `keygate key inspect`: offline, they store nothing and call nothing.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::Subcommand;
use keygate_shared::{ApiKey, ParsedKey};
use rand_core::OsRng;
use serde::Serialize;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a fresh well-formed key (UUIDv7 key id, 256-bit secret from the OS CSPRNG) with the
    /// configured `--prefix` and `--region`.
    Generate,
    /// Check a key offline and print one JSON object; exit 0 if well formed, 1 if not. Never prints the secret.
    Inspect {
        /// The key, or `-` to read it from standard input (keeps it out of shell history and `ps`).
        key: String,
    },
}

/// What `key inspect` prints: DESIGN.md's object, exactly.
#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Inspection {
    /// A well-formed key.
    Valid {
        /// Always true.
        valid: bool,
        /// The prefix.
        prefix: String,
        /// The region.
        region: String,
        /// The key id, 22 base62 characters.
        key_id: String,
        /// sha256_hex of the whole key.
        hash: String,
    },
    /// Not a well-formed key.
    Invalid {
        /// Always false.
        valid: bool,
        /// The stable error code.
        error: &'static str,
    },
}

impl Inspection {
    /// Inspects `text` as key format v1.
    pub fn of(text: &str) -> Self {
        match ParsedKey::parse(text) {
            Ok(key) => Self::Valid {
                valid: true,
                prefix: key.prefix().into(),
                region: key.region().into(),
                key_id: key.key_id_str().into(),
                hash: key.hash().to_hex(),
            },
            Err(error) => Self::Invalid { valid: false, error: error.code() },
        }
    }
}

impl KeyCommand {
    pub(crate) fn run(self, config: &super::Config, out: &mut dyn Write, input: &mut dyn BufRead) -> ExitCode {
        match self {
            Self::Generate => {
                let key = ApiKey::generate(&config.key_prefix, &config.region, unix_millis_now(), &mut OsRng);
                write_line(out, key.expose())
            }
            Self::Inspect { key } => {
                let mut line = zeroize::Zeroizing::new(String::new());
                let text = if key == "-" {
                    if input.read_line(&mut line).is_err() {
                        return ExitCode::from(2);
                    }
                    line.trim_end_matches(['\r', '\n'])
                } else {
                    key.as_str()
                };
                let inspection = Inspection::of(text);
                let code = match inspection {
                    Inspection::Valid { .. } => ExitCode::SUCCESS,
                    Inspection::Invalid { .. } => ExitCode::FAILURE,
                };
                match serde_json::to_string(&inspection) {
                    Ok(json) if write_line(out, &json) == ExitCode::SUCCESS => code,
                    _ => ExitCode::from(2),
                }
            }
        }
    }
}

fn write_line(out: &mut dyn Write, line: &str) -> ExitCode {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(2),
    }
}

/// The clock for key ids. Only the binary's entry reads it; library code takes time as a parameter.
fn unix_millis_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

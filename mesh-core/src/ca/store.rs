//! The CA's data directory: key files (mode 0600), certificate files and a JSON state file.
//!
//! Layout:
//!
//! ```text
//! <data_dir>/ca-state.json      states, key IDs, timestamps, bundle sequence (the commit point)
//! <data_dir>/x509-<id>.pem      a CA's certificate chain, signing certificate first, root last
//! <data_dir>/x509-<id>.key.pem  its private key, PKCS#8, mode 0600
//! <data_dir>/jwt-<id>.key.pem   a JWT signing key, PKCS#8, mode 0600
//! ```
//!
//! Every file is written with [`atomic_write`]. A new authority's files are written before the
//! state file that names them, and a dropped authority's files are removed after the state file
//! that forgets them, so the state file always names files that exist. The state file records
//! a SHA-256 of each certificate and public key, so a file replaced or damaged behind the CA's
//! back is reported, naming the file, rather than trusted.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;

use super::rotation::AuthorityState;
use super::{CaError, UpstreamMode};
use crate::fs::{atomic_write, PUBLIC_MODE, SECRET_MODE};
use crate::key::KeyPair;
use crate::x509;

/// Name of the state file inside the data directory.
pub const STATE_FILE: &str = "ca-state.json";

/// Version of the state file format written by this code.
const STATE_VERSION: u32 = 1;

/// Where the CA's X.509 authorities come from; recorded so a changed configuration is noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaMode {
    /// Self-signed roots made here.
    SelfSigned,
    /// A loaded upstream CA signs directly.
    UpstreamDirect,
    /// Intermediates made here under a loaded upstream CA.
    UpstreamIntermediate,
}

impl CaMode {
    pub(crate) fn from_upstream(mode: Option<UpstreamMode>) -> Self {
        match mode {
            None => CaMode::SelfSigned,
            Some(UpstreamMode::Direct) => CaMode::UpstreamDirect,
            Some(UpstreamMode::Intermediate) => CaMode::UpstreamIntermediate,
        }
    }
}

/// The content of `ca-state.json`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StateFile {
    pub version: u32,
    pub trust_domain: String,
    pub mode: CaMode,
    /// SHA-256 (hex) of the upstream CA certificate, in the upstream modes.
    pub upstream_sha256: Option<String>,
    pub sequence: u64,
    pub next_id: u64,
    pub x509: Vec<X509Record>,
    pub jwt: Vec<JwtRecord>,
}

/// One X.509 authority in the state file. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct X509Record {
    pub id: u64,
    pub state: AuthorityState,
    /// The upstream CA itself (direct mode); it has no files in the data directory.
    pub upstream: bool,
    /// SHA-256 (hex) of the signing certificate's DER.
    pub cert_sha256: String,
    pub not_before: u64,
    pub not_after: u64,
    pub prepared_at: u64,
    pub activated_at: Option<u64>,
    pub retired_at: Option<u64>,
}

/// One JWT signing key in the state file. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtRecord {
    pub id: u64,
    pub kid: String,
    pub state: AuthorityState,
    /// SHA-256 (hex) of the public key's SubjectPublicKeyInfo DER.
    pub public_key_sha256: String,
    pub not_before: u64,
    pub not_after: u64,
    pub prepared_at: u64,
    pub activated_at: Option<u64>,
    pub retired_at: Option<u64>,
}

/// The data directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn x509_chain_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("x509-{id}.pem"))
    }

    pub fn x509_key_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("x509-{id}.key.pem"))
    }

    pub fn jwt_key_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("jwt-{id}.key.pem"))
    }

    /// Reads the state file; `None` only when the directory holds no CA file at all.
    pub fn load(&self) -> Result<Option<StateFile>, CaError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return if self.has_ca_files()? {
                    Err(CaError::StateMissing { path })
                } else {
                    Ok(None)
                };
            }
            Err(e) => return Err(file_error(&path, e.to_string())),
        };
        let state: StateFile = serde_json::from_slice(&text)
            .map_err(|e| file_error(&path, format!("corrupt or truncated state file: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(file_error(
                &path,
                format!(
                    "state file version {} is not supported (expected {STATE_VERSION})",
                    state.version
                ),
            ));
        }
        check_consistency(&state).map_err(|reason| file_error(&path, reason))?;
        Ok(Some(state))
    }

    pub fn save(&self, state: &StateFile) -> Result<(), CaError> {
        let mut text = serde_json::to_vec_pretty(state)
            .map_err(|e| file_error(&self.state_path(), e.to_string()))?;
        text.push(b'\n');
        atomic_write(&self.state_path(), &text, SECRET_MODE)?;
        Ok(())
    }

    /// Writes an X.509 authority's key (0600) and certificate chain.
    pub fn write_x509(
        &self,
        id: u64,
        full_chain: &[CertificateDer<'_>],
        key: &KeyPair,
    ) -> Result<(), CaError> {
        atomic_write(
            &self.x509_key_path(id),
            key.pkcs8_pem().as_bytes(),
            SECRET_MODE,
        )?;
        atomic_write(
            &self.x509_chain_path(id),
            x509::certificates_to_pem(full_chain).as_bytes(),
            PUBLIC_MODE,
        )?;
        Ok(())
    }

    /// Reads an X.509 authority's chain and key, checking the certificate against the record.
    pub fn read_x509(
        &self,
        record: &X509Record,
    ) -> Result<(Vec<CertificateDer<'static>>, KeyPair), CaError> {
        let chain_path = self.x509_chain_path(record.id);
        let text = read_text(&chain_path)?;
        let chain = x509::certificates_from_pem(&text)
            .map_err(|e| file_error(&chain_path, format!("corrupt certificate file: {e}")))?;
        if sha256_hex(&chain[0]) != record.cert_sha256 {
            return Err(file_error(
                &chain_path,
                "certificate does not match the one recorded in the state file".to_owned(),
            ));
        }
        let key_path = self.x509_key_path(record.id);
        let key = KeyPair::from_pkcs8_pem(&read_text(&key_path)?)
            .map_err(|e| file_error(&key_path, format!("corrupt key file: {e}")))?;
        Ok((chain, key))
    }

    /// Writes a JWT signing key (0600).
    pub fn write_jwt_key(&self, id: u64, key: &KeyPair) -> Result<(), CaError> {
        atomic_write(
            &self.jwt_key_path(id),
            key.pkcs8_pem().as_bytes(),
            SECRET_MODE,
        )?;
        Ok(())
    }

    /// Reads a JWT signing key, checking its public key against the record.
    pub fn read_jwt_key(&self, record: &JwtRecord) -> Result<KeyPair, CaError> {
        let path = self.jwt_key_path(record.id);
        let key = KeyPair::from_pkcs8_pem(&read_text(&path)?)
            .map_err(|e| file_error(&path, format!("corrupt key file: {e}")))?;
        if sha256_hex(&key.spki_der()) != record.public_key_sha256 {
            return Err(file_error(
                &path,
                "key does not match the one recorded in the state file".to_owned(),
            ));
        }
        Ok(key)
    }

    /// Removes the files of a dropped X.509 authority; failures are only logged.
    pub fn remove_x509(&self, id: u64) {
        remove_quietly(&self.x509_chain_path(id));
        remove_quietly(&self.x509_key_path(id));
    }

    /// Removes the file of a dropped JWT key; failures are only logged.
    pub fn remove_jwt(&self, id: u64) {
        remove_quietly(&self.jwt_key_path(id));
    }

    fn has_ca_files(&self) -> Result<bool, CaError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(file_error(&self.dir, e.to_string())),
        };
        for entry in entries {
            let entry = entry.map_err(|e| file_error(&self.dir, e.to_string()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if (name.starts_with("x509-") || name.starts_with("jwt-")) && name.ends_with(".pem") {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// SHA-256 of `bytes`, hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

fn check_consistency(state: &StateFile) -> Result<(), String> {
    let mut ids = std::collections::BTreeSet::new();
    let x509 = state.x509.iter().map(|r| (r.id, r.state));
    let jwt = state.jwt.iter().map(|r| (r.id, r.state));
    for (kind, entries) in [("x509", x509.collect::<Vec<_>>()), ("jwt", jwt.collect())] {
        for wanted in [AuthorityState::Active, AuthorityState::Prepared] {
            let n = entries.iter().filter(|(_, s)| *s == wanted).count();
            if n > 1 {
                return Err(format!(
                    "{n} {kind} authorities are {wanted:?}; at most one may be"
                ));
            }
        }
        for (id, _) in entries {
            if id >= state.next_id || !ids.insert(id) {
                return Err(format!(
                    "{kind} authority id {id} is duplicated or not below next_id"
                ));
            }
        }
    }
    Ok(())
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(|e| {
        let reason = if e.kind() == io::ErrorKind::NotFound {
            "file is missing (named in the state file)".to_owned()
        } else {
            e.to_string()
        };
        file_error(path, reason)
    })
}

fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove a dropped CA file");
        }
    }
}

fn file_error(path: &Path, reason: String) -> CaError {
    CaError::File {
        path: path.to_owned(),
        reason,
    }
}

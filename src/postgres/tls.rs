//! TLS for the sessions of [`super::Dsn`]: the DSN's `ssl*` options, read
//! as lnd's driver and libpq read them, and a rustls connector that does
//! what each `sslmode` promises.
//!
//! rust-postgres's own DSN parser knows only `sslmode=disable|prefer|require`
//! and refuses every other TLS option, so [`split`] takes the TLS options out
//! of the text (key=value or URL form) before the rest goes to
//! `postgres::Config`:
//!
//! | `sslmode` | TLS | what is verified |
//! |---|---|---|
//! | `disable` | never | nothing |
//! | `allow` | only if the server refuses a session without it | nothing |
//! | `prefer` (the default) | when the server offers it | nothing |
//! | `require` | always | nothing; with `sslrootcert`, as `verify-ca` |
//! | `verify-ca` | always | the chain, up to `sslrootcert` (or the system's roots) |
//! | `verify-full` | always | the chain and the host name (subjectAltName) |
//!
//! `sslrootcert=system` takes the system's roots and, as in libpq, requires
//! `verify-full` (and implies it when no `sslmode` is given). `sslcert` and
//! `sslkey` (PEM, unencrypted) present a client certificate. `sslsni=0`
//! turns off the server name indication. Over a Unix socket there is no TLS,
//! as in libpq and lnd's driver: the options are ignored there.
//!
//! Files are read when a session is opened, not when the DSN is parsed, so
//! a renewed certificate is picked up by the next session; an error names
//! the option and the path.

use std::error::Error as StdError;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{PgError, PgResult};

/// The `sslmode` values libpq and lnd's driver (pgx) accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// A session without TLS first; with TLS (unverified) if the server
    /// refuses that.
    Allow,
    /// TLS when the server offers it, unverified; without TLS otherwise.
    Prefer,
    /// TLS or no session; unverified unless `sslrootcert` is given.
    Require,
    /// TLS, the server's certificate chain verified.
    VerifyCa,
    /// TLS, the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The DSN spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the trusted roots come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roots {
    /// `sslrootcert=<file>`: the PEM certificates in that file.
    File(PathBuf),
    /// `sslrootcert=system`, or a verifying mode without `sslrootcert`: the
    /// system's trust store.
    System,
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Roots::File(p) => write!(f, "sslrootcert={}", p.display()),
            Roots::System => f.write_str("the system's root certificates"),
        }
    }
}

/// The TLS options of a DSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOptions {
    /// The mode (`prefer` when the DSN gives none).
    pub mode: SslMode,
    /// Whether the DSN gave `sslmode` (the redacted form shows it then).
    pub mode_given: bool,
    /// `sslrootcert`.
    pub root_cert: Option<Roots>,
    /// `sslcert` and `sslkey`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// `sslsni` (on unless `sslsni=0`).
    pub sni: bool,
}

impl Default for TlsOptions {
    fn default() -> TlsOptions {
        TlsOptions {
            mode: SslMode::Prefer,
            mode_given: false,
            root_cert: None,
            client_cert: None,
            sni: true,
        }
    }
}

/// What the server's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Nothing (`prefer`, `allow`, `require` without `sslrootcert`): the
    /// session is encrypted, but the server is not authenticated.
    Nothing,
    /// The chain, up to these roots (`verify-ca`, `require` with
    /// `sslrootcert`).
    Chain(Roots),
    /// The chain and the host name (`verify-full`).
    Full(Roots),
}

impl TlsOptions {
    /// What the server's certificate is checked against in this mode.
    pub fn check(&self) -> Check {
        let roots = || self.root_cert.clone().unwrap_or(Roots::System);
        match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Check::Nothing,
            SslMode::Require if self.root_cert.is_none() => Check::Nothing,
            SslMode::Require | SslMode::VerifyCa => Check::Chain(roots()),
            SslMode::VerifyFull => Check::Full(roots()),
        }
    }

    /// Whether a session must be encrypted.
    pub fn required(&self) -> bool {
        matches!(
            self.mode,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    fn set(&mut self, key: &str, value: &str) -> PgResult<()> {
        match key {
            "sslmode" => {
                self.mode = SslMode::parse(value).ok_or_else(|| PgError::Dsn {
                    why: "invalid value for option `sslmode` (disable, allow, prefer, require, \
                          verify-ca or verify-full)"
                        .into(),
                })?;
                self.mode_given = true;
            }
            "sslrootcert" => {
                self.root_cert = match value {
                    "" => None,
                    "system" => Some(Roots::System),
                    path => Some(Roots::File(PathBuf::from(path))),
                };
            }
            "sslcert" => {
                let key = self.client_cert.take().map(|(_, k)| k).unwrap_or_default();
                self.client_cert = Some((PathBuf::from(value), key));
            }
            "sslkey" => {
                let cert = self.client_cert.take().map(|(c, _)| c).unwrap_or_default();
                self.client_cert = Some((cert, PathBuf::from(value)));
            }
            "sslsni" => {
                self.sni = match value {
                    "0" => false,
                    "1" => true,
                    _ => {
                        return Err(PgError::Dsn {
                            why: "invalid value for option `sslsni` (0 or 1)".into(),
                        })
                    }
                };
            }
            _ => unreachable!("not a TLS option: {key}"),
        }
        Ok(())
    }

    /// The checks libpq makes of the options together.
    fn validate(&mut self) -> PgResult<()> {
        if self.root_cert == Some(Roots::System) {
            if !self.mode_given {
                // libpq: sslrootcert=system without sslmode means verify-full.
                self.mode = SslMode::VerifyFull;
            } else if self.mode != SslMode::VerifyFull {
                return Err(PgError::Dsn {
                    why: format!(
                        "option `sslrootcert=system` needs `sslmode=verify-full` (not {}): \
                         with the system's roots any publicly issued certificate would pass \
                         unless the host name is checked",
                        self.mode
                    ),
                });
            }
        }
        match &self.client_cert {
            Some((c, _)) if c.as_os_str().is_empty() => Err(PgError::Dsn {
                why: "option `sslkey` is given without `sslcert`: both are needed".into(),
            }),
            Some((_, k)) if k.as_os_str().is_empty() => Err(PgError::Dsn {
                why: "option `sslcert` is given without `sslkey`: both are needed".into(),
            }),
            _ => Ok(()),
        }
    }
}

/// The TLS options oneway reads itself; every other option goes to
/// rust-postgres.
const HANDLED: [&str; 5] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "sslsni"];

/// TLS options of libpq that oneway does not implement: refused by name
/// rather than ignored, since ignoring one (a revocation list, an encrypted
/// key's password) would quietly weaken what the operator asked for.
const UNSUPPORTED: [&str; 8] = [
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
    "sslcompression",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "requiressl",
];

/// Whether `key` is a TLS option oneway reads (or refuses) itself.
fn is_tls(key: &str) -> bool {
    HANDLED.contains(&key) || UNSUPPORTED.contains(&key)
}

/// Takes a TLS option into `opts`; refuses one oneway does not implement.
fn take(opts: &mut TlsOptions, key: &str, value: &str) -> PgResult<()> {
    if UNSUPPORTED.contains(&key) {
        return Err(PgError::Dsn {
            why: format!("option `{key}` is not supported by oneway"),
        });
    }
    opts.set(key, value)
}

/// Splits a DSN into the text rust-postgres parses (every option but the
/// TLS ones oneway handles) and the TLS options. The error names an option,
/// never a value.
pub fn split(text: &str) -> PgResult<(String, TlsOptions)> {
    let mut opts = TlsOptions::default();
    let rest = match url_query(text) {
        Some((head, query)) => {
            let mut kept = Vec::new();
            for segment in query.split('&') {
                // Only a TLS option's value is decoded here; the others
                // (a password among them) go to rust-postgres as written.
                match segment.split_once('=') {
                    Some((k, v)) if is_tls(&percent_decode(k)?) => {
                        take(&mut opts, &percent_decode(k)?, &percent_decode(v)?)?;
                    }
                    _ => kept.push(segment),
                }
            }
            if kept.is_empty() {
                head.to_owned()
            } else {
                format!("{head}?{}", kept.join("&"))
            }
        }
        None if is_url(text) => text.to_owned(),
        None => {
            let mut kept = Vec::new();
            for (k, v) in key_values(text)? {
                if is_tls(k) {
                    take(&mut opts, k, &v)?;
                } else {
                    kept.push(format!("{k}={}", super::dsn::quote(&v)));
                }
            }
            kept.join(" ")
        }
    };
    opts.validate()?;
    Ok((rest, opts))
}

fn is_url(text: &str) -> bool {
    text.starts_with("postgres://") || text.starts_with("postgresql://")
}

/// A URL's text before its query and the query, found where rust-postgres
/// finds it: the first `?` after the credentials (which end at the first
/// `@`).
fn url_query(text: &str) -> Option<(&str, &str)> {
    if !is_url(text) {
        return None;
    }
    let after_creds = text.find('@').map_or(0, |i| i + 1);
    let q = after_creds + text[after_creds..].find('?')?;
    Some((&text[..q], &text[q + 1..]))
}

fn percent_decode(s: &str) -> PgResult<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| PgError::Dsn {
        why: "a URL parameter is not UTF-8 once percent-decoded".into(),
    })
}

/// The pairs of a key=value DSN, read with rust-postgres's grammar:
/// a keyword is anything up to white space or `=`, white space may surround
/// `=`, a value is quoted (`'…'`, backslash escapes) or runs to white space
/// (backslash escapes). The errors name no word of the text: a stray word
/// may be part of a password.
fn key_values(text: &str) -> PgResult<Vec<(&str, String)>> {
    let bad = |why: &str| PgError::Dsn { why: why.into() };
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return Ok(out);
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(rest.len());
        let key = &rest[..end];
        rest = rest[end..].trim_start();
        if key.is_empty() {
            return Err(bad("an option has no name before `=`"));
        }
        rest = rest
            .strip_prefix('=')
            .ok_or_else(|| {
                bad("a word is not followed by `=` (a value holding spaces must be quoted: key='…')")
            })?
            .trim_start();
        let mut value = String::new();
        let mut chars = rest.char_indices();
        if rest.starts_with('\'') {
            chars.next();
            let mut closed = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\'' => {
                        closed = Some(i + 1);
                        break;
                    }
                    '\\' => {
                        if let Some((_, c2)) = chars.next() {
                            value.push(c2);
                        }
                    }
                    c => value.push(c),
                }
            }
            let Some(after) = closed else {
                return Err(bad("a quoted value has no closing quote"));
            };
            rest = &rest[after..];
        } else {
            let mut after = rest.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    c if c.is_whitespace() => {
                        after = i;
                        break;
                    }
                    '\\' => {
                        if let Some((_, c2)) = chars.next() {
                            value.push(c2);
                        }
                    }
                    c => value.push(c),
                }
            }
            if value.is_empty() {
                return Err(bad("an option has no value"));
            }
            rest = &rest[after..];
        }
        out.push((key, value));
    }
}

/// The crypto provider: ring, named explicitly so that an embedding
/// application's process-wide default (or its absence) does not matter.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// The system's trust store, loaded once per process.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static SYSTEM: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    if let Some(r) = SYSTEM.get() {
        return Ok(r.clone());
    }
    let found = rustls_native_certs::load_native_certs();
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(format!(
            "no usable root certificate in the system's trust store ({why}): \
             give the server's CA with sslrootcert=<file>"
        ));
    }
    Ok(SYSTEM.get_or_init(|| Arc::new(store)).clone())
}

fn read(option: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {option}={}: {e}", path.display()))
}

fn file_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let pem = read("sslrootcert", path)?;
    let mut store = RootCertStore::empty();
    let mut certs = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            format!(
                "sslrootcert={} is not a PEM certificate file: {e}",
                path.display()
            )
        })?;
        certs += 1;
        store.add(cert).map_err(|e| {
            format!(
                "certificate {certs} of sslrootcert={} is not usable as a root: {e}",
                path.display()
            )
        })?;
    }
    if certs == 0 {
        return Err(format!(
            "sslrootcert={} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(Arc::new(store))
}

fn roots(r: &Roots) -> Result<Arc<RootCertStore>, String> {
    match r {
        Roots::File(p) => file_roots(p),
        Roots::System => system_roots(),
    }
}

fn client_auth(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let pem = read("sslcert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "sslcert={} is not a PEM certificate file: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!(
            "sslcert={} holds no PEM certificate",
            cert.display()
        ));
    }
    let pem = read("sslkey", key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "sslkey={} holds no unencrypted PEM private key ({e}); encrypted keys \
             (sslpassword) are not supported",
            key.display()
        )
    })?;
    Ok((chain, key_der))
}

/// The connector for a session with these options: the roots and the
/// client certificate read now. The error names the option and the file.
pub fn connector(opts: &TlsOptions) -> Result<MakeRustlsConnect, String> {
    let provider = provider();
    let check = match opts.check() {
        Check::Nothing => Verify::Nothing,
        Check::Chain(r) => Verify::Chain(roots(&r)?),
        Check::Full(r) => Verify::Full(
            WebPkiServerVerifier::builder_with_provider(roots(&r)?, provider.clone())
                .build()
                .map_err(|e| format!("cannot set up the verification of {r}: {e}"))?,
        ),
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier {
            verify: check,
            provider,
        }));
    let mut config = match &opts.client_cert {
        Some((cert, key)) => {
            let (chain, key_der) = client_auth(cert, key)?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                format!(
                    "sslcert={} and sslkey={} do not make a usable client certificate: {e}",
                    cert.display(),
                    key.display()
                )
            })?
        }
        None => builder.with_no_client_auth(),
    };
    // As libpq 17 does: PostgreSQL's ALPN name (needed for
    // sslnegotiation=direct, harmless otherwise).
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    config.enable_sni = opts.sni;
    Ok(MakeRustlsConnect::new(config))
}

#[derive(Debug)]
enum Verify {
    Nothing,
    Chain(Arc<RootCertStore>),
    Full(Arc<WebPkiServerVerifier>),
}

/// The server-certificate check of each mode. The handshake's signatures
/// are always verified (against the certificate the server presented), so
/// even an unverified session is bound to that certificate's key.
#[derive(Debug)]
struct Verifier {
    verify: Verify,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.verify {
            Verify::Nothing => Ok(ServerCertVerified::assertion()),
            Verify::Chain(roots) => {
                // verify-ca: the chain to a trusted root, the validity
                // period and the server-auth purpose; not the name.
                let cert = ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    roots,
                    intermediates,
                    now,
                    self.provider.signature_verification_algorithms.all,
                )?;
                Ok(ServerCertVerified::assertion())
            }
            Verify::Full(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// rust-postgres's words when the server answers the TLS request with "no".
const NO_TLS: &str = "server does not support TLS";

/// A sentence for a session that failed because of TLS, or `None` when the
/// failure was something else (the driver's own message says it then).
pub fn explain(err: &postgres::Error, opts: &TlsOptions) -> Option<String> {
    let mut cause: Option<&(dyn StdError + 'static)> = err.source();
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(rejected(r, opts));
        }
        if let Some(r) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(rejected(r, opts));
        }
        if c.to_string() == NO_TLS {
            return Some(format!(
                "the server does not offer TLS, and sslmode={} requires it \
                 (enable ssl on the server, or connect through a tunnel with sslmode=disable)",
                opts.mode
            ));
        }
        cause = c.source();
    }
    None
}

fn rejected(e: &rustls::Error, opts: &TlsOptions) -> String {
    let check = opts.check();
    let against = match &check {
        Check::Nothing => String::new(),
        Check::Chain(r) | Check::Full(r) => format!(" against {r}"),
    };
    let mode = opts.mode;
    match e {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::UnknownIssuer => format!(
                "the server's certificate is not signed by a trusted CA (sslmode={mode}, \
                 verified{against})"
            ),
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                format!(
                    "the server's certificate is not valid for the host name it was reached by \
                     (sslmode={mode} checks the subjectAltName): {ce}"
                )
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => format!(
                "the server's certificate is outside its validity period (sslmode={mode}): {ce}"
            ),
            other => {
                let mut s = format!(
                    "the server's certificate was rejected (sslmode={mode}, verified{against}): \
                     {other}"
                );
                if format!("{other:?}").contains("CaUsedAsEndEntity") {
                    s.push_str(
                        " (the server presents a CA certificate as its own, as a quick \
                         self-signed certificate made with `openssl req -x509` is: issue the \
                         server a certificate signed by that CA)",
                    );
                }
                s
            }
        },
        other => format!("the TLS handshake failed (sslmode={mode}): {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_options_are_taken_out() {
        let (rest, o) = split(
            "host=db.example port=5432 sslmode=verify-full sslrootcert='/etc/x y/ca.pem' \
             user=lnd password='a b\\'c' dbname=lnd",
        )
        .unwrap();
        assert_eq!(
            rest,
            "host=db.example port=5432 user=lnd password='a b\\'c' dbname=lnd"
        );
        assert_eq!(o.mode, SslMode::VerifyFull);
        assert!(o.mode_given);
        assert_eq!(o.root_cert, Some(Roots::File("/etc/x y/ca.pem".into())));
        assert_eq!(
            o.check(),
            Check::Full(Roots::File("/etc/x y/ca.pem".into()))
        );
        let (rest, o) = split("host = /tmp  sslmode = disable user=x").unwrap();
        assert_eq!(rest, "host=/tmp user=x");
        assert_eq!(o.mode, SslMode::Disable);
    }

    #[test]
    fn url_options_are_taken_out() {
        let (rest, o) = split(
            "postgres://lnd:p%3Fw@db:5432/lnd?sslmode=verify-ca&connect_timeout=5&sslrootcert=%2Fca%20dir%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://lnd:p%3Fw@db:5432/lnd?connect_timeout=5");
        assert_eq!(
            o.check(),
            Check::Chain(Roots::File("/ca dir/ca.pem".into()))
        );
        let (rest, o) = split("postgresql://db/lnd?sslmode=require").unwrap();
        assert_eq!(rest, "postgresql://db/lnd");
        assert_eq!(o.check(), Check::Nothing);
        let (rest, o) = split("postgres://db/lnd").unwrap();
        assert_eq!(rest, "postgres://db/lnd");
        assert_eq!(o.mode, SslMode::Prefer);
        assert!(!o.mode_given);
    }

    #[test]
    fn modes_check_what_libpq_checks() {
        let check = |dsn: &str| split(dsn).unwrap().1.check();
        assert_eq!(check("host=h"), Check::Nothing);
        assert_eq!(check("host=h sslmode=require"), Check::Nothing);
        assert_eq!(
            check("host=h sslmode=require sslrootcert=/ca"),
            Check::Chain(Roots::File("/ca".into()))
        );
        assert_eq!(
            check("host=h sslmode=verify-ca"),
            Check::Chain(Roots::System)
        );
        assert_eq!(
            check("host=h sslmode=verify-full"),
            Check::Full(Roots::System)
        );
        assert_eq!(
            check("host=h sslrootcert=system"),
            Check::Full(Roots::System)
        );
        assert!(split("host=h sslmode=require sslrootcert=system").is_err());
        assert!(split("host=h sslmode=verify-everything").is_err());
        assert!(split("host=h sslcert=/c").is_err());
        assert!(split("host=h sslkey=/k").is_err());
        assert!(split("host=h sslcert=/c sslkey=/k").is_ok());
        let err = split("host=h sslpassword=hunter2").unwrap_err().to_string();
        assert!(
            err.contains("sslpassword") && !err.contains("hunter2"),
            "{err}"
        );
        for text in [
            "host=h sslmode=hunter2",
            "host=h password=two hunter2",
            "host=h password='hunter2",
            "host=h hunter2=",
        ] {
            let err = split(text).unwrap_err().to_string();
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_missing_root_file_is_named() {
        let (_, o) = split("host=h sslmode=verify-full sslrootcert=/nonexistent/ca.pem").unwrap();
        let err = connector(&o).err().expect("refused");
        assert!(err.contains("sslrootcert=/nonexistent/ca.pem"), "{err}");
        let dir = std::env::temp_dir().join(format!("oneway-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let (_, o) = split(&format!(
            "host=h sslmode=verify-ca sslrootcert={}",
            junk.display()
        ))
        .unwrap();
        let err = connector(&o).err().expect("refused");
        assert!(err.contains("holds no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Authentication (contract §3): answers the server's requests for a cleartext password, MD5
//! and SCRAM-SHA-256 (SASLprep, and SCRAM-SHA-256-PLUS channel binding over TLS), under
//! libpq's `require_auth` and `channel_binding` rules, so a password is never sent where they
//! forbid it. The cryptography and the SCRAM messages are postgres-protocol's (its iteration
//! count is capped at 100,000, so a hostile server cannot make the key derivation last).
//!
//! Where pglock is stricter than libpq: once a SCRAM exchange has started, AuthenticationOk
//! without the server's signature is refused even when no setting asks for it (a real server
//! always sends its signature first; libpq accepts the shortcut unless `require_auth` is set).

use super::wire::AuthRequest;
use crate::pg::conninfo::{AuthMethod, ChannelBinding, ConnParams, RequireAuth};
use bytes::BytesMut;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::frontend;

/// Where the connection stands, as authentication needs to know it.
pub enum Channel {
    Plain,
    /// TLS, with the `tls-server-end-point` data when the certificate's algorithm allows it.
    Tls(Option<Vec<u8>>),
}

/// The client side of one authentication exchange.
pub struct Auth<'a> {
    params: &'a ConnParams,
    password: &'a dyn Fn() -> Option<String>,
    channel: Channel,
    scram: Option<Scram>,
    /// libpq's `client_finished_auth`: a password was sent, or SCRAM completed with the server's
    /// signature verified.
    finished: bool,
}

struct Scram {
    exchange: ScramSha256,
    /// SCRAM-SHA-256-PLUS: bound to this TLS channel.
    plus: bool,
    verified: bool,
}

impl<'a> Auth<'a> {
    pub fn new(
        params: &'a ConnParams,
        password: &'a dyn Fn() -> Option<String>,
        channel: Channel,
    ) -> Auth<'a> {
        Auth {
            params,
            password,
            channel,
            scram: None,
            finished: false,
        }
    }

    /// Answers one request: the message to send, or `None` when there is nothing to send
    /// (AuthenticationOk, which ends the exchange, and SASLFinal). `Err` is the reason to give
    /// up; nothing is sent for that request.
    pub fn answer(&mut self, req: AuthRequest) -> Result<Option<BytesMut>, String> {
        self.check_allowed(&req)?;
        let mut out = BytesMut::new();
        match req {
            AuthRequest::Ok => return self.check_ok().map(|()| None),
            AuthRequest::Cleartext => {
                let pw = self.password()?;
                frontend::password_message(pw.as_bytes(), &mut out).map_err(io)?;
                self.finished = true;
            }
            AuthRequest::Md5(salt) => {
                let pw = self.password()?;
                let hash = md5_hash(self.params.user.as_bytes(), pw.as_bytes(), salt);
                frontend::password_message(hash.as_bytes(), &mut out).map_err(io)?;
                self.finished = true;
            }
            AuthRequest::Sasl(mechanisms) => {
                let (mechanism, binding, plus) = self.choose_mechanism(&mechanisms)?;
                let pw = self.password()?;
                let exchange = ScramSha256::new(pw.as_bytes(), binding);
                frontend::sasl_initial_response(mechanism, exchange.message(), &mut out)
                    .map_err(io)?;
                self.scram = Some(Scram {
                    exchange,
                    plus,
                    verified: false,
                });
            }
            AuthRequest::SaslContinue(data) => {
                let s = self.scram_in_progress()?;
                s.exchange
                    .update(&data)
                    .map_err(|e| format!("SCRAM authentication failed: {}", printable_io(&e)))?;
                frontend::sasl_response(s.exchange.message(), &mut out).map_err(io)?;
            }
            AuthRequest::SaslFinal(data) => {
                let s = self.scram_in_progress()?;
                s.exchange.finish(&data).map_err(|e| {
                    format!(
                        "the server's SCRAM signature does not verify ({}): not the real server?",
                        printable_io(&e)
                    )
                })?;
                s.verified = true;
                self.finished = true;
                return Ok(None);
            }
            AuthRequest::Unsupported(name) => {
                return Err(format!(
                    "the server asks for {name} authentication, which pglock does not support (use scram-sha-256, md5 or password)"
                ))
            }
        }
        Ok(Some(out))
    }

    /// `require_auth` and `channel_binding=require`, checked before anything is answered.
    fn check_allowed(&self, req: &AuthRequest) -> Result<(), String> {
        let method = match req {
            AuthRequest::Cleartext => Some((AuthMethod::Password, "a cleartext password")),
            AuthRequest::Md5(_) => Some((AuthMethod::Md5, "a hashed (MD5) password")),
            AuthRequest::Sasl(_) => Some((AuthMethod::ScramSha256, "SASL (SCRAM-SHA-256)")),
            AuthRequest::Unsupported("GSSAPI") => Some((AuthMethod::Gss, "GSSAPI")),
            AuthRequest::Unsupported("SSPI") => Some((AuthMethod::Sspi, "SSPI")),
            _ => None,
        };
        if let Some((m, what)) = method {
            if !self.params.require_auth.allows(m) {
                return Err(format!(
                    "require_auth={} refused the server's request: the server asked for {what}; nothing was sent",
                    describe(&self.params.require_auth)
                ));
            }
        }
        let cb_required = self.params.channel_binding == ChannelBinding::Require;
        let sasl = matches!(
            req,
            AuthRequest::Sasl(_) | AuthRequest::SaslContinue(_) | AuthRequest::SaslFinal(_)
        );
        if cb_required && !sasl && !matches!(req, AuthRequest::Ok) {
            return Err("channel binding is required (channel_binding=require), but the server's authentication request does not support it; nothing was sent".into());
        }
        Ok(())
    }

    /// AuthenticationOk: the exchange must have gone as far as the settings require.
    fn check_ok(&self) -> Result<(), String> {
        if let Some(s) = &self.scram {
            if !s.verified {
                return Err("the server did not complete SCRAM authentication (it accepted the client without proving it knows the password): not the real server?".into());
            }
        }
        if self.params.channel_binding == ChannelBinding::Require
            && !self.scram.as_ref().is_some_and(|s| s.plus && s.verified)
        {
            return Err("channel binding is required (channel_binding=require), but the server authenticated the client without channel binding".into());
        }
        if !self.params.require_auth.allows(AuthMethod::None) && !self.finished {
            return Err(format!(
                "require_auth={}: the server did not complete authentication (it let the client in without asking for a password)",
                describe(&self.params.require_auth)
            ));
        }
        Ok(())
    }

    /// libpq's choice: SCRAM-SHA-256-PLUS over TLS unless channel_binding=disable, else
    /// SCRAM-SHA-256 with the GS2 flag that tells the server whether the client could bind.
    fn choose_mechanism(
        &self,
        offered: &[String],
    ) -> Result<(&'static str, sasl::ChannelBinding, bool), String> {
        let has = |m: &str| offered.iter().any(|o| o == m);
        let cb = self.params.channel_binding;
        match &self.channel {
            Channel::Plain if has(sasl::SCRAM_SHA_256_PLUS) => {
                return Err("the server offers SCRAM-SHA-256-PLUS over a connection without TLS, which no real server does (a man in the middle?)".into());
            }
            Channel::Plain if cb == ChannelBinding::Require => {
                return Err("channel binding is required (channel_binding=require), but the connection does not use TLS; nothing was sent".into());
            }
            Channel::Tls(Some(end_point))
                if cb != ChannelBinding::Disable && has(sasl::SCRAM_SHA_256_PLUS) =>
            {
                return Ok((
                    sasl::SCRAM_SHA_256_PLUS,
                    sasl::ChannelBinding::tls_server_end_point(end_point.clone()),
                    true,
                ));
            }
            _ => {}
        }
        if cb == ChannelBinding::Require {
            return Err(if has(sasl::SCRAM_SHA_256_PLUS) {
                "channel binding is required (channel_binding=require), but the server's certificate uses a signature algorithm without a hash for tls-server-end-point".into()
            } else {
                "channel binding is required (channel_binding=require), but the server does not offer SCRAM-SHA-256-PLUS".into()
            });
        }
        if !has(sasl::SCRAM_SHA_256) {
            return Err(format!(
                "the server offers no SASL mechanism pglock supports ({}; pglock has SCRAM-SHA-256)",
                offered
                    .iter()
                    .map(|m| super::wire::printable(m))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // 'y': the client could bind but the server did not offer it (over TLS, unless
        // disabled), so a server that does support it can detect a downgrade; 'n' otherwise.
        let binding = match (&self.channel, cb) {
            (Channel::Tls(Some(_)), ChannelBinding::Prefer) => sasl::ChannelBinding::unrequested(),
            _ => sasl::ChannelBinding::unsupported(),
        };
        Ok((sasl::SCRAM_SHA_256, binding, false))
    }

    fn password(&self) -> Result<String, String> {
        (self.password)().ok_or_else(|| {
            "the server asks for a password and none is set (PGPASSWORD, ~/.pgpass or the connection string)".into()
        })
    }

    fn scram_in_progress(&mut self) -> Result<&mut Scram, String> {
        match &mut self.scram {
            Some(s) if !s.verified => Ok(s),
            _ => Err("protocol violation: a SASL message outside a SASL exchange".into()),
        }
    }
}

fn io(e: std::io::Error) -> String {
    format!("cannot encode the answer: {e}")
}

fn printable_io(e: &std::io::Error) -> String {
    super::wire::printable(&e.to_string())
}

/// `require_auth` as the user wrote it.
fn describe(r: &RequireAuth) -> String {
    r.methods
        .iter()
        .map(|m| {
            let name = match m {
                AuthMethod::None => "none",
                AuthMethod::Password => "password",
                AuthMethod::Md5 => "md5",
                AuthMethod::Gss => "gss",
                AuthMethod::Sspi => "sspi",
                AuthMethod::ScramSha256 => "scram-sha-256",
            };
            if r.negated {
                format!("!{name}")
            } else {
                name.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> ConnParams {
        ConnParams::resolve_with(Some(s), &|k| (k == "PGUSER").then(|| "u".to_string())).unwrap()
    }

    fn pw() -> Option<String> {
        Some("secret".into())
    }

    #[test]
    fn require_auth_refuses_a_cleartext_request_without_sending() {
        let mut p = params("host=h");
        p.require_auth = RequireAuth {
            negated: false,
            methods: vec![AuthMethod::ScramSha256],
        };
        let mut a = Auth::new(&p, &pw, Channel::Plain);
        let e = a.answer(AuthRequest::Cleartext).unwrap_err();
        assert!(e.contains("require_auth=scram-sha-256"), "{e}");
        let e = a.answer(AuthRequest::Md5([1, 2, 3, 4])).unwrap_err();
        assert!(e.contains("MD5"), "{e}");
        let e = a.answer(AuthRequest::Ok).unwrap_err();
        assert!(e.contains("did not complete"), "{e}");
    }

    #[test]
    fn channel_binding_require_needs_tls_and_plus() {
        let mut p = params("host=h");
        p.channel_binding = ChannelBinding::Require;
        let mut a = Auth::new(&p, &pw, Channel::Plain);
        assert!(a.answer(AuthRequest::Cleartext).is_err());
        let e = a
            .answer(AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()]))
            .unwrap_err();
        assert!(e.contains("does not use TLS"), "{e}");
        let e = a.answer(AuthRequest::Ok).unwrap_err();
        assert!(e.contains("without channel binding"), "{e}");
        let mut a = Auth::new(&p, &pw, Channel::Tls(Some(vec![1; 32])));
        let first = a
            .answer(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256".into(),
                "SCRAM-SHA-256-PLUS".into(),
            ]))
            .unwrap()
            .unwrap();
        assert!(first.windows(18).any(|w| w == b"SCRAM-SHA-256-PLUS"));
        assert!(first.windows(24).any(|w| w == b"p=tls-server-end-point,,"));
    }

    #[test]
    fn ok_in_the_middle_of_scram_is_refused() {
        let p = params("host=h");
        let mut a = Auth::new(&p, &pw, Channel::Plain);
        a.answer(AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()]))
            .unwrap();
        let e = a.answer(AuthRequest::Ok).unwrap_err();
        assert!(e.contains("did not complete SCRAM"), "{e}");
    }

    #[test]
    fn plus_offered_without_tls_is_refused() {
        let p = params("host=h");
        let mut a = Auth::new(&p, &pw, Channel::Plain);
        let e = a
            .answer(AuthRequest::Sasl(vec!["SCRAM-SHA-256-PLUS".into()]))
            .unwrap_err();
        assert!(e.contains("man in the middle"), "{e}");
    }

    #[test]
    fn a_huge_iteration_count_is_refused_at_once() {
        let p = params("host=h");
        let mut a = Auth::new(&p, &pw, Channel::Plain);
        let first = a
            .answer(AuthRequest::Sasl(vec!["SCRAM-SHA-256".into()]))
            .unwrap()
            .unwrap();
        // The client nonce follows "r=" in the client-first-message.
        let text = String::from_utf8_lossy(&first).into_owned();
        let nonce = text.split("r=").nth(1).unwrap().trim_end_matches('\0');
        let t = std::time::Instant::now();
        let e = a
            .answer(AuthRequest::SaslContinue(
                format!("r={nonce}x,s=QSXCR+Q6sek8bf92,i=4294967295").into_bytes(),
            ))
            .unwrap_err();
        assert!(e.contains("iteration"), "{e}");
        assert!(t.elapsed().as_millis() < 100);
    }
}

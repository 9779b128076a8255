//! Framing of what the server sends: whole messages cut out of the bytes read so far, parsed by
//! postgres-protocol, with a cap on the size of any one message. This is the trust boundary's
//! first step: a bad length, an unknown tag or a body that does not parse is a protocol
//! violation, and a message longer than the cap is refused from its header, before its body is
//! buffered, so memory stays bounded whatever the peer declares.

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{ErrorFields, Header, Message};

/// The largest message pglock accepts. Its own queries return rows of a few hundred bytes and
/// errors of a few KiB; 64 KiB leaves room for a long DETAIL.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// The largest authentication request, as libpq (2000 bytes).
pub const MAX_AUTH_REQUEST: usize = 2000;

/// What was read from the server and not yet consumed.
pub struct Inbox {
    buf: BytesMut,
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox {
            buf: BytesMut::with_capacity(8192),
        }
    }

    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Nothing is buffered, not even part of a message.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// A whole message (or a header that is already a violation) is buffered: poll would not
    /// report it, since it is no longer on the socket.
    pub fn has_message(&self) -> bool {
        match Header::parse(&self.buf) {
            Ok(Some(h)) => {
                let total = total_len(h);
                total > limit(h.tag()) || self.buf.len() >= total
            }
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// The next whole message, `Ok(None)` until one has arrived. `Err` is a protocol violation;
    /// the connection cannot be used after it.
    pub fn next(&mut self) -> Result<Option<Backend>, String> {
        match self.next_raw()? {
            Some(m) => Backend::from_message(m).map(Some),
            None => Ok(None),
        }
    }

    fn next_raw(&mut self) -> Result<Option<Message>, String> {
        let Some(header) = Header::parse(&self.buf).map_err(|e| violation(&e))? else {
            return Ok(None);
        };
        let (total, limit) = (total_len(header), limit(header.tag()));
        if total > limit {
            return Err(format!(
                "protocol violation: the server sent a {} message of {total} bytes (pglock accepts at most {limit})",
                tag_name(header.tag())
            ));
        }
        if self.buf.len() < total {
            return Ok(None);
        }
        match Message::parse(&mut self.buf) {
            Ok(Some(m)) => Ok(Some(m)),
            Ok(None) => Err("protocol violation: a whole message did not parse".into()),
            Err(e) => Err(violation(&e)),
        }
    }
}

/// The size of the whole message a header announces (Header::parse refuses lengths below 4,
/// so negative ones too).
fn total_len(h: Header) -> usize {
    usize::try_from(h.len())
        .unwrap_or(usize::MAX)
        .saturating_add(1)
}

/// The cap for a message with this tag.
fn limit(tag: u8) -> usize {
    match tag {
        b'R' => MAX_AUTH_REQUEST,
        _ => MAX_MESSAGE,
    }
}

fn violation(e: &std::io::Error) -> String {
    format!("protocol violation: {}", printable(&e.to_string()))
}

/// Text from the server, safe to print: the one function for it, in log.rs.
pub use crate::log::printable;

/// An authentication request.
#[derive(Debug)]
pub enum AuthRequest {
    Ok,
    Cleartext,
    Md5([u8; 4]),
    /// SASL, with the mechanisms the server offers.
    Sasl(Vec<String>),
    SaslContinue(Vec<u8>),
    SaslFinal(Vec<u8>),
    /// A method pglock does not implement, by name.
    Unsupported(&'static str),
}

/// Where the session stands, as each ReadyForQuery says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    /// In a transaction that failed: only ROLLBACK (or COMMIT, which rolls back) ends it.
    Failed,
}

/// A message from the server, typed and checked: the rest of pglock never sees bytes.
#[derive(Debug)]
pub enum Backend {
    Auth(AuthRequest),
    KeyData {
        pid: i32,
        secret: i32,
    },
    Parameter {
        name: String,
        value: String,
    },
    /// ReadyForQuery with the transaction status.
    Ready(TxStatus),
    RowDescription,
    Row(Vec<Option<String>>),
    /// CommandComplete, EmptyQueryResponse.
    Complete,
    Error(ServerError),
    Notice,
    Notification,
    /// A valid message that pglock never asks for (the extended protocol's, COPY's).
    Unexpected(&'static str),
}

impl Backend {
    fn from_message(m: Message) -> Result<Backend, String> {
        let bad = |e: std::io::Error| violation(&e);
        Ok(match m {
            Message::AuthenticationOk => Backend::Auth(AuthRequest::Ok),
            Message::AuthenticationCleartextPassword => Backend::Auth(AuthRequest::Cleartext),
            Message::AuthenticationMd5Password(b) => Backend::Auth(AuthRequest::Md5(b.salt())),
            Message::AuthenticationSasl(b) => {
                let mechs: Vec<String> = b
                    .mechanisms()
                    .map(|m| Ok(m.to_string()))
                    .collect()
                    .map_err(bad)?;
                Backend::Auth(AuthRequest::Sasl(mechs))
            }
            Message::AuthenticationSaslContinue(b) => {
                Backend::Auth(AuthRequest::SaslContinue(b.data().to_vec()))
            }
            Message::AuthenticationSaslFinal(b) => {
                Backend::Auth(AuthRequest::SaslFinal(b.data().to_vec()))
            }
            Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                Backend::Auth(AuthRequest::Unsupported("GSSAPI"))
            }
            Message::AuthenticationSspi => Backend::Auth(AuthRequest::Unsupported("SSPI")),
            Message::AuthenticationKerberosV5 => {
                Backend::Auth(AuthRequest::Unsupported("Kerberos V5"))
            }
            Message::AuthenticationScmCredential => {
                Backend::Auth(AuthRequest::Unsupported("SCM credential"))
            }
            Message::BackendKeyData(b) => Backend::KeyData {
                pid: b.process_id(),
                secret: b.secret_key(),
            },
            Message::ParameterStatus(b) => Backend::Parameter {
                name: b.name().map_err(bad)?.to_string(),
                value: b.value().map_err(bad)?.to_string(),
            },
            Message::ReadyForQuery(b) => match b.status() {
                b'I' => Backend::Ready(TxStatus::Idle),
                b'T' => Backend::Ready(TxStatus::InTransaction),
                b'E' => Backend::Ready(TxStatus::Failed),
                s => {
                    return Err(format!(
                        "protocol violation: transaction status {}",
                        tag_name(s)
                    ))
                }
            },
            Message::RowDescription(b) => {
                // Checked for well-formedness; pglock reads its own queries' columns by position.
                b.fields().count().map_err(bad)?;
                Backend::RowDescription
            }
            Message::DataRow(b) => {
                let buf = b.buffer();
                let row = b
                    .ranges()
                    .map(|r| {
                        Ok(r.and_then(|r| buf.get(r))
                            .map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                    .collect()
                    .map_err(bad)?;
                Backend::Row(row)
            }
            Message::CommandComplete(_) | Message::EmptyQueryResponse => Backend::Complete,
            Message::ErrorResponse(b) => {
                Backend::Error(ServerError::from_fields(b.fields()).map_err(bad)?)
            }
            Message::NoticeResponse(b) => {
                ServerError::from_fields(b.fields()).map_err(bad)?;
                Backend::Notice
            }
            Message::NotificationResponse(b) => {
                b.channel().map_err(bad)?;
                Backend::Notification
            }
            Message::CopyInResponse(_)
            | Message::CopyOutResponse(_)
            | Message::CopyData(_)
            | Message::CopyDone => Backend::Unexpected("COPY"),
            _ => Backend::Unexpected("extended-protocol"),
        })
    }
}

/// An error or notice sent by the server, its text made printable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    fn from_fields(mut fields: ErrorFields<'_>) -> std::io::Result<ServerError> {
        let mut e = ServerError::default();
        while let Some(f) = fields.next()? {
            let v = printable(&String::from_utf8_lossy(f.value_bytes()));
            match f.type_() {
                b'V' => e.severity = v,
                b'S' if e.severity.is_empty() => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
        Ok(e)
    }

    /// FATAL or PANIC: the server ends the session.
    pub fn is_fatal(&self) -> bool {
        self.severity == "FATAL" || self.severity == "PANIC"
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " ({d})")?;
        }
        Ok(())
    }
}

/// A message tag for messages: the letter, or its code when it is not a printable letter.
pub fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        format!("0x{tag:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn drain(bytes: &[u8], chunk: usize) -> Result<usize, String> {
        let mut inbox = Inbox::new();
        let mut n = 0;
        for part in bytes.chunks(chunk.max(1)) {
            inbox.extend(part);
            while let Some(_m) = inbox.next()? {
                n += 1;
            }
        }
        Ok(n)
    }

    #[test]
    fn whole_messages_in_any_chunks() {
        let mut s = msg(b'Z', b"I");
        s.extend(msg(b'C', b"SELECT 1\0"));
        s.extend(msg(b'Z', b"T"));
        for chunk in 1..s.len() {
            assert_eq!(drain(&s, chunk), Ok(3));
        }
    }

    #[test]
    fn bad_lengths_are_violations() {
        for len in [-1i32, 0, 1, 2, 3, i32::MIN] {
            let mut b = vec![b'Z'];
            b.extend_from_slice(&len.to_be_bytes());
            let e = drain(&b, 64).unwrap_err();
            assert!(e.starts_with("protocol violation"), "{e}");
        }
    }

    #[test]
    fn a_huge_declared_length_is_refused_from_the_header() {
        let mut inbox = Inbox::new();
        let mut b = vec![b'D'];
        b.extend_from_slice(&i32::MAX.to_be_bytes());
        inbox.extend(&b);
        assert!(inbox.has_message());
        let e = inbox.next().err().unwrap();
        assert!(e.contains("at most 65536"), "{e}");
        // An authentication request has libpq's smaller cap.
        let mut inbox = Inbox::new();
        inbox.extend(&msg(b'R', &[0u8; 2100]));
        assert!(inbox.next().is_err());
    }

    #[test]
    fn a_data_row_shorter_than_it_announces_is_a_violation() {
        // Two columns announced, one present.
        let mut body = 2u16.to_be_bytes().to_vec();
        body.extend_from_slice(&1i32.to_be_bytes());
        body.push(b't');
        assert!(drain(&msg(b'D', &body), 64).is_err());
        // A column longer than the body.
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&100i32.to_be_bytes());
        body.push(b't');
        assert!(drain(&msg(b'D', &body), 64).is_err());
        // The real thing.
        let mut body = 2u16.to_be_bytes().to_vec();
        body.extend_from_slice(&1i32.to_be_bytes());
        body.push(b't');
        body.extend_from_slice(&(-1i32).to_be_bytes());
        let mut inbox = Inbox::new();
        inbox.extend(&msg(b'D', &body));
        match inbox.next() {
            Ok(Some(Backend::Row(r))) => assert_eq!(r, vec![Some("t".into()), None]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_text_is_made_printable() {
        let body = b"SERROR\0C42000\0Mbad\x1b[31m red\r\nline\0\0";
        let mut inbox = Inbox::new();
        inbox.extend(&msg(b'E', body));
        match inbox.next() {
            Ok(Some(Backend::Error(e))) => {
                assert_eq!(e.message, "bad [31m red  line");
                assert_eq!(e.code, "42000");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_tags_are_violations() {
        assert!(drain(&msg(b'!', b""), 8).is_err());
        assert!(drain(&msg(0, b""), 8).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any bytes at all, cut anywhere: no panic, and every accepted message within the cap.
        #[test]
        fn random_streams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), chunk in 1usize..64) {
            let _ = drain(&bytes, chunk);
        }

        /// Plausible headers with random bodies: the tags pglock reads, lengths near the body's.
        #[test]
        fn random_bodies_never_panic(
            tag in prop::sample::select(b"RKSZTDCENAIsn123cdGHtv".to_vec()),
            body in proptest::collection::vec(any::<u8>(), 0..300),
            skew in -6i32..6,
        ) {
            let mut b = vec![tag];
            b.extend_from_slice(&(body.len() as i32 + 4 + skew).to_be_bytes());
            b.extend_from_slice(&body);
            b.extend(msg(b'Z', b"I"));
            let mut inbox = Inbox::new();
            inbox.extend(&b);
            while let Ok(Some(_m)) = inbox.next() {}
        }
    }
}

//! The answers of protocol.md's "Errors and closes" table: HTTP refusals
//! before the 101 and WebSocket close codes after it.

use hyper::StatusCode;

/// Frame-level protocol error (RSV bits, unmasked frame, bad opcode,
/// fragmented or oversized control frame).
pub const PROTOCOL_ERROR: u16 = 1002;
/// Text frame: binary only.
pub const UNSUPPORTED_DATA: u16 = 1003;
/// Undecodable message.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Protocol order violated (not Hello first, second Hello, no Hello in time).
pub const POLICY_VIOLATION: u16 = 1008;
/// Message over `max_message_bytes`.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// Server going away (shutdown); the reason carries a reconnect delay in ms.
pub const GOING_AWAY: u16 = 1001;
/// Normal close.
pub const NORMAL: u16 = 1000;
/// The session's JWT expired: reconnect with a fresh token.
pub const TOKEN_EXPIRED: u16 = 4001;
/// A Refresh was refused: reconnect with a fresh token.
pub const TOKEN_REFUSED: u16 = 4003;

/// Why a handshake was refused before the 101.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Plain GET on the stream path, no upgrade.
    UpgradeRequired,
    /// Bad or missing WebSocket headers.
    BadRequest(&'static str),
    /// The client offered subprotocols, none of them ours.
    NoSubprotocol,
    /// Origin not in `allowed_origins` (nor the Host's own).
    Origin,
    /// No token where one is required, or a token refused (the reason
    /// goes to the audit log, not to the peer).
    Unauthorized {
        /// A token was sent (and refused).
        presented: bool,
    },
    /// At `max_connections`.
    Full,
    /// Draining for shutdown.
    Draining,
    /// Over `handshake_rate`.
    RateLimited,
    /// Over `max_connections_per_ip`.
    PerIp,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Refusal::BadRequest(_) | Refusal::NoSubprotocol => StatusCode::BAD_REQUEST,
            Refusal::Origin => StatusCode::FORBIDDEN,
            Refusal::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Refusal::Full | Refusal::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::RateLimited | Refusal::PerIp => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Seconds for `Retry-After`, where the spec wants one.
    pub fn retry_after(self) -> Option<u32> {
        match self {
            Refusal::Full | Refusal::Draining => Some(5),
            Refusal::RateLimited | Refusal::PerIp => Some(1),
            _ => None,
        }
    }

    /// `WWW-Authenticate` for a 401 (RFC 6750).
    pub fn www_authenticate(self) -> Option<&'static str> {
        match self {
            Refusal::Unauthorized { presented: false } => Some("Bearer realm=\"tagstream\""),
            Refusal::Unauthorized { presented: true } => {
                Some("Bearer realm=\"tagstream\", error=\"invalid_token\"")
            }
            _ => None,
        }
    }

    /// The body: one line saying why.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UpgradeRequired => {
                "this path speaks WebSocket only: send an Upgrade: websocket request\n"
            }
            Refusal::BadRequest(why) => why,
            Refusal::NoSubprotocol => "offered subprotocols do not include tagstream.v1\n",
            Refusal::Origin => "origin not allowed\n",
            Refusal::Unauthorized { presented: false } => "a token is required\n",
            Refusal::Unauthorized { presented: true } => "token refused\n",
            Refusal::Full => "server at max_connections; retry later\n",
            Refusal::Draining => "server draining; retry later\n",
            Refusal::RateLimited => "handshake rate over the limit; retry later\n",
            Refusal::PerIp => "too many connections from this address\n",
        }
    }
}

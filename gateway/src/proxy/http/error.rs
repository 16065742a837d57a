//! Why an HTTP exchange stopped: the stage it was in and the cause. The
//! answer the client gets (if it can still get one) and the log line both
//! come from here.

use std::fmt;

use super::{body::BodyError, conn::ReadError, head::HeadError};
use crate::net::ConnectError;

/// The stages of one exchange, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading and checking the request head.
    RequestHead,
    /// Reading the request body from the client.
    RequestBody,
    /// Connecting to the original destination.
    Connect,
    /// Sending the request to the server.
    Request,
    /// Reading the server's answer head.
    ResponseHead,
    /// Reading the server's body.
    ResponseBody,
    /// Sending to the client.
    Delivery,
    /// Relaying an upgraded connection.
    Tunnel,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::RequestHead => "request head",
            Stage::RequestBody => "request body",
            Stage::Connect => "connecting to the server",
            Stage::Request => "sending the request",
            Stage::ResponseHead => "the server's answer",
            Stage::ResponseBody => "the server's body",
            Stage::Delivery => "delivery to the client",
            Stage::Tunnel => "upgraded connection",
        })
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// Reading a head failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A head that does not parse or frames ambiguously.
    #[error(transparent)]
    Head(#[from] HeadError),
    /// A body that does not frame or ended early.
    #[error(transparent)]
    Body(#[from] BodyError),
    /// The server could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The peer closed the connection where a message was due.
    #[error("the peer closed the connection")]
    Closed,
    /// Refused by the gateway's policy (CONNECT, an unasked upgrade).
    #[error("{why}")]
    Policy {
        /// The status to answer with.
        status: u16,
        /// One sentence.
        why: String,
    },
}

/// An exchange that cannot go on.
#[derive(Debug, thiserror::Error)]
#[error("{stage}: {cause}")]
pub struct HttpError {
    /// Where.
    pub stage: Stage,
    /// Why.
    pub cause: Cause,
}

impl HttpError {
    /// An error at `stage`.
    pub fn at(stage: Stage, cause: impl Into<Cause>) -> HttpError {
        HttpError { stage, cause: cause.into() }
    }

    /// The status to answer the client with, if it can still be answered
    /// (not when the client itself is what failed).
    pub fn status(&self) -> Option<u16> {
        use Stage::*;
        match (&self.stage, &self.cause) {
            (_, Cause::Policy { status, .. }) => Some(*status),
            (RequestHead, Cause::Read(ReadError::TooLarge(_)) | Cause::Head(HeadError::TooLarge(_))) => Some(431),
            (RequestHead, Cause::Read(ReadError::Timeout)) => Some(408),
            (RequestHead, Cause::Read(ReadError::BareLf) | Cause::Head(_)) => Some(400),
            (RequestBody, Cause::Body(BodyError::Invalid(_)) | Cause::Head(_)) => Some(400),
            (RequestBody, Cause::Body(BodyError::Timeout)) => Some(408),
            (RequestHead | RequestBody | Delivery | Tunnel, _) => None,
            (Connect, Cause::Connect(ConnectError::Denied(_))) => Some(403),
            (Connect, Cause::Connect(ConnectError::NoSourcePort { .. })) => Some(503),
            (Connect | ResponseHead | ResponseBody, Cause::Connect(ConnectError::Timeout(_))) => Some(504),
            (ResponseHead, Cause::Read(ReadError::Timeout)) | (ResponseBody, Cause::Body(BodyError::Timeout)) => {
                Some(504)
            }
            (Connect | Request | ResponseHead | ResponseBody, _) => Some(502),
        }
    }

    /// Whether the client's side failed (it left, or sent nothing usable
    /// in time): nothing more can be said to it.
    pub fn client_gone(&self) -> bool {
        self.status().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_stage_and_cause() {
        let e = |stage, cause: Cause| HttpError::at(stage, cause).status();
        assert_eq!(e(Stage::RequestHead, ReadError::TooLarge(10).into()), Some(431));
        assert_eq!(e(Stage::RequestHead, ReadError::Timeout.into()), Some(408));
        assert_eq!(e(Stage::RequestHead, HeadError::Framing("x".into()).into()), Some(400));
        assert_eq!(e(Stage::RequestHead, Cause::Closed), None);
        assert_eq!(e(Stage::ResponseHead, ReadError::Timeout.into()), Some(504));
        assert_eq!(e(Stage::ResponseHead, Cause::Closed), Some(502));
        assert_eq!(e(Stage::ResponseBody, BodyError::Short(3).into()), Some(502));
        assert_eq!(e(Stage::Connect, ConnectError::Denied("192.0.2.1:80".parse().unwrap()).into()), Some(403));
        assert_eq!(e(Stage::Delivery, Cause::Closed), None);
        assert_eq!(e(Stage::RequestHead, Cause::Policy { status: 405, why: "no".into() }), Some(405));
    }
}

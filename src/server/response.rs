//! Response builders, and the refusals every listener shares.
//!
//! Errors are typed: each protocol has an enum of its refusals whose `Display` is the
//! message, and [`JsonError`] maps each variant to its status and JSON `Code`, so a status
//! table in a module doc reads straight off one `match`. Error bodies are
//! `{"Code","Message"}` JSON; IMDS answers in `text/plain` (see `imds`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};

/// The body type of every response.
pub type Body = Full<Bytes>;

/// `status` with a JSON body.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Body> {
    with_content_type(status, body, "application/json")
}

/// `status` with a `text/plain` body.
pub fn text_response(status: StatusCode, body: &str) -> Response<Body> {
    with_content_type(
        status,
        Bytes::copy_from_slice(body.as_bytes()),
        "text/plain",
    )
}

/// `status` with `body` of type `content_type`.
pub fn with_content_type(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A JSON error body `{"Code","Message"}` with `status`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "Code": code, "Message": message }).to_string();
    json_response(status, Bytes::from(body))
}

/// A refusal answered with a JSON error body: its `Display` is the `Message`.
pub trait JsonError: std::fmt::Display {
    /// The HTTP status.
    fn status(&self) -> StatusCode;
    /// The `Code` of the body (`AccessDenied`, `NotFound`, ...).
    fn code(&self) -> &'static str;
    /// A header the status calls for (`Allow` with a 405, `Retry-After` with a 429).
    fn header(&self) -> Option<(HeaderName, &'static str)> {
        None
    }
    /// The whole response.
    fn response(&self) -> Response<Body> {
        let mut resp = error_response(self.status(), self.code(), &self.to_string());
        if let Some((name, value)) = self.header() {
            resp.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        resp
    }
}

/// Refusals any listener may give before (or instead of) its protocol's own answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A `Host` that failed the DNS-rebinding check (`http::host_allowed`): 403.
    #[error("the Host header must be an IP address, localhost or a name in allowed_hosts")]
    InvalidHost,
    /// A peer outside the listener's `allowed_sources`: 403.
    #[error("this listener does not serve clients from this network (allowed_sources)")]
    SourceNotAllowed,
    /// A peer over its per-peer rate: 429 with `Retry-After: 1`.
    #[error("this client exceeded the per-peer request rate; slow down")]
    TooManyRequests,
    /// An ambiguous request head (`http::ambiguous_head`), saying why: 400.
    #[error("{0}")]
    AmbiguousHead(&'static str),
    /// A method the path does not take, naming the one it does: 405 with `Allow`.
    #[error("only {0} is allowed here")]
    MethodNotAllowed(&'static str),
    /// A request body where none is accepted: 400.
    #[error("requests to this path must not carry a body")]
    BodyNotAllowed,
    /// Any path the listener does not serve: 404.
    #[error("no such path")]
    NotFound,
}

impl JsonError for Refused {
    fn status(&self) -> StatusCode {
        match self {
            Refused::InvalidHost | Refused::SourceNotAllowed => StatusCode::FORBIDDEN,
            Refused::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Refused::AmbiguousHead(_) | Refused::BodyNotAllowed => StatusCode::BAD_REQUEST,
            Refused::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Refused::NotFound => StatusCode::NOT_FOUND,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refused::InvalidHost => "InvalidHost",
            Refused::SourceNotAllowed => "SourceNotAllowed",
            Refused::TooManyRequests => "TooManyRequests",
            Refused::AmbiguousHead(_) => "BadRequest",
            Refused::MethodNotAllowed(_) => "MethodNotAllowed",
            Refused::BodyNotAllowed => "BodyNotAllowed",
            Refused::NotFound => "NotFound",
        }
    }

    fn header(&self) -> Option<(HeaderName, &'static str)> {
        match self {
            Refused::MethodNotAllowed(allow) => Some((ALLOW, allow)),
            Refused::TooManyRequests => Some((RETRY_AFTER, "1")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(resp: Response<Body>) -> serde_json::Value {
        let bytes = futures_util::FutureExt::now_or_never(resp.into_body().collect())
            .expect("a full body is ready")
            .expect("infallible")
            .to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn shared_refusals_keep_their_status_code_message_and_headers() {
        let cases = [
            (Refused::InvalidHost, 403, "InvalidHost"),
            (Refused::SourceNotAllowed, 403, "SourceNotAllowed"),
            (Refused::TooManyRequests, 429, "TooManyRequests"),
            (Refused::AmbiguousHead("why"), 400, "BadRequest"),
            (Refused::MethodNotAllowed("GET"), 405, "MethodNotAllowed"),
            (Refused::BodyNotAllowed, 400, "BodyNotAllowed"),
            (Refused::NotFound, 404, "NotFound"),
        ];
        for (refused, status, code) in cases {
            let resp = refused.response();
            assert_eq!(resp.status().as_u16(), status, "{refused:?}");
            assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
            let allow = resp.headers().get(ALLOW).cloned();
            let retry = resp.headers().get(RETRY_AFTER).cloned();
            let json = body(resp);
            assert_eq!(json["Code"], code);
            assert_eq!(json["Message"], refused.to_string());
            assert_eq!(
                allow.is_some(),
                matches!(refused, Refused::MethodNotAllowed(_))
            );
            assert_eq!(retry.is_some(), refused == Refused::TooManyRequests);
        }
        assert_eq!(
            Refused::MethodNotAllowed("PUT").to_string(),
            "only PUT is allowed here"
        );
    }
}

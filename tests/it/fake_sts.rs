//! A fault-injecting, recording fake of the AWS STS Query API for the
//! integration tests.
//!
//! [`FakeSts::start`] binds an HTTP/1.1 server on `127.0.0.1:0` that answers
//! the form-encoded `POST /` requests `aws-sdk-sts` sends (`Action=AssumeRole&
//! Version=2011-06-15&...`) with the XML the real service returns. Every
//! request is recorded (action, form parameters, SigV4 access key, security
//! token) and the answer is chosen by the current [`Scenario`], so tests can
//! make STS throttle, fail, deny, send garbage, cut the body short, reset the
//! connection or hang.
//!
//! Every successful credential-issuing answer hands out fresh credentials:
//! `AccessKeyId` = `ASIAFAKE` + a 12-digit counter, `SecretAccessKey` =
//! `fake-secret-{n}{marker}`, `SessionToken` = `fake-token-{n}{marker}`.
//!
//! The server task (and every connection it serves) is aborted when the
//! [`FakeSts`] is dropped.
//!
//! Expirations are computed from `sts_broker::clock::now()`: on a paused runtime that follows
//! tokio's clock (`clock::follow_tokio_time()`), the fake and an in-process broker agree on
//! the simulated time; everywhere else it is the system clock.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// XML namespace of every STS response.
pub const STS_NS: &str = "https://sts.amazonaws.com/doc/2011-06-15/";
/// Account of the caller identity the fake reports (and of federated users).
pub const FAKE_ACCOUNT: &str = "123456789012";
/// ARN of the caller identity the fake reports.
pub const FAKE_CALLER_ARN: &str = "arn:aws:iam::123456789012:user/broker";

/// How the fake answers the requests that arrive after [`FakeSts::set_scenario`].
/// Everything but `Ok` applies to every action.
#[derive(Clone, Debug, PartialEq)]
pub enum Scenario {
    /// Normal success (unknown actions still get `400 InvalidAction`).
    Ok,
    /// `400` ErrorResponse, Type `Sender`, Code `Throttling`, Message `Rate exceeded`.
    Throttle,
    /// `500` ErrorResponse, Type `Receiver`, Code `InternalFailure`.
    ServerError,
    /// `503` ErrorResponse, Type `Receiver`, Code `ServiceUnavailable`.
    ServiceUnavailable,
    /// `403` ErrorResponse, Type `Sender`, Code `AccessDenied`, with the
    /// usual "User: ... is not authorized to perform: sts:AssumeRole on
    /// resource: <RoleArn>" message.
    AccessDenied,
    /// `200` with a body that is not XML (an unterminated element).
    MalformedXml,
    /// `200` whose `Content-Length` is that of the full success body, but only
    /// half the bytes are written before the connection is closed. The
    /// credentials in that body are issued (the counter advances) although
    /// the client never sees them whole.
    Truncated,
    /// The request is read, then the connection is closed without any
    /// response (with `SO_LINGER` 0, so the client sees a TCP reset).
    Reset,
    /// Never answer (the handler sleeps for an hour).
    Hang,
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The `Action` form parameter (empty if missing).
    pub action: String,
    /// All form parameters (for a request without a body, the query string).
    pub params: BTreeMap<String, String>,
    /// The `Authorization` header (SigV4), if any.
    pub authorization: Option<String>,
    /// The access key id out of `Credential=AKID/date/region/sts/aws4_request`.
    pub signed_with: Option<String>,
    /// The `X-Amz-Security-Token` header, if any.
    pub security_token: Option<String>,
}

impl RecordedRequest {
    /// The form parameter `k`, if it was sent.
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params.get(k).map(String::as_str)
    }
}

/// The fake STS server. Cheap to query from the test while requests run.
pub struct FakeSts {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

struct State {
    scenario: Scenario,
    delay: Duration,
    lifetime: Option<Duration>,
    marker: String,
    /// `(element, text)`: issued credentials carry `text` in `<element>`.
    field: Option<(String, String)>,
    issued: u64,
    requests: Vec<RecordedRequest>,
}

impl FakeSts {
    /// Binds `127.0.0.1:0` and starts serving in the background.
    pub async fn start() -> FakeSts {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake STS: bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("fake STS: local_addr");
        let state = Arc::new(Mutex::new(State {
            scenario: Scenario::Ok,
            delay: Duration::ZERO,
            lifetime: None,
            marker: String::new(),
            field: None,
            issued: 0,
            requests: Vec::new(),
        }));
        let task = tokio::spawn(accept_loop(listener, state.clone()));
        FakeSts { addr, state, task }
    }

    /// `http://127.0.0.1:PORT`, for `endpoint_url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets how requests that arrive from now on are answered.
    pub fn set_scenario(&self, s: Scenario) {
        self.lock().scenario = s;
    }

    /// Waits this long after receiving a request before answering (any
    /// scenario). Default 0.
    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Issued credentials expire at now + `d`. Default: the request's
    /// `DurationSeconds`, else 3600 s.
    pub fn set_lifetime(&self, d: Duration) {
        self.lock().lifetime = Some(d);
    }

    /// Appends `m` to every `SecretAccessKey` and `SessionToken` issued from
    /// now on. Default: nothing.
    pub fn set_secret_marker(&self, m: &str) {
        self.lock().marker = m.to_string();
    }

    /// Issued credentials carry `text` (escaped) as the content of `<element>`
    /// (`AccessKeyId`, `SecretAccessKey`, `SessionToken`, `Expiration`); `None` restores the
    /// normal answers.
    pub fn set_credential_field(&self, field: Option<(&str, &str)>) {
        self.lock().field = field.map(|(e, t)| (e.to_string(), t.to_string()));
    }

    /// Number of requests received so far, whatever the scenario (counted
    /// once the request body is read, before any delay).
    pub fn calls(&self) -> usize {
        self.lock().requests.len()
    }

    /// Number of requests received so far with `Action=action`.
    pub fn calls_for(&self, action: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.action == action)
            .count()
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// Polls every 20 ms until at least `n` requests were received; false if
    /// `timeout` passed first.
    pub async fn wait_for_calls(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.calls() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FakeSts {
    fn drop(&mut self) {
        // Dropping the accept loop drops its JoinSet, which aborts every
        // connection (including hanging ones).
        self.task.abort();
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                conns.spawn(serve_conn(stream, state.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve_conn(stream: TcpStream, state: Arc<Mutex<State>>) {
    let _ = stream.set_nodelay(true);
    // A second descriptor for the same socket: it lets `Reset` set
    // SO_LINGER 0, and since it outlives hyper's, the final close (and so the
    // RST) happens when this task ends.
    let (stream, twin) = match split_twin(stream) {
        Ok(pair) => pair,
        Err(_) => return,
    };
    let twin = Arc::new(twin);
    let service = service_fn(move |req| handle(req, state.clone(), twin.clone()));
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

fn split_twin(stream: TcpStream) -> std::io::Result<(TcpStream, TcpStream)> {
    let std_stream = stream.into_std()?;
    let twin = std_stream.try_clone()?;
    Ok((TcpStream::from_std(std_stream)?, TcpStream::from_std(twin)?))
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<Mutex<State>>,
    twin: Arc<TcpStream>,
) -> Result<Response<FakeBody>, BoxError> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authorization = header("authorization");
    let security_token = header("x-amz-security-token");
    let signed_with = authorization.as_deref().and_then(access_key_of);
    let query = req.uri().query().unwrap_or("").to_string();

    let body = req.into_body().collect().await?.to_bytes();
    let pairs: Vec<(String, String)> = if body.is_empty() {
        serde_urlencoded::from_str(&query).unwrap_or_default()
    } else {
        serde_urlencoded::from_bytes(&body).unwrap_or_default()
    };
    let params: BTreeMap<String, String> = pairs.into_iter().collect();
    let action = params.get("Action").cloned().unwrap_or_default();

    let (scenario, delay) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.requests.push(RecordedRequest {
            action: action.clone(),
            params: params.clone(),
            authorization,
            signed_with,
            security_token,
        });
        (st.scenario.clone(), st.delay)
    };

    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let role_arn = params.get("RoleArn").map(String::as_str).unwrap_or("");
    match scenario {
        Scenario::Ok => Ok(success(&action, &params, &state)),
        Scenario::Throttle => Ok(error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "Throttling",
            "Rate exceeded",
        )),
        Scenario::ServerError => Ok(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Receiver",
            "InternalFailure",
            "An internal error has occurred.",
        )),
        Scenario::ServiceUnavailable => Ok(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Receiver",
            "ServiceUnavailable",
            "Service is unable to handle request.",
        )),
        Scenario::AccessDenied => Ok(error(
            StatusCode::FORBIDDEN,
            "Sender",
            "AccessDenied",
            &format!(
                "User: {FAKE_CALLER_ARN} is not authorized to perform: sts:AssumeRole on resource: {role_arn}"
            ),
        )),
        Scenario::MalformedXml => Ok(xml_response(
            StatusCode::OK,
            "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>\u{1}garbage &&& not xml"
                .to_string(),
            &request_id(),
        )),
        Scenario::Truncated => {
            let full = success(&action, &params, &state);
            let (parts, body) = full.into_parts();
            let bytes = body.data.unwrap_or_default();
            let total = bytes.len();
            let half = bytes.slice(..total / 2);
            let mut resp = Response::from_parts(parts, FakeBody::truncated(half));
            resp.headers_mut().insert(CONTENT_LENGTH, total.into());
            Ok(resp)
        }
        Scenario::Reset => {
            let _ = twin.set_zero_linger();
            // A service error makes hyper drop the connection without writing
            // anything; the socket is closed (RST) when the connection task
            // drops `twin`.
            Err("fake STS: connection reset on purpose".into())
        }
        Scenario::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err("fake STS: hung on purpose".into())
        }
    }
}

/// The access key id out of a SigV4 `Authorization` header.
fn access_key_of(authorization: &str) -> Option<String> {
    let start = authorization.find("Credential=")? + "Credential=".len();
    let rest = &authorization[start..];
    let akid = rest.split(['/', ',', ' ']).next()?;
    (!akid.is_empty()).then(|| akid.to_string())
}

fn success(
    action: &str,
    params: &BTreeMap<String, String>,
    state: &Arc<Mutex<State>>,
) -> Response<FakeBody> {
    let p = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let request_id = request_id();
    let body = match action {
        "AssumeRole" => {
            let creds = issue(params, state);
            let user = assumed_role_user(p("RoleArn"), p("RoleSessionName"));
            wrap(
                "AssumeRole",
                &format!("{creds}{user}<PackedPolicySize>6</PackedPolicySize>"),
                &request_id,
            )
        }
        "AssumeRoleWithWebIdentity" => {
            let creds = issue(params, state);
            let user = assumed_role_user(p("RoleArn"), p("RoleSessionName"));
            wrap(
                "AssumeRoleWithWebIdentity",
                &format!(
                    "<SubjectFromWebIdentityToken>sub</SubjectFromWebIdentityToken>\
                     <Audience>sts.amazonaws.com</Audience>{creds}{user}\
                     <PackedPolicySize>6</PackedPolicySize><Provider>oidc.example</Provider>"
                ),
                &request_id,
            )
        }
        "AssumeRoleWithSAML" => {
            let creds = issue(params, state);
            let session = "saml-user";
            let user = assumed_role_user(p("RoleArn"), session);
            wrap(
                "AssumeRoleWithSAML",
                &format!(
                    "{creds}{user}<PackedPolicySize>6</PackedPolicySize>\
                     <Subject>u</Subject><SubjectType>persistent</SubjectType>\
                     <Issuer>https://idp.example</Issuer>\
                     <Audience>https://signin.aws.amazon.com/saml</Audience>\
                     <NameQualifier>x</NameQualifier>"
                ),
                &request_id,
            )
        }
        "GetSessionToken" => {
            let creds = issue(params, state);
            wrap("GetSessionToken", &creds, &request_id)
        }
        "GetFederationToken" => {
            let creds = issue(params, state);
            let name = esc(p("Name"));
            wrap(
                "GetFederationToken",
                &format!(
                    "{creds}<FederatedUser><FederatedUserId>{FAKE_ACCOUNT}:{name}</FederatedUserId>\
                     <Arn>arn:aws:sts::{FAKE_ACCOUNT}:federated-user/{name}</Arn></FederatedUser>\
                     <PackedPolicySize>6</PackedPolicySize>"
                ),
                &request_id,
            )
        }
        "GetCallerIdentity" => wrap(
            "GetCallerIdentity",
            &format!(
                "<Arn>{FAKE_CALLER_ARN}</Arn><UserId>AIDAFAKE</UserId><Account>{FAKE_ACCOUNT}</Account>"
            ),
            &request_id,
        ),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "InvalidAction",
                &format!("Could not find operation {other} for version 2011-06-15"),
            );
        }
    };
    xml_response(StatusCode::OK, body, &request_id)
}

/// `<{action}Response xmlns=..><{action}Result>{result}</..><ResponseMetadata>..`
fn wrap(action: &str, result: &str, request_id: &str) -> String {
    format!(
        "<{action}Response xmlns=\"{STS_NS}\">\n  <{action}Result>{result}</{action}Result>\n  \
         <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>\n\
         </{action}Response>\n"
    )
}

/// Issues fresh credentials and renders the `<Credentials>` element.
fn issue(params: &BTreeMap<String, String>, state: &Arc<Mutex<State>>) -> String {
    let (n, marker, lifetime, field) = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.issued += 1;
        (st.issued, st.marker.clone(), st.lifetime, st.field.clone())
    };
    let lifetime = lifetime.unwrap_or_else(|| {
        let secs = params
            .get("DurationSeconds")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(3600);
        Duration::from_secs(secs)
    });
    let expiration = humantime::format_rfc3339_seconds(sts_broker::clock::now() + lifetime);
    let marker = esc(&marker);
    let mut fields = [
        ("AccessKeyId", format!("ASIAFAKE{n:012}")),
        ("SecretAccessKey", format!("fake-secret-{n}{marker}")),
        ("SessionToken", format!("fake-token-{n}{marker}")),
        ("Expiration", expiration.to_string()),
    ];
    if let Some((element, text)) = field {
        for (name, value) in &mut fields {
            if *name == element {
                *value = esc(&text);
            }
        }
    }
    let inner: String = fields
        .iter()
        .map(|(name, value)| format!("<{name}>{value}</{name}>"))
        .collect();
    format!("<Credentials>{inner}</Credentials>")
}

/// `<AssumedRoleUser>` for `arn:aws:iam::ACCOUNT:role/path/NAME`.
fn assumed_role_user(role_arn: &str, session: &str) -> String {
    let fields: Vec<&str> = role_arn.splitn(6, ':').collect();
    let account = fields
        .get(4)
        .filter(|a| !a.is_empty())
        .copied()
        .unwrap_or(FAKE_ACCOUNT);
    let role_name = fields
        .get(5)
        .and_then(|r| r.rsplit('/').next())
        .filter(|n| !n.is_empty())
        .unwrap_or("unknown-role");
    let (account, role_name, session) = (esc(account), esc(role_name), esc(session));
    format!(
        "<AssumedRoleUser><AssumedRoleId>AROAFAKE:{session}</AssumedRoleId>\
         <Arn>arn:aws:sts::{account}:assumed-role/{role_name}/{session}</Arn></AssumedRoleUser>"
    )
}

fn error(status: StatusCode, kind: &str, code: &str, message: &str) -> Response<FakeBody> {
    let request_id = request_id();
    let body = format!(
        "<ErrorResponse xmlns=\"{STS_NS}\">\n  <Error>\n    <Type>{kind}</Type>\n    \
         <Code>{code}</Code>\n    <Message>{}</Message>\n  </Error>\n  \
         <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
        esc(message),
    );
    xml_response(status, body, &request_id)
}

fn xml_response(status: StatusCode, body: String, request_id: &str) -> Response<FakeBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/xml")
        .header("x-amzn-RequestId", request_id)
        .body(FakeBody::full(Bytes::from(body)))
        .expect("fake STS: valid response")
}

fn request_id() -> String {
    let r: u128 = rand::random();
    let h = format!("{r:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A response body: either whole, or (for `Truncated`) some bytes followed,
/// once hyper has flushed them, by an error that makes hyper close the
/// connection short of the announced `Content-Length`.
struct FakeBody {
    data: Option<Bytes>,
    abort_after: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl FakeBody {
    fn full(data: Bytes) -> Self {
        FakeBody {
            data: Some(data),
            abort_after: None,
        }
    }

    fn truncated(part: Bytes) -> Self {
        FakeBody {
            data: Some(part),
            abort_after: Some(Box::pin(tokio::time::sleep(Duration::from_millis(50)))),
        }
    }
}

impl Body for FakeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take()
            && !data.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match this.abort_after.as_mut() {
            None => Poll::Ready(None),
            Some(sleep) => match sleep.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    this.abort_after = None;
                    Poll::Ready(Some(Err("fake STS: body truncated on purpose".into())))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.abort_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.abort_after) {
            (Some(d), None) => SizeHint::with_exact(d.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

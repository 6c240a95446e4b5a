//! What every sink shares, and what the audit, the catalog and the recorder read too: the
//! header and field names a message carries, [`Routing`] (which topic, subject or stream an
//! event goes to), the optional CloudEvents [`Envelope`], and URL redaction. Public under
//! [`outbox::sinks`](crate::sinks); a leaf of the crate: it imports only the message and the
//! sink's destination.

use std::collections::HashMap;

use crate::message::Message;
use crate::sink::Destination;

/// Where the metadata travels as named fields of a record rather than as headers: the
/// elements of a webhook body (JSON members) and the entries of a Redis stream. One naming for
/// both, in `snake_case` so that it reads as JSON; headers use [`EVENT_ID`] and its siblings.
///
/// | field | webhook element (JSON) | Redis entry |
/// | --- | --- | --- |
/// | [`ID`](fields::ID) | string | string |
/// | [`EVENT_TYPE`](fields::EVENT_TYPE) | string | string |
/// | [`AGGREGATE_TYPE`](fields::AGGREGATE_TYPE) | string | string |
/// | [`AGGREGATE_ID`](fields::AGGREGATE_ID) | string | string |
/// | [`PAYLOAD`](fields::PAYLOAD) | the recorded JSON value | the body: payload or CloudEvent, as text |
/// | [`HEADERS`](fields::HEADERS) | object, when headers were recorded | JSON object text, when recorded |
/// | [`CONTENT_TYPE`](fields::CONTENT_TYPE) | — (the request's `Content-Type`) | the body's content type |
pub mod fields {
    /// The event id (UUIDv7): consumers deduplicate on it.
    pub const ID: &str = "id";
    /// The event type.
    pub const EVENT_TYPE: &str = "event_type";
    /// The aggregate type.
    pub const AGGREGATE_TYPE: &str = "aggregate_type";
    /// The aggregate id.
    pub const AGGREGATE_ID: &str = "aggregate_id";
    /// The event's payload (or, on Redis, the body the envelope makes of it).
    pub const PAYLOAD: &str = "payload";
    /// The headers recorded with the event: trace context, user headers.
    pub const HEADERS: &str = "headers";
    /// Redis: the content type of the `payload` field.
    pub const CONTENT_TYPE: &str = "content_type";
}

/// Header carrying the event id (UUIDv7): consumers deduplicate on it.
pub const EVENT_ID: &str = "outbox-event-id";
/// Header carrying the event type.
pub const EVENT_TYPE: &str = "outbox-event-type";
/// Header carrying the aggregate type.
pub const AGGREGATE_TYPE: &str = "outbox-aggregate-type";
/// Header carrying the aggregate id.
pub const AGGREGATE_ID: &str = "outbox-aggregate-id";
/// Header carrying the event type's schema version (`#[outbox(version = N)]`), when it has one:
/// recorded with the event, so every sink carries it with the other recorded headers.
pub const EVENT_VERSION: &str = "outbox-event-version";

/// The CloudEvents `dataschema` of a versioned event type:
/// `urn:outbox:schema:<aggregate type>:<event type>:v<version>`, as the event catalog names it.
pub fn dataschema(aggregate_type: &str, event_type: &str, version: &str) -> String {
    format!("urn:outbox:schema:{aggregate_type}:{event_type}:v{version}")
}

/// A sink could not be set up: the broker is unreachable, refuses the credentials, or the
/// configuration is wrong. Returned at start-up, before the relay runs.
///
/// [`SetupError::is_unreachable`] tells the two kinds apart: an unreachable broker may come
/// back by itself (a service waiting for it retries), while a wrong URL, setting or credential
/// needs a person.
#[derive(Debug, thiserror::Error)]
#[error("{sink} sink: {problem}")]
#[non_exhaustive]
pub struct SetupError {
    /// Which sink.
    pub sink: &'static str,
    /// What went wrong and what to fix.
    pub problem: String,
    pub(crate) unreachable: bool,
}

impl SetupError {
    /// A configuration or credential to fix.
    pub(crate) fn new(sink: &'static str, problem: impl Into<String>) -> Self {
        SetupError {
            sink,
            problem: problem.into(),
            unreachable: false,
        }
    }

    /// The broker did not answer (refused connection, timeout, unknown host): worth retrying.
    #[cfg(any(
        feature = "nats",
        feature = "redis",
        feature = "kafka",
        feature = "rabbitmq",
        feature = "mqtt",
        feature = "webhook"
    ))]
    pub(crate) fn unreachable(sink: &'static str, problem: impl Into<String>) -> Self {
        SetupError {
            unreachable: true,
            ..SetupError::new(sink, problem)
        }
    }

    /// True when the broker (or receiver) could not be reached: it may be down or starting,
    /// and trying again later can succeed. False for what a person must fix: an invalid URL
    /// or setting, refused credentials, a broker without a required capability.
    pub fn is_unreachable(&self) -> bool {
        self.unreachable
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`, for logs and error
/// messages.
///
/// ```
/// assert_eq!(
///     outbox::sinks::redacted("amqp://guest:secret@127.0.0.1:5672/%2f"),
///     "amqp://guest:***@127.0.0.1:5672/%2f"
/// );
/// assert_eq!(outbox::sinks::redacted("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
/// ```
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Where each event goes: a destination name (topic, subject, stream key) from a template, by
/// default the aggregate type, with overrides per event type.
///
/// Templates may use `{aggregate_type}`, `{event_type}` and `{aggregate_id}`.
///
/// ```
/// use outbox::sinks::Routing;
///
/// let routing = Routing::template("bank.{aggregate_type}.{event_type}")?
///     .route("MoneyTransferred", "bank.transfers")?;
/// # Ok::<(), outbox::sinks::SetupError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Routing {
    default: Template,
    by_event_type: HashMap<String, Template>,
}

impl Default for Routing {
    /// Every event to a destination named after its aggregate type.
    fn default() -> Self {
        Routing {
            default: Template(vec![Part::AggregateType]),
            by_event_type: HashMap::new(),
        }
    }
}

impl Routing {
    /// Every event to a destination named after its event type.
    pub fn event_type() -> Self {
        Routing {
            default: Template(vec![Part::EventType]),
            by_event_type: HashMap::new(),
        }
    }

    /// Every event to the destination `template` names.
    pub fn template(template: &str) -> Result<Self, SetupError> {
        Ok(Routing {
            default: Template::parse(template)?,
            by_event_type: HashMap::new(),
        })
    }

    /// Events of `event_type` to the destination `template` names instead.
    pub fn route(mut self, event_type: &str, template: &str) -> Result<Self, SetupError> {
        self.by_event_type
            .insert(event_type.to_owned(), Template::parse(template)?);
        Ok(self)
    }

    /// The destination of `message`.
    pub fn destination(&self, message: &Message) -> String {
        self.template_of(message).render(message)
    }

    /// The destination of `message` on `system`, as traces name it: with its template when the
    /// name holds the aggregate id (a value per aggregate is no name for a span).
    pub fn destination_on(&self, system: &'static str, message: &Message) -> Destination {
        let template = self.template_of(message);
        let destination = Destination::new(system, template.render(message));
        if template.0.contains(&Part::AggregateId) {
            destination.with_template(template.text())
        } else {
            destination
        }
    }

    fn template_of(&self, message: &Message) -> &Template {
        self.by_event_type
            .get(&message.event_type)
            .unwrap_or(&self.default)
    }
}

/// The host and port of a broker's URL (`scheme://[user:password@]host[:port][/…]`, or
/// `host:port[,host:port…]` as Kafka lists them; the first of several), `default_port` when it
/// names none: what traces report as `server.address` and `server.port`.
#[cfg(any(
    feature = "nats",
    feature = "redis",
    feature = "kafka",
    feature = "rabbitmq"
))]
pub(crate) fn server_of(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    let authority = rest
        .split(['/', '?', ','])
        .next()
        .filter(|authority| !authority.is_empty())?;
    let (host, port) = match authority.strip_prefix('[') {
        // [::1]:4222
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    Some((host.to_owned(), port))
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    AggregateType,
    EventType,
    AggregateId,
}

#[derive(Debug, Clone)]
struct Template(Vec<Part>);

impl Template {
    fn parse(template: &str) -> Result<Self, SetupError> {
        let invalid =
            |why: String| SetupError::new("routing", format!("template {template:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(invalid("a `}` has no `{`".to_owned()));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| invalid("a `{` is not closed".to_owned()))?;
            parts.push(match &rest[open + 1..open + close] {
                "aggregate_type" => Part::AggregateType,
                "event_type" => Part::EventType,
                "aggregate_id" => Part::AggregateId,
                other => {
                    return Err(invalid(format!(
                        "unknown placeholder {{{other}}}; use {{aggregate_type}}, {{event_type}} or {{aggregate_id}}"
                    )));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(invalid("a `}` has no `{`".to_owned()));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err(invalid("it is empty".to_owned()));
        }
        Ok(Template(parts))
    }

    /// The template as written.
    fn text(&self) -> String {
        self.0
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::AggregateType => "{aggregate_type}",
                Part::EventType => "{event_type}",
                Part::AggregateId => "{aggregate_id}",
            })
            .collect()
    }

    fn render(&self, message: &Message) -> String {
        let mut out = String::new();
        for part in &self.0 {
            out.push_str(match part {
                Part::Text(text) => text,
                Part::AggregateType => &message.aggregate_type,
                Part::EventType => &message.event_type,
                Part::AggregateId => &message.aggregate_id,
            });
        }
        out
    }
}

/// What a message's body is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Envelope {
    /// The event's payload as recorded (JSON); the metadata travels in headers or fields.
    #[default]
    Payload,
    /// A CloudEvents 1.0 event in structured JSON mode: `specversion`, `id` (event id), `source`
    /// (this string), `type` (event type), `subject` (aggregate id), `datacontenttype`, `data`
    /// (the payload), `time` (when the event was recorded: its UUIDv7 id's time, to the
    /// millisecond), plus the extension `aggregatetype`, the recorded trace context, and, for
    /// a versioned event type, `dataschema` ([`dataschema`]).
    CloudEvents {
        /// The CloudEvents `source` attribute, e.g. `/bank`.
        source: String,
    },
}

impl Envelope {
    /// The body of `message`.
    pub fn body(&self, message: &Message) -> String {
        match self {
            Envelope::Payload => message.payload.clone(),
            Envelope::CloudEvents { source } => {
                let data: serde_json::Value = serde_json::from_str(&message.payload)
                    .unwrap_or_else(|_| serde_json::Value::String(message.payload.clone()));
                let mut event = serde_json::json!({
                    "specversion": "1.0",
                    "id": message.id.to_string(),
                    "source": source,
                    "type": message.event_type,
                    "subject": message.aggregate_id,
                    "datacontenttype": "application/json",
                    "aggregatetype": message.aggregate_type,
                    "data": data,
                });
                if let Some(time) = recorded_at(message) {
                    event["time"] = serde_json::Value::String(time);
                }
                for (name, value) in recorded_headers(message) {
                    if matches!(name.as_str(), "traceparent" | "tracestate") {
                        event[name] = serde_json::Value::String(value);
                    } else if name == EVENT_VERSION {
                        let schema =
                            dataschema(&message.aggregate_type, &message.event_type, &value);
                        event["dataschema"] = serde_json::Value::String(schema);
                    }
                }
                event.to_string()
            }
        }
    }

    /// The content type of the body.
    pub fn content_type(&self) -> &'static str {
        match self {
            Envelope::Payload => "application/json",
            Envelope::CloudEvents { .. } => "application/cloudevents+json",
        }
    }
}

/// When the event was recorded, in RFC 3339 (CloudEvents' `time`): the time its UUIDv7 id
/// holds, to the millisecond. `None` for an id of another version (a source of your own).
fn recorded_at(message: &Message) -> Option<String> {
    let (seconds, nanos) = message.id.get_timestamp()?.to_unix();
    let at = std::time::UNIX_EPOCH + std::time::Duration::new(seconds, nanos);
    Some(humantime::format_rfc3339_millis(at).to_string())
}

/// The headers recorded with the event (a JSON object: trace context, user headers), as pairs.
/// Values that are not strings are passed as their JSON text.
pub fn recorded_headers(message: &Message) -> Vec<(String, String)> {
    let Some(text) = &message.headers else {
        return Vec::new();
    };
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text) {
        Ok(map) => map
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(value) => (name, value),
                other => (name, other.to_string()),
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Every header a message carries: the event id, event type, aggregate type and id, then the
/// recorded headers.
pub fn headers(message: &Message) -> Vec<(String, String)> {
    let mut headers = vec![
        (EVENT_ID.to_owned(), message.id.to_string()),
        (EVENT_TYPE.to_owned(), message.event_type.clone()),
        (AGGREGATE_TYPE.to_owned(), message.aggregate_type.clone()),
        (AGGREGATE_ID.to_owned(), message.aggregate_id.clone()),
    ];
    headers.extend(recorded_headers(message));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(
        feature = "nats",
        feature = "redis",
        feature = "kafka",
        feature = "rabbitmq"
    ))]
    fn a_servers_host_and_port_are_read_from_its_url() {
        let server = |host: &str, port| Some((host.to_owned(), port));
        assert_eq!(
            server_of("nats://127.0.0.1:4222", 1),
            server("127.0.0.1", 4222)
        );
        assert_eq!(server_of("nats://broker", 4222), server("broker", 4222));
        assert_eq!(
            server_of("amqp://guest:p@ss@rabbit.internal:5673/%2f", 5672),
            server("rabbit.internal", 5673)
        );
        assert_eq!(server_of("redis://[::1]:6380/0", 6379), server("::1", 6380));
        assert_eq!(server_of("k1:9093,k2:9092", 9092), server("k1", 9093));
        assert_eq!(server_of("mqtt://h?client_id=x", 1883), server("h", 1883));
        assert_eq!(server_of("nats://h:notaport", 4222), None);
        assert_eq!(server_of("", 4222), None);
    }

    #[test]
    fn a_destination_made_from_the_aggregate_id_carries_its_template() {
        let routing = Routing::template("bank.{aggregate_type}.{aggregate_id}")
            .unwrap()
            .route("Closed", "closures")
            .unwrap();
        let mut closed = message();
        closed.event_type = "Closed".into();
        let opened = routing.destination_on("nats", &message());
        assert_eq!(opened.name, "bank.account.42");
        assert_eq!(
            opened.template.as_deref(),
            Some("bank.{aggregate_type}.{aggregate_id}")
        );
        assert_eq!(routing.destination_on("nats", &closed).template, None);
    }

    fn message() -> Message {
        Message {
            id: uuid::Uuid::nil(),
            seq: 1,
            aggregate_type: "account".into(),
            aggregate_id: "42".into(),
            event_type: "AccountOpened".into(),
            payload: r#"{"owner":"Ada"}"#.into(),
            headers: Some(r#"{"traceparent":"00-abc-def-01","n":3}"#.into()),
            attempts: 0,
        }
    }

    #[test]
    fn routing_renders_templates_and_overrides() {
        let m = message();
        assert_eq!(Routing::default().destination(&m), "account");
        let routing = Routing::template("bank.{aggregate_type}.{event_type}")
            .unwrap()
            .route("AccountOpened", "opened.{aggregate_id}")
            .unwrap();
        assert_eq!(routing.destination(&m), "opened.42");
        let other = Message {
            event_type: "Closed".into(),
            ..m
        };
        assert_eq!(routing.destination(&other), "bank.account.Closed");
    }

    #[test]
    fn routing_refuses_bad_templates_with_the_reason() {
        let error = Routing::template("x.{aggregate}").unwrap_err().to_string();
        assert!(error.contains("unknown placeholder {aggregate}"), "{error}");
        assert!(Routing::template("x.{event_type").is_err());
        assert!(Routing::template("x}").is_err());
        // A stray `}` before a placeholder, as the fuzzer found it.
        let error = Routing::template("x}.{event_type}")
            .unwrap_err()
            .to_string();
        assert!(error.contains("a `}` has no `{`"), "{error}");
        assert!(Routing::template("").is_err());
    }

    #[test]
    fn cloudevents_envelope_carries_the_metadata_and_trace_context() {
        let body = Envelope::CloudEvents {
            source: "/bank".into(),
        }
        .body(&message());
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], "AccountOpened");
        assert_eq!(event["subject"], "42");
        assert_eq!(event["source"], "/bank");
        assert_eq!(event["data"]["owner"], "Ada");
        assert_eq!(event["traceparent"], "00-abc-def-01");
        assert!(
            event.get("dataschema").is_none(),
            "an unversioned event has no dataschema"
        );
        assert!(event.get("time").is_none(), "a nil id holds no time");
    }

    #[test]
    fn cloudevents_time_is_when_the_uuidv7_id_was_made() {
        // 2024-06-01T12:00:00.123Z as a UUIDv7.
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_717_243_200_123);
        let mut recorded = message();
        recorded.id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            1_717_243_200,
            123_000_000,
        ));
        let body = Envelope::CloudEvents {
            source: "/bank".into(),
        }
        .body(&recorded);
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(event["time"], "2024-06-01T12:00:00.123Z");
        assert_eq!(
            humantime::parse_rfc3339(event["time"].as_str().unwrap()).unwrap(),
            at
        );
    }

    #[test]
    fn cloudevents_envelope_names_the_schema_of_a_versioned_event() {
        let versioned = message().with_headers(format!(r#"{{"{EVENT_VERSION}":"2"}}"#));
        let body = Envelope::CloudEvents {
            source: "/bank".into(),
        }
        .body(&versioned);
        let event: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            event["dataschema"],
            "urn:outbox:schema:account:AccountOpened:v2"
        );
        assert_eq!(
            event["type"], "AccountOpened",
            "the type stays the event type"
        );
    }

    #[test]
    fn headers_carry_ids_types_and_recorded_headers() {
        let headers = headers(&message());
        assert!(headers.contains(&(EVENT_TYPE.into(), "AccountOpened".into())));
        assert!(headers.contains(&("traceparent".into(), "00-abc-def-01".into())));
        assert!(headers.contains(&("n".into(), "3".into())));
    }

    /// A piece of a routing template: literal text, or a placeholder.
    #[derive(Debug, Clone)]
    enum Piece {
        Text(String),
        AggregateType,
        EventType,
        AggregateId,
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = Piece> {
        use proptest::prelude::*;
        prop_oneof![
            "[a-z0-9._/-]{1,6}".prop_map(Piece::Text),
            Just(Piece::AggregateType),
            Just(Piece::EventType),
            Just(Piece::AggregateId),
        ]
    }

    proptest::proptest! {
        #[test]
        fn a_template_renders_its_text_and_the_message_fields_in_order(
            pieces in proptest::collection::vec(piece(), 1..8),
            aggregate_type in "\\PC{1,12}",
            event_type in "\\PC{1,12}",
            aggregate_id in "\\PC{1,12}",
        ) {
            let mut message = message();
            message.aggregate_type = aggregate_type;
            message.event_type = event_type;
            message.aggregate_id = aggregate_id;
            let (mut template, mut expected) = (String::new(), String::new());
            for piece in &pieces {
                let (written, value) = match piece {
                    Piece::Text(text) => (text.as_str(), text.as_str()),
                    Piece::AggregateType => ("{aggregate_type}", message.aggregate_type.as_str()),
                    Piece::EventType => ("{event_type}", message.event_type.as_str()),
                    Piece::AggregateId => ("{aggregate_id}", message.aggregate_id.as_str()),
                };
                template.push_str(written);
                expected.push_str(value);
            }
            let routing = Routing::template(&template).unwrap();
            proptest::prop_assert_eq!(routing.destination(&message), expected);
        }

        #[test]
        fn any_template_text_is_parsed_or_refused_without_panicking(template in "\\PC{0,24}") {
            match Routing::template(&template) {
                Ok(routing) => {
                    // Accepted: braces only around known placeholders.
                    let bare = ["{aggregate_type}", "{event_type}", "{aggregate_id}"]
                        .iter()
                        .fold(template.clone(), |text, placeholder| text.replace(placeholder, ""));
                    proptest::prop_assert!(!bare.contains(['{', '}']), "{template:?} was accepted");
                    let rendered = routing.destination(&message());
                    proptest::prop_assert!(!rendered.is_empty());
                    if !template.contains('{') {
                        proptest::prop_assert_eq!(rendered, template);
                    }
                }
                Err(error) => proptest::prop_assert!(
                    error.to_string().contains("template"),
                    "{error}"
                ),
            }
        }
    }
}

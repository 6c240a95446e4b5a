//! The registry of every event type a process can emit, filled at link time by `inventory`.

/// One event type the program can emit: submitted by every `#[derive(OutboxEvent)]` and every
/// `#[outbox_event]` function. See [`registered_events`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventDescriptor {
    aggregate_type: &'static str,
    event_type: &'static str,
    module_path: &'static str,
    origin: Origin,
    version: Option<u32>,
    schema: Option<SchemaFn>,
}

/// The function giving an entity's payload schema.
#[derive(Debug, Clone, Copy)]
struct SchemaFn(fn() -> Option<PayloadSchema>);

impl PartialEq for SchemaFn {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.0, other.0)
    }
}

impl Eq for SchemaFn {}

/// Where a descriptor comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A type with `#[derive(OutboxEvent)]`.
    Type {
        /// The type's name.
        name: &'static str,
    },
    /// A function annotated with `#[outbox_event]`.
    Function {
        /// The function's name.
        name: &'static str,
    },
}

impl EventDescriptor {
    #[doc(hidden)]
    pub const fn __new(
        aggregate_type: &'static str,
        event_type: &'static str,
        module_path: &'static str,
        origin: Origin,
    ) -> Self {
        EventDescriptor {
            aggregate_type,
            event_type,
            module_path,
            origin,
            version: None,
            schema: None,
        }
    }

    #[doc(hidden)]
    pub const fn __with_version(mut self, version: Option<u32>) -> Self {
        self.version = version;
        self
    }

    #[doc(hidden)]
    pub const fn __with_schema(mut self, schema: fn() -> Option<PayloadSchema>) -> Self {
        self.schema = Some(SchemaFn(schema));
        self
    }

    /// The event type's schema version (`#[outbox(version = N)]`), if it has one.
    pub fn version(&self) -> Option<u32> {
        self.version
    }

    /// The JSON Schema of the payload, when the entity derives `schemars::JsonSchema` and the
    /// feature `schemars` is on.
    pub fn payload_schema(&self) -> Option<PayloadSchema> {
        self.schema.and_then(|schema| (schema.0)())
    }

    /// Aggregate type of the events.
    pub fn aggregate_type(&self) -> &'static str {
        self.aggregate_type
    }

    /// Event type of the events.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }

    /// Module path of the type or function that submitted this descriptor.
    pub fn module_path(&self) -> &'static str {
        self.module_path
    }

    /// The deriving type or the annotated function.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The annotated function's name, when this descriptor comes from `#[outbox_event]`.
    pub fn function(&self) -> Option<&'static str> {
        match self.origin {
            Origin::Function { name } => Some(name),
            Origin::Type { .. } => None,
        }
    }
}

inventory::collect!(EventDescriptor);

/// Every event type this program can emit: one descriptor per `#[derive(OutboxEvent)]` type and
/// one per `#[outbox_event]` function, in no particular order. Useful for routing checks, status
/// pages and generated documentation.
///
/// ```
/// use outbox::{OutboxEvent, registered_events};
///
/// #[derive(serde::Serialize, OutboxEvent)]
/// #[outbox(aggregate_type = "account", event_type = "AccountOpened")]
/// struct AccountOpened {
///     #[outbox(aggregate_id)]
///     id: u64,
/// }
///
/// assert!(registered_events().any(|e| e.event_type() == "AccountOpened"));
/// ```
pub fn registered_events() -> impl Iterator<Item = &'static EventDescriptor> {
    inventory::iter::<EventDescriptor>.into_iter()
}

/// Where the catalog puts the schemas the payloads refer to.
#[cfg(feature = "schemars")]
const SCHEMAS: &str = "/components/schemas";

/// A payload's JSON Schema (draft 07, the base of AsyncAPI's schema format), with the
/// definitions it refers to under `#/components/schemas/`.
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadSchema {
    /// The payload's schema.
    pub schema: serde_json::Value,
    /// The schemas `schema` refers to, by name.
    pub definitions: serde_json::Map<String, serde_json::Value>,
}

impl PayloadSchema {
    /// The schema of `T` as it serializes.
    #[cfg(feature = "schemars")]
    #[cfg_attr(docsrs, doc(cfg(feature = "schemars")))]
    pub fn of<T: schemars::JsonSchema>() -> Self {
        let mut generator = schemars::generate::SchemaSettings::draft07()
            .with(|settings| {
                settings.definitions_path = SCHEMAS.into();
                settings.meta_schema = None;
                settings.contract = schemars::generate::Contract::Serialize;
            })
            .into_generator();
        let schema = generator.subschema_for::<T>().to_value();
        let definitions = generator.take_definitions(true);
        PayloadSchema {
            schema,
            definitions,
        }
    }
}

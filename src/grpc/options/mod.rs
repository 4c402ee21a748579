//! The messaging options a service may carry, read from the raw bytes of its
//! `ServiceOptions`: the one table of accepted forms ([`FORMS`], by extension
//! field number), the strict reading of each, and the rule for options the
//! sidecar does not know.
//!
//! | option | field | read as |
//! |---|---|---|
//! | `(outbox.messaging.v1.config)` | 58501 | ours: `broadcast.topic_name`, `unicast.worker_name`, `reply.reply_to_field` |
//! | `(pentops.messaging.v1.config)` | 58502 | o5: `broadcast` / `unicast` / `request` / `reply` `.topic_name`, mapped as `Config` |
//! | `(j5.messaging.v1.config)`, `(o5.messaging.v1.config)` | 93563434 | o5: `broadcast` / `unicast` `.name` → publish to `name`; `request` → request, `name_request`; `reply` → reply, `name_reply` |
//! | `(j5.messaging.v1.service)`, `(o5.messaging.v1.service)` | 93563435 | o5: `topic_name`, role `publish` / `request` / `reply` / `event{entity_name}` / `upsert{entity_name}` |
//!
//! The j5 and o5 options share their numbers (upstream moved them from
//! pentops/o5-messaging to pentops/j5 unchanged), so the bytes cannot tell
//! them apart, and need not: they mean the same.
//!
//! The rule, applied to every field of a service's `ServiceOptions`:
//! 1. a field of `descriptor.proto` itself (`deprecated`, `features`,
//!    `uninterpreted_option`) is not a messaging option: ignored;
//! 2. an extension whose number is in [`FORMS`] is that form, whatever the
//!    descriptors call it, read strictly: a field the form does not define,
//!    at any depth, refuses the service (it was built against a newer option
//!    than this sidecar knows, and would be served wrongly);
//! 3. any other extension is named from the descriptors: if a component of
//!    its package contains `messaging` (`acme.messaging.v1.route`,
//!    `o5.messaging.v2.config`, a home-made `pentops.messaging.v1.config` at
//!    another number) it is a messaging option the sidecar does not know, and
//!    refuses the service; otherwise (`google.api.default_host`, an auth
//!    option) it is not about messaging: ignored;
//! 4. an extension the descriptors do not define cannot be told apart, so it
//!    refuses the service too (sets built with their imports define all).
//!
//! A service left with no messaging option is not a topic service (an
//! application's ordinary RPC services, `grpc.health.v1.Health`): ignored
//! quietly. A service carrying two refuses, except upstream's own pair
//! `config` + `service`, where `service` wins as upstream's generator reads it.

mod forms;
mod wire;

use forms::{Reader, message_bytes};
use prost_reflect::{MessageDescriptor, ReflectMessage, ServiceDescriptor};

/// One accepted option form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `(outbox.messaging.v1.config)`: the request is published as it is.
    Outbox,
    /// `(pentops.messaging.v1.config)`: o5's documented form.
    Pentops,
    /// `(j5.messaging.v1.config)` / `(o5.messaging.v1.config)`: upstream's
    /// older form.
    Config,
    /// `(j5.messaging.v1.service)` / `(o5.messaging.v1.service)`: upstream's
    /// current form.
    Service,
}

/// An option form and the extension field number it is read by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub number: u32,
    /// The extensions' full names, for messages.
    pub names: &'static [&'static str],
    pub form: Form,
}

/// Every accepted form: the one place their field numbers are written.
pub const FORMS: [Accepted; 4] = [
    Accepted {
        number: 58501,
        names: &["outbox.messaging.v1.config"],
        form: Form::Outbox,
    },
    Accepted {
        number: 58502,
        names: &["pentops.messaging.v1.config"],
        form: Form::Pentops,
    },
    Accepted {
        number: 93_563_434,
        names: &["j5.messaging.v1.config", "o5.messaging.v1.config"],
        form: Form::Config,
    },
    Accepted {
        number: 93_563_435,
        names: &["j5.messaging.v1.service", "o5.messaging.v1.service"],
        form: Form::Service,
    },
];

impl Accepted {
    /// The name to show: the one the service's descriptors use, if known.
    fn shown(&self, named: &[String]) -> String {
        named
            .iter()
            .find(|n| self.names.contains(&n.as_str()))
            .map_or(self.names[0], String::as_str)
            .to_owned()
    }
}

/// The service's messaging option, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The option's name, e.g. `j5.messaging.v1.service`.
    pub option: String,
    pub messaging: Messaging,
}

/// What a messaging option says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Messaging {
    /// Ours: the request is published as it is.
    Outbox(OutboxKind),
    /// An o5 form: each call is wrapped into an `o5.messaging.v1.Message`.
    O5(O5Topic),
}

/// The kinds of `(outbox.messaging.v1.config)`, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxKind {
    Broadcast { topic_name: String },
    Unicast { worker_name: String },
    Reply { reply_to_field: String },
}

/// An o5 topic: what its messages' `destination_topic` and extension are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct O5Topic {
    pub topic: Option<String>,
    pub role: Role,
}

/// The role of an o5 topic (`ServiceConfig.role`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Publish,
    Request,
    Reply,
    Event { entity_name: String },
    Upsert { entity_name: String },
}

/// Why a service's options cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error(
        "carries ({option}), a messaging option this sidecar does not know; it reads (outbox.messaging.v1.config), (pentops.messaging.v1.config), (j5.messaging.v1.config|service) and (o5.messaging.v1.config|service)"
    )]
    Unknown { option: String },
    #[error(
        "carries ServiceOptions extension {number}, which its descriptors do not define, so the sidecar cannot tell whether it is a messaging option: build the set with its imports (protoc --include_imports, buf build)"
    )]
    Undefined { number: u32 },
    #[error(
        "({option}) sets field {field}{within}, which this sidecar does not know (built against a newer option?)"
    )]
    UnknownField {
        option: String,
        field: u32,
        within: String,
    },
    #[error("({option}) {what} is {found}, not {expected}")]
    WireType {
        option: String,
        what: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("({option}) does not decode: {reason}")]
    Malformed { option: String, reason: String },
    #[error("({option}) sets no topology (none of its kinds or roles)")]
    NoKind { option: String },
    #[error("({option}) {field} is required")]
    Missing { option: String, field: &'static str },
    #[error("carries both ({first}) and ({second}): one messaging option per service")]
    Several { first: String, second: String },
}

/// What the descriptors say about `ServiceOptions` field numbers.
pub trait Names {
    /// Whether `number` is a field of `ServiceOptions` itself.
    fn is_standard(&self, number: u32) -> bool;
    /// The full names the descriptors give extension `number`, those the
    /// service's own file imports first; empty when none defines it.
    fn names(&self, number: u32) -> Vec<String>;
}

/// Reads the messaging option out of a service's encoded `ServiceOptions`;
/// `None` for a service that carries none.
pub fn read(options: &[u8], names: &dyn Names) -> Result<Option<Found>, OptionError> {
    let malformed = |e: wire::Malformed| OptionError::Malformed {
        option: "ServiceOptions".into(),
        reason: e.0,
    };
    // Occurrences of one extension merge, as protobuf merges messages.
    let mut carried: Vec<(Accepted, String, Vec<u8>)> = Vec::new();
    for field in wire::fields(options).map_err(malformed)? {
        if names.is_standard(field.number) {
            continue;
        }
        let Some(form) = FORMS.iter().find(|f| f.number == field.number) else {
            check_foreign(field.number, names)?;
            continue;
        };
        let option = form.shown(&names.names(form.number));
        let bytes = message_bytes(&field.value, &option, "itself")?;
        match carried.iter_mut().find(|(f, ..)| f.number == form.number) {
            Some((.., all)) => all.extend_from_slice(bytes),
            None => carried.push((*form, option, bytes.to_vec())),
        }
    }
    let Some((form, option, bytes)) = choose(carried)? else {
        return Ok(None);
    };
    let reader = Reader { option: &option };
    let messaging = match form.form {
        Form::Outbox => Messaging::Outbox(reader.outbox(&bytes)?),
        Form::Pentops => Messaging::O5(reader.config(&bytes, "topic_name")?),
        Form::Config => Messaging::O5(reader.config(&bytes, "name")?),
        Form::Service => Messaging::O5(reader.service(&bytes)?),
    };
    Ok(Some(Found { option, messaging }))
}

/// Rules 3 and 4: an extension outside the table, known by its first name
/// (the one the service's file imports, when several share the number).
fn check_foreign(number: u32, names: &dyn Names) -> Result<(), OptionError> {
    match names.names(number).into_iter().next() {
        None => Err(OptionError::Undefined { number }),
        Some(option) if is_messaging(&option) => Err(OptionError::Unknown { option }),
        Some(_) => Ok(()),
    }
}

/// Whether a component of the extension's scope (its package, or the
/// message it is declared in) is about messaging.
fn is_messaging(full_name: &str) -> bool {
    let scope = full_name.rsplit_once('.').map_or("", |(scope, _)| scope);
    scope
        .split('.')
        .any(|part| part.to_ascii_lowercase().contains("messaging"))
}

/// One option per service; upstream's `config` + `service` pair reads as
/// `service`, as upstream's generator reads it.
fn choose(
    mut carried: Vec<(Accepted, String, Vec<u8>)>,
) -> Result<Option<(Accepted, String, Vec<u8>)>, OptionError> {
    let pair = |a: Form, b: Form| matches!((a, b), (Form::Config, Form::Service));
    if let [(a, ..), (b, ..)] = carried.as_slice()
        && (pair(a.form, b.form) || pair(b.form, a.form))
    {
        carried.retain(|(f, ..)| f.form == Form::Service);
    }
    match carried.len() {
        0 | 1 => Ok(carried.pop()),
        _ => Err(OptionError::Several {
            first: carried[0].1.clone(),
            second: carried[1].1.clone(),
        }),
    }
}

/// The messaging option of a service of a descriptor pool.
pub fn of_service(service: &ServiceDescriptor) -> Result<Option<Found>, OptionError> {
    use prost::Message as _;
    let options = service.options();
    let names = ServiceNames {
        service,
        options: options.descriptor(),
    };
    read(&options.encode_to_vec(), &names)
}

/// What the pool says about the ServiceOptions field numbers of a service.
struct ServiceNames<'a> {
    service: &'a ServiceDescriptor,
    options: MessageDescriptor,
}

impl Names for ServiceNames<'_> {
    fn is_standard(&self, number: u32) -> bool {
        self.options.get_field(number).is_some()
    }

    /// An option is written with an extension its file imports, so those
    /// names come first (j5 and o5 share numbers: the one used is shown).
    fn names(&self, number: u32) -> Vec<String> {
        let file = self.service.parent_file();
        let imported: Vec<String> = std::iter::once(file.clone())
            .chain(file.dependencies())
            .map(|f| f.name().to_owned())
            .collect();
        let mut named: Vec<(bool, String)> = self
            .options
            .extensions()
            .filter(|e| e.number() == number)
            .map(|e| {
                let elsewhere = !imported.iter().any(|f| f == e.parent_file().name());
                (elsewhere, e.full_name().to_owned())
            })
            .collect();
        named.sort();
        named.into_iter().map(|(_, name)| name).collect()
    }
}

#[cfg(test)]
mod tests;

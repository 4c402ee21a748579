//! The one definition of how the three topologies map onto RabbitMQ, and the
//! catalog of topic services read from an application's descriptors.
//!
//! | topology  | exchange (kind)                     | routing key                          |
//! |-----------|-------------------------------------|--------------------------------------|
//! | broadcast | `<topic_name>` (topic)              | `service.<package/Service>.<Method>` |
//! | unicast   | `""` (default)                      | `<worker_name>`: its input queue     |
//! | reply     | `""` (default)                      | the requester named in the message   |
//! | o5 bridge | `--o5-exchange`, `o5.<env>` (topic) | `service.<package/Service>.<Method>` |
//! | o5 topic  | as the o5 bridge (the call wrapped into an o5 `Message`) | as the o5 bridge |
//!
//! Which services are topic services, and which topology each has, is read
//! from their messaging option ([`super::options`]: ours maps onto the first
//! three rows, the o5 / j5 / pentops forms onto the last).
//!
//! Invariants owned here: a service is served only if every rpc is unary and
//! returns `google.protobuf.Empty`, its names fit AMQP's 255-byte limit, a
//! reply service's reply-to path leads to a string field, and an o5 request
//! or reply topic's request type has its RequestMetadata field; anything
//! else, and any messaging option the sidecar does not know, is refused when
//! the catalog is built, with the service named.

use super::o5::topic::{O5Route, route_of};
use super::options::{self, Messaging, OptionError, OutboxKind};
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind as FieldKind, MessageDescriptor,
    ServiceDescriptor, Value,
};
use std::collections::{BTreeSet, HashMap};

/// Content type of published protobuf requests.
pub const PROTOBUF: &str = "application/protobuf";
/// Headers naming what a published request is.
pub const HEADER_SERVICE: &str = "grpc-service";
pub const HEADER_METHOD: &str = "grpc-method";
pub const HEADER_TYPE: &str = "proto-type";
/// AMQP short strings (exchange, routing key) hold at most this many bytes.
const AMQP_NAME_MAX: usize = 255;

/// The topic-exchange routing key of a gRPC method, as o5 spells it:
/// dots of the service name become slashes so topic patterns can match
/// `service.orders/v1/OrderEvents.*`.
pub fn method_route(service: &str, method: &str) -> String {
    format!("service.{}.{method}", service.replace('.', "/"))
}

/// Where one service's messages go.
#[derive(Debug, Clone)]
pub enum Route {
    Broadcast {
        topic: String,
    },
    Unicast {
        worker: String,
    },
    /// The requester's name is read from this field path of the request.
    Reply {
        path: Vec<FieldDescriptor>,
    },
    /// An o5 topic: the call is wrapped into an o5 `Message` and published
    /// by the o5 bridge, to its exchange.
    O5(O5Route),
}

/// Exchange and routing key of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub exchange: String,
    pub routing_key: String,
}

/// One served method.
#[derive(Debug, Clone)]
pub struct TopicMethod {
    pub service: String,
    pub method: String,
    pub input: MessageDescriptor,
    pub route: Route,
}

impl TopicMethod {
    /// Where `request` (already decoded as `input`) goes; `None` for a reply
    /// that names no requester, and for an o5 topic (the bridge routes it).
    pub fn destination(&self, request: &DynamicMessage) -> Option<Destination> {
        match &self.route {
            Route::Broadcast { topic } => Some(Destination {
                exchange: topic.clone(),
                routing_key: method_route(&self.service, &self.method),
            }),
            Route::Unicast { worker } => Some(Destination {
                exchange: String::new(),
                routing_key: worker.clone(),
            }),
            Route::Reply { path } => {
                let requester = read_path(request, path)?;
                (!requester.is_empty() && requester.len() <= AMQP_NAME_MAX).then(|| Destination {
                    exchange: String::new(),
                    routing_key: requester,
                })
            }
            Route::O5(_) => None,
        }
    }

    pub fn reply_path(&self) -> String {
        match &self.route {
            Route::Reply { path } => path.iter().map(|f| f.name()).collect::<Vec<_>>().join("."),
            Route::O5(route) => route.reply_path(),
            _ => String::new(),
        }
    }
}

/// What `--declare-topology` declares for the served services.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declarations {
    /// Durable topic exchanges.
    pub topic_exchanges: BTreeSet<String>,
    /// Durable input queues of unicast workers.
    pub queues: BTreeSet<String>,
}

/// Why a set of descriptors cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read descriptor set {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "descriptor set {path} is not a valid FileDescriptorSet (build it with `protoc --include_imports --descriptor_set_out` or `buf build -o`): {reason}"
    )]
    Decode { path: String, reason: String },
    #[error("{service}: {error}")]
    Messaging { service: String, error: OptionError },
    #[error(
        "{service}/{method} returns {output}: every rpc of a topic service must return google.protobuf.Empty"
    )]
    NotEmpty {
        service: String,
        method: String,
        output: String,
    },
    #[error("{service}/{method} streams: topic services take unary calls only")]
    Streaming { service: String, method: String },
    #[error("{service}: {what} must be 1 to 255 bytes, not {len}")]
    Name {
        service: String,
        what: &'static str,
        len: usize,
    },
    #[error("{service}: reply_to_field {path:?}: {reason}")]
    ReplyPath {
        service: String,
        path: String,
        reason: String,
    },
    #[error(
        "{service}/{method}: a request or reply topic's request type ({input}) needs one field of type j5.messaging.v1.RequestMetadata (or o5.messaging.v1.RequestMetadata), which says where the reply goes"
    )]
    RequestMetadata {
        service: String,
        method: String,
        input: String,
    },
}

/// The served topic services, by request path `/<package.Service>/<Method>`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    methods: HashMap<String, TopicMethod>,
}

impl Catalog {
    /// Every service in `pool` that carries a messaging option.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, TopologyError> {
        let mut methods = HashMap::new();
        for service in pool.services() {
            let found =
                options::of_service(&service).map_err(|error| TopologyError::Messaging {
                    service: service.full_name().to_owned(),
                    error,
                })?;
            let Some(found) = found else {
                continue;
            };
            let plan = plan_of(&service, found.messaging)?;
            for method in service.methods() {
                check_method(&service, &method)?;
                let path = format!("/{}/{}", service.full_name(), method.name());
                // Reply paths and o5 request metadata are resolved per
                // method: each has its own request type.
                let route = match &plan {
                    Plan::Fixed(route) => route.clone(),
                    Plan::ReplyTo(dotted) => reply_route(&service, &method.input(), dotted)?,
                    Plan::O5(topic) => {
                        Route::O5(route_of(topic, &method.input()).ok_or_else(|| {
                            TopologyError::RequestMetadata {
                                service: service.full_name().to_owned(),
                                method: method.name().to_owned(),
                                input: method.input().full_name().to_owned(),
                            }
                        })?)
                    }
                };
                methods.insert(
                    path,
                    TopicMethod {
                        service: service.full_name().to_owned(),
                        method: method.name().to_owned(),
                        input: method.input(),
                        route,
                    },
                );
            }
        }
        Ok(Self { methods })
    }

    pub fn lookup(&self, path: &str) -> Option<&TopicMethod> {
        self.methods.get(path)
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }

    /// The served paths, sorted (for logs).
    pub fn paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self.methods.keys().map(String::as_str).collect();
        paths.sort_unstable();
        paths
    }

    pub fn declarations(&self) -> Declarations {
        let mut out = Declarations::default();
        for method in self.methods.values() {
            match &method.route {
                Route::Broadcast { topic } => {
                    out.topic_exchanges.insert(topic.clone());
                }
                Route::Unicast { worker } => {
                    out.queues.insert(worker.clone());
                }
                // o5 topics publish to the o5 exchange, declared anyway.
                Route::Reply { .. } | Route::O5(_) => {}
            }
        }
        out
    }
}

/// A service's routing before its methods are looked at.
enum Plan {
    Fixed(Route),
    /// A reply service: the dotted path of the requester's name.
    ReplyTo(String),
    /// An o5 topic.
    O5(options::O5Topic),
}

fn plan_of(service: &ServiceDescriptor, messaging: Messaging) -> Result<Plan, TopologyError> {
    let name = service.full_name().to_owned();
    let checked = |what: &'static str, value: String| {
        if value.is_empty() || value.len() > AMQP_NAME_MAX {
            Err(TopologyError::Name {
                service: name.clone(),
                what,
                len: value.len(),
            })
        } else {
            Ok(value)
        }
    };
    let kind = match messaging {
        Messaging::O5(topic) => return Ok(Plan::O5(topic)),
        Messaging::Outbox(kind) => kind,
    };
    match kind {
        OutboxKind::Broadcast { topic_name } => Ok(Plan::Fixed(Route::Broadcast {
            topic: checked("broadcast.topic_name", topic_name)?,
        })),
        OutboxKind::Unicast { worker_name } => Ok(Plan::Fixed(Route::Unicast {
            worker: checked("unicast.worker_name", worker_name)?,
        })),
        OutboxKind::Reply { reply_to_field } if reply_to_field.is_empty() => {
            Ok(Plan::ReplyTo("reply_to".into()))
        }
        OutboxKind::Reply { reply_to_field } => Ok(Plan::ReplyTo(reply_to_field)),
    }
}

fn check_method(
    service: &ServiceDescriptor,
    method: &prost_reflect::MethodDescriptor,
) -> Result<(), TopologyError> {
    if method.is_client_streaming() || method.is_server_streaming() {
        return Err(TopologyError::Streaming {
            service: service.full_name().to_owned(),
            method: method.name().to_owned(),
        });
    }
    let output = method.output();
    if output.full_name() != "google.protobuf.Empty" {
        return Err(TopologyError::NotEmpty {
            service: service.full_name().to_owned(),
            method: method.name().to_owned(),
            output: output.full_name().to_owned(),
        });
    }
    Ok(())
}

/// Resolves `a.b.c` to singular message fields ending in a string field.
fn reply_route(
    service: &ServiceDescriptor,
    input: &MessageDescriptor,
    dotted: &str,
) -> Result<Route, TopologyError> {
    let fail = |reason: String| TopologyError::ReplyPath {
        service: service.full_name().to_owned(),
        path: dotted.to_owned(),
        reason,
    };
    let mut message = input.clone();
    let mut path = Vec::new();
    let names: Vec<&str> = dotted.split('.').collect();
    for (i, name) in names.iter().enumerate() {
        let field = message
            .get_field_by_name(name)
            .ok_or_else(|| fail(format!("{} has no field {name:?}", message.full_name())))?;
        if field.is_list() || field.is_map() {
            return Err(fail(format!("{name:?} is repeated")));
        }
        let last = i + 1 == names.len();
        match (field.kind(), last) {
            (FieldKind::String, true) => {}
            (FieldKind::Message(inner), false) => message = inner,
            (_, true) => return Err(fail(format!("{name:?} is not a string field"))),
            (_, false) => return Err(fail(format!("{name:?} is not a message field"))),
        }
        path.push(field);
    }
    Ok(Route::Reply { path })
}

fn read_path(message: &DynamicMessage, path: &[FieldDescriptor]) -> Option<String> {
    let (last, walk) = path.split_last()?;
    let mut current = message.clone();
    for field in walk {
        match current.get_field(field).as_ref() {
            Value::Message(inner) => current = inner.clone(),
            _ => return None,
        }
    }
    match current.get_field(last).as_ref() {
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests;

//! The server around the services: health, reflection, the bearer token,
//! mutual TLS, and garbage on the port.

use super::*;
use common::proxy::FaultProxy;
use outbox_relay::proto::outbox::v1::PublishRequest;
use outbox_relay::proto::outbox::v1::publisher_client::PublisherClient;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn to_queue(env: &TestEnv, payload: &[u8]) -> PublishRequest {
    PublishRequest {
        routing_key: env.queue.clone(),
        payload: payload.to_vec(),
        ..Default::default()
    }
}

async fn status_is(client: &HealthClient<Channel>, service: &str, wanted: ServingStatus) -> bool {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    let got = client.clone().check(request).await;
    got.is_ok_and(|r| r.into_inner().status() == wanted)
}

#[tokio::test]
async fn health_is_serving_only_while_the_database_and_the_broker_are_reachable() {
    let env = TestEnv::new("grpc_health").await;
    let broker = FaultProxy::start(AMQP_ADDR.parse().unwrap()).await;
    let db = FaultProxy::start(PG_ADDR.parse().unwrap()).await;
    let amqp = format!("amqp://guest:guest@{}/%2f", broker.addr);
    let pg = format!("postgres://root@{}/test", db.addr);
    let relay = Running::start(env.run_args_with(&pg, &amqp, &[])).await;
    let health = HealthClient::new(channel(&relay).await);
    for service in [
        "",
        "outbox.v1.Publisher",
        "o5.messaging.v1.topic.MessageBridgeTopic",
    ] {
        assert!(
            wait_until(WITHIN, || status_is(
                &health,
                service,
                ServingStatus::Serving
            ))
            .await,
            "{service:?} SERVING with both services up"
        );
    }
    broker.refuse(true);
    broker.reset().await;
    assert!(
        wait_until(WITHIN, || status_is(&health, "", ServingStatus::NotServing)).await,
        "broker down"
    );
    broker.refuse(false);
    assert!(
        wait_until(WITHIN, || status_is(&health, "", ServingStatus::Serving)).await,
        "broker back"
    );
    db.refuse(true);
    db.reset().await;
    assert!(
        wait_until(WITHIN, || status_is(&health, "", ServingStatus::NotServing)).await,
        "database down"
    );
    db.refuse(false);
    assert!(
        wait_until(WITHIN, || status_is(&health, "", ServingStatus::Serving)).await,
        "database back"
    );
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn server_reflection_lists_the_sidecars_services_and_the_applications() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let env = TestEnv::new("grpc_reflection").await;
    let relay = sidecar(&env, &["--descriptor-set", TEST_DESCRIPTORS]).await;
    let mut client = ServerReflectionClient::new(channel(&relay).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in [
        "outbox.v1.Publisher",
        "o5.messaging.v1.topic.MessageBridgeTopic",
        "grpc.health.v1.Health",
        "test.v1.OrderEvents",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

#[tokio::test]
async fn with_a_token_only_callers_that_present_it_may_publish() {
    let env = TestEnv::new("grpc_token").await;
    let relay = sidecar(&env, &["--grpc-token", "s3cret-t0ken"]).await;
    let ch = channel(&relay).await;
    for presented in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret-t0ke"),
        Some("s3cret-t0ken"),
    ] {
        let mut request = tonic::Request::new(to_queue(&env, b"no"));
        if let Some(value) = presented {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        let e = PublisherClient::new(ch.clone())
            .publish(request)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{presented:?}: {e:?}");
    }
    assert_eq!(rows(&env).await, 0);
    let mut request = tonic::Request::new(to_queue(&env, b"yes"));
    request
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-t0ken".parse().unwrap());
    PublisherClient::new(ch.clone())
        .publish(request)
        .await
        .expect("the right token");
    // Health probes carry no credentials.
    let health = HealthClient::new(ch);
    assert!(wait_until(WITHIN, || status_is(&health, "", ServingStatus::Serving)).await);
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data, b"yes");
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

/// A CA, a server certificate for localhost and a client certificate, as
/// PEM files in a fresh directory.
struct Pki {
    dir: std::path::PathBuf,
    ca: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("localhost");
    let (client_cert, client_key) = leaf("shop.example");
    let dir = std::env::temp_dir().join(unique("pki"));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, pem) in [
        ("ca.pem", ca.pem()),
        ("server.pem", server_cert),
        ("server.key", server_key),
    ] {
        std::fs::write(dir.join(name), pem).unwrap();
    }
    Pki {
        dir,
        ca: ca.pem(),
        client_cert,
        client_key,
    }
}

#[tokio::test]
async fn with_mutual_tls_only_clients_with_a_certificate_from_the_ca_get_in() {
    let env = TestEnv::new("grpc_mtls").await;
    let pki = pki();
    let path = |name: &str| pki.dir.join(name).display().to_string();
    let relay = sidecar(
        &env,
        &[
            "--grpc-tls-cert",
            &path("server.pem"),
            "--grpc-tls-key",
            &path("server.key"),
            "--grpc-tls-client-ca",
            &path("ca.pem"),
        ],
    )
    .await;
    let url = format!("https://localhost:{}", relay.grpc.unwrap().port());
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca))
        .domain_name("localhost");

    let anonymous = Channel::from_shared(url.clone())
        .unwrap()
        .tls_config(tls.clone())
        .unwrap();
    let refused = match anonymous.connect().await {
        Err(_) => true,
        Ok(ch) => PublisherClient::new(ch)
            .publish(to_queue(&env, b"no"))
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
    let plaintext = Channel::from_shared(relay.grpc_url())
        .unwrap()
        .connect()
        .await;
    let refused = match plaintext {
        Err(_) => true,
        Ok(ch) => PublisherClient::new(ch)
            .publish(to_queue(&env, b"no"))
            .await
            .is_err(),
    };
    assert!(refused, "plaintext is refused");
    assert_eq!(rows(&env).await, 0);

    let identity = Identity::from_pem(&pki.client_cert, &pki.client_key);
    let trusted = Channel::from_shared(url)
        .unwrap()
        .tls_config(tls.identity(identity))
        .unwrap()
        .connect()
        .await
        .expect("mutual TLS handshake");
    PublisherClient::new(trusted)
        .publish(to_queue(&env, b"over tls"))
        .await
        .expect("published over mutual TLS");
    let got = env.consume(1, WITHIN, LINGER).await;
    assert_eq!(got.len(), 1);
    relay.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&pki.dir);
    env.drop_schema().await;
}

#[tokio::test]
async fn garbage_on_the_grpc_port_is_shrugged_off_and_loses_nothing() {
    let env = TestEnv::new("grpc_garbage").await;
    let relay = sidecar(&env, &[]).await;
    let mut client = PublisherClient::new(channel(&relay).await);
    client.publish(to_queue(&env, b"before")).await.unwrap();
    let addr = relay.grpc.unwrap();
    for bytes in grpc::garbage() {
        assert!(
            grpc::closes_garbage(addr, &bytes, WITHIN).await,
            "the server closed a garbage connection"
        );
    }
    client
        .publish(to_queue(&env, b"after"))
        .await
        .expect("still serving");
    let got = env.consume(2, WITHIN, LINGER).await;
    let bodies: Vec<&[u8]> = got.iter().map(|d| d.data.as_slice()).collect();
    assert_eq!(bodies, [&b"before"[..], &b"after"[..]]);
    relay.stop().await.unwrap();
    env.drop_schema().await;
}

//! TLS to the worker (`--worker-addr https://...`): a tonic worker served
//! over TLS with a certificate of a test CA gets its messages when the relay
//! trusts that CA (`--worker-ca-file`), and nothing when it does not: the
//! handshake is refused, readiness and gRPC health say why, and the message
//! waits in its queue, neither acked nor lost.

use super::worker::Options;
use super::*;
use outbox_relay::grpc::DELIVERY_SERVICE;

/// A test CA (PEM, also written to `ca.pem` in a fresh directory) and a
/// certificate it signed for 127.0.0.1 and localhost, with its key.
struct Pki {
    dir: PathBuf,
    server: (String, String),
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let dir = std::env::temp_dir().join(unique("dlv_pki"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Self {
            dir,
            server: (cert.pem(), key.serialize_pem()),
        }
    }

    fn ca_file(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    fn worker_options(&self) -> Options {
        Options {
            tls: Some(self.server.clone()),
            ..Options::default()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn over_https_a_worker_with_a_certificate_from_the_worker_ca_file_gets_its_messages() {
    let env = TestEnv::new("dlv_tls").await;
    let names = Names::new("tls");
    let pki = Pki::new();
    let worker = worker(pki.worker_options()).await;
    assert!(worker.url().starts_with("https://127.0.0.1:"));
    let relay = relay(
        &env,
        &names,
        &worker.url(),
        &["--worker-ca-file", &pki.ca_file()],
    )
    .await;
    let (properties, id) = named(BILLING, "Charge", &[]);
    publish(&env, "", &names.billing, b"\x0a\x03tls", properties).await;
    let arrived = wait_until(WITHIN, || async { worker.state.count() == 1 }).await;
    assert!(arrived, "the call arrives over TLS");
    let call = &worker.state.calls()[0];
    assert_eq!(call.path, format!("/{BILLING}/Charge"));
    assert_eq!(call.body.as_ref(), b"\x0a\x03tls");
    assert_eq!(call.meta("message-id").as_deref(), Some(id.as_str()));
    let consuming = wait_until(WITHIN, || async {
        worker_readiness(&relay).await == (200, "worker: ok".to_owned())
            && grpc_health(&relay, DELIVERY_SERVICE).await == Some(ServingStatus::Serving)
    })
    .await;
    assert!(consuming, "{:?}", worker_readiness(&relay).await);
    relay.stop().await.unwrap();
    assert_eq!(worker.state.count(), 1, "once");
    assert_all_settled(&env, &names.billing).await;
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}

#[tokio::test]
async fn a_worker_whose_certificate_is_not_trusted_gets_nothing_and_readiness_says_why() {
    let env = TestEnv::new("dlv_tls_untrusted").await;
    let names = Names::new("tls_untrusted");
    let pki = Pki::new();
    let worker = worker(pki.worker_options()).await;
    // No --worker-ca-file: the platform's roots, which do not hold the test CA.
    let relay = relay(&env, &names, &worker.url(), &[]).await;
    let (properties, _) = named(BILLING, "Charge", &[]);
    publish(&env, "", &names.billing, b"\x0a\x03tls", properties).await;
    let refused = wait_until(WITHIN, || async {
        let (status, line) = worker_readiness(&relay).await;
        status == 503
            && line.contains(&worker.url())
            && line.contains("cannot be reached")
            && line.contains("certificate")
            && grpc_health(&relay, DELIVERY_SERVICE).await == Some(ServingStatus::NotServing)
    })
    .await;
    let (_, line) = worker_readiness(&relay).await;
    assert!(refused, "readiness names the TLS failure: {line}");
    let check = worker_check(&relay).await;
    assert_eq!(check["state"], "worker_unreachable", "{check}");
    let error = check["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("UnknownIssuer"), "the TLS error: {error}");
    assert!(error.contains("--worker-ca-file"), "and its fix: {error}");
    relay.stop().await.unwrap();
    assert_eq!(worker.state.count(), 0, "no call reached the worker");
    assert_eq!(
        ready(&env, &names.billing).await,
        1,
        "the message waits in its queue"
    );
    for suffix in [".retry", ".dead"] {
        assert_eq!(ready(&env, &format!("{}{suffix}", names.billing)).await, 0);
    }
    names.clean_up(&env.channel).await;
    worker.stop().await;
    env.drop_schema().await;
}
